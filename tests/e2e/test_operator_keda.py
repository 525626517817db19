"""autoscaling.scaleToZero on the real control plane: KEDA's ScaledObject CRD installed from its Go
module (github.com/kedacore/keda/v2 v2.18.1, config/crd/bases), the operator's ScaledObject accepted
by the real schema in place of its HPA (the CRD appearing while the operator runs), and a resource
scaled to 0 keeps its Service and reads Ready/ScaledToZero. KEDA's own operator (which would do
the scaling) is not run here."""
from __future__ import annotations

import pytest

from tests.e2e.kube import cluster, install_crd, operator, wait_for  # noqa: F401 - fixtures
from tests.e2e.lws import module_dir
from tests.e2e.resources import TIMEOUT, condition, create, get, kube, msgl, ns, pods  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
KEDA = "keda.sh/v1alpha1"
ZERO = {"prometheusAddress": "http://prometheus.monitoring:9090", "idleSeconds": 600,
        "wakeQuery": 'sum(rate(envoy_cluster_upstream_rq_total{envoy_cluster_name="idle"}[1m]))'}


def test_scale_to_zero_becomes_a_scaled_object_once_keda_is_there(kube, ns, operator, cluster):
    create(kube, ns, "idle", autoscaling={"minReplicas": 1, "maxReplicas": 3, "scaleToZero": ZERO})
    # No KEDA yet: the HPA keeps the resource at minReplicas.
    wait_for(lambda: get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "idle"), TIMEOUT, "the fallback HPA")
    base = module_dir("github.com/kedacore/keda/v2", "v2.18.1") / "config" / "crd" / "bases"
    install_crd(cluster, base / "keda.sh_scaledobjects.yaml")
    so = wait_for(lambda: get(kube, KEDA, "ScaledObject", ns, "idle"), TIMEOUT, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["kind"] == "MiniSGLDeployment" and so["spec"]["idleReplicaCount"] == 0
    assert {t["name"] for t in so["spec"]["triggers"]} == {"load", "activity", "wake"}
    wait_for(lambda: get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "idle") is None, TIMEOUT,
             "the operator's HPA replaced")
    # What KEDA does when idle: scale the resource to 0 through its scale subresource.
    cluster.kubectl("scale", "-n", ns, "msgl/idle", "--replicas=0")
    cr = wait_for(lambda: condition(msgl(kube, ns, "idle"), "Ready").get("reason") == "ScaledToZero"
                  and msgl(kube, ns, "idle"), TIMEOUT, "Ready/ScaledToZero")
    assert cr["status"]["phase"] == "Ready"
    assert get(kube, "apps/v1", "Deployment", ns, "idle")["spec"]["replicas"] == 0
    assert get(kube, "v1", "Service", ns, "idle") is not None  # the endpoint stays for the wake-up


def test_bad_scale_to_zero_is_rejected_at_admission(cluster):
    from tests.e2e.test_operator_crd import apply

    out = apply(cluster, "bad", autoscaling={"maxReplicas": 2, "scaleToZero": {"prometheusAddress": "prom:9090"}})
    assert out.returncode != 0 and "spec.autoscaling.scaleToZero.prometheusAddress" in out.stderr, out.stderr
    out = apply(cluster, "bad", autoscaling={"maxReplicas": 2, "scaleToZero": {"prometheusAddress": "http://p",
                                                                               "idleSeconds": 5}})
    assert out.returncode != 0 and "spec.autoscaling.scaleToZero.idleSeconds" in out.stderr, out.stderr
