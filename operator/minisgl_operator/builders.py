"""Pure builders: a MiniSGLDeployment spec -> the Kubernetes objects it should own.

`desired_objects` is the whole reconcile target; applying its result twice changes nothing.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

from minisgl_operator import GROUP, KIND, VERSION
from minisgl_operator.autoscaling import hpa_behavior
from minisgl_operator.download import build_download_job
from minisgl_operator.keda import build_scaled_object
from minisgl_operator.multinode import build_leader_worker_set, leader_selector, lws_name
from minisgl_operator.pod import build_pod_template, common_labels, progress_deadline, selector_labels, startup_budget
from minisgl_operator.rollout import RolloutPlan
from minisgl_operator.routing import build_inference_pool, build_picker
from minisgl_operator.spec import WorkerSpec

HPA_METRICS = {"waiting-requests": "minisgl_num_waiting_requests", "kv-usage": "minisgl_kv_cache_usage_ratio"}
# Kinds the operator may create and must delete again once the spec stops asking for them.
OPTIONAL_KINDS = (
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)
# The endpoint picker's objects (named <name>-epp): deleted when the spec stops asking for them.
PICKER_KINDS = (("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"),
                ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("apps/v1", "Deployment"), ("v1", "Service"))


NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"


def _prom(label: str) -> str:
    """A Kubernetes label name as Prometheus' kubernetes_sd spells it (app.kubernetes.io/x -> app_kubernetes_io_x)."""
    return "".join(c if c.isalnum() else "_" for c in label)


class Owner(NamedTuple):
    name: str
    namespace: str
    uid: str


def _metadata(owner: Owner) -> dict:
    return {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": common_labels(owner.name),
        "ownerReferences": [{
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": owner.name,
            "uid": owner.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def endpoint_url(owner: Owner, spec: WorkerSpec) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{spec.service_port}/v1"


def build_deployment(owner: Owner, spec: WorkerSpec, plan: RolloutPlan, offline: bool = False,
                     model_bytes: int | None = None) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": plan.strategy,
            "progressDeadlineSeconds": progress_deadline(spec, model_bytes),
            "revisionHistoryLimit": 5,
            "template": build_pod_template(owner.name, spec, offline, model_bytes),
        },
    }


def build_service(owner: Owner, spec: WorkerSpec) -> dict:
    metadata = _metadata(owner)
    if spec.service_annotations:
        metadata["annotations"] = dict(spec.service_annotations)
    service_spec: dict = {
        "type": spec.service_type,
        # A multi-node group serves from its leader only.
        "selector": {**selector_labels(owner.name), **(leader_selector() if spec.multi_node else {})},
        "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"}],
    }
    if spec.cluster_ip:
        service_spec["clusterIP"] = spec.cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": service_spec}


def build_pdb(owner: Owner, spec: WorkerSpec) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}},
    }


def _quantity(value: float) -> str:
    """A Kubernetes quantity string: whole numbers stay whole, fractions become milli-units."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def build_hpa(owner: Owner, spec: WorkerSpec, time_to_ready: int | None = None,
              model_bytes: int | None = None) -> dict:
    """Scales the MiniSGLDeployment through its scale subresource, like `kubectl scale` does.
    `time_to_ready`: measured on this resource's pods; until then the startup budget."""
    if spec.autoscaling is None:
        raise ValueError("build_hpa needs spec.autoscaling")
    a = spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": owner.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": HPA_METRICS[a.metric]},
                    "target": {"type": "AverageValue", "averageValue": _quantity(a.target)},
                },
            }],
            "behavior": hpa_behavior(time_to_ready or startup_budget(spec, model_bytes)),
        },
    }


def build_service_monitor(owner: Owner, spec: WorkerSpec, labels: Mapping[str, str] | None = None) -> dict:
    """`labels`: the operator's configured ones (a kube-prometheus-stack selects `release: <name>`),
    under the spec's monitoring.labels; the selector labels always win."""
    metadata = _metadata(owner)
    metadata["labels"] = {**(labels or {}), **spec.monitor_labels, **metadata["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": spec.monitor_interval,
                           # Dashboards and alerts select workers and deployments by these labels, which an
                           # annotation-based Prometheus gets from its usual labelmap of pod labels: one
                           # name both ways.
                           "relabelings": [{"sourceLabels": [f"__meta_kubernetes_pod_label_{_prom(label)}"],
                                            "targetLabel": _prom(label)} for label in (NAME, INSTANCE)]}],
        },
    }


def build_workload(owner: Owner, spec: WorkerSpec, plan: RolloutPlan, offline: bool = False,
                   model_bytes: int | None = None) -> dict:
    """The pods' owner: a Deployment, or a LeaderWorkerSet for a model over several nodes."""
    if spec.multi_node:
        return build_leader_worker_set(owner.name, spec, _metadata(owner), offline, model_bytes)
    return build_deployment(owner, spec, plan, offline, model_bytes)


def workload_ref(owner: Owner, spec: WorkerSpec) -> tuple[str, str, str]:
    """(apiVersion, kind, name) of the workload this spec wants."""
    if spec.multi_node:
        return "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", lws_name(owner.name)
    return "apps/v1", "Deployment", owner.name


def other_workload_ref(owner: Owner, spec: WorkerSpec) -> tuple[str, str, str]:
    """The workload of the other kind, to delete after a switch between one node and several."""
    if spec.multi_node:
        return "apps/v1", "Deployment", owner.name
    return "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", lws_name(owner.name)


def build_job(owner: Owner, spec: WorkerSpec) -> dict:
    return build_download_job(owner.name, spec, _metadata(owner))


def desired_objects(
    owner: Owner, spec: WorkerSpec, plan: RolloutPlan, service_monitor_available: bool,
    monitor_labels: Mapping[str, str] | None = None, downloaded: bool = True, time_to_ready: int | None = None,
    model_bytes: int | None = None, keda_available: bool = False,
) -> list[dict]:
    """Every object this MiniSGLDeployment should own right now, in apply order. While the
    download Job has not finished (`downloaded` False), no Deployment: no pod starts early.
    `model_bytes`: the snapshot size the finished Job reported (sets the startup budget)."""
    objects = [build_service(owner, spec)]
    if spec.download_job:
        objects.append(build_job(owner, spec))
    if downloaded:
        objects.append(build_workload(owner, spec, plan, offline=spec.download_job, model_bytes=model_bytes))
    if spec.replicas > 1 or (spec.autoscaling is not None and spec.autoscaling.min_replicas > 1):
        objects.append(build_pdb(owner, spec))
    if spec.autoscaling is not None and spec.autoscaling.scale_to_zero is not None and keda_available:
        objects.append(build_scaled_object(owner.name, owner.namespace, spec, _metadata(owner),
                                           time_to_ready or startup_budget(spec, model_bytes)))
    elif spec.autoscaling is not None:  # without KEDA, scaleToZero falls back to the HPA (min >= 1)
        objects.append(build_hpa(owner, spec, time_to_ready, model_bytes))
    if spec.service_monitor and service_monitor_available:
        objects.append(build_service_monitor(owner, spec, monitor_labels))
    if spec.routing is not None:
        if spec.routing.creates_picker:
            objects += build_picker(owner.name, owner.namespace, spec.routing, _metadata(owner))
        objects.append(build_inference_pool(owner.name, spec.routing, _metadata(owner), spec.multi_node))
    return objects


def stale_kinds(objects: list[Mapping]) -> list[tuple[str, str]]:
    """Optional kinds missing from `objects`: delete the owned object of each, if any."""
    present = {(o["apiVersion"], o["kind"]) for o in objects}
    return [kind for kind in OPTIONAL_KINDS if kind not in present]
