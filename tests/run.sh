#!/usr/bin/env bash
# Runs every check and every test, the same way locally and in CI (.ci/run calls exactly this).
#  1. in the background: builds (or reuses) the real etcd, kube-apiserver, spire-server and helm
#     in ~/.cache (mostly module downloads and Go compiles, so it overlaps well with step 2);
#  2. meanwhile: rustfmt, podman (installed from Debian's packages when missing), the container
#     image (deploy/image/build.sh: a static release build), clippy (-D warnings) and the test
#     build;
#  3. all unit and integration tests, failing if any test was ignored (nothing skips silently);
#  4. the README's demo (`cargo run --example demo`), which must produce its entries.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }
testbin_log="$(mktemp)"
log="$(mktemp)"
trap 'rm -f "$log" "$testbin_log"' EXIT
bash tests/testbin/build.sh >"$testbin_log" 2>&1 &
testbin_pid=$!

cargo fmt --all -- --check
CONTAINERS_CONF="$(bash tests/testbin/podman.sh)"
export CONTAINERS_CONF
export KWR_IMAGE=localhost/k8s-workload-registrar:test
bash deploy/image/build.sh "$KWR_IMAGE" >/dev/null
echo "image $KWR_IMAGE built after $(elapsed)"
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo test --all-targets --features fault-injection --locked --no-run
echo "tests built after $(elapsed)"

if ! wait "$testbin_pid"; then
  cat "$testbin_log" >&2
  echo "building the test binaries failed" >&2
  exit 1
fi
echo "test binaries ready after $(elapsed)"

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
echo "all checks passed in $(elapsed)"
