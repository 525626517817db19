"""spec.engine.nodes > 1 on the real control plane: the LeaderWorkerSet CRD installed from its Go
module (sigs.k8s.io/lws), the operator's LeaderWorkerSet accepted by the real schema, and the real
LWS controller (built from the same module, its webhooks on) making the group's StatefulSets and
pods with the leader's address wired into the worker flags."""
from __future__ import annotations

import os

import pytest

from minisgl_operator.kube import object_path
from tests.e2e.kube import (REPO, Cluster, OperatorProcess, bind_operator_rbac, find_binaries, install_crd,
                            wait_for)
from tests.e2e.lws import LwsController, crd_path
from tests.e2e.resources import TIMEOUT, condition, create, get, kube, make_namespace, mark_ready, msgl  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
LWS = "leaderworkerset.x-k8s.io/v1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(find_binaries(), tmp_path_factory.mktemp("kube")).start()
    try:
        install_crd(c, REPO / "crds" / "minisgl.io_minisgldeployments.yaml")
        install_crd(c, crd_path())  # before the controller manager starts (its REST mapper)
        bind_operator_rbac(c)
        c.start_controllers(extra=("statefulset-controller",))
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def lws_controller(cluster):
    """The real LWS controller; skipped (not failed) where .ci/build_lws.sh has not built it."""
    lws = LwsController(cluster).start()
    try:
        yield lws
    finally:
        if os.environ.get("MINISGL_E2E_SHOW_LOGS"):
            print(lws.log()[-20000:])
        lws.stop()


@pytest.fixture(scope="module")
def operator(cluster):
    op = OperatorProcess(cluster.operator_kubeconfig, cluster.dir / "operator.log").start()
    try:
        yield op
    finally:
        op.stop()
        if os.environ.get("MINISGL_E2E_SHOW_LOGS"):
            print(op.log()[-20000:])


def env_of(pod: dict) -> dict:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or ()}


def test_two_node_model_becomes_a_leader_worker_set_with_the_leader_address_wired(kube, lws_controller, operator):
    ns = make_namespace(kube)
    create(kube, ns, "big", replicas=1, engine={"tensorParallelSize": 16, "nodes": 2})
    lws = wait_for(lambda: get(kube, LWS, "LeaderWorkerSet", ns, "big-lws"), TIMEOUT, "LeaderWorkerSet")
    assert get(kube, "apps/v1", "Deployment", ns, "big") is None
    # Defaults the real schema filled in, next to what the operator set.
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    # The LWS controller: the leaders' StatefulSet, then, once the leader pod exists, its group's.
    for name in ("big-lws", "big-lws-0"):
        wait_for(lambda: kube.get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"), TIMEOUT, f"StatefulSet {name}")

    def pod(name: str) -> dict | None:
        return kube.get(object_path("v1", "Pod", ns, name))

    leader = wait_for(lambda: pod("big-lws-0"), TIMEOUT, "the leader pod")
    worker = wait_for(lambda: pod("big-lws-0-1"), TIMEOUT, "the worker pod")
    for p in (leader, worker):  # LWS's pod webhook injected the group's coordinates
        assert env_of(p)["LWS_LEADER_ADDRESS"] == f"big-lws-0.big-lws.{ns}"
        assert env_of(p)["LWS_GROUP_SIZE"] == "2"
    assert env_of(leader)["LWS_WORKER_INDEX"] == "0" and env_of(worker)["LWS_WORKER_INDEX"] == "1"
    args = worker["spec"]["containers"][0]["args"]  # the kubelet expands $(VAR) from the env above
    assert args[args.index("--dist-init-addr") + 1] == "$(LWS_LEADER_ADDRESS):5000"
    assert args[args.index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)"
    assert "readinessProbe" in leader["spec"]["containers"][0] and "readinessProbe" not in worker["spec"]["containers"][0]
    # The client Service reaches leaders only; the LWS's headless Service names the pods.
    svc = get(kube, "v1", "Service", ns, "big")
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    assert get(kube, "v1", "Service", ns, "big-lws")["spec"]["clusterIP"] == "None"
    # Status from the LWS: ready when the group is.
    for p in (leader, worker):
        mark_ready(kube, p)
    cr = wait_for(lambda: msgl(kube, ns, "big").get("status", {}).get("phase") == "Ready" and msgl(kube, ns, "big"),
                  TIMEOUT, "phase Ready from the LWS status")
    assert cr["status"]["readyReplicas"] == 1 and condition(cr, "Ready")["status"] == "True"


def test_back_to_one_node_replaces_the_group_with_a_deployment(kube, operator):
    """Needs only the LWS CRD (its real schema accepts the operator's object), not its controller."""
    ns = make_namespace(kube)
    create(kube, ns, "flip", engine={"tensorParallelSize": 4, "nodes": 2})
    lws = wait_for(lambda: get(kube, LWS, "LeaderWorkerSet", ns, "flip-lws"), TIMEOUT, "LeaderWorkerSet")
    assert lws["spec"]["startupPolicy"] == "LeaderCreated" and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    from tests.e2e.resources import patch_spec

    patch_spec(kube, ns, "flip", {"engine": {"nodes": 1}})
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "flip"), TIMEOUT, "Deployment")
    wait_for(lambda: get(kube, LWS, "LeaderWorkerSet", ns, "flip-lws") is None, TIMEOUT, "the LWS deleted")
