"""The operator (a `python -m minisgl_operator` subprocess with only its rbac.yaml permissions)
against a real API server + controller manager: owned objects, status and events, scale, HPA,
GPU-aware rollout, InsufficientGPU, adoption, restart, garbage collection."""
from __future__ import annotations

import json

import pytest

from minisgl_operator.kube import object_path
from tests.e2e.kube import DEFAULT_WORKER_IMAGE, cluster, operator, wait_for  # noqa: F401 - fixtures
from tests.e2e.resources import (GROUP_VERSION, TIMEOUT, condition, create, events, get, kube, mark_ready,  # noqa: F401
                                 msgl, ns, patch_spec, pods, write_pod_status)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
def test_create_makes_owned_objects_then_ready_status_and_events(kube, ns, operator):
    cr = create(kube, ns, "qwen", replicas=2, engine={"tensorParallelSize": 2},
                model={"path": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "hf"}},
                auth={"apiKeySecretRef": {"name": "keys", "key": "k"}})
    uid = cr["metadata"]["uid"]
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "qwen"), TIMEOUT, "Deployment")
    svc = get(kube, "v1", "Service", ns, "qwen")
    # Applied after the Deployment, in the same reconcile: it may be a moment behind.
    pdb = wait_for(lambda: get(kube, "policy/v1", "PodDisruptionBudget", ns, "qwen"), TIMEOUT, "PodDisruptionBudget")
    for obj in (dep, svc, pdb):
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [uid]
        assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    managers = {m["manager"] for m in dep["metadata"]["managedFields"] if m["operation"] == "Apply"}
    assert managers == {"minisgl-operator"}
    worker = dep["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in worker["env"]
    assert {"name": "MINISGL_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k"}}} in worker["env"]
    assert "exec" in worker["lifecycle"]["preStop"]  # works on Kubernetes < 1.30 too
    assert dep["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True  # needs .../finalizers RBAC
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "qwen") is None

    # The controller manager makes the pods; this cluster has no kubelet, so the test is one.
    two = wait_for(lambda: len(pods(kube, ns)) == 2 and pods(kube, ns), TIMEOUT, "2 pods")
    assert msgl(kube, ns, "qwen").get("status", {}).get("phase") in (None, "Pending", "Progressing")
    for pod in two:
        mark_ready(kube, pod)
    ready = wait_for(lambda: msgl(kube, ns, "qwen").get("status", {}).get("phase") == "Ready" and msgl(kube, ns, "qwen"),
                     TIMEOUT, "phase Ready")
    status = ready["status"]
    assert status["readyReplicas"] == 2 and status["replicas"] == 2
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert status["endpoint"] == f"http://qwen.{ns}.svc:8000/v1"
    assert condition(ready, "Ready")["status"] == "True" and condition(ready, "Degraded")["status"] == "False"
    reasons = wait_for(lambda: {e["reason"] for e in events(kube, ns, "qwen")} >= {"AllReplicasReady", "PhaseReady"}
                       and {e["reason"] for e in events(kube, ns, "qwen")}, TIMEOUT, "Ready events")
    assert "AllReplicasReady" in reasons
    # Level-based and idempotent: every resync since re-applied the same objects, changing nothing.
    assert get(kube, "apps/v1", "Deployment", ns, "qwen")["metadata"]["generation"] == 1


def test_unschedulable_pod_reports_insufficient_gpu(kube, ns, operator):
    create(kube, ns, "big", engine={"tensorParallelSize": 8})
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available."
    write_pod_status(kube, pod, {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]})
    cr = wait_for(lambda: condition(msgl(kube, ns, "big"), "Degraded").get("reason") == "InsufficientGPU"
                  and msgl(kube, ns, "big"), TIMEOUT, "InsufficientGPU")
    assert cr["status"]["phase"] == "Degraded"
    assert "4 Insufficient nvidia.com/gpu" in condition(cr, "Degraded")["message"]
    assert condition(cr, "Ready")["status"] == "False"
    warnings = wait_for(lambda: [e for e in events(kube, ns, "big") if e["type"] == "Warning"
                                 and e["reason"] == "InsufficientGPU"], TIMEOUT, "InsufficientGPU event")
    assert "Insufficient nvidia.com/gpu" in warnings[0]["message"]


def test_operator_runs_with_only_its_rbac_rules(cluster, operator):
    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, check=False, kubeconfig=cluster.operator_kubeconfig)
        return out.stdout.strip() == "yes"

    assert can("patch", "deployments.apps", "-n", "any") and can("patch", "minisgldeployments.minisgl.io/status")
    assert not can("get", "secrets", "-n", "any") and not can("delete", "pods", "-n", "any")


def test_owner_references_permission_enforcement_is_on_and_the_operator_passes_it(kube, ns, operator, cluster):
    """A user who may create ConfigMaps but not update minisgldeployments/finalizers cannot set
    blockOwnerDeletion on one: the admission plugin is really on, so the operator's own
    blocking owner references (test above) pass only thanks to its finalizers rule."""
    cr = create(kube, ns, "owner")
    cluster.kubectl("create", "clusterrole", f"cm-{ns}", "--verb=create", "--resource=configmaps")
    cluster.kubectl("create", "rolebinding", "cm", "-n", ns, f"--clusterrole=cm-{ns}", "--user=limited")
    ref = {"apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment", "name": "owner",
           "uid": cr["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "ownerReferences": [ref]}}
    out = cluster.kubectl("create", "-n", ns, "--as=limited", "-f", "-", stdin=json.dumps(cm), check=False)
    assert out.returncode != 0 and "cannot set blockOwnerDeletion" in out.stderr, out.stderr
    assert cluster.kubectl("auth", "can-i", "update", "minisgldeployments.minisgl.io/finalizers",
                           kubeconfig=cluster.operator_kubeconfig, check=False).stdout.strip() == "yes"
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "owner"), TIMEOUT, "the operator's Deployment")


def test_crash_looping_worker_degrades_the_resource(kube, ns, operator):
    create(kube, ns, "crash")
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    write_pod_status(kube, pod, {"phase": "Running", "containerStatuses": [{
        "name": "worker", "ready": False, "restartCount": 4, "image": "img", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}}}]})
    cr = wait_for(lambda: condition(msgl(kube, ns, "crash"), "Degraded").get("reason") == "CrashLoopBackOff"
                  and msgl(kube, ns, "crash"), TIMEOUT, "CrashLoopBackOff")
    assert cr["status"]["phase"] == "Degraded"
    assert "back-off 1m20s" in condition(cr, "Degraded")["message"]


def test_image_pull_failure_degrades_the_resource(kube, ns, operator):
    create(kube, ns, "pull")
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    write_pod_status(kube, pod, {"phase": "Pending", "containerStatuses": [{
        "name": "worker", "ready": False, "restartCount": 0, "image": "img", "imageID": "",
        "state": {"waiting": {"reason": "ImagePullBackOff",
                              "message": "Back-off pulling image \"ghcr.io/x/minisgl:nope\""}}}]})
    cr = wait_for(lambda: condition(msgl(kube, ns, "pull"), "Degraded").get("reason") == "ImagePullBackOff"
                  and msgl(kube, ns, "pull"), TIMEOUT, "ImagePullBackOff")
    assert cr["status"]["phase"] == "Degraded"
    assert "minisgl:nope" in condition(cr, "Degraded")["message"]


def test_scale_update_and_hpa_through_the_scale_subresource(kube, ns, operator, cluster):
    create(kube, ns, "s", replicas=2)
    wait_for(lambda: get(kube, "policy/v1", "PodDisruptionBudget", ns, "s"), TIMEOUT, "PDB")
    cluster.kubectl("scale", "-n", ns, "msgl/s", "--replicas=1")
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "s")["spec"]["replicas"] == 1, TIMEOUT, "scale to 1")
    wait_for(lambda: get(kube, "policy/v1", "PodDisruptionBudget", ns, "s") is None, TIMEOUT, "PDB pruned")

    patch_spec(kube, ns, "s", {"engine": {"maxRunningRequests": 64}, "autoscaling": {"minReplicas": 3, "maxReplicas": 5}})
    hpa = wait_for(lambda: get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "s"), TIMEOUT, "HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment", "name": "s"}
    args = get(kube, "apps/v1", "Deployment", ns, "s")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-running-requests") + 1] == "64"
    # The HPA controller raises the custom resource to minReplicas via /scale; the operator follows.
    wait_for(lambda: msgl(kube, ns, "s")["spec"]["replicas"] == 3, TIMEOUT, "HPA scales the CR to 3")
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "s")["spec"]["replicas"] == 3, TIMEOUT, "Deployment at 3")

    patch_spec(kube, ns, "s", {"autoscaling": None})
    wait_for(lambda: get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "s") is None, TIMEOUT, "HPA pruned")


def test_gpu_aware_rollout_surges_only_when_a_node_has_room(kube, ns, operator):
    create(kube, ns, "r", engine={"tensorParallelSize": 4})
    strategy = lambda: (get(kube, "apps/v1", "Deployment", ns, "r") or {}).get("spec", {}).get("strategy", {})  # noqa: E731
    wait_for(lambda: strategy().get("rollingUpdate", {}).get("maxSurge") == 0, TIMEOUT, "in place on a GPU-less cluster")
    node = f"gpu-node-{ns}"
    kube.request("POST", "/api/v1/nodes", body={"metadata": {"name": node}})
    kube.request("PATCH", f"/api/v1/nodes/{node}/status", content_type="application/merge-patch+json",
                 body={"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}})
    # Capacity is read only while a rollout is pending: a spec change starts one.
    patch_spec(kube, ns, "r", {"engine": {"maxRunningRequests": 32}})
    wait_for(lambda: strategy().get("rollingUpdate", {}).get("maxSurge") == 1, TIMEOUT, "surge once 8 GPUs are free")
    assert "surge" in msgl(kube, ns, "r")["status"]["rolloutStrategy"]
    # The node count says "room", but a pod of ours cannot schedule (taints, affinity, ...):
    # a surge would block, so the operator must fall back to in place.
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a worker pod")
    write_pod_status(kube, pod, {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 1 node(s) had untolerated taint."}]})
    wait_for(lambda: strategy().get("rollingUpdate", {}).get("maxSurge") == 0, TIMEOUT,
             "in place while a pod is unschedulable")
    kube.request("DELETE", f"/api/v1/nodes/{node}")
    patch_spec(kube, ns, "r", {"rollout": {"strategy": "Recreate"}})
    wait_for(lambda: strategy().get("type") == "Recreate", TIMEOUT, "forced Recreate")


def test_an_unowned_service_of_the_same_name_is_never_adopted(kube, ns, operator):
    kube.request("POST", object_path("v1", "Service", ns), body={
        "metadata": {"name": "a", "labels": {"keep": "me"}},
        "spec": {"selector": {"app": "someone-else"}, "ports": [{"name": "web", "port": 80}]}})
    create(kube, ns, "a")
    cr = wait_for(lambda: condition(msgl(kube, ns, "a"), "Degraded").get("reason") == "ObjectInTheWay"
                  and msgl(kube, ns, "a"), TIMEOUT, "ObjectInTheWay")
    message = condition(cr, "Degraded")["message"]
    assert f"Service {ns}/a already exists" in message and "no owner" in message, message
    svc = get(kube, "v1", "Service", ns, "a")
    assert svc["spec"]["selector"] == {"app": "someone-else"} and not svc["metadata"].get("ownerReferences")
    assert get(kube, "apps/v1", "Deployment", ns, "a") is None
    # Once the stranger's Service is gone, the operator creates its own.
    kube.request("DELETE", object_path("v1", "Service", ns, "a"))
    svc = wait_for(lambda: (get(kube, "v1", "Service", ns, "a") or {}).get("metadata", {}).get("ownerReferences")
                   and get(kube, "v1", "Service", ns, "a"), TIMEOUT, "own Service")
    assert svc["spec"]["ports"][0]["name"] == "http"
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "a"), TIMEOUT, "Deployment")


def test_service_monitor_follows_its_crd_with_labels_and_replaces_scrape_annotations(kube, ns, operator, cluster):
    create(kube, ns, "m", monitoring={"labels": {"team": "llm"}})
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "m"), TIMEOUT, "Deployment")
    assert "prometheus.io/scrape" not in dep["spec"]["template"]["metadata"].get("annotations", {})
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/x/minisgl-worker:0.1.0"
    assert get(kube, "monitoring.coreos.com/v1", "ServiceMonitor", ns, "m") is None
    cluster.kubectl("apply", "-f", "-", stdin=SERVICE_MONITOR_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    sm = wait_for(lambda: get(kube, "monitoring.coreos.com/v1", "ServiceMonitor", ns, "m"), TIMEOUT, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    # The operator's --service-monitor-label (a kube-prometheus-stack selects on `release`) and the spec's.
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack" and sm["metadata"]["labels"]["team"] == "llm"
    patch_spec(kube, ns, "m", {"monitoring": {"serviceMonitor": False}})
    wait_for(lambda: get(kube, "monitoring.coreos.com/v1", "ServiceMonitor", ns, "m") is None, TIMEOUT,
             "ServiceMonitor pruned when turned off")
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "m")["spec"]["template"]["metadata"]
             .get("annotations", {}).get("prometheus.io/scrape") == "true", TIMEOUT, "annotations instead")


def test_a_minimal_resource_gets_the_operators_worker_image(kube, ns, operator):
    body = {"apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment", "metadata": {"name": "mini"},
            "spec": {"model": {"path": "Qwen/Qwen3-0.6B"}}}
    kube.request("POST", object_path(GROUP_VERSION, "MiniSGLDeployment", ns), body=body)
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "mini"), TIMEOUT, "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_WORKER_IMAGE


def test_rejected_objects_fail_the_resource_permanently(kube, ns, operator):
    create(kube, ns, "bad", podTemplate={"spec": {"restartPolicy": "Never"}})  # Deployments need Always
    cr = wait_for(lambda: msgl(kube, ns, "bad").get("status", {}).get("phase") == "Failed" and msgl(kube, ns, "bad"),
                  TIMEOUT, "phase Failed")
    assert condition(cr, "Degraded")["reason"] == "ApplyRejected"
    assert "restartPolicy" in condition(cr, "Degraded")["message"]


def test_operator_restart_resumes_without_duplicates_and_delete_collects_garbage(kube, ns, operator):
    create(kube, ns, "z", replicas=2)
    wait_for(lambda: get(kube, "policy/v1", "PodDisruptionBudget", ns, "z"), TIMEOUT, "PDB")
    operator.stop()
    patch_spec(kube, ns, "z", {"replicas": 4, "engine": {"cacheType": "naive"}})
    operator.start()
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "z")["spec"]["replicas"] == 4
                   and get(kube, "apps/v1", "Deployment", ns, "z"), TIMEOUT, "resumed at 4 replicas")
    assert "naive" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert len(kube.list(object_path("apps/v1", "Deployment", ns))) == 1
    assert len(kube.list(object_path("v1", "Service", ns))) == 1
    assert len(kube.list(object_path("policy/v1", "PodDisruptionBudget", ns))) == 1

    kube.request("DELETE", object_path(GROUP_VERSION, "MiniSGLDeployment", ns, "z"))
    wait_for(lambda: not msgl(kube, ns, "z"), TIMEOUT, "custom resource deleted")
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")):
        wait_for(lambda: get(kube, api_version, kind, ns, "z") is None, TIMEOUT, f"{kind} garbage-collected")


SERVICE_MONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def test_the_finalizer_of_older_versions_is_removed_so_deletion_completes(kube, ns, operator):
    body = {"apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment",
            "metadata": {"name": "old", "finalizers": ["minisgl.io/operator", "example.com/keep"]},
            "spec": {"image": "ghcr.io/x/minisgl-worker:0.1.0", "model": {"path": "Qwen/Qwen3-8B"}}}
    kube.request("POST", object_path(GROUP_VERSION, "MiniSGLDeployment", ns), body=body)
    wait_for(lambda: msgl(kube, ns, "old")["metadata"].get("finalizers") == ["example.com/keep"], TIMEOUT,
             "legacy finalizer removed, others kept")
    kube.request("PATCH", object_path(GROUP_VERSION, "MiniSGLDeployment", ns, "old"),
                 content_type="application/merge-patch+json", body={"metadata": {"finalizers": None}})
    kube.request("DELETE", object_path(GROUP_VERSION, "MiniSGLDeployment", ns, "old"))
    wait_for(lambda: not msgl(kube, ns, "old"), TIMEOUT, "deleted")


def test_operator_serves_reconcile_metrics(kube, ns, operator):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    create(kube, ns, "metered", model={"path": "Qwen/Qwen3-8B"})

    def reconciled_ok() -> bool:
        text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=2).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "minisgl_operator_reconciles_total" and s.labels == {"result": "ok"}:
                    return s.value >= 1
        return False

    wait_for(reconciled_ok, TIMEOUT, "minisgl_operator_reconciles_total{result=ok}")


def test_starting_pod_reports_loading_then_warming_from_its_health(kube, ns, operator):
    """A pod object whose podIP is 127.0.0.1 and whose http port is a real HTTP server answering
    like the worker's start-up app: the operator reads the phase from /health, not the API."""
    from tests.operator.test_probe import Worker

    worker = Worker()
    try:
        create(kube, ns, "phases", podTemplate={"spec": {"containers": [
            {"name": "worker", "ports": [{"name": "http", "containerPort": worker.port, "protocol": "TCP"}]}]}})
        pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
        write_pod_status(kube, pod, {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                                     "conditions": [{"type": "Ready", "status": "False"}],
                                     "containerStatuses": [{"name": "worker", "ready": False, "restartCount": 0,
                                                            "image": "img", "imageID": "",
                                                            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
        seen: list[str] = []

        def phase_is(want: str):
            def check():
                cr = msgl(kube, ns, "phases")
                phase = cr.get("status", {}).get("phase")
                if phase and (not seen or seen[-1] != phase):
                    seen.append(phase)
                return phase == want and cr
            return check

        cr = wait_for(phase_is("Loading"), TIMEOUT, "phase Loading")
        assert "loading the model weights" in condition(cr, "Ready")["message"]
        worker.phase = "warming"  # no watch event: the operator's own re-check notices
        wait_for(phase_is("Warming"), TIMEOUT, "phase Warming")
        mark_ready(kube, pods(kube, ns)[0])
        worker.phase = "ready"
        wait_for(phase_is("Ready"), TIMEOUT, "phase Ready")
        assert [p for p in seen if p not in ("Pending", "Progressing")] == ["Loading", "Warming", "Ready"], seen
        assert seen.index("Loading") == len(seen) - 3, seen  # nothing between Loading, Warming and Ready
        reasons = {e["reason"] for e in events(kube, ns, "phases")}
        assert {"PhaseLoading", "PhaseWarming", "PhaseReady"} <= reasons, reasons
        assert worker.requests <= 10  # cached per pod, a few requests over the whole start-up
    finally:
        worker.server.shutdown()
        worker.server.server_close()
