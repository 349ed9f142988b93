"""docker-xms benchmarks: `python -m bench [SECTION ...]` prints numbers and writes bench/results/."""
