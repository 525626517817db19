"""The download Job: with a cache PVC, one Job per model revision fills it before any worker
starts, so N replicas do not each pull the weights (pure builders and the Job's state)."""
from __future__ import annotations

import hashlib
from typing import Mapping, NamedTuple

from minisgl_operator.pod import (CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT, SCRATCH_PATH, cache_volume,
                                  common_labels, model_env)
from minisgl_operator.spec import WorkerSpec

BACKOFF_LIMIT = 4
# snapshot_download resumes partial files, so a retried pod continues where the last one stopped.
SCRIPT = (
    "import os, sys\n"
    "from huggingface_hub import snapshot_download\n"
    "path = snapshot_download(sys.argv[1], revision=sys.argv[2], token=os.environ.get('HF_TOKEN') or None)\n"
    "print('downloaded', sys.argv[1], sys.argv[2], 'to', path, flush=True)\n"
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
            "command": ["python", "-c", SCRIPT, spec.model_path, spec.model_revision],
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
