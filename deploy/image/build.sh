#!/usr/bin/env bash
# Builds the registrar's OCI image from deploy/image/Dockerfile without a daemon:
#   1. a static release binary (x86_64-unknown-linux-gnu, +crt-static; the release profile strips
#      symbols) in target/x86_64-unknown-linux-gnu/release;
#   2. a build context with that binary and the CA certificates;
#   3. `podman build` (or `docker build` when podman is missing and a Docker engine answers).
# Usage: build.sh [tag]   (default k8s-workload-registrar:<version from Cargo.toml>)
# Prints the tag on stdout. With podman on machines that cannot set ulimits or use systemd
# cgroups, set CONTAINERS_CONF to a containers.conf as tests/image.sh writes (README, "Image").
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
tag="${1:-k8s-workload-registrar:$version}"
target=x86_64-unknown-linux-gnu
cacerts="${CA_CERTIFICATES:-/etc/ssl/certs/ca-certificates.crt}"
[[ -r "$cacerts" ]] || { echo "image: no CA bundle at $cacerts (apt-get install ca-certificates, or set CA_CERTIFICATES)" >&2; exit 2; }

# --target keeps the static flag off build scripts and proc-macros, which must stay dynamic.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --manifest-path "$root/Cargo.toml" --release --locked --target "$target" --bin k8s-workload-registrar >&2
bin="$root/target/$target/release/k8s-workload-registrar"
# A dynamically linked executable names its loader in a PT_INTERP program header.
if readelf -lW "$bin" | grep -q 'INTERP'; then
  echo "image: $bin is dynamically linked; the scratch image needs a static binary" >&2
  exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$root/deploy/image/Dockerfile" "$bin" "$ctx/"
cp "$cacerts" "$ctx/ca-certificates.crt"
if command -v podman >/dev/null 2>&1; then
  podman build --quiet -t "$tag" "$ctx" >&2
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker build --quiet -t "$tag" "$ctx" >&2
else
  echo "image: neither podman nor a running Docker engine was found (apt-get install podman runc)" >&2
  exit 2
fi
echo "$tag"
