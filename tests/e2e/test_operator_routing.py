"""spec.routing on the real control plane: the InferencePool CRD installed from its Go module
(sigs.k8s.io/gateway-api-inference-extension v1.2.0), the operator's pool and endpoint picker
accepted by the real schema and RBAC (the operator may create the picker's Role with only its own
rules), pruned when the spec stops asking. The picker serving traffic through Envoy is
tests/e2e/test_routing.py."""
from __future__ import annotations

import pytest

from minisgl_operator.kube import object_path
from tests.e2e.kube import cluster, install_crd, operator, wait_for  # noqa: F401 - fixtures
from tests.e2e.lws import module_dir
from tests.e2e.resources import TIMEOUT, create, get, kube, ns, patch_spec  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
POOL = "inference.networking.k8s.io/v1"
CRDS = ("inference.networking.k8s.io_inferencepools.yaml", "inference.networking.x-k8s.io_inferenceobjectives.yaml")


@pytest.fixture(scope="module")
def pool_crd(cluster):
    base = module_dir("sigs.k8s.io/gateway-api-inference-extension", "v1.2.0") / "config" / "crd" / "bases"
    for name in CRDS:
        install_crd(cluster, base / name)


def picker(kube, ns: str, kind: str, api_version: str = "v1"):
    return kube.get(object_path(api_version, kind, ns, "chat-epp"))


def test_routing_creates_a_valid_pool_and_picker_then_prunes_them(kube, ns, pool_crd, operator, cluster):
    create(kube, ns, "chat", replicas=2, routing={})
    pool = wait_for(lambda: get(kube, POOL, "InferencePool", ns, "chat"), TIMEOUT, "InferencePool")
    assert pool["spec"]["endpointPickerRef"]["name"] == "chat-epp"
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "chat"
    dep = wait_for(lambda: picker(kube, ns, "Deployment", "apps/v1"), TIMEOUT, "the picker's Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "chat-epp"
    for kind, api in (("Role", "rbac.authorization.k8s.io/v1"), ("RoleBinding", "rbac.authorization.k8s.io/v1"),
                      ("ServiceAccount", "v1"), ("ConfigMap", "v1"), ("Service", "v1")):
        assert wait_for(lambda k=kind, a=api: picker(kube, ns, k, a), TIMEOUT, kind)
    # The picker's service account may read what it watches, and nothing more.
    sa = f"system:serviceaccount:{ns}:chat-epp"
    def can(*args: str) -> bool:
        return cluster.kubectl("auth", "can-i", *args, "-n", ns, f"--as={sa}", check=False).stdout.strip() == "yes"
    assert can("watch", "inferencepools.inference.networking.k8s.io") and can("list", "pods")
    assert not can("get", "secrets") and not can("delete", "pods")

    # An existing picker: the operator's own goes, the pool points at the other one.
    patch_spec(kube, ns, "chat", {"routing": {"endpointPicker": {"serviceRef": {"name": "shared-epp"}}}})
    wait_for(lambda: get(kube, POOL, "InferencePool", ns, "chat")["spec"]["endpointPickerRef"]["name"] == "shared-epp",
             TIMEOUT, "the pool re-pointed")
    wait_for(lambda: picker(kube, ns, "Deployment", "apps/v1") is None, TIMEOUT, "the picker deleted")
    # No routing: no pool.
    patch_spec(kube, ns, "chat", {"routing": None})
    wait_for(lambda: get(kube, POOL, "InferencePool", ns, "chat") is None, TIMEOUT, "the pool deleted")
    assert get(kube, "apps/v1", "Deployment", ns, "chat") is not None  # the workers stay


def test_bad_routing_is_rejected_at_admission(kube, ns, cluster):
    from tests.e2e.test_operator_crd import apply

    out = apply(cluster, "bad", routing={"endpointPicker": {"image": "x", "serviceRef": {"name": "y"}}})
    assert out.returncode != 0 and "set serviceRef (an existing picker) or image, not both" in out.stderr, out.stderr
    out = apply(cluster, "bad", routing={"failureMode": "Sometimes"})
    assert out.returncode != 0 and "spec.routing.failureMode: Unsupported value" in out.stderr, out.stderr
