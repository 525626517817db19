#!/usr/bin/env bash
# Build the LeaderWorkerSet controller (sigs.k8s.io/lws, the multi-node group controller the operator
# targets for spec.engine.nodes > 1) from its Go module into a cache outside the repository and
# print the binary's path. Its CRD is read from the same module (config/crd/bases). Reuses a build.
# Built from the downloaded module with its own go.mod/go.sum (every dependency pinned).
# Cold build: several minutes on 2 cores.
# Usage: bash .ci/build_lws.sh   -> prints .../lws/<version>/bin/lws-manager
set -euo pipefail

version="${MINISGL_LWS_VERSION:-v0.7.0}"
cache="${MINISGL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minisgl}"
bin_dir="$cache/lws/$version/bin"
manager="$bin_dir/lws-manager"

if [[ -x "$manager" ]] && { "$manager" --help 2>&1 || true; } | grep -q -- --health-probe-bind-address; then
    echo "$manager"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build_lws.sh: 'go' not found on PATH" >&2
    exit 1
fi

mkdir -p "$bin_dir"
start=$(date +%s)
src_dir="$(go mod download -json "sigs.k8s.io/lws@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work" && chmod -R u+w "$work"
echo "build_lws.sh: building $version into $bin_dir" >&2
(cd "$work" && CGO_ENABLED=0 GOFLAGS="-trimpath" go build -ldflags "-s -w" -o "$manager" ./cmd) >&2
echo "build_lws.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$manager"
