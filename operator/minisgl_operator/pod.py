"""The worker pod template: `python -m minisgl` with flags from the spec, GPUs, shm, probes."""
from __future__ import annotations

import math

from minisgl_operator import CONTAINER_NAME, CONTAINER_PORT, GPU_RESOURCE
from minisgl_operator.merge import deep_merge
from minisgl_operator.spec import WorkerSpec

PRESTOP_SLEEP_SECONDS = 10  # endpoints drop the pod before SIGTERM reaches the worker
GRACE_MARGIN_SECONDS = 30
STARTUP_PERIOD_SECONDS = 10


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "minisgl-worker", "app.kubernetes.io/instance": name}


def common_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "minisgl",
        "app.kubernetes.io/managed-by": "minisgl-operator",
    }


def worker_args(spec: WorkerSpec) -> list[str]:
    """Flags of `python -m minisgl` (see the worker's CLI); extraArgs come last."""
    args = [
        "--model-path", spec.model_path,
        "--host", "0.0.0.0",
        "--port", str(CONTAINER_PORT),
        "--device", spec.device,
        "--tp-size", str(spec.tp_size),
        "--dtype", spec.dtype,
        "--cache-type", spec.cache_type,
        "--served-model-name", spec.served_name,
        "--shutdown-timeout", str(spec.drain_timeout_seconds),
    ]
    optional = {
        "--attention-backend": spec.attention_backend,
        "--max-running-requests": spec.max_running_requests,
        "--max-prefill-length": spec.max_prefill_length,
        "--page-size": spec.page_size,
        "--memory-ratio": spec.memory_ratio,
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    return args + list(spec.extra_args)


def _env(spec: WorkerSpec) -> list[dict]:
    env: list[dict] = []
    if spec.cache is not None:
        env.append({"name": "HF_HOME", "value": spec.cache.mount_path})
    if spec.token_secret is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.token_secret.name, "key": spec.token_secret.key}}})
    if spec.api_key_secret is not None:
        env.append({"name": "MINISGL_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": spec.api_key_secret.name, "key": spec.api_key_secret.key}}})
    return env + [dict(e) for e in spec.env]


def _resources(spec: WorkerSpec) -> dict:
    requests: dict = {}
    limits: dict = {}
    if spec.cpu is not None:
        requests["cpu"] = spec.cpu
    if spec.memory is not None:
        requests["memory"] = limits["memory"] = spec.memory
    if spec.gpus_per_pod:
        # Extended resources must be in limits; requests default to them.
        limits[GPU_RESOURCE] = spec.gpus_per_pod
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _probes(spec: WorkerSpec) -> dict:
    def http(path: str, period: int, failures: int) -> dict:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    startup_failures = max(1, math.ceil(spec.startup_timeout_seconds / STARTUP_PERIOD_SECONDS))
    return {
        "startupProbe": http("/health", STARTUP_PERIOD_SECONDS, startup_failures),
        "readinessProbe": http("/ready", 5, 3),
        "livenessProbe": http("/health", 10, 3),
    }


def termination_grace_seconds(spec: WorkerSpec) -> int:
    return PRESTOP_SLEEP_SECONDS + spec.drain_timeout_seconds + GRACE_MARGIN_SECONDS


def build_pod_template(name: str, spec: WorkerSpec) -> dict:
    """The Deployment's pod template, with spec.podTemplate merged over it last."""
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shared_memory}}]
    if spec.cache is not None:
        mounts.append({"name": "model-cache", "mountPath": spec.cache.mount_path, "readOnly": spec.cache.read_only})
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {
            "claimName": spec.cache.pvc_name, "readOnly": spec.cache.read_only}})
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["python", "-m", "minisgl"],
        "args": worker_args(spec),
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": _env(spec),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        **_probes(spec),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
    }
    if not container["env"]:
        del container["env"]
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "enableServiceLinks": False,
    }
    optional = {
        "nodeSelector": spec.node_selector or None,
        "tolerations": list(spec.tolerations) or None,
        "affinity": spec.affinity,
        "priorityClassName": spec.priority_class_name,
        "runtimeClassName": spec.runtime_class_name,
        "imagePullSecrets": [{"name": s} for s in spec.image_pull_secrets] or None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v is not None})
    template = {
        "metadata": {
            "labels": common_labels(name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(CONTAINER_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }
    if spec.pod_template:
        template = deep_merge(template, spec.pod_template)
        # The selector must keep matching whatever the user merged in.
        template["metadata"]["labels"] = {**template["metadata"].get("labels", {}), **selector_labels(name)}
    return template
