#!/usr/bin/env bash
# The tech note's nsenter.sh, on top of docker-xms: a shell in the container's namespaces.
#   nsenter.sh CONTAINER
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CONTAINER" >&2; exit 2; }
exec "${DOCKER_XMS:-docker-xms}" shell "$@"
