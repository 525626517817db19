"""Helpers of the operator's e2e tests: create and patch resources, read them, play kubelet."""
from __future__ import annotations

import itertools
from typing import Any

import pytest

from minisgl_operator.kube import Kube, object_path
from tests.e2e.kube import Cluster

TIMEOUT = 60
GROUP_VERSION = "minisgl.io/v1alpha1"
_names = itertools.count()


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Kube:
    return Kube(cluster.api_client())


def make_namespace(kube: Kube, labels: dict | None = None) -> str:
    name = f"t{next(_names)}"
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name, "labels": labels or {}}})
    return name


@pytest.fixture
def ns(kube: Kube) -> str:
    return make_namespace(kube)


def create(kube: Kube, ns: str, name: str, **spec: Any) -> dict:
    body = {"apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment", "metadata": {"name": name},
            "spec": {"image": "ghcr.io/x/minisgl-worker:0.1.0", "model": {"path": "Qwen/Qwen3-8B"}, **spec}}
    return kube.request("POST", object_path(GROUP_VERSION, "MiniSGLDeployment", ns), body=body)


def patch_spec(kube: Kube, ns: str, name: str, spec: dict) -> None:
    kube.request("PATCH", object_path(GROUP_VERSION, "MiniSGLDeployment", ns, name), body={"spec": spec},
                 content_type="application/merge-patch+json")


def get(kube: Kube, api_version: str, kind: str, ns: str, name: str) -> dict | None:
    return kube.get(object_path(api_version, kind, ns, name))


def msgl(kube: Kube, ns: str, name: str) -> dict:
    return get(kube, GROUP_VERSION, "MiniSGLDeployment", ns, name) or {}


def condition(obj: dict, ctype: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def pods(kube: Kube, ns: str) -> list[dict]:
    return [p for p in kube.list(object_path("v1", "Pod", ns)) if not p["metadata"].get("deletionTimestamp")]


def write_pod_status(kube: Kube, pod: dict, status: dict) -> None:
    """What kubelet / kube-scheduler would write: there are none in this cluster."""
    path = object_path("v1", "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]) + "/status"
    kube.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")


def mark_ready(kube: Kube, pod: dict) -> None:
    now = "2026-01-01T00:00:00Z"
    conds = [{"type": t, "status": "True", "lastTransitionTime": now}
             for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    write_pod_status(kube, pod, {"phase": "Running", "conditions": conds, "containerStatuses": [{
        "name": "worker", "ready": True, "started": True, "restartCount": 0, "image": "img", "imageID": "",
        "state": {"running": {"startedAt": now}}}]})


def events(kube: Kube, ns: str, name: str) -> list[dict]:
    return [e for e in kube.list(object_path("v1", "Event", ns)) if e["involvedObject"]["name"] == name]


