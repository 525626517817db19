#!/usr/bin/env bash
# Build Helm from its Go module into a cache outside the repository and print the binary's path.
# Reuses an existing build; a cold build takes several minutes on 2 cores (see docs/kubernetes.md).
# Usage: bash .ci/build_helm.sh            -> prints /root/.cache/minisgl/helm/<version>/bin/helm
#        MINISGL_HELM_VERSION=v3.x.y bash .ci/build_helm.sh
set -euo pipefail

version="${MINISGL_HELM_VERSION:-v3.19.5}"
cache="${MINISGL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minisgl}"
bin_dir="$cache/helm/$version/bin"
helm="$bin_dir/helm"

if [[ -x "$helm" ]] && "$helm" version --short >/dev/null 2>&1; then
    echo "$helm"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build_helm.sh: 'go' not found on PATH; install Go >= 1.24 to build Helm" >&2
    exit 1
fi

mkdir -p "$bin_dir"
start=$(date +%s)
echo "build_helm.sh: building helm $version into $bin_dir (cold build: several minutes)" >&2
# CGO off: a static binary that needs nothing from the host at run time.
CGO_ENABLED=0 GOBIN="$bin_dir" GOFLAGS="-trimpath" \
    go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
    "helm.sh/helm/v3/cmd/helm@$version" >&2
echo "build_helm.sh: built in $(( $(date +%s) - start ))s" >&2
"$helm" version --short >&2
echo "$helm"
