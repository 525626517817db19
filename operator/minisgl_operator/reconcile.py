"""The reconcile loop body: apply the desired objects, prune stale ones, observe status.

Level-based and idempotent: it reads the cluster, never remembers anything between calls,
so create, update, resume (after an operator restart) and the resync timer all call it alike.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Mapping

from kubernetes.client.rest import ApiException

from minisgl_operator.builders import Owner, desired_objects, endpoint_url, stale_kinds
from minisgl_operator.kube import Kube, object_path
from minisgl_operator.pod import selector_labels
from minisgl_operator.rollout import IN_PLACE, RolloutPlan, free_gpus_per_node, plan_rollout
from minisgl_operator.spec import WorkerSpec
from minisgl_operator.status import StatusUpdate, compute_status

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def _owned_by(obj: Mapping, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


class Reconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def rollout_plan(self, spec: WorkerSpec, owner: Owner | None = None) -> RolloutPlan:
        if spec.rollout_strategy != "Auto" or spec.gpus_per_pod == 0:
            return plan_rollout(spec, {})
        if owner is not None and self._has_unschedulable_pod(owner):
            # The capacity count missed something (taints, affinity, CPU/memory): a surge pod
            # that cannot schedule would block the rollout until its deadline. Replace in place.
            return RolloutPlan(IN_PLACE, "Auto: in place (a pod of this deployment is unschedulable)")
        try:
            nodes = self.kube.list(object_path("v1", "Node", None))
            pods = self.kube.list(
                object_path("v1", "Pod", None),
                field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed",
            )
        except ApiException as e:
            if e.status != 403:
                raise
            # Without permission to read nodes, in place is the choice that cannot deadlock.
            logger.warning("cannot list nodes/pods (%s); rolling out in place", e.reason)
            return RolloutPlan(IN_PLACE, "Auto: in place (no permission to read node capacity)")
        return plan_rollout(spec, free_gpus_per_node(nodes, pods, spec.node_selector))

    def _has_unschedulable_pod(self, owner: Owner) -> bool:
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(owner.name).items())
        pods = self.kube.list(object_path("v1", "Pod", owner.namespace), label_selector=selector)
        return any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
            for p in pods for c in (p.get("status") or {}).get("conditions") or ())

    def apply(self, owner: Owner, spec: WorkerSpec) -> RolloutPlan:
        """Apply every desired object (server-side) and delete owned ones no longer wanted."""
        plan = self.rollout_plan(spec, owner)
        monitor_api = self.kube.serves("monitoring.coreos.com/v1", "servicemonitors")
        objects = desired_objects(owner, spec, plan, monitor_api)
        for obj in objects:
            self.kube.apply(obj)
        for api_version, kind in stale_kinds(objects):
            if kind == "ServiceMonitor" and not monitor_api:
                continue
            path = object_path(api_version, kind, owner.namespace, owner.name)
            existing = self.kube.get(path)
            if existing is not None and _owned_by(existing, owner.uid):
                logger.info("deleting %s %s/%s: no longer in the spec", kind, owner.namespace, owner.name)
                self.kube.delete(path)
        return plan

    def observe(
        self, owner: Owner, spec: WorkerSpec, generation: int, plan: RolloutPlan, previous: Mapping | None
    ) -> StatusUpdate:
        deployment = self.kube.get(object_path("apps/v1", "Deployment", owner.namespace, owner.name))
        if deployment is not None and not _owned_by(deployment, owner.uid):
            deployment = None
        pods = self.kube.list(object_path("v1", "Pod", owner.namespace), label_selector=selector_string(owner.name))
        return compute_status(
            generation=generation,
            desired_replicas=spec.replicas,
            deployment=deployment,
            pods=pods,
            endpoint=endpoint_url(owner, spec),
            selector=selector_string(owner.name),
            rollout=plan.description,
            previous=previous,
            now=utc_now(),
        )
