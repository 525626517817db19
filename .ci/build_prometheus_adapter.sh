#!/usr/bin/env bash
# Build prometheus-adapter (the custom.metrics.k8s.io server the HPAs read) from its Go module into
# a cache outside the repository and print the binary's path. Reuses an existing build.
# `go install module@version` would ask the module proxy for the module's version list, which it
# does not serve for this module; the exact version is served, so build from its downloaded source
# with its own go.mod/go.sum (every dependency pinned). Cold build: several minutes on 2 cores.
# Usage: bash .ci/build_prometheus_adapter.sh   -> prints .../prometheus-adapter/<version>/bin/adapter
set -euo pipefail

version="${MINISGL_PROMETHEUS_ADAPTER_VERSION:-v0.12.0}"
cache="${MINISGL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minisgl}"
bin_dir="$cache/prometheus-adapter/$version/bin"
adapter="$bin_dir/adapter"

# Its --help exits 2 (pflag's ErrHelp): check that it runs and knows its flags instead.
if [[ -x "$adapter" ]] && { "$adapter" --help 2>&1 || true; } | grep -q -- --prometheus-url; then
    echo "$adapter"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build_prometheus_adapter.sh: 'go' not found on PATH" >&2
    exit 1
fi

mkdir -p "$bin_dir"
start=$(date +%s)
src_dir="$(go mod download -json "sigs.k8s.io/prometheus-adapter@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work" && chmod -R u+w "$work"
echo "build_prometheus_adapter.sh: building $version into $bin_dir" >&2
(cd "$work" && CGO_ENABLED=0 GOFLAGS="-trimpath" go build -ldflags "-s -w" -o "$adapter" ./cmd/adapter) >&2
echo "build_prometheus_adapter.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$adapter"
