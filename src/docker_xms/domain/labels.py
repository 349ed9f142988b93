"""The container labels that hold docker-xms's state in the engine."""

LABEL_PREFIX = "io.docker-xms"
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
PROFILE_LABEL = f"{LABEL_PREFIX}.profile"
MODE_LABEL = f"{LABEL_PREFIX}.mode"
WEIGHT_LABEL = f"{LABEL_PREFIX}.rt-weight"
