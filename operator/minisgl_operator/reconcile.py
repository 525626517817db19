"""The reconcile body: desired objects from the spec, applied only where the cache says they
differ, never over an object we do not own; status from the cache.

Level-based and idempotent: everything it needs is read from the watch-fed Store, so a
reconcile with nothing changed makes no API call at all. The only reads that go to the API
server are: one GET before creating an object (is a stranger's object in the way?) and the
node/pod listing of the GPU capacity planner, only while a rollout is pending.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, NamedTuple

import kopf
from kubernetes.client.rest import ApiException

from minisgl_operator.autoscaling import measured_time_to_ready
from minisgl_operator.builders import (PICKER_KINDS, Owner, build_job, desired_objects, endpoint_url,
                                       other_workload_ref, stale_kinds, workload_ref)
from minisgl_operator.routing import epp_name
from minisgl_operator.multinode import ROLLOUT_DESCRIPTION, WORKER_INDEX_LABEL, lws_as_deployment
from minisgl_operator.download import DownloadState, download_state, has_finished_pod, reported_model_bytes
from minisgl_operator.kube import Kube, object_path
from minisgl_operator.ownership import (TEMPLATE_HASH_ANNOTATION, ObjectInTheWay, applied_hash, describe_owner,
                                        digest, owned_by, stamp)
from minisgl_operator.pod import selector_labels
from minisgl_operator.probe import RECHECK_SECONDS, PhaseProber, starting
from minisgl_operator.rollout import IN_PLACE, RolloutPlan, SURGE, free_gpus_per_node, plan_rollout
from minisgl_operator.spec import WorkerSpec
from minisgl_operator.status import StatusUpdate, compute_status
from minisgl_operator.store import Store

logger = logging.getLogger(__name__)

# A Job's Complete and its pod's Succeeded arrive on two watches: wait this long for the pod (and
# its size report) before starting workers with the default budget, or they roll out twice.
REPORT_WAIT_SECONDS = 30
REPORT_RETRY_SECONDS = 2


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


class Applied(NamedTuple):
    plan: RolloutPlan
    download: DownloadState | None  # None: no download Job, or it finished
    model_bytes: int | None  # the snapshot size the finished download Job reported
    download_job: str | None  # the Job that reported it


def _completed_within(job: Mapping | None, seconds: float) -> bool:
    stamp_ = ((job or {}).get("status") or {}).get("completionTime")
    if not stamp_:
        return True  # Complete without a time: as fresh as it gets
    try:
        done = datetime.strptime(stamp_, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return (datetime.now(timezone.utc) - done).total_seconds() < seconds


@dataclass
class Options:
    monitor_labels: dict = field(default_factory=dict)  # put on every ServiceMonitor
    service_monitor_api: bool = False  # monitoring.coreos.com/v1 servicemonitors is served
    keda_api: bool = False  # keda.sh/v1alpha1 scaledobjects is served (its CRD is Established)


class Reconciler:
    def __init__(self, kube: Kube, store: Store, options: Options | None = None,
                 prober: PhaseProber | None = None) -> None:
        self.kube = kube
        self.store = store
        self.options = options or Options()
        self.prober = prober or PhaseProber()

    # -- the GPU-aware rollout: only consulted while a rollout is pending ------------------------
    def rollout_plan(self, owner: Owner, spec: WorkerSpec, current: Mapping | None, template_hash: str) -> RolloutPlan:
        if spec.rollout_strategy != "Auto" or spec.gpus_per_pod == 0:
            return plan_rollout(spec, {})
        unschedulable = any(
            c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
            for p in self.store.belonging_to("Pod", owner.namespace, owner.name)
            for c in (p.get("status") or {}).get("conditions") or ())
        if unschedulable:
            # The capacity count missed something (taints, affinity, CPU/memory): a surge pod
            # that cannot schedule would block the rollout until its deadline. Replace in place.
            return RolloutPlan(IN_PLACE, "Auto: in place (a pod of this deployment is unschedulable)")
        if current is not None and (current["metadata"].get("annotations") or {}).get(
                TEMPLATE_HASH_ANNOTATION) == template_hash:
            # The template is rolled out already: keep its strategy, read no cluster capacity.
            strategy = (current.get("spec") or {}).get("strategy") or IN_PLACE
            surge = (strategy.get("rollingUpdate") or {}).get("maxSurge") == SURGE["rollingUpdate"]["maxSurge"]
            return RolloutPlan(strategy, "Auto: surge 1 (a node has free GPUs for one more pod)" if surge
                               else f"Auto: in place (no node has {spec.gpus_per_pod} free GPUs for a surge pod)")
        try:
            nodes = self.kube.list(object_path("v1", "Node", None))
            pods = self.kube.list(object_path("v1", "Pod", None),
                                  field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed")
        except ApiException as e:
            if e.status != 403:
                raise
            logger.warning("cannot list nodes/pods (%s); rolling out in place", e.reason)
            return RolloutPlan(IN_PLACE, "Auto: in place (no permission to read node capacity)")
        return plan_rollout(spec, free_gpus_per_node(nodes, pods, spec.node_selector))

    # -- apply --------------------------------------------------------------------------------------
    def ensure(self, owner: Owner, obj: dict) -> None:
        """Apply `obj` unless the cached copy already carries its hash; refuse a stranger's object."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        obj = stamp(obj)
        current = self.store.get(kind, owner.namespace, name)
        if current is None:
            # Not in the cache: absent, or someone else's (the watches see only labelled objects).
            current = self.kube.get(object_path(obj["apiVersion"], kind, owner.namespace, name))
        if current is not None and not owned_by(current, owner.uid):
            raise ObjectInTheWay(kind, owner.namespace, name, describe_owner(current))
        if current is not None and (kind == "Job" or applied_hash(current) == applied_hash(obj)):
            # A Job's pod template is immutable, and its name already says what it fetches
            # (model@revision): an image or env change must not be rejected, nor re-download.
            return
        logger.info("applying %s %s/%s", kind, owner.namespace, name)
        self.kube.apply(obj)

    def worker_pods(self, owner: Owner) -> list[dict]:
        return [p for p in self.store.belonging_to("Pod", owner.namespace, owner.name)
                if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "worker"]

    def apply(self, owner: Owner, spec: WorkerSpec, status: Mapping | None = None) -> Applied:
        """`status`: the resource's current status (its last measured time to ready, model size)."""
        status = status or {}
        time_to_ready = measured_time_to_ready(self.worker_pods(owner)) or status.get("timeToReadySeconds")
        download, model_bytes, job_name = None, None, None
        if spec.download_job:
            job_body = build_job(owner, spec)
            self.ensure(owner, job_body)
            job_name = job_body["metadata"]["name"]
            job = self.store.get("Job", owner.namespace, job_name)
            download = download_state(job)
            if download.done:
                model_bytes = self._model_bytes(owner, job_name, job, status)
            else:  # what the running Deployment was built with, until the new Job finishes
                model_bytes, job_name = status.get("modelBytes"), status.get("downloadJob")
        downloaded = download is None or download.done
        _, workload_kind, workload_name = workload_ref(owner, spec)
        current = self.store.get(workload_kind, owner.namespace, workload_name)
        probe = desired_objects(owner, spec, RolloutPlan(SURGE, ""), False, downloaded=True, model_bytes=model_bytes)
        workload = next(o for o in probe if o["kind"] == workload_kind)["spec"]
        template_hash = digest(workload.get("template") or workload.get("leaderWorkerTemplate"))
        if not downloaded:
            plan = RolloutPlan(SURGE, "waiting for the model download")
        elif spec.multi_node:
            plan = RolloutPlan(SURGE, ROLLOUT_DESCRIPTION)  # the LWS's own rolloutStrategy
        else:
            plan = self.rollout_plan(owner, spec, current, template_hash)
        monitor_api = self.options.service_monitor_api
        objects = desired_objects(owner, spec, plan, monitor_api, self.options.monitor_labels, downloaded,
                                  time_to_ready, model_bytes, self.options.keda_api)
        for obj in objects:
            if obj["kind"] == workload_kind:
                obj["metadata"]["annotations"] = {TEMPLATE_HASH_ANNOTATION: template_hash}
            if obj["kind"] != "Job":
                self.ensure(owner, obj)
        for api_version, kind in stale_kinds(objects):
            if kind == "ServiceMonitor" and not monitor_api:
                continue
            existing = self.store.get(kind, owner.namespace, owner.name)
            if existing is None and kind == "ServiceMonitor":
                # Its watch starts only once the CRD appears, so the cache may not have seen
                # the one we applied just before: ask (one GET, only while monitoring is off).
                existing = self.kube.get(object_path(api_version, kind, owner.namespace, owner.name))
            if existing is not None and owned_by(existing, owner.uid):
                logger.info("deleting %s %s/%s: no longer in the spec", kind, owner.namespace, owner.name)
                self.kube.delete(object_path(api_version, kind, owner.namespace, owner.name))
        if spec.routing is None or not spec.routing.creates_picker:
            self._prune_picker(owner)
        if downloaded:  # one node <-> several: the new workload is applied, the old one goes
            api_version, kind, name = other_workload_ref(owner, spec)
            existing = self.store.get(kind, owner.namespace, name)
            if existing is not None and owned_by(existing, owner.uid):
                logger.info("deleting %s %s/%s: replaced by a %s", kind, owner.namespace, name, workload_kind)
                self.kube.delete(object_path(api_version, kind, owner.namespace, name))
        if download is not None and download.done:
            self._prune_old_jobs(owner, spec)
        return Applied(plan, None if downloaded else download, model_bytes, job_name if model_bytes else None)

    def _model_bytes(self, owner: Owner, job_name: str, job: Mapping | None, status: Mapping) -> int | None:
        """The size the finished Job's pod reported; else the one recorded for this Job in the
        status (the pod may be garbage-collected since); else None (the spec's budget)."""
        pods = self.store.belonging_to("Pod", owner.namespace, owner.name)
        size = reported_model_bytes(job_name, pods)
        if size is not None:
            return size
        if status.get("downloadJob") == job_name and status.get("modelBytes"):
            return int(status["modelBytes"])
        if not has_finished_pod(job_name, pods) and _completed_within(job, REPORT_WAIT_SECONDS):
            raise kopf.TemporaryError(f"Job {job_name} completed; waiting for its pod's report of the model size",
                                      delay=REPORT_RETRY_SECONDS)
        return None

    def _prune_picker(self, owner: Owner) -> None:
        """Delete the endpoint picker this resource created, if the cache has any of it."""
        for api_version, kind in PICKER_KINDS:
            existing = self.store.get(kind, owner.namespace, epp_name(owner.name))
            if existing is not None and owned_by(existing, owner.uid):
                logger.info("deleting %s %s/%s: no endpoint picker in the spec", kind, owner.namespace,
                            epp_name(owner.name))
                self.kube.delete(object_path(api_version, kind, owner.namespace, epp_name(owner.name)))

    def _prune_old_jobs(self, owner: Owner, spec: WorkerSpec) -> None:
        keep = build_job(owner, spec)["metadata"]["name"]
        for job in self.store.belonging_to("Job", owner.namespace, owner.name):
            if job["metadata"]["name"] != keep and owned_by(job, owner.uid):
                self.kube.delete(object_path("batch/v1", "Job", owner.namespace, job["metadata"]["name"]))

    # -- observe ------------------------------------------------------------------------------------
    def observe(self, owner: Owner, spec: WorkerSpec, generation: int, applied: Applied,
                previous: Mapping | None) -> StatusUpdate:
        _, kind, name = workload_ref(owner, spec)
        deployment = self.store.get(kind, owner.namespace, name)
        if deployment is not None and not owned_by(deployment, owner.uid):
            deployment = None
        if spec.multi_node:
            deployment = lws_as_deployment(deployment)
        pods = self.worker_pods(owner)
        events = self.store.pod_events(owner.namespace, [p["metadata"]["name"] for p in pods])
        # Only pods that serve HTTP know the phase: a group's leader (LWS worker index 0).
        servers = [p for p in pods if (p["metadata"].get("labels") or {}).get(WORKER_INDEX_LABEL, "0") == "0"]
        startup_phases = self.prober.phases(servers)
        update = compute_status(
            generation=generation,
            desired_replicas=spec.replicas,
            deployment=deployment,
            pods=pods,
            endpoint=endpoint_url(owner, spec),
            selector=selector_string(owner.name),
            rollout=applied.plan.description,
            previous=previous,
            now=utc_now(),
            pod_events=events,
            download=applied.download,
            startup_phases=startup_phases,
        )
        if any(starting(p) for p in servers):  # no watch event says "now warming": look again
            update = update._replace(recheck_seconds=RECHECK_SECONDS)
        ttr = measured_time_to_ready(pods) or (previous or {}).get("timeToReadySeconds")
        if ttr:
            update.status["timeToReadySeconds"] = ttr
        # None removes the field (a merge patch): no download Job, no measured size.
        update.status["modelBytes"] = applied.model_bytes
        update.status["downloadJob"] = applied.download_job
        return update
