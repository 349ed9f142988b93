#!/usr/bin/env bash
# The tech note's run_xms_container.sh, on top of docker-xms:
#   run_xms_container.sh [-c] -i IMAGE
# Default: 1:1 host ports (one container per host). -c: container-address mode (many containers).
set -euo pipefail
usage() { echo "usage: $0 [-c] -i IMAGE" >&2; exit 2; }
mode=()
image=""
while getopts ":ci:h" opt; do
  case "$opt" in
    c) mode=(-c) ;;
    i) image="$OPTARG" ;;
    *) usage ;;
  esac
done
[ -n "$image" ] || usage
exec "${DOCKER_XMS:-docker-xms}" run "${mode[@]}" --profile "${DOCKER_XMS_PROFILE:-xms}" -i "$image"
