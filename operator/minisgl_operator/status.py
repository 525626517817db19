"""Status of a MiniSGLDeployment, computed from its Deployment and pods (pure functions).

Pod problems become condition reasons: an Unschedulable pod short of GPUs is `InsufficientGPU`
(with the scheduler's message), image pull failures `ImagePullBackOff`, restart loops
`CrashLoopBackOff`; a Deployment past its progress deadline `ProgressDeadlineExceeded`.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from minisgl_operator import GPU_RESOURCE
from minisgl_operator.download import DownloadState

IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")
# Warning events on a pod (kubelet, attach-detach controller) that say why it never starts.
VOLUME_EVENT_REASONS = ("FailedAttachVolume", "FailedMount")
PHASES = ("Pending", "Downloading", "Loading", "Warming", "Progressing", "Ready", "Degraded", "Failed")
# A worker's own start-up phase (its /health) -> the resource's phase while no pod is Ready yet.
STARTUP_PHASES = {"loading": ("Loading", "loading the model weights"),
                  "warming": ("Warming", "warming up (JIT compile, CUDA graphs)")}


class Problem(NamedTuple):
    reason: str
    message: str


class Event(NamedTuple):
    type: str  # Normal | Warning
    reason: str
    message: str


class StatusUpdate(NamedTuple):
    status: dict
    events: list[Event]
    recheck_seconds: float | None = None  # reconcile again after this long (pods still starting)


def _started(pod: Mapping) -> bool:
    return any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated")
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _event_problem(name: str, events: Sequence[Mapping]) -> Problem | None:
    """FailedMount / Multi-Attach from the pod's Warning events (newest last)."""
    for event in reversed(events):
        if event.get("reason") in VOLUME_EVENT_REASONS:
            message = event.get("message") or event["reason"]
            reason = "MultiAttach" if "Multi-Attach" in message else "FailedMount"
            return Problem(reason, f"pod {name}: {message}")
    return None


def pod_problem(pod: Mapping, events: Sequence[Mapping] = ()) -> Problem | None:
    """The first thing keeping this pod from serving, as a condition reason, or None.
    `events`: the pod's recent Warning events, oldest first."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            message = cond.get("message") or "pod cannot be scheduled"
            reason = "InsufficientGPU" if f"Insufficient {GPU_RESOURCE}" in message else "Unschedulable"
            return Problem(reason, f"pod {name}: {message}")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        detail = waiting.get("message") or reason
        if reason in IMAGE_PULL_REASONS:
            return Problem("ImagePullBackOff", f"pod {name}, container {cs.get('name')}: {detail}")
        if reason in CONFIG_REASONS:
            return Problem(reason, f"pod {name}, container {cs.get('name')}: {detail}")
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled":
                return Problem("OOMKilled", f"pod {name}, container {cs.get('name')} was OOMKilled (exit code "
                                            f"{last.get('exitCode', 137)}, {cs.get('restartCount', 0)} restarts): "
                                            "raise spec.resources.memory or lower engine.memoryRatio")
            code = f" (last exit code {last['exitCode']}: {last.get('reason')})" if "exitCode" in last else ""
            return Problem("CrashLoopBackOff", f"pod {name}, container {cs.get('name')}: {detail}{code}")
    if not _started(pod):
        return _event_problem(name, events)
    return None


def replica_failure(deployment: Mapping | None) -> Problem | None:
    """The Deployment controller could not create pods (quota, Pod Security, ...)."""
    cond = _deployment_condition(deployment, "ReplicaFailure")
    if cond.get("status") != "True":
        return None
    message = cond.get("message") or cond.get("reason") or "pods cannot be created"
    if "exceeded quota" in message:
        return Problem("QuotaExceeded", message)
    if "violates PodSecurity" in message:
        return Problem("PodSecurityViolation", message)
    return Problem("ReplicaFailure", message)


def _least_advanced(phases: Mapping[str, str]) -> tuple[str, str] | None:
    """(pod, phase) of the pod furthest from ready: loading before warming, then by name."""
    order = list(STARTUP_PHASES)
    known = sorted((order.index(ph), pod) for pod, ph in phases.items() if ph in STARTUP_PHASES)
    return (known[0][1], order[known[0][0]]) if known else None


def _deployment_condition(deployment: Mapping | None, ctype: str) -> Mapping:
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return {}


def _condition(ctype: str, ok: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": ctype, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}


def _merge_conditions(old: Sequence[Mapping], new: list[dict], now: str) -> tuple[list[dict], list[dict]]:
    """Carry lastTransitionTime over unchanged conditions; return (conditions, changed ones)."""
    previous = {c.get("type"): c for c in old or []}
    merged, changed = [], []
    for cond in new:
        before = previous.get(cond["type"])
        if before and before.get("status") == cond["status"]:
            cond["lastTransitionTime"] = before.get("lastTransitionTime") or now
        else:
            cond["lastTransitionTime"] = now
        if not before or (before.get("status"), before.get("reason")) != (cond["status"], cond["reason"]):
            changed.append(cond)
        merged.append(cond)
    return merged, changed


def compute_status(
    *,
    generation: int,
    desired_replicas: int,
    deployment: Mapping | None,
    pods: Sequence[Mapping],
    endpoint: str,
    selector: str,
    rollout: str,
    previous: Mapping | None,
    now: str,
    pod_events: Mapping[str, Sequence[Mapping]] | None = None,
    download: DownloadState | None = None,
    startup_phases: Mapping[str, str] | None = None,
) -> StatusUpdate:
    """`pod_events`: pod name -> its Warning events; `download`: the download Job's state
    while the model is not in the cache yet (None: no Job, or it finished); `startup_phases`:
    pod name -> "loading" | "warming" as the starting pods' /health report it."""
    previous = previous or {}
    pod_events = pod_events or {}
    dstatus = (deployment or {}).get("status") or {}
    replicas = int(dstatus.get("replicas") or 0)
    ready = int(dstatus.get("readyReplicas") or 0)
    updated = int(dstatus.get("updatedReplicas") or 0)
    live_pods = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    problems = [p for p in (pod_problem(pod, pod_events.get(pod["metadata"].get("name"), ())) for pod in live_pods)
                if p is not None]
    failure = replica_failure(deployment)
    if failure is not None:
        problems.insert(0, failure)
    if download is not None and download.failed:
        problems.insert(0, Problem("DownloadFailed", download.message))
    progress = _deployment_condition(deployment, "Progressing")
    deadline = progress.get("status") == "False" and progress.get("reason") == "ProgressDeadlineExceeded"
    if deadline:
        problems.insert(0, Problem("ProgressDeadlineExceeded", progress.get("message") or "rollout stalled"))
    settled = (
        deployment is not None
        and (dstatus.get("observedGeneration") or 0) >= ((deployment.get("metadata") or {}).get("generation") or 0)
        and updated >= desired_replicas and replicas == desired_replicas and ready >= desired_replicas
    )
    problem = problems[0] if problems else None

    downloading = download is not None and not download.done and not download.failed
    if problem is not None and problem.reason in ("ProgressDeadlineExceeded", "DownloadFailed"):
        phase = "Failed"
    elif downloading and problem is None:
        phase = "Downloading"
    elif problem is not None:
        phase = "Degraded"
    elif settled:
        phase = "Ready"
    elif deployment is None or (replicas == 0 and desired_replicas > 0):
        phase = "Pending"
    else:
        phase = "Progressing"
    starting = _least_advanced(startup_phases or {})
    if starting is not None and phase in ("Pending", "Progressing") and ready < max(desired_replicas, 1):
        phase = STARTUP_PHASES[starting[1]][0]

    counts = f"{ready}/{desired_replicas} replicas ready"
    if settled and problem is None:
        ready_cond = _condition("Ready", True, "AllReplicasReady" if desired_replicas else "ScaledToZero", counts, generation)
    elif problem is not None:
        ready_cond = _condition("Ready", False, problem.reason, f"{counts}; {problem.message}", generation)
    elif downloading:
        ready_cond = _condition("Ready", False, "Downloading", f"{counts}; {download.message}", generation)
    elif phase in ("Loading", "Warming"):
        ready_cond = _condition("Ready", False, phase,
                                f"{counts}; pod {starting[0]}: {STARTUP_PHASES[starting[1]][1]}", generation)
    else:
        ready_cond = _condition("Ready", False, "ReplicasNotReady", counts, generation)
    if deadline:
        progressing = _condition("Progressing", False, "ProgressDeadlineExceeded", problem.message, generation)
    elif downloading:
        progressing = _condition("Progressing", True, "Downloading", download.message, generation)
    elif settled:
        progressing = _condition("Progressing", False, "Complete", counts, generation)
    else:
        progressing = _condition("Progressing", True, "RollingOut",
                                 f"{updated} updated, {replicas} total, {counts}", generation)
    degraded = (_condition("Degraded", True, problem.reason, problem.message, generation) if problem
                else _condition("Degraded", False, "AsExpected", "no pod problems", generation))

    conditions, changed = _merge_conditions(previous.get("conditions") or [], [ready_cond, progressing, degraded], now)
    events = []
    for cond in changed:
        bad = (cond["type"] == "Degraded") == (cond["status"] == "True")
        events.append(Event("Warning" if bad and cond["type"] != "Progressing" else "Normal", cond["reason"],
                            f"{cond['type']}={cond['status']}: {cond['message']}"))
    if previous.get("phase") != phase:
        events.append(Event("Warning" if phase in ("Degraded", "Failed") else "Normal", f"Phase{phase}",
                            f"phase {previous.get('phase') or 'None'} -> {phase}"))
    status = {
        "observedGeneration": generation,
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "selector": selector,
        "endpoint": endpoint,
        "rolloutStrategy": rollout,
        "conditions": conditions,
    }
    return StatusUpdate(status, events)


def failed_status(generation: int, reason: str, message: str, previous: Mapping | None, now: str) -> StatusUpdate:
    """Status for a spec that cannot work (the operator raised kopf.PermanentError)."""
    previous = previous or {}
    conds = [_condition("Ready", False, reason, message, generation),
             _condition("Progressing", False, reason, message, generation),
             _condition("Degraded", True, reason, message, generation)]
    conditions, changed = _merge_conditions(previous.get("conditions") or [], conds, now)
    events = [Event("Warning", reason, message)] if changed else []
    status = {**{k: v for k, v in previous.items() if k != "conditions"},
              "observedGeneration": generation, "phase": "Failed", "conditions": conditions}
    return StatusUpdate(status, events)
