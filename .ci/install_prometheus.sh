#!/usr/bin/env bash
# Install Debian's Prometheus (prometheus + promtool) for the dashboard/alert e2e tests.
# Idempotent: returns at once when both binaries are already present.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

sudo=""
if [[ "$(id -u)" != "0" ]]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: we need the binaries, not the node exporter or web assets' extras.
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service where an init system runs; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl stop prometheus || true
fi
prometheus --version 2>&1 | head -1
