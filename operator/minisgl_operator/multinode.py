"""Models over several nodes: a LeaderWorkerSet (sigs.k8s.io/lws) instead of a Deployment when
spec.engine.nodes > 1 (or tensorParallelSize is larger than one pod's GPUs). Pure builders.

Each replica is a group of `nodes` pods: the leader (LWS worker index 0) runs the API server and
its local ranks, the others only their scheduler ranks; all join node 0's torch.distributed
rendezvous at $(LWS_LEADER_ADDRESS):DIST_PORT, the address LWS injects. Leader and workers come
from one pod template (build_pod_template), probes on the leader only; any pod's restart recreates
the whole group (restartPolicy RecreateGroupOnPodRestart), as a torch.distributed group cannot
take a node back. The client Service selects leaders only.
"""
from __future__ import annotations

from typing import Mapping

from minisgl_operator.pod import build_pod_template
from minisgl_operator.spec import WorkerSpec

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
NAME_SUFFIX = "-lws"  # the LWS's headless Service takes its name: not the client Service's
MAX_NAME = 63 - len(NAME_SUFFIX) - 11  # pods are <lws>-<group>-<index>, a DNS label
ROLLOUT_DESCRIPTION = "LeaderWorkerSet: one group at a time, in place (a surge group needs a whole group's GPUs)"


def validate_name(name: str, spec: WorkerSpec) -> None:
    """ValueError when a multi-node resource's name leaves no room for its pods' names."""
    if spec.multi_node and len(name) > MAX_NAME:
        raise ValueError(f"metadata.name must be at most {MAX_NAME} characters with engine.nodes > 1 "
                         f"(its pods are named {name}{NAME_SUFFIX}-<group>-<node>), got {len(name)}")


def lws_name(name: str) -> str:
    return name + NAME_SUFFIX


def leader_selector() -> dict[str, str]:
    """Added to the client Service's selector: requests go to leaders (they serve HTTP)."""
    return {WORKER_INDEX_LABEL: "0"}


def build_leader_worker_set(name: str, spec: WorkerSpec, metadata: dict, offline: bool = False,
                            model_bytes: int | None = None) -> dict:
    """`metadata`: the builders' (owner reference, labels); the name is set here."""
    if not spec.multi_node:
        raise ValueError("build_leader_worker_set needs spec.nodes > 1")
    validate_name(name, spec)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {**metadata, "name": lws_name(name)},
        "spec": {
            "replicas": spec.replicas,
            "startupPolicy": "LeaderCreated",  # the leader cannot be ready before its workers join
            "rolloutStrategy": {"type": "RollingUpdate",
                                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0}},
            "leaderWorkerTemplate": {
                "size": spec.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": build_pod_template(name, spec, offline, model_bytes, role="server"),
                "workerTemplate": build_pod_template(name, spec, offline, model_bytes, role="node"),
            },
        },
    }


def lws_as_deployment(lws: Mapping | None) -> dict | None:
    """The LWS's status in a Deployment's shape (groups as replicas), for compute_status. LWS
    has no status.observedGeneration: its conditions' observedGeneration, when set, stands in."""
    if lws is None:
        return None
    status = lws.get("status") or {}
    generation = (lws.get("metadata") or {}).get("generation") or 0
    seen = [c.get("observedGeneration") for c in status.get("conditions") or () if c.get("observedGeneration")]
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": max(seen) if seen else generation,
            "replicas": status.get("replicas") or 0,
            "readyReplicas": status.get("readyReplicas") or 0,
            "updatedReplicas": status.get("updatedReplicas") or 0,
            "conditions": [],  # LWS has no progress deadline nor ReplicaFailure
        },
    }
