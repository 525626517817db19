"""GPU-aware rollout: surge one pod only when a node has a whole pod's GPUs free.

A RollingUpdate with maxSurge on a full GPU cluster deadlocks: the surge pod never schedules
and no old pod is removed. `Auto` reads nodes' allocatable GPUs minus what scheduled pods
request and replaces pods in place (maxSurge 0, maxUnavailable 1) when no node can take one more.
"""
from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

from minisgl_operator import GPU_RESOURCE
from minisgl_operator.spec import WorkerSpec

SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
IN_PLACE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
RECREATE = {"type": "Recreate"}


class RolloutPlan(NamedTuple):
    strategy: dict  # the Deployment's .spec.strategy
    description: str  # shown in status.rolloutStrategy


def _count(quantity: object) -> int:
    """GPU quantities are whole numbers ("8", 8); anything else counts as none."""
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def pod_gpu_request(pod: Mapping) -> int:
    containers = pod.get("spec", {}).get("containers") or []
    total = 0
    for c in containers:
        res = c.get("resources") or {}
        total += _count((res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE) or 0)
    return total


def _matches(node: Mapping, node_selector: Mapping[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in node_selector.items())


def free_gpus_per_node(
    nodes: Iterable[Mapping], pods: Iterable[Mapping], node_selector: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Node name -> allocatable GPUs minus GPUs requested by pods bound to it and still running."""
    free: dict[str, int] = {}
    for node in nodes:
        if node.get("spec", {}).get("unschedulable") or not _matches(node, node_selector or {}):
            continue
        free[node["metadata"]["name"]] = _count((node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        if node_name in free and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            free[node_name] -= pod_gpu_request(pod)
    return free


def plan_rollout(spec: WorkerSpec, free_gpus: Mapping[str, int]) -> RolloutPlan:
    if spec.rollout_strategy == "Recreate":
        return RolloutPlan(RECREATE, "Recreate")
    if spec.rollout_strategy == "RollingUpdate":
        return RolloutPlan(SURGE, "RollingUpdate (surge 1)")
    need = spec.gpus_per_pod
    if need == 0 or any(n >= need for n in free_gpus.values()):
        return RolloutPlan(SURGE, "Auto: surge 1 (a node has free GPUs for one more pod)")
    return RolloutPlan(IN_PLACE, f"Auto: in place (no node has {need} free GPUs for a surge pod)")
