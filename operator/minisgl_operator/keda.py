"""autoscaling.scaleToZero with KEDA (keda.sh/v1alpha1 ScaledObject), when its CRD exists. Pure.

Why KEDA and not our own: scaling to zero needs something that keeps watching a metric while no
pod exists and scales the resource up again; KEDA's operator does exactly that through the HPA it
manages (and the resource's scale subresource), so the operator only declares it. The Service is
kept at zero replicas (the endpoint never changes). The ScaledObject replaces the operator's HPA:
  - trigger `load`: the per-pod metric of spec.autoscaling (waiting requests or KV usage) scales 1..max;
  - trigger `activity`: running + waiting requests > 0 keeps the resource active (not idle);
  - trigger `wake` (scaleToZero.wakeQuery): a PromQL query over what sees requests while there is no
    replica — the gateway's / endpoint picker's request counters — wakes a replica on traffic.
After `idleSeconds` with every trigger inactive KEDA scales to idleReplicaCount 0; the HPA's
behavior (from the measured time to ready) is passed through.
"""
from __future__ import annotations

from minisgl_operator import GROUP, KIND, VERSION
from minisgl_operator.autoscaling import hpa_behavior

API_VERSION = "keda.sh/v1alpha1"
CRD_NAME = "scaledobjects.keda.sh"
QUERIES = {
    "waiting-requests": "sum(minisgl_num_waiting_requests{{{sel}}})",
    "kv-usage": "sum(minisgl_kv_cache_usage_ratio{{{sel}}})",
}
# A threshold no real value reaches: the trigger only decides active / idle, never the count.
ACTIVITY_ONLY = "1000000000"


def _selector(namespace: str, name: str) -> str:
    return f'namespace="{namespace}",app_kubernetes_io_instance="{name}"'


def _prometheus(name: str, address: str, query: str, threshold: str, activation: str = "0") -> dict:
    return {"type": "prometheus", "name": name, "metricType": "AverageValue", "metadata": {
        "serverAddress": address, "query": query, "threshold": threshold, "activationThreshold": activation,
        "ignoreNullValues": "true"}}


def build_scaled_object(name: str, namespace: str, spec, metadata: dict, time_to_ready: int) -> dict:
    """`spec`: a WorkerSpec whose autoscaling has scale_to_zero; `time_to_ready`: measured, else
    the startup budget (sets the HPA behavior)."""
    a = spec.autoscaling
    z = a.scale_to_zero
    if z is None:
        raise ValueError("build_scaled_object needs autoscaling.scaleToZero")
    sel = _selector(namespace, name)
    target = str(int(a.target)) if float(a.target).is_integer() else str(a.target)
    triggers = [
        _prometheus("load", z.prometheus_address, QUERIES[a.metric].format(sel=sel), target),
        _prometheus("activity", z.prometheus_address,
                    f"sum(minisgl_num_running_requests{{{sel}}}) + sum(minisgl_num_waiting_requests{{{sel}}})",
                    ACTIVITY_ONLY),
    ]
    if z.wake_query:
        triggers.append(_prometheus("wake", z.prometheus_address, z.wake_query, ACTIVITY_ONLY))
    return {
        "apiVersion": API_VERSION,
        "kind": "ScaledObject",
        "metadata": {**metadata, "name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name},
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "idleReplicaCount": 0,
            "cooldownPeriod": z.idle_seconds,
            "pollingInterval": 15,
            "triggers": triggers,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior(time_to_ready)}},
        },
    }
