"""The worker pod template: `python -m minisgl` with flags from the spec, GPUs, shm, probes."""
from __future__ import annotations

import math

from minisgl_operator import CONTAINER_NAME, CONTAINER_PORT, GPU_RESOURCE
from minisgl_operator.merge import deep_merge
from minisgl_operator.spec import WorkerSpec

PRESTOP_SLEEP_SECONDS = 10  # endpoints drop the pod before SIGTERM reaches the worker
GRACE_MARGIN_SECONDS = 30
STARTUP_PERIOD_SECONDS = 10
# The startup budget (see startup_budget): a fixed part for what does not scale with the weights
# (process start, torch.compile / JIT, CUDA graph capture, warm-up) plus reading the weights at a
# rate that even network block storage sustains; without a measured size, a flat half hour.
DEFAULT_STARTUP_SECONDS = 1800
STARTUP_BASE_SECONDS = 600
LOAD_BYTES_PER_SECOND = 50 * 2**20
# A Deployment's progress deadline without an explicit one: the startup budget plus time to schedule
# the pod and pull a multi-GB image, so a long load is never reported as a stalled rollout.
PROGRESS_MARGIN_SECONDS = 900
WORKER_UID = 10001  # the user Dockerfile.worker creates; fsGroup makes fresh volumes writable to it
SCRATCH_PATH = "/tmp"  # the root filesystem is read-only: ipc sockets and JIT caches go here

# Pod Security "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# non-root, no privilege escalation, no capabilities, the runtime's default seccomp profile.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": WORKER_UID,
    "runAsGroup": WORKER_UID,
    "fsGroup": WORKER_UID,
    # Only chown a volume whose root is not already ours: a 16 GB cache is not walked at each start.
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
# The preStop `sleep` action needs Kubernetes 1.30; an exec of the image's own Python works on
# every version the docs support (1.28+).
PRESTOP = {"exec": {"command": ["python", "-c", f"import time; time.sleep({PRESTOP_SLEEP_SECONDS})"]}}


DEFAULT_CACHE_PATH = "/models"


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "minisgl-worker", "app.kubernetes.io/instance": name}


def common_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "minisgl",
        "app.kubernetes.io/managed-by": "minisgl-operator",
    }


API_KEYS_PATH = "/etc/minisgl/api-keys"
# Multi-node groups (a LeaderWorkerSet): node 0's torch.distributed rendezvous, port and port + 1.
DIST_PORT = 5000
# Injected into every container of a group by the LeaderWorkerSet's pod webhook; the kubelet
# expands $(VAR) in args from the container's environment.
LWS_LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
LWS_WORKER_INDEX = "$(LWS_WORKER_INDEX)"


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
        "--kv-cache-dtype": None if spec.kv_cache_dtype == "auto" else spec.kv_cache_dtype,
        "--max-queued-requests": spec.max_queued_requests,
        "--api-key-file": (None if spec.api_keys_secret is None
                           else f"{API_KEYS_PATH}/{spec.api_keys_secret.key}"),
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    if spec.multi_node:  # the same flags on every node; the rank comes from the pod's LWS index
        args += ["--nnodes", str(spec.nodes), "--node-rank", LWS_WORKER_INDEX,
                 "--dist-init-addr", f"{LWS_LEADER_ADDRESS}:{DIST_PORT}"]
    return args + list(spec.extra_args)


def cache_env(spec: WorkerSpec) -> list[dict]:
    """Where the weights and every JIT cache go: HF_HOME on the cache volume (a PVC or an
    emptyDir), compiled kernels beside them when that volume is writable, else in scratch."""
    home = spec.cache.mount_path if spec.cache is not None else DEFAULT_CACHE_PATH
    writable = spec.cache is None or not spec.cache.read_only
    jit = f"{home}/.flashinfer" if writable else f"{SCRATCH_PATH}/flashinfer"
    return [
        {"name": "HF_HOME", "value": home},
        {"name": "FLASHINFER_WORKSPACE_BASE", "value": jit},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_PATH}/cache"},
        {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH_PATH}/triton"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{SCRATCH_PATH}/inductor"},
        {"name": "CUDA_CACHE_PATH", "value": f"{SCRATCH_PATH}/nv"},
        # Anything else that writes under ~ (the image's home is on the read-only root filesystem).
        {"name": "HOME", "value": SCRATCH_PATH},
    ]


def model_env(spec: WorkerSpec) -> list[dict]:
    """The cache's env plus the Hub revision: minisgl.models resolves a repo id with
    $MINISGL_MODEL_REVISION, so workers load exactly what the download Job fetched."""
    env = cache_env(spec)
    if spec.hub_model:
        env.append({"name": "MINISGL_MODEL_REVISION", "value": spec.model_revision})
    return env


def cache_volume(spec: WorkerSpec) -> tuple[dict, dict]:
    """(volume, mount) of the model cache: the spec's PVC, else an emptyDir (the image's
    /models VOLUME is not writable under a read-only root filesystem)."""
    if spec.cache is None:
        return ({"name": "model-cache", "emptyDir": {}},
                {"name": "model-cache", "mountPath": DEFAULT_CACHE_PATH})
    return ({"name": "model-cache", "persistentVolumeClaim": {
                "claimName": spec.cache.pvc_name, "readOnly": spec.cache.read_only}},
            {"name": "model-cache", "mountPath": spec.cache.mount_path, "readOnly": spec.cache.read_only})


def _env(spec: WorkerSpec, offline: bool) -> list[dict]:
    env = model_env(spec)
    if offline:  # a download Job filled the cache: never fetch again from the pods
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
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


def startup_budget(spec: WorkerSpec, model_bytes: int | None = None) -> int:
    """Seconds a worker may take from start to /health. With a download Job that measured the
    snapshot (`model_bytes`): 600 s + bytes / 50 MiB/s, never below an explicit
    spec.probes.startupTimeoutSeconds; otherwise that value, or 1800 s when unset."""
    if spec.download_job and model_bytes:
        derived = STARTUP_BASE_SECONDS + math.ceil(model_bytes / LOAD_BYTES_PER_SECOND)
        return max(derived, spec.startup_timeout_seconds or 0)
    return spec.startup_timeout_seconds or DEFAULT_STARTUP_SECONDS


def progress_deadline(spec: WorkerSpec, model_bytes: int | None = None) -> int:
    """The Deployment's progressDeadlineSeconds: spec.rollout.progressDeadlineSeconds when set,
    else startup_budget + 900 s (scheduling, image pull)."""
    if spec.progress_deadline_seconds is not None:
        return spec.progress_deadline_seconds
    return startup_budget(spec, model_bytes) + PROGRESS_MARGIN_SECONDS


def _probes(spec: WorkerSpec, model_bytes: int | None) -> dict:
    def http(path: str, period: int, failures: int) -> dict:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    startup_failures = max(1, math.ceil(startup_budget(spec, model_bytes) / STARTUP_PERIOD_SECONDS))
    return {
        "startupProbe": http("/health", STARTUP_PERIOD_SECONDS, startup_failures),
        "readinessProbe": http("/ready", 5, 3),
        "livenessProbe": http("/health", 10, 3),
    }


def termination_grace_seconds(spec: WorkerSpec) -> int:
    return PRESTOP_SLEEP_SECONDS + spec.drain_timeout_seconds + GRACE_MARGIN_SECONDS


def build_pod_template(name: str, spec: WorkerSpec, offline: bool = False, model_bytes: int | None = None,
                       role: str = "server") -> dict:
    """The Deployment's pod template, with spec.podTemplate merged over it last. `offline`:
    the model is already in the cache (a download Job filled it); `model_bytes`: the size that
    Job reported, which sets the startup budget. `role`: "server" (one pod serves: a Deployment's,
    or a LeaderWorkerSet's leader) or "node" (a LeaderWorkerSet worker: scheduler ranks only, no
    HTTP port, no probes, and no endpoint to drain)."""
    if role not in ("server", "node"):
        raise ValueError(f"role must be 'server' or 'node', got {role!r}")
    cache, cache_mount = cache_volume(spec)
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": SCRATCH_PATH}, cache_mount]
    volumes: list[dict] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shared_memory}},
        {"name": "scratch", "emptyDir": {}},
        cache,
    ]
    if spec.api_keys_secret is not None:  # a mounted Secret: kubelet swaps it on change, the worker reloads
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.api_keys_secret.name}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_PATH, "readOnly": True})
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["python", "-m", "minisgl"],
        "args": worker_args(spec),
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": _env(spec, offline),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        **_probes(spec, model_bytes),
        "lifecycle": {"preStop": PRESTOP},
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
    }
    if spec.multi_node:
        dist = [{"name": "dist", "containerPort": DIST_PORT, "protocol": "TCP"},
                {"name": "dist-control", "containerPort": DIST_PORT + 1, "protocol": "TCP"}]
        container["ports"] = (container["ports"] if role == "server" else []) + dist
    if role == "node":
        for key in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
            container.pop(key)
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # the worker never calls the Kubernetes API
        "securityContext": dict(POD_SECURITY_CONTEXT),
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
    template: dict = {"metadata": {"labels": common_labels(name)}, "spec": pod_spec}
    if not spec.service_monitor:
        # One scrape path only: a ServiceMonitor, or annotations for an annotation-based Prometheus.
        template["metadata"]["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(CONTAINER_PORT),
            "prometheus.io/path": "/metrics",
        }
    if spec.pod_template:
        template = deep_merge(template, spec.pod_template)
        # The selector must keep matching whatever the user merged in.
        template["metadata"]["labels"] = {**template["metadata"].get("labels", {}), **selector_labels(name)}
    return template
