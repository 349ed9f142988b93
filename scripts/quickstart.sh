#!/usr/bin/env bash
# Set up a Debian 12 or 13 host for docker-xms and run one job:
#   demo  - build the rtpengine demo image if missing and start it with its real-time budget
#   test  - lint, type-check and run the whole test suite against the real engine and kernel
#   setup - only install and start what is needed
# Needs root. Idempotent: packages, the virtual environment and the engine are reused when present.
set -euo pipefail

job="${1:-demo}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (docker-xms writes real-time budgets into the host's cgroups)." >&2
  exit 2
fi

# An engine that DOCKER_HOST names (Podman's Docker-compatible service, or a Docker Engine elsewhere) is the
# operator's: it is used as it is, and no Docker Engine is installed or started beside it.
packages=(mmdebstrap iptables iproute2 conntrack python3-venv python3-pip ca-certificates)
[ -n "${DOCKER_HOST:-}" ] || packages=(docker.io "${packages[@]}")
if [ "$job" = test ]; then
  packages+=(docker-registry rt-tests stress-ng busybox-static gcc libc6-dev util-linux systemd sip-tester rtpengine-utils chromium chromium-driver prometheus docker-compose qemu-system-x86 qemu-utils openssh-client)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian 13 and later ship the docker client apart from the engine (docker-cli); Debian 12's docker.io has it.
if ! command -v docker >/dev/null 2>&1; then
  echo "Installing docker-cli"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-cli >/dev/null
fi

python=""
for candidate in python3 /usr/bin/python3; do
  if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "error: docker-xms needs Python 3.11 or newer (apt-get install python3)." >&2; exit 1; }
# The tests' and benchmarks' own packages only for the test job.
extras=""; marker=.venv/.installed
if [ "$job" = test ]; then extras="[test,bench]"; marker=.venv/.installed-test; fi
if [ ! -x .venv/bin/docker-xms ] || [ ! -e "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
  echo "Installing docker-xms${extras:+ with its test tools} into .venv"
  [ -x .venv/bin/pip ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".${extras}"
  touch "$marker"
fi

# A Docker engine: the one that answers; else the one systemd has (started, never replaced or reconfigured
# when others' containers may run on it); else dockerd started here in the background.
engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
wait_engine() { for _ in $(seq 1 60); do engine_up && return 0; sleep 0.5; done; return 1; }
systemd_engine() { [ -d /run/systemd/system ] && systemctl cat docker.service >/dev/null 2>&1; }
if [ -n "${DOCKER_HOST:-}" ] && ! engine_up; then
  echo "error: no engine answers at DOCKER_HOST=$DOCKER_HOST (for Podman: systemctl enable --now podman.socket)." >&2
  exit 1
fi
if ! engine_up && systemd_engine; then
  echo "Starting docker.service"
  systemctl start docker.service
  wait_engine || { echo "error: docker.service did not start; see journalctl -u docker.service" >&2; exit 1; }
fi
if ! engine_up; then
  echo "Starting dockerd"
  mkdir -p /run/docker-xms
  # In a subshell that exits at once, so dockerd is nobody's child here: the test job execs pytest,
  # which would otherwise inherit it and never reap it when a test restarts the engine.
  (setsid dockerd >/var/log/docker-xms-dockerd.log 2>&1 </dev/null & echo $! > /run/docker-xms/dockerd.pid)
  wait_engine || { echo "error: dockerd did not start; see /var/log/docker-xms-dockerd.log" >&2; exit 1; }
fi

# On cgroup v2 systemd needs its container's own cgroup writable: Engine 28 and later do that per container
# (writable-cgroups); an older engine only with remapped users. An engine this set-up has just installed,
# with no container and no configuration of anyone's, is configured for that; any other engine is left as
# it is, and `docker-xms run` says what it needs.
if [[ " ${missing[*]} " == *" docker.io "* ]] && [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] \
  && [ ! -e /etc/docker/daemon.json ] && systemd_engine \
  && [ "$(docker info --format '{{.Containers}}')" = 0 ] \
  && [ "$(docker version --format '{{.Server.Version}}' | cut -d. -f1)" -lt 28 ]; then
  echo "Configuring the new engine with userns-remap=default (cgroup v2, Docker before 28)"
  mkdir -p /etc/docker
  printf '{\n  "userns-remap": "default"\n}\n' > /etc/docker/daemon.json
  systemctl restart docker.service
  wait_engine || { echo "error: docker.service did not come back; see journalctl -u docker.service" >&2; exit 1; }
fi

case "$job" in
  setup) ;;
  demo)
    # Idempotent: a demo container from an earlier run is replaced, and its budget given back first.
    if docker container inspect docker-xms-demo >/dev/null 2>&1; then
      .venv/bin/docker-xms rm -f docker-xms-demo >/dev/null
    fi
    exec .venv/bin/docker-xms run --profile rtpengine --build-missing --restart unless-stopped --name docker-xms-demo
    ;;
  test)
    .venv/bin/ruff check src tests bench lab
    .venv/bin/ruff format --check src tests bench lab
    .venv/bin/mypy
    exec .venv/bin/pytest -p no:cacheprovider "${@:2}"
    ;;
  *) echo "error: unknown job $job (demo, test or setup)." >&2; exit 2 ;;
esac
