"""What a production cluster does to worker pods, on a real API server + controller manager:
Pod Security `restricted` admission, ResourceQuota, a missing Secret, a Multi-Attach cache PVC,
OOMKilled workers, and the download Job that gates the workers. Each reason must reach the
resource's status from a watch event (the operator's resync is minutes)."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest

from minisgl_operator.kube import Kube, object_path
from tests.e2e.kube import cluster, operator, wait_for  # noqa: F401 - fixtures
from tests.e2e.resources import (TIMEOUT, condition, create, events, get, kube, make_namespace,  # noqa: F401
                                 mark_ready, msgl, ns, patch_spec, pods, write_pod_status)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def degraded(kube: Kube, ns: str, name: str, reason: str) -> dict:
    return wait_for(lambda: condition(msgl(kube, ns, name), "Degraded").get("reason") == reason
                    and msgl(kube, ns, name), TIMEOUT, reason)


def admitted_as_pod(kube: Kube, ns: str, template: dict) -> None:
    """Server-side dry run of a Pod from `template`: Pod Security admission judges pods, not
    the Deployments or Jobs that make them."""
    kube.request("POST", object_path("v1", "Pod", ns), query=[("dryRun", "All")],
                 body={"metadata": {"generateName": "dry-", **template.get("metadata", {})}, "spec": template["spec"]})


def test_worker_pods_are_admitted_in_a_restricted_namespace(kube, operator):
    ns = make_namespace(kube, RESTRICTED)
    create(kube, ns, "locked", replicas=2, model={"path": "Qwen/Qwen3-8B", "cache": {"pvcName": "models"}})
    job = wait_for(lambda: [j for j in kube.list(object_path("batch/v1", "Job", ns))], TIMEOUT, "download Job")[0]
    admitted_as_pod(kube, ns, job["spec"]["template"])  # the download pod
    create(kube, ns, "plain", replicas=2)
    # The ReplicaSet controller's real pod creations pass the apiserver's PodSecurity admission.
    wait_for(lambda: len([p for p in pods(kube, ns) if p["metadata"]["name"].startswith("plain-")]) == 2,
             TIMEOUT, "2 worker pods admitted")
    pod = pods(kube, ns)[0]
    assert pod["spec"]["securityContext"]["fsGroup"] == 10001


def test_pod_security_violation_is_reported_with_the_admission_message(kube, operator):
    ns = make_namespace(kube, RESTRICTED)
    create(kube, ns, "priv", podTemplate={"spec": {"securityContext": {"runAsUser": 0}}})  # root
    cr = degraded(kube, ns, "priv", "PodSecurityViolation")
    assert 'violates PodSecurity "restricted:latest"' in condition(cr, "Degraded")["message"]
    assert cr["status"]["phase"] == "Degraded"


def test_operator_pod_from_the_chart_is_admitted_in_a_restricted_namespace(kube, operator):
    from tests.charts.helm import helm_binary, render

    deployment = next(d for d in render(helm_binary()) if d.get("kind") == "Deployment")
    ns = make_namespace(kube, RESTRICTED)
    admitted_as_pod(kube, ns, deployment["spec"]["template"])


def test_exceeded_quota_is_reported(kube, ns, operator):
    kube.request("POST", object_path("v1", "ResourceQuota", ns), body={
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    wait_for(lambda: (get(kube, "v1", "ResourceQuota", ns, "no-pods") or {}).get("status", {}).get("hard"),
             TIMEOUT, "quota status from the resourcequota controller")
    create(kube, ns, "q")
    cr = degraded(kube, ns, "q", "QuotaExceeded")
    assert "exceeded quota: no-pods" in condition(cr, "Degraded")["message"]


def test_missing_token_secret_is_reported(kube, ns, operator):
    create(kube, ns, "nosecret", model={"path": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "hf"}})
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    write_pod_status(kube, pod, {"phase": "Pending", "containerStatuses": [{  # as kubelet writes it
        "name": "worker", "ready": False, "restartCount": 0, "image": "img", "imageID": "",
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}}}]})
    cr = degraded(kube, ns, "nosecret", "CreateContainerConfigError")
    assert 'secret "hf" not found' in condition(cr, "Degraded")["message"]


def test_multi_attach_of_a_cache_pvc_is_reported_from_the_pod_event(kube, ns, operator):
    create(kube, ns, "rwo", replicas=2, model={"path": "/weights/qwen", "cache": {"pvcName": "rwo"}})
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    write_pod_status(kube, pod, {"phase": "Pending", "containerStatuses": [{
        "name": "worker", "ready": False, "restartCount": 0, "image": "img", "imageID": "",
        "state": {"waiting": {"reason": "ContainerCreating"}}}]})
    message = ('Multi-Attach error for volume "pvc-0d1e" Volume is already used by pod(s) '
               f'{pod["metadata"]["name"]}-other')
    kube.request("POST", object_path("v1", "Event", ns), body={  # as the attach-detach controller posts it
        "metadata": {"name": f"{pod['metadata']['name']}.attach"}, "type": "Warning", "reason": "FailedAttachVolume",
        "message": message, "source": {"component": "attachdetach-controller"}, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"],
                           "apiVersion": "v1"}})
    cr = degraded(kube, ns, "rwo", "MultiAttach")
    assert "Multi-Attach error" in condition(cr, "Degraded")["message"]


def test_oom_killed_worker_is_reported_as_such(kube, ns, operator):
    create(kube, ns, "oom")
    pod = wait_for(lambda: pods(kube, ns) and pods(kube, ns)[0], TIMEOUT, "a pod")
    write_pod_status(kube, pod, {"phase": "Running", "containerStatuses": [{
        "name": "worker", "ready": False, "restartCount": 3, "image": "img", "imageID": "",
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                     "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z"}},
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}}]})
    cr = degraded(kube, ns, "oom", "OOMKilled")
    assert "exit code 137" in condition(cr, "Degraded")["message"]


def test_download_job_gates_the_workers_and_phases_come_in_order(kube, ns, operator):
    create(kube, ns, "dl", replicas=2, model={"path": "Qwen/Qwen3-8B", "revision": "v1", "cache": {"pvcName": "models"}})
    job = wait_for(lambda: kube.list(object_path("batch/v1", "Job", ns)), TIMEOUT, "download Job")[0]
    name = job["metadata"]["name"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["Qwen/Qwen3-8B", "v1"]
    cr = wait_for(lambda: msgl(kube, ns, "dl").get("status", {}).get("phase") == "Downloading" and msgl(kube, ns, "dl"),
                  TIMEOUT, "phase Downloading")
    assert condition(cr, "Ready")["reason"] == "Downloading"
    assert get(kube, "apps/v1", "Deployment", ns, "dl") is None  # no worker before the weights are there
    path = object_path("batch/v1", "Job", ns, name) + "/status"
    start = "2026-01-01T00:00:00Z"
    kube.request("PATCH", path, content_type="application/merge-patch+json",  # as the job controller would
                 body={"status": {"active": 1, "startTime": start}})
    wait_for(lambda: "1 active" in condition(msgl(kube, ns, "dl"), "Progressing").get("message", ""), TIMEOUT,
             "download progress from the Job")
    done = "2026-01-01T00:10:00Z"
    kube.request("PATCH", path, content_type="application/merge-patch+json", body={"status": {
        "active": 0, "succeeded": 1, "startTime": start, "completionTime": done, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": done, "lastProbeTime": done},
            {"type": "Complete", "status": "True", "lastTransitionTime": done, "lastProbeTime": done}]}})
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "dl"), TIMEOUT, "Deployment after the download")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/models"
    two = wait_for(lambda: len(pods(kube, ns)) == 2 and pods(kube, ns), TIMEOUT, "2 pods")
    for pod in two:
        mark_ready(kube, pod)
    wait_for(lambda: msgl(kube, ns, "dl").get("status", {}).get("phase") == "Ready", TIMEOUT, "phase Ready")
    # Each transition event says "phase A -> B": chain them from the start.
    steps = dict(e["message"].removeprefix("phase ").split(" -> ") for e in events(kube, ns, "dl")
                 if e["reason"].startswith("Phase"))
    chain, phase = [], "None"
    while phase in steps and len(chain) < 10:
        phase = steps[phase]
        chain.append(phase)
    assert chain[0] == "Downloading" and chain[-1] == "Ready" and "Downloading" not in chain[1:], chain


def run_download_pod(kube: Kube, ns: str, job: dict, message: str) -> None:
    """What the job controller and the kubelet would do: a pod from the Job's template that
    succeeds and leaves `message` as its container's termination message."""
    meta = job["metadata"]
    labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": meta["name"]}
    pod = kube.request("POST", object_path("v1", "Pod", ns), body={
        "metadata": {"name": f"{meta['name']}-x1", "labels": labels, "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True}]},
        "spec": job["spec"]["template"]["spec"]})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_pod_status(kube, pod, {"phase": "Succeeded", "containerStatuses": [{
        "name": "download", "ready": False, "restartCount": 0, "image": "img", "imageID": "",
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                 "startedAt": now, "finishedAt": now}}}]})


def complete_job(kube: Kube, ns: str, name: str) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.request("PATCH", object_path("batch/v1", "Job", ns, name) + "/status",
                 content_type="application/merge-patch+json", body={"status": {
                     "active": 0, "succeeded": 1, "startTime": now, "completionTime": now, "conditions": [
                         {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
                         {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now}]}})


def test_startup_budget_scales_with_the_size_the_download_reported_and_workers_load_its_revision(kube, ns, operator):
    size = 140 * 10**9  # a 70B model in bf16
    create(kube, ns, "big", model={"path": "meta-llama/Llama-3.1-70B", "revision": "c0ffee1", "cache": {"pvcName": "m"}})
    job = wait_for(lambda: kube.list(object_path("batch/v1", "Job", ns)), TIMEOUT, "download Job")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    run_download_pod(kube, ns, job, json.dumps({"modelBytes": size}))
    complete_job(kube, ns, job["metadata"]["name"])
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "big"), TIMEOUT, "Deployment after the download")
    worker = dep["spec"]["template"]["spec"]["containers"][0]
    probe = worker["startupProbe"]
    budget = 600 + math.ceil(size / (50 * 2**20))  # docs/kubernetes.md: 600 s + bytes / 50 MiB/s
    assert probe["failureThreshold"] * probe["periodSeconds"] == math.ceil(budget / 10) * 10 > 1800
    assert {"name": "MINISGL_MODEL_REVISION", "value": "c0ffee1"} in worker["env"]
    status = wait_for(lambda: msgl(kube, ns, "big").get("status", {}).get("modelBytes") and msgl(kube, ns, "big")["status"],
                      TIMEOUT, "status.modelBytes")
    assert status["modelBytes"] == size and status["downloadJob"] == job["metadata"]["name"]
    assert dep["metadata"]["generation"] == 1  # built once, with the size: no second rollout
    # A new image does not touch the finished Job (its template is immutable): no ApplyRejected.
    patch_spec(kube, ns, "big", {"image": "ghcr.io/x/minisgl-worker:0.2.0"})
    wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "big")["spec"]["template"]["spec"]["containers"][0]["image"]
             == "ghcr.io/x/minisgl-worker:0.2.0", TIMEOUT, "new image rolled out")
    assert condition(msgl(kube, ns, "big"), "Degraded").get("reason") != "ApplyRejected"
    assert get(kube, "batch/v1", "Job", ns, job["metadata"]["name"])["spec"]["template"] == job["spec"]["template"]
    dep = get(kube, "apps/v1", "Deployment", ns, "big")
    assert dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"] == probe  # the size survives


def test_without_a_download_job_the_spec_sets_the_startup_budget(kube, ns, operator):
    create(kube, ns, "flat", probes={"startupTimeoutSeconds": 900})
    dep = wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "flat"), TIMEOUT, "Deployment")
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] == 900
    assert "modelBytes" not in msgl(kube, ns, "flat").get("status", {})
