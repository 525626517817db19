"""The download Job: with a cache PVC, one Job per model revision fills it before any worker
starts, so N replicas do not each pull the weights (pure builders and the Job's state)."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, NamedTuple, Sequence

from minisgl_operator.pod import (CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT, SCRATCH_PATH, cache_volume,
                                  common_labels, model_env)
from minisgl_operator.spec import WorkerSpec

BACKOFF_LIMIT = 4
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's own mount: writable under a read-only root
# snapshot_download resumes partial files, so a retried pod continues where the last one stopped.
# argv: termination log, repo, revision. The snapshot's files are symlinks into blobs/: getsize
# follows them, so the size is that of the weights the workers will read.
SCRIPT = (
    "import json, os, sys\n"
    "from huggingface_hub import snapshot_download\n"
    "log, repo, revision = sys.argv[1:4]\n"
    "path = snapshot_download(repo, revision=revision, token=os.environ.get('HF_TOKEN') or None)\n"
    "size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)\n"
    "with open(log, 'w') as f:\n"
    "    json.dump({'modelBytes': size}, f)\n"
    "print('downloaded', repo, revision, 'to', path, size, 'bytes', flush=True)\n"
)


class DownloadState(NamedTuple):
    done: bool
    failed: bool
    message: str


def download_job_name(name: str, spec: WorkerSpec) -> str:
    """One name per (model, revision): a new revision gets a new Job, the same one never twice."""
    digest = hashlib.sha256(f"{spec.model_path}@{spec.model_revision}".encode()).hexdigest()[:8]
    return f"{name[:50].rstrip('-')}-dl-{digest}"


def build_download_job(name: str, spec: WorkerSpec, metadata: dict) -> dict:
    """`metadata` comes from the builders (owner reference, labels); name and labels are set here."""
    volume, mount = cache_volume(spec)
    env = model_env(spec)
    if spec.token_secret is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.token_secret.name, "key": spec.token_secret.key}}})
    # Not the workers' app.kubernetes.io/name: the Service, PDB and HPA must not select these pods.
    labels = {**common_labels(name), "app.kubernetes.io/name": "minisgl-model-download",
              "app.kubernetes.io/component": "model-download"}
    pod_spec = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": [{
            "name": "download",
            "image": spec.image,
            "command": ["python", "-c", SCRIPT, TERMINATION_LOG, spec.model_path, spec.model_revision],
            "terminationMessagePath": TERMINATION_LOG,
            # A failed download shows the tail of its log in the pod's status instead.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "env": env,
            "volumeMounts": [mount, {"name": "scratch", "mountPath": SCRATCH_PATH}],
            "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        }],
        "volumes": [volume, {"name": "scratch", "emptyDir": {}}],
    }
    for key in ("imagePullPolicy",):
        if spec.image_pull_policy:
            pod_spec["containers"][0][key] = spec.image_pull_policy
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**metadata, "name": download_job_name(name, spec), "labels": labels},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def download_state(job: Mapping | None) -> DownloadState:
    """Where the download stands, from the Job's status as the job controller writes it."""
    if job is None:
        return DownloadState(False, False, "download Job not created yet")
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return DownloadState(True, False, f"Job {name} completed")
        if cond.get("type") == "Failed":
            return DownloadState(False, True, f"Job {name} failed: {cond.get('reason')}: {cond.get('message') or ''}".rstrip(": "))
    active, failed = int(status.get("active") or 0), int(status.get("failed") or 0)
    return DownloadState(False, False, f"Job {name}: {active} active, {failed} failed of {BACKOFF_LIMIT + 1} attempts")


def reported_model_bytes(job_name: str, pods: Sequence[Mapping]) -> int | None:
    """The snapshot size a succeeded pod of the Job wrote to its termination message, or None
    (no such pod cached, or a Job of an older operator that reported nothing)."""
    for pod in pods:
        refs = pod["metadata"].get("ownerReferences") or ()
        if not any(r.get("kind") == "Job" and r.get("name") == job_name for r in refs):
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0:
                continue
            try:
                size = int(json.loads(terminated.get("message") or "")["modelBytes"])
            except (ValueError, TypeError, KeyError):
                continue
            if size > 0:
                return size
    return None


def has_finished_pod(job_name: str, pods: Sequence[Mapping]) -> bool:
    """A pod of the Job is cached as Succeeded: whatever it reported, the cache has it."""
    return any((p.get("status") or {}).get("phase") == "Succeeded"
               and any(r.get("kind") == "Job" and r.get("name") == job_name
                       for r in p["metadata"].get("ownerReferences") or ())
               for p in pods)
