#!/usr/bin/env bash
# Runs every check and every test, the same way locally and in CI (.ci/run calls exactly this).
#  1. builds (or reuses) the real etcd, kube-apiserver, spire-server and helm in ~/.cache;
#  2. rustfmt and clippy (-D warnings);
#  3. podman (installed from Debian's packages when missing) and the container image
#     (deploy/image/build.sh: a static release build), which the image tests run;
#  4. all unit and integration tests, failing if any test was ignored (nothing skips silently);
#  5. the README's demo (`cargo run --example demo`), which must produce its entries.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash tests/testbin/build.sh >/dev/null
echo "test binaries ready after $(( $(date +%s) - start ))s"

cargo fmt --all -- --check
cargo clippy --all-targets --all-features --locked -- -D warnings

CONTAINERS_CONF="$(bash tests/testbin/podman.sh)"
export CONTAINERS_CONF
export KWR_IMAGE=localhost/k8s-workload-registrar:test
bash deploy/image/build.sh "$KWR_IMAGE" >/dev/null
echo "image $KWR_IMAGE built after $(( $(date +%s) - start ))s"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets --features fault-injection --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [[ $status -ne 0 ]]; then
  echo "tests failed" >&2
  exit "$status"
fi
if grep -E "test result: .* [1-9][0-9]* ignored" "$log" >/dev/null; then
  echo "some tests were ignored; every test must run" >&2
  exit 1
fi
cargo run --locked --example demo
echo "all checks passed in $(( $(date +%s) - start ))s"
