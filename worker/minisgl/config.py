"""Engine and scheduler configuration: frozen dataclasses, validated on construction.

ServerArgs (server/args.py) builds one SchedulerConfig per tensor-parallel rank with
`dataclasses.replace(config, tp_rank=r)`.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_BACKENDS = ("torch", "fi", "fa3", "fa3,fi")
CACHE_TYPES = ("radix", "naive")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# auto: the model dtype; fp8_e4m3: K/V stored as float8 e4m3 (values clamped to +-448, no
# scale), half the bytes a token: twice the tokens in the same memory (not faster on an H200:
# the decode kernels stop being bandwidth-bound once they convert; README, Benchmarks).
KV_CACHE_DTYPES = ("auto", "fp8_e4m3")
# FlashInfer backends that read an FP8 cache (with a 16-bit query): its FA2 kernels. The
# FA3-template prefill is not built or tested for it here, so fa3 / fa3,fi refuse it.
FP8_KV_BACKENDS = ("torch", "fi")


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def auto_attention_backend(device: str, dtype: str = "auto", model_path: str | None = None,
                           kv_cache_dtype: str = "auto") -> str:
    """The fastest backend installed for the device (the server's and LLM's default).
    FlashInfer runs half precision only: float32 (asked for, or the config's) gets torch;
    an FP8 KV cache gets fi (FP8_KV_BACKENDS)."""
    import importlib.util

    if dtype == "auto" and model_path is not None and device == "cuda":
        try:
            from minisgl.models import resolve_model_path
            from minisgl.models.config import ModelConfig

            dtype = ModelConfig.from_path(resolve_model_path(model_path, weights=False)).torch_dtype
        except (ValueError, OSError):
            pass  # the engine reports a bad model path with its own message
    if dtype == "float32":
        return "torch"
    if device == "cuda" and importlib.util.find_spec("flashinfer"):
        import torch

        # Hopper: FA3-template prefill + FlashInfer decode, as Mini-SGLang defaults to.
        hopper = torch.cuda.get_device_capability()[0] == 9
        return "fa3,fi" if hopper and kv_cache_dtype == "auto" else "fi"
    return "torch"


def auto_cuda_graph_max_bs(attention_backend: str) -> int:
    return 256 if attention_backend != "torch" else 0


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    tokenizer_path: str | None = None  # None: the model directory's (structured output reads it)
    dtype: str = "auto"
    device: str = "cpu"  # "cpu" | "cuda"
    tp_rank: int = 0
    tp_size: int = 1
    page_size: int = 1
    num_pages: int | None = None  # None: sized from memory_ratio (cuda) or cpu_kv_budget_mb (cpu)
    memory_ratio: float = 0.9
    cpu_kv_budget_mb: int = 256
    attention_backend: str = "torch"
    dummy_weight: bool = False
    max_model_len: int | None = None  # None: from the model config
    cuda_graph_max_bs: int = 0  # 0: no CUDA graphs
    seed: int = 0
    dist_init_method: str | None = None  # e.g. file:///tmp/.../dist; needed when tp_size > 1
    max_running_requests: int = 256  # also sizes the engine's per-request device state
    nnodes: int = 1  # the tp ranks are spread over this many nodes, tp_size // nnodes each
    kv_cache_dtype: str = "auto"  # KV_CACHE_DTYPES

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.tp_size not in (1, 2, 4, 8):
            raise ValueError(f"--tp-size must be 1, 2, 4 or 8, got {self.tp_size}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} out of range for tp_size {self.tp_size}")
        if self.page_size < 1:
            raise ValueError(f"--page-size must be >= 1, got {self.page_size}")
        if self.num_pages is not None and self.num_pages < 2:
            raise ValueError(f"--num-pages must be >= 2, got {self.num_pages}")
        if not 0.0 < self.memory_ratio <= 1.0:
            raise ValueError(f"--memory-ratio must be in (0, 1], got {self.memory_ratio}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"--attention-backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                f"got {self.attention_backend!r}"
            )
        if self.device == "cpu" and self.attention_backend != "torch":
            raise ValueError(
                f"--attention-backend {self.attention_backend} needs --device cuda; use torch on cpu"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.kv_cache_dtype != "auto" and self.attention_backend not in FP8_KV_BACKENDS:
            raise ValueError(f"--kv-cache-dtype {self.kv_cache_dtype} runs on the "
                             f"{' or '.join(FP8_KV_BACKENDS)} attention backend, not "
                             f"{self.attention_backend}")
        if self.cuda_graph_max_bs < 0:
            raise ValueError(f"--cuda-graph-max-bs must be >= 0, got {self.cuda_graph_max_bs}")
        if self.max_running_requests < 1:
            raise ValueError(f"--max-running-requests must be >= 1, got {self.max_running_requests}")
        if self.tp_size > 1 and not self.dist_init_method:
            raise ValueError("tp_size > 1 needs dist_init_method")
        if self.nnodes < 1 or self.tp_size % self.nnodes:
            raise ValueError(f"--tp-size {self.tp_size} must be divisible by --nnodes {self.nnodes}")

    @property
    def is_driver(self) -> bool:
        return self.tp_rank == 0

    @property
    def local_rank(self) -> int:
        """This rank's index on its node: the GPU it uses (cuda:<local_rank>)."""
        return self.tp_rank % (self.tp_size // self.nnodes)


@dataclass(frozen=True)
class SchedulerConfig(EngineConfig):
    cache_type: str = "radix"
    max_prefill_length: int = 8192  # tokens per prefill batch (chunked prefill above it)
    # Overlap scheduling (build step N+1 while step N runs): None = on for cuda, off on cpu
    # (where it gains nothing); True/False force it (tests run it on the CPU).
    overlap: bool | None = None

    @property
    def use_overlap(self) -> bool:
        return self.device == "cuda" if self.overlap is None else self.overlap

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_type not in CACHE_TYPES:
            raise ValueError(
                f"--cache-type must be one of {', '.join(CACHE_TYPES)}, got {self.cache_type!r}"
            )
        if self.max_prefill_length < self.page_size or self.max_prefill_length < 16:
            raise ValueError(
                f"--max-prefill-length must be >= max(16, page size), got {self.max_prefill_length}"
            )
