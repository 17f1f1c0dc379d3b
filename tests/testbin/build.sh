#!/usr/bin/env bash
# Builds the real components the integration tests run against, once per machine:
#   kube-apiserver + etcd  (k8s.io/kubernetes through a wrapper module, see README "Test stack")
#   spire-server, spire-agent (github.com/spiffe/spire via `go get -tool`)
#   helm                      (helm.sh/helm/v3, for the chart tests)
#   prometheus, promtool      (github.com/prometheus/prometheus, for the metrics and rules tests)
# from the Go module proxy, with the `go` client, at pinned versions, into a cache outside the
# repository. Nothing built here is ever committed. Re-running is cheap: cached binaries are
# reused. A lock keeps two parallel callers (test processes, CI steps) from building at once.
#
# Prints one `name=path` line per binary on stdout; progress goes to stderr.
set -euo pipefail

K8S_VERSION="${KWR_K8S_VERSION:-1.36.3}"
SPIRE_VERSION="${KWR_SPIRE_VERSION:-1.13.3}"
HELM_VERSION="${KWR_HELM_VERSION:-3.22.0}"
PROMETHEUS_VERSION="${KWR_PROMETHEUS_VERSION:-0.316.0}"
CACHE="${KWR_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-workload-registrar/testbin}"

log() { echo "testbin: $*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "testbin: '$1' is required to build the test stack ($2) but was not found on PATH" >&2
    exit 2
  }
}
need go "install Go >= 1.26 from https://go.dev/dl"
need gcc "spire-server's SQLite datastore needs cgo; install gcc (apt-get install gcc)"
need flock "part of util-linux"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

KUBE_DIR="$CACHE/kube-v$K8S_VERSION"
SPIRE_DIR="$CACHE/spire-v$SPIRE_VERSION"
HELM_DIR="$CACHE/helm-v$HELM_VERSION"
PROMETHEUS_DIR="$CACHE/prometheus-v$PROMETHEUS_VERSION"
export GOFLAGS="-mod=mod -buildvcs=false"

build_kube() {
  [[ -x "$KUBE_DIR/kube-apiserver" && -x "$KUBE_DIR/etcd" ]] && return 0
  log "building kube-apiserver v$K8S_VERSION and a matching etcd (first run only; ~10-20 min)"
  local work staging minor
  work="$(mktemp -d)"
  minor="0.${K8S_VERSION#1.}"
  (
    cd "$work"
    go mod init example.local/kube-bin >/dev/null 2>&1
    go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
    # directories; replaces of a dependency are ignored, so this module must supply them.
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
    staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" | sort -u)"
    for m in $staging; do
      if go mod download "$m@v$minor" >/dev/null 2>&1; then
        go mod edit -replace "$m=$m@v$minor"
      else
        # Not served by this proxy: kube-apiserver does not import it, a go.mod stub suffices.
        log "  $m@v$minor not served; using a stub module"
        mkdir -p "stubs/$m" && echo "module $m" >"stubs/$m/go.mod"
        go mod edit -replace "$m=./stubs/$m"
      fi
    done
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" >&2
    # etcd is already in this module graph (k8s.io/apiserver requires go.etcd.io/etcd/server/v3),
    # so building it here gives the etcd release this Kubernetes was tested with.
    go mod edit -tool go.etcd.io/etcd/server/v3
    go mod tidy >&2
    mkdir -p "$KUBE_DIR.tmp"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor#0.}" \
      -o "$KUBE_DIR.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$KUBE_DIR.tmp/etcd" go.etcd.io/etcd/server/v3
    go list -m go.etcd.io/etcd/server/v3 >"$KUBE_DIR.tmp/etcd.version"
  )
  rm -rf "$work" "$KUBE_DIR"
  mv "$KUBE_DIR.tmp" "$KUBE_DIR"
}

build_spire() {
  # Builds only the binaries that are missing, so adding a new one never rebuilds the others.
  local missing=() bin
  for bin in spire-server spire-agent; do
    [[ -x "$SPIRE_DIR/$bin" ]] || missing+=("$bin")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "building ${missing[*]} v$SPIRE_VERSION (first run only; ~10-15 min)"
  local work
  work="$(mktemp -d)"
  rm -rf "$SPIRE_DIR.tmp"
  mkdir -p "$SPIRE_DIR" "$SPIRE_DIR.tmp"
  (
    cd "$work"
    go mod init example.local/spire-bin >/dev/null 2>&1
    for bin in "${missing[@]}"; do
      go get -tool "github.com/spiffe/spire/cmd/$bin@v$SPIRE_VERSION" >&2
    done
    for bin in "${missing[@]}"; do
      # cgo is mandatory for spire-server: the sqlite3 datastore is behind `//go:build cgo`
      # (spire-agent is built the same way for symmetry).
      CGO_ENABLED=1 go build -trimpath -ldflags "-s -w" -o "$SPIRE_DIR.tmp/$bin" \
        "github.com/spiffe/spire/cmd/$bin"
    done
  )
  # Binaries already in $SPIRE_DIR (possibly running) stay untouched; new ones move in whole.
  for bin in "${missing[@]}"; do
    mv "$SPIRE_DIR.tmp/$bin" "$SPIRE_DIR/$bin"
  done
  rm -rf "$work" "$SPIRE_DIR.tmp"
}

build_helm() {
  [[ -x "$HELM_DIR/helm" ]] && return 0
  log "building helm v$HELM_VERSION (first run only; ~3-5 min)"
  local work
  work="$(mktemp -d)"
  (
    cd "$work"
    go mod init example.local/helm-bin >/dev/null 2>&1
    go get -tool "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
    # As helm's Makefile: the Kubernetes version `helm template` and `helm lint` assume is the
    # one of the client-go it was built with (v0.35.x -> 1.35), not the compiled-in 1.20.
    local minor pkg=helm.sh/helm/v3/pkg
    minor="$(go list -f '{{.Version}}' -m k8s.io/client-go | cut -d. -f2)"
    mkdir -p "$HELM_DIR.tmp"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION \
      -X $pkg/lint/rules.k8sVersionMajor=1 -X $pkg/lint/rules.k8sVersionMinor=$minor \
      -X $pkg/chartutil.k8sVersionMajor=1 -X $pkg/chartutil.k8sVersionMinor=$minor" \
      -o "$HELM_DIR.tmp/helm" helm.sh/helm/v3/cmd/helm
  )
  rm -rf "$work" "$HELM_DIR"
  mv "$HELM_DIR.tmp" "$HELM_DIR"
}

build_prometheus() {
  [[ -x "$PROMETHEUS_DIR/prometheus" && -x "$PROMETHEUS_DIR/promtool" ]] && return 0
  log "building prometheus and promtool v$PROMETHEUS_VERSION (first run only; ~5-10 min)"
  local work bin
  work="$(mktemp -d)"
  (
    cd "$work"
    go mod init example.local/prometheus-bin >/dev/null 2>&1
    for bin in prometheus promtool; do
      go get -tool "github.com/prometheus/prometheus/cmd/$bin@v$PROMETHEUS_VERSION" >&2
    done
    mkdir -p "$PROMETHEUS_DIR.tmp"
    # Without the `builtinassets` tag the web UI is not embedded; the HTTP API the tests query
    # is all there.
    for bin in prometheus promtool; do
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$PROMETHEUS_DIR.tmp/$bin" \
        "github.com/prometheus/prometheus/cmd/$bin"
    done
  )
  rm -rf "$work" "$PROMETHEUS_DIR"
  mv "$PROMETHEUS_DIR.tmp" "$PROMETHEUS_DIR"
}

build_kube
build_spire
build_helm
build_prometheus

echo "kube-apiserver=$KUBE_DIR/kube-apiserver"
echo "etcd=$KUBE_DIR/etcd"
echo "spire-server=$SPIRE_DIR/spire-server"
echo "spire-agent=$SPIRE_DIR/spire-agent"
echo "helm=$HELM_DIR/helm"
echo "prometheus=$PROMETHEUS_DIR/prometheus"
echo "promtool=$PROMETHEUS_DIR/promtool"
