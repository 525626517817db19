#!/usr/bin/env bash
# Build (or reuse) the Gateway API Inference Extension endpoint picker (EPP) from its Go module
# through the Go module proxy, into a cache outside the repository, and print the binary's path
# on the last line of stdout. The InferencePool CRD of the same release is copied next to it:
#   ${MINISGL_EPP_CACHE:-~/.cache/minisgl/epp}/<version>/bin/epp
#   ${MINISGL_EPP_CACHE:-~/.cache/minisgl/epp}/<version>/crd/inference.networking.k8s.io_inferencepools.yaml
# The exact version is asked for (`go mod download module@version`); the module is built with its
# own go.mod/go.sum, so every dependency is pinned. Cold build: several minutes on 2 cores.
set -euo pipefail

version="${MINISGL_EPP_VERSION:-v1.2.0}"
module="sigs.k8s.io/gateway-api-inference-extension"
root="${MINISGL_EPP_CACHE:-${MINISGL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minisgl}/epp}/$version"
epp="$root/bin/epp"
crd_dir="$root/crd"
crd="$crd_dir/inference.networking.k8s.io_inferencepools.yaml"

log() { echo "[build_epp] $*" >&2; }

if [[ -x "$epp" && -f "$crd" ]] && "$epp" --help 2>&1 | grep -q -- -pool-name; then
  log "reusing $epp"
  echo "$epp"
  exit 0
fi
command -v go >/dev/null 2>&1 || { log "'go' not found on PATH"; exit 1; }

start=$(date +%s)
src_dir="$(go mod download -json "$module@$version" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$root/bin" "$crd_dir"
cp "$src_dir/config/crd/bases/"*.yaml "$crd_dir/"
chmod u+w "$crd_dir/"*.yaml
log "building $module@$version into $root/bin"
# The module cache is read-only; go build works there (it writes only to the build cache).
(cd "$src_dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$epp.tmp" ./cmd/epp) >&2
mv "$epp.tmp" "$epp"
log "built in $(( $(date +%s) - start ))s"
echo "$epp"
