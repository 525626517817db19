#!/usr/bin/env bash
# Build (or reuse) the Kubernetes control-plane binaries the operator's e2e tests run:
# etcd, kube-apiserver, kube-controller-manager and kubectl, from Go modules through the
# Go module proxy. Binaries are cached outside the repository, keyed by version:
#   ${MINISGL_KUBE_CACHE:-~/.cache/minisgl/kube}/<version>/bin/
# Prints that bin directory on its last line of stdout. Reuses binaries that are present.
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod pins every staging
# module (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and replaces it with ./staging/...,
# which only works inside the kubernetes repository. A scratch module that requires
# k8s.io/kubernetes and replaces each staging module with its matching v0.X.Y release
# (X.Y = the kubernetes minor/patch) builds the same commands.
set -euo pipefail

KUBE_VERSION="${MINISGL_KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${MINISGL_KUBE_CACHE:-$HOME/.cache/minisgl/kube}"
BIN_DIR="$CACHE_ROOT/$KUBE_VERSION/bin"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)

log() { echo "[build_kube] $*" >&2; }

missing=()
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  log "reusing $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
start=$(date +%s)
work="$CACHE_ROOT/$KUBE_VERSION/src"
mkdir -p "$work/cmd/etcd" "$BIN_DIR"
cd "$work"
log "building ${missing[*]} for kubernetes $KUBE_VERSION (staging $STAGING_VERSION) in $work"

if [[ ! -f go.sum ]]; then
  rm -f go.mod
  cat > go.mod <<GOMOD
module minisgl.local/kubebuild

go 1.26
GOMOD
  # The etcd main package: the server module's etcdmain entry point, pinned by kubernetes' graph.
  cat > cmd/etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  kube_mod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # Every staging module is required at v0.0.0 in kubernetes' go.mod.
  staging=$(grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$kube_mod" | awk '{print $1}')
  args=("-require=k8s.io/kubernetes@$KUBE_VERSION")
  for m in $staging; do
    args+=("-replace=$m=$m@$STAGING_VERSION")
  done
  go mod edit "${args[@]}"
  trap 'rm -f go.sum' ERR  # a failed resolution must not look complete to the next run
  # `go get -tool` records the commands as tools, so their requirements and go.sum entries
  # stay; etcd comes in at the version kubernetes' own graph selects.
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
         "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
         "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION" >&2
  etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$kube_mod")
  go get "go.etcd.io/etcd/server/v3/etcdmain@$etcd_version" >&2
fi

export CGO_ENABLED=0
flags=(-trimpath "-ldflags=-s -w")
for b in "${missing[@]}"; do
  t0=$(date +%s)
  case "$b" in
    etcd) pkg=./cmd/etcd ;;
    *) pkg="k8s.io/kubernetes/cmd/$b" ;;
  esac
  go build "${flags[@]}" -o "$BIN_DIR/$b.tmp" "$pkg" >&2
  mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
  log "built $b in $(( $(date +%s) - t0 ))s"
done
log "done in $(( $(date +%s) - start ))s"
echo "$BIN_DIR"
