#!/usr/bin/env bash
# Makes podman usable for the image tests on this kind of machine, once:
#   - installs podman and runc from Debian's packages when missing (needs root, as in CI);
#   - writes a containers.conf that uses runc with cgroupfs and sets no default ulimits (these
#     sandboxes have neither systemd cgroups nor the right to raise limits).
# Prints the containers.conf path on stdout: export it as CONTAINERS_CONF.
set -euo pipefail
CACHE="${KWR_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-workload-registrar/testbin}"
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  echo "podman: installing podman and runc (apt-get)" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "podman: not root; install them with: sudo apt-get install -y podman runc" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y podman runc >&2 || { apt-get update >&2 && apt-get install -y podman runc >&2; }
fi
mkdir -p "$CACHE"
conf="$CACHE/containers.conf"
cat >"$conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
echo "$conf"
