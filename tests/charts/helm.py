"""Shared helpers for the chart tests: find the Helm binary, render the chart, split documents."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "minisgl-operator"
# Kubernetes versions rendered objects are validated against (oldest supported, newest shipped).
KUBE_VERSIONS = ("1.30.0", "1.35.0")


def require_binary(found: str | None, what: str, how: str) -> str:
    """Return `found`, or skip (fail under MINISGL_REQUIRE_E2E=1) when it is missing."""
    if found:
        return found
    reason = f"{what} not found; install it with {how}"
    if os.environ.get("MINISGL_REQUIRE_E2E") == "1":
        pytest.fail(reason + " (MINISGL_REQUIRE_E2E=1)")
    pytest.skip(reason)


def find_helm() -> str | None:
    """$MINISGL_HELM, else the newest build of .ci/build_helm.sh, else helm on PATH."""
    if os.environ.get("MINISGL_HELM"):
        return os.environ["MINISGL_HELM"]
    cache = Path(os.environ.get("MINISGL_CACHE_DIR", Path.home() / ".cache" / "minisgl"))
    builds = sorted(glob.glob(str(cache / "helm" / "*" / "bin" / "helm")))
    if builds:
        return builds[-1]
    return shutil.which("helm")


def helm_binary() -> str:
    return require_binary(find_helm(), "helm", "bash .ci/build_helm.sh")


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HELM_CACHE_HOME": os.environ.get("HELM_CACHE_HOME", "/tmp/helm-cache")})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def set_args(values: dict[str, Any]) -> list[str]:
    """Turn {"a.b": value} into --set-json flags (exact types, lists and maps included)."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(helm: str, values: dict[str, Any] | None = None, namespace: str = "minisgl-system",
           release: str = "minisgl") -> list[dict]:
    """`helm template` the chart (CRDs included) and return the non-empty objects."""
    proc = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, "--include-crds",
                    *set_args(values or {}))
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]
