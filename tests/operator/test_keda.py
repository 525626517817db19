"""autoscaling.scaleToZero: a KEDA ScaledObject instead of the HPA when KEDA's API is served."""
from __future__ import annotations

import pytest

from minisgl_operator.builders import Owner, desired_objects
from minisgl_operator.rollout import IN_PLACE, RolloutPlan
from minisgl_operator.spec import parse_spec

OWNER = Owner("qwen", "ns", "uid-1")
ZERO = {"prometheusAddress": "http://prometheus.monitoring:9090",
        "wakeQuery": 'sum(rate(envoy_cluster_upstream_rq_total{envoy_cluster_name="qwen"}[1m]))'}


def kinds(zero, keda: bool):
    s = parse_spec({"image": "i", "model": {"path": "m"},
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "scaleToZero": zero}})
    return {o["kind"]: o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False, keda_available=keda)}


def test_scale_to_zero_is_a_scaled_object_with_load_activity_and_wake_triggers():
    objs = kinds(ZERO, keda=True)
    assert "HorizontalPodAutoscaler" not in objs and "Service" in objs  # the endpoint stays at 0 replicas
    so = objs["ScaledObject"]["spec"]
    assert so["scaleTargetRef"] == {"apiVersion": "minisgl.io/v1alpha1", "kind": "MiniSGLDeployment", "name": "qwen"}
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["idleReplicaCount"]) == (1, 4, 0)
    assert so["cooldownPeriod"] == 900
    by_name = {t["name"]: t["metadata"] for t in so["triggers"]}
    assert by_name["load"]["query"] == 'sum(minisgl_num_waiting_requests{namespace="ns",app_kubernetes_io_instance="qwen"})'
    assert by_name["load"]["threshold"] == "4"
    assert "minisgl_num_running_requests" in by_name["activity"]["query"]
    assert by_name["wake"]["query"] == ZERO["wakeQuery"] and by_name["wake"]["activationThreshold"] == "0"
    # The long scale-down of the HPA it manages, from the startup budget (1800 s unmeasured).
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 3600


def test_without_keda_the_hpa_keeps_min_replicas():
    objs = kinds(ZERO, keda=False)
    assert "ScaledObject" not in objs and objs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1


def test_a_prometheus_address_is_required():
    with pytest.raises(ValueError, match="prometheusAddress must be an http"):
        kinds({"prometheusAddress": "prometheus:9090"}, keda=True)
