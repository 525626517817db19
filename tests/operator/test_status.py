from __future__ import annotations

from typing import NamedTuple

from minisgl_operator.status import compute_status, failed_status, pod_problem

class Result(NamedTuple):  # unpacks as (status, events), like StatusUpdate without recheck_seconds
    status: dict
    events: list


NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"

UNSCHEDULABLE_POD = {  # as written by kube-scheduler
    "metadata": {"name": "qwen-7d9f-abcde"},
    "status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                   "available: 3 No preemption victims found for incoming pod."}]},
}
PULL_POD = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [{
    "name": "worker", "ready": False, "restartCount": 0,
    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"bad:tag\""}}}]}}
CRASH_POD = {"metadata": {"name": "c"}, "status": {"phase": "Running", "containerStatuses": [{
    "name": "worker", "ready": False, "restartCount": 5,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}}]}}
READY_POD = {"metadata": {"name": "r"}, "status": {"phase": "Running", "conditions": [
    {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]}}


def deployment(replicas: int, ready: int, updated: int, generation: int = 1, progressing: dict | None = None) -> dict:
    conds = [progressing] if progressing else [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    return {"metadata": {"generation": generation}, "status": {
        "observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
        "updatedReplicas": updated, "conditions": conds}}


def status(dep, pods, desired=2, previous=None, now=NOW, **kw):
    update = compute_status(generation=3, desired_replicas=desired, deployment=dep, pods=pods,
                            endpoint="http://q.ns.svc:8000/v1", selector="a=b", rollout="Auto",
                            previous=previous, now=now, **kw)
    return Result(update.status, update.events)


def cond(st: dict, ctype: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_unschedulable_pod_short_of_gpus_is_insufficient_gpu_with_the_scheduler_message():
    problem = pod_problem(UNSCHEDULABLE_POD)
    assert problem.reason == "InsufficientGPU"
    assert "3 Insufficient nvidia.com/gpu" in problem.message
    st, events = status(deployment(2, 1, 2), [READY_POD, UNSCHEDULABLE_POD])
    assert st["phase"] == "Degraded"
    assert cond(st, "Degraded")["reason"] == "InsufficientGPU"
    assert cond(st, "Ready")["status"] == "False" and cond(st, "Ready")["reason"] == "InsufficientGPU"
    assert any(e.type == "Warning" and e.reason == "InsufficientGPU" for e in events)


def test_unschedulable_for_other_reasons_is_not_blamed_on_gpus():
    other = {"metadata": {"name": "x"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}}
    assert pod_problem(other).reason == "Unschedulable"


def test_image_pull_and_crash_loop_reasons():
    assert pod_problem(PULL_POD).reason == "ImagePullBackOff"
    assert pod_problem(CRASH_POD).reason == "CrashLoopBackOff"
    assert pod_problem(READY_POD) is None
    st, _ = status(deployment(1, 0, 1), [CRASH_POD], desired=1)
    assert st["phase"] == "Degraded" and cond(st, "Degraded")["reason"] == "CrashLoopBackOff"


def test_all_ready_is_ready_with_endpoint_and_counts():
    st, events = status(deployment(2, 2, 2), [READY_POD, READY_POD])
    assert st["phase"] == "Ready" and st["readyReplicas"] == 2 and st["observedGeneration"] == 3
    assert st["endpoint"] == "http://q.ns.svc:8000/v1"
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Progressing")["reason"] == "Complete"
    assert cond(st, "Degraded")["status"] == "False"
    assert {e.reason for e in events} >= {"AllReplicasReady", "PhaseReady"}


def test_rolling_out_is_progressing_and_nothing_yet_is_pending():
    st, _ = status(deployment(3, 2, 1), [READY_POD, READY_POD])
    assert st["phase"] == "Progressing" and cond(st, "Progressing")["status"] == "True"
    st, _ = status(None, [])
    assert st["phase"] == "Pending"


def test_deadline_exceeded_is_failed():
    dead = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "q-1" has timed out progressing.'}
    st, _ = status(deployment(2, 1, 1, progressing=dead), [READY_POD])
    assert st["phase"] == "Failed"
    assert cond(st, "Progressing")["reason"] == "ProgressDeadlineExceeded"


def test_unchanged_state_keeps_transition_times_and_posts_no_events():
    first, _ = status(deployment(2, 2, 2), [READY_POD, READY_POD])
    again, events = status(deployment(2, 2, 2), [READY_POD, READY_POD], previous=first, now=LATER)
    assert again == first and events == []
    worse, events = status(deployment(2, 1, 2), [READY_POD, CRASH_POD], previous=first, now=LATER)
    assert cond(worse, "Ready")["lastTransitionTime"] == LATER
    assert [e.reason for e in events if e.type == "Warning"] == ["CrashLoopBackOff", "CrashLoopBackOff", "PhaseDegraded"]


def test_terminating_pods_are_not_problems():
    gone = {**CRASH_POD, "metadata": {"name": "c", "deletionTimestamp": NOW}}
    st, _ = status(deployment(1, 1, 1), [READY_POD, gone], desired=1)
    assert st["phase"] == "Ready"


def test_scaled_to_zero_is_ready():
    st, _ = status(deployment(0, 0, 0), [], desired=0)
    assert st["phase"] == "Ready" and cond(st, "Ready")["reason"] == "ScaledToZero"


def test_failed_status_for_an_invalid_spec():
    st, events, _ = failed_status(4, "InvalidSpec", "engine.tensorParallelSize must be ...", {"replicas": 1}, NOW)
    assert st["phase"] == "Failed" and st["replicas"] == 1 and st["observedGeneration"] == 4
    assert cond(st, "Degraded")["reason"] == "InvalidSpec"
    assert events and events[0].type == "Warning"


def waiting_pod(reason: str, message: str = "", last: dict | None = None, restarts: int = 0) -> dict:
    cs = {"name": "worker", "ready": False, "restartCount": restarts, "state": {"waiting": {"reason": reason,
                                                                                           "message": message}}}
    if last:
        cs["lastState"] = {"terminated": last}
    return {"metadata": {"name": "w"}, "status": {"phase": "Pending", "containerStatuses": [cs]}}


def test_missing_secret_is_its_own_reason_with_kubelets_message():
    st = status(deployment(1, 0, 1), [waiting_pod("CreateContainerConfigError", 'secret "hf" not found')]).status
    assert cond(st, "Degraded")["reason"] == "CreateContainerConfigError"
    assert 'secret "hf" not found' in cond(st, "Degraded")["message"]


def test_oom_killed_is_told_apart_from_other_crash_loops():
    oom = waiting_pod("CrashLoopBackOff", "back-off", {"reason": "OOMKilled", "exitCode": 137}, restarts=3)
    st = status(deployment(1, 0, 1), [oom]).status
    assert cond(st, "Degraded")["reason"] == "OOMKilled" and "exit code 137" in cond(st, "Degraded")["message"]
    other = waiting_pod("CrashLoopBackOff", "back-off", {"reason": "Error", "exitCode": 1})
    assert "last exit code 1" in cond(status(deployment(1, 0, 1), [other]).status, "Degraded")["message"]


def test_volume_events_explain_a_pod_stuck_creating():
    pod = waiting_pod("ContainerCreating")
    events = {"w": [{"reason": "FailedAttachVolume", "message": 'Multi-Attach error for volume "pvc-1"'}]}
    st = compute_status(generation=1, desired_replicas=1, deployment=deployment(1, 0, 1), pods=[pod], endpoint="e",
                        selector="s", rollout="r", previous=None, now=NOW, pod_events=events).status
    assert cond(st, "Degraded")["reason"] == "MultiAttach"
    events = {"w": [{"reason": "FailedMount", "message": "MountVolume.SetUp failed"}]}
    st = compute_status(generation=1, desired_replicas=1, deployment=deployment(1, 0, 1), pods=[pod], endpoint="e",
                        selector="s", rollout="r", previous=None, now=NOW, pod_events=events).status
    assert cond(st, "Degraded")["reason"] == "FailedMount"


def test_replica_failure_names_quota_and_pod_security():
    for message, reason in (('pods "q-1" is forbidden: exceeded quota: q, requested: pods=1', "QuotaExceeded"),
                            ('pods "q-1" is forbidden: violates PodSecurity "restricted:latest": runAsUser=0',
                             "PodSecurityViolation"), ("something else", "ReplicaFailure")):
        dep = deployment(0, 0, 0, progressing={"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                               "message": message})
        st = status(dep, [], desired=1).status
        assert cond(st, "Degraded")["reason"] == reason and message in cond(st, "Degraded")["message"]


def test_download_phases():
    from minisgl_operator.download import download_state

    job = {"metadata": {"name": "m-dl-1"}, "status": {"active": 1}}
    st = compute_status(generation=1, desired_replicas=2, deployment=None, pods=[], endpoint="e", selector="s",
                        rollout="r", previous=None, now=NOW, download=download_state(job)).status
    assert st["phase"] == "Downloading" and "1 active" in cond(st, "Progressing")["message"]
    job["status"] = {"failed": 5, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                  "message": "Job has reached the specified backoff limit"}]}
    st = compute_status(generation=1, desired_replicas=2, deployment=None, pods=[], endpoint="e", selector="s",
                        rollout="r", previous=None, now=NOW, download=download_state(job)).status
    assert st["phase"] == "Failed" and cond(st, "Degraded")["reason"] == "DownloadFailed"
    assert "BackoffLimitExceeded" in cond(st, "Degraded")["message"]


def test_starting_pods_phase_is_loading_then_warming_then_ready():
    starting = {"metadata": {"name": "s"}, "status": {"phase": "Running", "podIP": "10.0.0.9"}}
    st, events = status(deployment(2, 0, 2), [starting, dict(starting, metadata={"name": "t"})],
                        startup_phases={"s": "warming", "t": "loading"})
    assert st["phase"] == "Loading"  # the pod furthest from ready decides
    assert cond(st, "Ready")["reason"] == "Loading" and "pod t: loading the model weights" in cond(st, "Ready")["message"]
    assert "PhaseLoading" in {e.reason for e in events}
    st, _ = status(deployment(2, 0, 2), [starting], previous=st, startup_phases={"s": "warming", "t": "warming"})
    assert st["phase"] == "Warming" and cond(st, "Ready")["reason"] == "Warming"
    st, _ = status(deployment(2, 2, 2), [READY_POD, READY_POD], previous=st, startup_phases={})
    assert st["phase"] == "Ready"


def test_a_pod_problem_outranks_a_starting_phase():
    st, _ = status(deployment(2, 0, 2), [CRASH_POD], startup_phases={"s": "loading"})
    assert st["phase"] == "Degraded" and cond(st, "Ready")["reason"] == "CrashLoopBackOff"
