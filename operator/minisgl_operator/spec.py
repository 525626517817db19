"""The MiniSGLDeployment spec as a typed, defaulted, validated value.

The CRD's schema applies the same defaults and CEL rules at admission; parsing again here keeps
the builders pure and correct for objects admitted before a rule existed (or without the CRD's
defaulting, as in unit tests). A spec that cannot work raises ValueError with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

TP_SIZES = (1, 2, 4, 8, 16, 32, 64)  # above 8: over several nodes (engine.nodes, a LeaderWorkerSet)
GPUS_PER_NODE = 8  # assumed when a tensor-parallel size is larger than one node's GPUs and nothing says
DEVICES = ("cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_BACKENDS = ("torch", "fi", "fa3", "fa3,fi")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3")
FP8_KV_BACKENDS = ("torch", "fi")  # the worker's config.FP8_KV_BACKENDS
CACHE_TYPES = ("radix", "naive")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
STRATEGIES = ("Auto", "RollingUpdate", "Recreate")
METRICS = ("waiting-requests", "kv-usage")
DEFAULT_TARGETS = {"waiting-requests": 4.0, "kv-usage": 0.8}
DEFAULT_EPP_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.2.0"
MANAGED_FLAGS = ("--model-path", "--host", "--port", "--tp-size", "--tensor-parallel-size",
                 "--device")


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class ModelCache:
    pvc_name: str
    mount_path: str = "/models"
    read_only: bool = False
    download: bool = True  # fill the PVC with a download Job before any worker starts


@dataclass(frozen=True)
class ScaleToZero:
    prometheus_address: str  # what KEDA queries (http://prometheus.monitoring:9090)
    idle_seconds: int = 900  # every trigger inactive this long: scale to 0
    wake_query: str | None = None  # PromQL over requests seen while no replica exists


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metric: str
    target: float
    scale_to_zero: ScaleToZero | None = None  # with KEDA: a ScaledObject instead of the HPA


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    model_path: str
    replicas: int = 1
    model_revision: str = "main"
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    served_model_name: str | None = None
    token_secret: SecretRef | None = None
    cache: ModelCache | None = None
    tp_size: int = 1
    nodes: int = 1  # > 1: one LeaderWorkerSet group of this many pods per replica
    device: str = "cuda"
    dtype: str = "auto"
    attention_backend: str | None = None
    cache_type: str = "radix"
    max_running_requests: int | None = None
    max_prefill_length: int | None = None
    page_size: int | None = None
    memory_ratio: float | None = None
    kv_cache_dtype: str = "auto"
    extra_args: tuple[str, ...] = ()
    gpu: int = 1
    cpu: Any = None
    memory: Any = None
    shared_memory: Any = "16Gi"
    env: tuple[dict, ...] = ()
    service_type: str = "ClusterIP"
    service_port: int = 8000
    cluster_ip: str | None = None
    service_annotations: dict = field(default_factory=dict)
    api_key_secret: SecretRef | None = None
    api_keys_secret: SecretRef | None = None  # a key file (keys with rpm / tpm), mounted
    max_queued_requests: int | None = None
    node_selector: dict = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    affinity: dict | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    startup_timeout_seconds: int | None = None  # unset: derived from the model's size (pod.startup_budget)
    drain_timeout_seconds: int = 120
    rollout_strategy: str = "Auto"
    progress_deadline_seconds: int | None = None  # unset: the startup budget + a margin (pod.progress_deadline)
    service_monitor: bool = True
    monitor_interval: str = "15s"
    monitor_labels: dict = field(default_factory=dict)
    autoscaling: Autoscaling | None = None
    pod_template: dict | None = None
    routing: Any = None  # routing.Routing: an InferencePool (and its endpoint picker)

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model_path

    @property
    def hub_model(self) -> bool:
        """A Hugging Face repo id (downloadable), not a directory inside the image or a volume."""
        return not self.model_path.startswith(("/", "."))

    @property
    def download_job(self) -> bool:
        return self.cache is not None and self.cache.download and not self.cache.read_only and self.hub_model

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def gpus_per_pod(self) -> int:
        return self.gpu if self.device == "cuda" else 0


def _choice(value: Any, allowed: tuple, what: str) -> Any:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _opt_int(value: Any, what: str, minimum: int) -> int | None:
    return None if value is None else _int(value, what, minimum)


def _secret(ref: Mapping | None, default_key: str, what: str) -> SecretRef | None:
    if not ref:
        return None
    if not ref.get("name"):
        raise ValueError(f"{what}.name is required")
    return SecretRef(name=ref["name"], key=ref.get("key") or default_key)


def _nodes(raw: Any, tp: int, device: str, gpu: Any) -> int:
    """engine.nodes, or derived: a tensor-parallel size larger than one pod's GPUs (resources.gpu,
    else GPUS_PER_NODE) spreads over tp / gpus nodes."""
    if raw is not None:
        nodes = _int(raw, "engine.nodes", 1)
    elif device == "cuda" and not isinstance(gpu, bool) and isinstance(gpu, int) and 0 < gpu < tp:
        nodes = tp // gpu if tp % gpu == 0 else 0
        if not nodes:
            raise ValueError(f"engine.tensorParallelSize {tp} must be a multiple of resources.gpu {gpu} "
                             "to spread over nodes")
    elif device == "cuda" and gpu is None and tp > GPUS_PER_NODE:
        nodes = tp // GPUS_PER_NODE
    else:
        nodes = 1
    if tp % nodes:
        raise ValueError(f"engine.tensorParallelSize {tp} must be divisible by engine.nodes {nodes} "
                         "(every node runs the same number of ranks)")
    return nodes


def _routing(raw: Mapping | None, default_epp_image: str | None) -> Any:
    from minisgl_operator.routing import EPP_GRPC_PORT, FAILURE_MODES, Routing

    if raw is None:
        return None
    picker = raw.get("endpointPicker") or {}
    ref = picker.get("serviceRef")
    if ref is not None and picker.get("image"):
        raise ValueError("routing.endpointPicker: set serviceRef (an existing picker) or image, not both")
    if ref is not None and not ref.get("name"):
        raise ValueError("routing.endpointPicker.serviceRef.name is required")
    return Routing(
        failure_mode=_choice(raw.get("failureMode", "FailClose"), FAILURE_MODES, "routing.failureMode"),
        image=None if ref is not None else (picker.get("image") or default_epp_image or DEFAULT_EPP_IMAGE),
        replicas=_int(picker.get("replicas", 1), "routing.endpointPicker.replicas", 1),
        service_ref=None if ref is None else ref["name"],
        service_port=_int((ref or {}).get("port", EPP_GRPC_PORT), "routing.endpointPicker.serviceRef.port", 1),
    )


def parse_spec(spec: Mapping[str, Any], default_image: str | None = None,
               default_epp_image: str | None = None) -> WorkerSpec:
    """Turn a MiniSGLDeployment .spec into a WorkerSpec, or raise ValueError saying why not.
    `default_image` is the operator's configured worker image (the chart's workers.image),
    `default_epp_image` its endpoint picker image (routing.endpointPickerImage)."""
    image = spec.get("image") or default_image
    if not image:
        raise ValueError("spec.image is required: the operator has no default worker image "
                         "(set the chart value workers.image or --worker-image)")
    model = spec.get("model") or {}
    if not model.get("path"):
        raise ValueError("spec.model.path is required")
    engine = spec.get("engine") or {}
    resources = spec.get("resources") or {}
    service = spec.get("service") or {}
    scheduling = spec.get("scheduling") or {}

    tp = _choice(engine.get("tensorParallelSize", 1), TP_SIZES, "engine.tensorParallelSize")
    device = _choice(engine.get("device", "cuda"), DEVICES, "engine.device")
    nodes = _nodes(engine.get("nodes"), tp, device, resources.get("gpu"))
    ranks_per_node = tp // nodes
    gpu = _int(resources.get("gpu", ranks_per_node if device == "cuda" else 0), "resources.gpu", 0)
    if device == "cuda" and gpu < ranks_per_node:
        raise ValueError(
            f"resources.gpu must be >= engine.tensorParallelSize / engine.nodes (one GPU per tensor-parallel "
            f"rank on each node): gpu={gpu}, tensorParallelSize={tp}, nodes={nodes}"
        )
    memory_ratio = engine.get("memoryRatio")
    if memory_ratio is not None and not 0 < float(memory_ratio) <= 1:
        raise ValueError(f"engine.memoryRatio must be in (0, 1], got {memory_ratio}")
    kv_cache_dtype = _choice(engine.get("kvCacheDtype", "auto"), KV_CACHE_DTYPES,
                             "engine.kvCacheDtype")
    backend = engine.get("attentionBackend")
    if backend is not None:
        backend = _choice(backend, ATTENTION_BACKENDS, "engine.attentionBackend")
    if kv_cache_dtype != "auto" and backend is not None and backend not in FP8_KV_BACKENDS:
        raise ValueError(f"engine.kvCacheDtype {kv_cache_dtype} needs engine.attentionBackend "
                         f"{' or '.join(FP8_KV_BACKENDS)} (or unset), got {backend}")
    extra_args = tuple(str(a) for a in engine.get("extraArgs") or ())
    for arg in extra_args:
        if any(arg == f or arg.startswith(f + "=") for f in MANAGED_FLAGS):
            raise ValueError(f"engine.extraArgs must not set {arg.split('=')[0]}: the operator sets it")

    cache = None
    if model.get("cache"):
        c = model["cache"]
        if not c.get("pvcName"):
            raise ValueError("model.cache.pvcName is required")
        cache = ModelCache(c["pvcName"], c.get("mountPath") or "/models", bool(c.get("readOnly", False)),
                           bool(c.get("download", True)))

    autoscaling = None
    if spec.get("autoscaling"):
        a = spec["autoscaling"]
        metric = _choice(a.get("metric", "waiting-requests"), METRICS, "autoscaling.metric")
        lo = _int(a.get("minReplicas", 1), "autoscaling.minReplicas", 1)
        hi = _int(a.get("maxReplicas", lo), "autoscaling.maxReplicas", 1)
        if lo > hi:
            raise ValueError(f"autoscaling.minReplicas must be <= autoscaling.maxReplicas ({lo} > {hi})")
        target = float(a.get("target", DEFAULT_TARGETS[metric]))
        if target <= 0:
            raise ValueError(f"autoscaling.target must be > 0, got {target}")
        zero = None
        if a.get("scaleToZero"):
            z = a["scaleToZero"]
            address = z.get("prometheusAddress") or ""
            if not address.startswith(("http://", "https://")):
                raise ValueError(f"autoscaling.scaleToZero.prometheusAddress must be an http(s) URL, got {address!r}")
            zero = ScaleToZero(address, _int(z.get("idleSeconds", 900), "autoscaling.scaleToZero.idleSeconds", 60),
                               z.get("wakeQuery") or None)
        autoscaling = Autoscaling(lo, hi, metric, target, zero)

    probes = spec.get("probes") or {}
    shutdown = spec.get("shutdown") or {}
    rollout = spec.get("rollout") or {}
    monitoring = spec.get("monitoring") or {}
    auth = spec.get("auth") or {}
    api_key = auth.get("apiKeySecretRef") or service.get("apiKeySecretRef")  # service.*: older name
    return WorkerSpec(
        image=image,
        model_path=model["path"],
        model_revision=model.get("revision") or "main",
        replicas=_int(spec.get("replicas", 1), "spec.replicas", 0),
        image_pull_policy=spec.get("imagePullPolicy"),
        image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or ()),
        served_model_name=model.get("servedModelName"),
        token_secret=_secret(model.get("tokenSecretRef"), "token", "model.tokenSecretRef"),
        cache=cache,
        tp_size=tp,
        nodes=nodes,
        device=device,
        dtype=_choice(engine.get("dtype", "auto"), DTYPES, "engine.dtype"),
        attention_backend=backend,
        cache_type=_choice(engine.get("cacheType", "radix"), CACHE_TYPES, "engine.cacheType"),
        max_running_requests=_opt_int(engine.get("maxRunningRequests"), "engine.maxRunningRequests", 1),
        max_prefill_length=_opt_int(engine.get("maxPrefillLength"), "engine.maxPrefillLength", 1),
        page_size=_opt_int(engine.get("pageSize"), "engine.pageSize", 1),
        memory_ratio=None if memory_ratio is None else float(memory_ratio),
        kv_cache_dtype=kv_cache_dtype,
        extra_args=extra_args,
        gpu=gpu,
        cpu=resources.get("cpu"),
        memory=resources.get("memory"),
        shared_memory=resources.get("sharedMemory", "16Gi"),
        env=tuple(spec.get("env") or ()),
        service_type=_choice(service.get("type", "ClusterIP"), SERVICE_TYPES, "service.type"),
        service_port=_int(service.get("port", 8000), "service.port", 1),
        cluster_ip=service.get("clusterIP"),
        service_annotations=dict(service.get("annotations") or {}),
        api_key_secret=_secret(api_key, "api-key", "auth.apiKeySecretRef"),
        api_keys_secret=_secret(auth.get("apiKeysSecretRef"), "keys", "auth.apiKeysSecretRef"),
        max_queued_requests=_opt_int(auth.get("maxQueuedRequests"), "auth.maxQueuedRequests", 0),
        node_selector=dict(scheduling.get("nodeSelector") or {}),
        tolerations=tuple(scheduling.get("tolerations") or ()),
        affinity=scheduling.get("affinity"),
        priority_class_name=scheduling.get("priorityClassName"),
        runtime_class_name=scheduling.get("runtimeClassName"),
        startup_timeout_seconds=_opt_int(probes.get("startupTimeoutSeconds"), "probes.startupTimeoutSeconds", 10),
        drain_timeout_seconds=_int(shutdown.get("drainTimeoutSeconds", 120), "shutdown.drainTimeoutSeconds", 0),
        rollout_strategy=_choice(rollout.get("strategy", "Auto"), STRATEGIES, "rollout.strategy"),
        progress_deadline_seconds=_opt_int(rollout.get("progressDeadlineSeconds"), "rollout.progressDeadlineSeconds", 60),
        service_monitor=bool(monitoring.get("serviceMonitor", True)),
        monitor_interval=monitoring.get("interval") or "15s",
        monitor_labels=dict(monitoring.get("labels") or {}),
        autoscaling=autoscaling,
        pod_template=spec.get("podTemplate") or None,
        routing=_routing(spec.get("routing"), default_epp_image),
    )
