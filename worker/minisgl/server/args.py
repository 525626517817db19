"""Command line -> ServerArgs (frozen, validated before any process starts)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from minisgl.config import (ATTENTION_BACKENDS, CACHE_TYPES, DTYPES, KV_CACHE_DTYPES, SchedulerConfig, auto_attention_backend,
                            auto_cuda_graph_max_bs, auto_device)

ENV_API_KEY = "MINISGL_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class ServerArgs:
    model_path: str
    tokenizer_path: str | None = None  # None: the model directory's tokenizer
    dtype: str = "auto"
    tp_size: int = 1
    host: str = "127.0.0.1"
    port: int = 1919
    num_tokenizer: int = 0
    attention_backend: str = "auto"  # resolved by `resolved_attention_backend`
    cache_type: str = "radix"
    max_running_requests: int = 256
    memory_ratio: float = 0.9
    kv_cache_dtype: str = "auto"
    max_prefill_length: int = 8192
    page_size: int = 1
    num_pages: int | None = None
    max_model_len: int | None = None
    cuda_graph_max_bs: int | None = None  # None: 256 on cuda with FlashInfer, else 0
    dummy_weight: bool = False
    disable_overlap: bool = False
    device: str = "auto"  # resolved by `resolved_device`
    seed: int = 0
    served_model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_file: str | None = None  # many keys with optional rpm / tpm limits, reloaded on change
    max_queued_requests: int | None = None  # beyond max_running_requests; None: unbounded
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    shell_mode: bool = False
    allowed_origins: tuple[str, ...] = ()  # CORS; empty: no CORS headers
    reasoning_parser: str | None = None  # qwen3 | deepseek_r1: <think> -> reasoning_content
    tool_call_parser: str | None = None  # hermes | llama3_json | mistral; None: from the template
    chat_template: str | None = None  # a Jinja file (or the template text) replacing the tokenizer's
    nnodes: int = 1  # nodes the tensor-parallel ranks are spread over
    node_rank: int = 0  # 0: the leader (API server + ranks 0..); others run only their ranks
    dist_init_addr: str | None = None  # host:port of node 0; needed when nnodes > 1
    dist_timeout: float = 300.0  # seconds a node waits for the others to join

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if self.num_tokenizer < 0:
            raise ValueError(f"--num-tokenizer must be >= 0, got {self.num_tokenizer}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"--shutdown-timeout must be >= 0, got {self.shutdown_timeout}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"--max-model-len must be >= 2, got {self.max_model_len}")
        from minisgl.models import resolve_model_path

        resolve_model_path(self.model_path, weights=not self.dummy_weight)  # ValueError names the problem
        if self.chat_template is not None:
            load_chat_template(self.chat_template)
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError(f"--max-queued-requests must be >= 0, got {self.max_queued_requests}")
        if self.api_key_file is not None:
            from minisgl.server.access import AccessControl

            AccessControl(key_file=self.api_key_file)  # ValueError names the bad line
        if self.tokenizer_path is not None:
            from minisgl.models import resolve_tokenizer_path

            resolve_tokenizer_path(self.tokenizer_path)
        self._check_nodes()
        # Everything the engine checks (dtype, tp size, backend vs device, ...), checked now.
        self.to_scheduler_config(0, dist_init_method="file:///validate")

    def _check_nodes(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in [0, --nnodes {self.nnodes}), got {self.node_rank}")
        if self.tp_size % self.nnodes:
            raise ValueError(f"--tp-size {self.tp_size} must be divisible by --nnodes {self.nnodes} "
                             f"(every node runs the same number of ranks)")
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist-timeout must be > 0, got {self.dist_timeout}")
        if self.nnodes == 1:
            if self.dist_init_addr is not None:
                parse_host_port(self.dist_init_addr)
            return
        if self.dist_init_addr is None:
            raise ValueError("--dist-init-addr HOST:PORT (node 0's address) is required when --nnodes > 1")
        if self.shell_mode:
            raise ValueError("--shell-mode runs on one node; drop --nnodes")
        host, port = parse_host_port(self.dist_init_addr)
        if port > 65534:
            raise ValueError(f"--dist-init-addr port must be <= 65534 (port + 1 is used too), got {port}")

    @property
    def ranks_per_node(self) -> int:
        return self.tp_size // self.nnodes

    @property
    def local_ranks(self) -> range:
        """The tensor-parallel ranks this node runs."""
        first = self.node_rank * self.ranks_per_node
        return range(first, first + self.ranks_per_node)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_path

    @property
    def resolved_device(self) -> str:
        return auto_device() if self.device == "auto" else self.device

    @property
    def resolved_attention_backend(self) -> str:
        if self.attention_backend != "auto":
            return self.attention_backend
        return auto_attention_backend(self.resolved_device, self.dtype, self.model_path,
                                      self.kv_cache_dtype)

    @property
    def resolved_cuda_graph_max_bs(self) -> int:
        if self.cuda_graph_max_bs is not None:
            return self.cuda_graph_max_bs
        return auto_cuda_graph_max_bs(self.resolved_attention_backend)

    def to_scheduler_config(self, rank: int, dist_init_method: str | None = None) -> SchedulerConfig:
        return SchedulerConfig(
            model_path=self.model_path,
            dtype=self.dtype,
            device=self.resolved_device,
            tp_rank=rank,
            tp_size=self.tp_size,
            page_size=self.page_size,
            num_pages=self.num_pages,
            memory_ratio=self.memory_ratio,
            kv_cache_dtype=self.kv_cache_dtype,
            attention_backend=self.resolved_attention_backend,
            dummy_weight=self.dummy_weight,
            max_model_len=self.max_model_len,
            cuda_graph_max_bs=self.resolved_cuda_graph_max_bs,
            seed=self.seed,
            dist_init_method=dist_init_method if self.tp_size > 1 else None,
            cache_type=self.cache_type,
            max_running_requests=self.max_running_requests,
            max_prefill_length=self.max_prefill_length,
            overlap=False if self.disable_overlap else None,
            nnodes=self.nnodes,
            tokenizer_path=self.tokenizer_path,
        )


def parse_host_port(value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port); ValueError names the problem."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--dist-init-addr must be HOST:PORT with a port in [1, 65535], got {value!r}")
    return host, int(port)


def load_chat_template(value: str) -> str:
    """--chat-template: a file's contents, or the value itself when it is template text."""
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    if "{" in value:  # inline Jinja
        return value
    raise ValueError(f"--chat-template {value!r} is neither a readable file nor template text")


class _Formatter(argparse.HelpFormatter):
    """Show '(default: X)' only where there is a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != argparse.SUPPRESS \
                and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minisgl",
        description="Serve an LLM over an OpenAI-compatible HTTP API (or chat in a shell).",
        formatter_class=_Formatter,
        allow_abbrev=False,  # "--po" must not silently mean "--port"
    )
    d = ServerArgs.__dataclass_fields__
    m = p.add_argument_group("model")
    m.add_argument("--model-path", required=True,
                   help="directory with config.json, safetensors and tokenizer, or 'demo'")
    m.add_argument("--tokenizer-path",
                   help="tokenizer directory (default: --model-path's); e.g. for --dummy-weight "
                        "runs of a config-only model directory")
    m.add_argument("--dtype", default=d["dtype"].default, choices=DTYPES,
                   help="weight and activation dtype; auto: from the model config")
    m.add_argument("--dummy-weight", action="store_true",
                   help="random weights from the config (no checkpoint needed)")
    m.add_argument("--served-model-name", help="model name in the API (default: --model-path)")
    m.add_argument("--max-model-len", type=int,
                   help="context length (default: from the model config)")
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda if a GPU is visible")
    e.add_argument("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1,
                   help="tensor-parallel ranks, one process (and GPU) each")
    e.add_argument("--attention-backend", default="auto", choices=("auto", *ATTENTION_BACKENDS),
                   metavar="{auto,torch,fi,fa3,'fa3,fi'}",
                   help="'fa3,fi': FA3 prefill + FlashInfer decode; auto: fi on cuda if "
                        "FlashInfer is installed, else torch")
    e.add_argument("--cache-type", default=d["cache_type"].default, choices=CACHE_TYPES,
                   help="radix: share prompt prefixes across requests")
    e.add_argument("--max-running-requests", type=int, default=d["max_running_requests"].default,
                   help="requests in the running batch at most")
    e.add_argument("--memory-ratio", type=float, default=d["memory_ratio"].default,
                   help="fraction of free GPU memory for weights + KV cache")
    e.add_argument("--kv-cache-dtype", default=d["kv_cache_dtype"].default, choices=KV_CACHE_DTYPES,
                   help="auto: the model dtype; fp8_e4m3: half the bytes a token (twice the "
                        "tokens in the same memory; values clamped to +-448, no scale; fi or "
                        "torch backend, compute capability 8.9+)")
    e.add_argument("--max-prefill-length", type=int, default=d["max_prefill_length"].default,
                   help="tokens per prefill batch; longer prompts are chunked")
    e.add_argument("--page-size", type=int, default=d["page_size"].default,
                   help="tokens per KV cache page")
    e.add_argument("--num-pages", type=int,
                   help="KV cache pages (default: sized from --memory-ratio)")
    e.add_argument("--cuda-graph-max-bs", type=int, default=None,
                   help="largest decode batch captured in a CUDA graph; 0 disables them "
                        "(default: 256 with a FlashInfer backend on cuda, else 0)")
    e.add_argument("--disable-overlap", action="store_true",
                   help="run each step to completion before scheduling the next (overlap "
                        "scheduling is on by default on cuda)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed for unseeded requests")
    s = p.add_argument_group("server")
    s.add_argument("--host", default=d["host"].default, help="address to listen on")
    s.add_argument("--port", type=int, default=d["port"].default, help="HTTP port")
    s.add_argument("--num-tokenizer", type=int, default=0,
                   help="tokenizer processes; 0: the detokenizer process also tokenizes")
    s.add_argument("--allowed-origins", nargs="+", default=(), metavar="ORIGIN",
                   help="CORS: origins browsers may call the API from ('*' for any)")
    s.add_argument("--reasoning-parser", choices=("qwen3", "deepseek_r1"),
                   help="split <think>...</think> into the chat response's reasoning_content")
    s.add_argument("--tool-call-parser", choices=("hermes", "llama3_json", "mistral"),
                   help="how `tool_choice: auto` reads tool calls from the model's output "
                        "(default: what the chat template's markup implies)")
    s.add_argument("--chat-template",
                   help="Jinja chat template file (or template text) replacing the tokenizer's")
    s.add_argument("--api-key-file", metavar="FILE",
                   help="API keys, one per line with optional limits ('sk-a rpm=60 tpm=100000'); "
                        "reloaded when the file changes (e.g. a mounted Kubernetes Secret)")
    s.add_argument("--max-queued-requests", type=int, metavar="N",
                   help="requests that may wait beyond --max-running-requests; more get 503 "
                        "with Retry-After (default: unbounded)")
    s.add_argument("--api-key",
                   help=f"require 'Authorization: Bearer KEY' (default: ${ENV_API_KEY})")
    s.add_argument("--shutdown-timeout", type=float, default=d["shutdown_timeout"].default,
                   help="seconds in-flight requests get to finish after SIGTERM")
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log verbosity")
    s.add_argument("--shell-mode", action="store_true",
                   help="chat in the terminal instead of serving HTTP")
    n = p.add_argument_group("multi-node tensor parallelism")
    n.add_argument("--nnodes", type=int, default=1,
                   help="nodes the --tp-size ranks are split over (tp-size / nnodes per node)")
    n.add_argument("--node-rank", type=int, default=0,
                   help="this node: 0 runs the API server and ranks 0..; others run only their ranks")
    n.add_argument("--dist-init-addr", metavar="HOST:PORT",
                   help="node 0's address, the same on every node: node 0 listens on PORT "
                        "(the node group's control channel) and PORT+1 (torch.distributed)")
    n.add_argument("--dist-timeout", type=float, default=d["dist_timeout"].default,
                   help="seconds to wait for every node to join before failing")
    return p


def parse_args(argv: list[str] | None = None) -> ServerArgs:
    """Parse and validate; on a bad value print one line and exit with status 2."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    ns["allowed_origins"] = tuple(ns["allowed_origins"] or ())
    if ns["api_key"] is None:
        ns["api_key"] = os.environ.get(ENV_API_KEY) or None
    try:
        return ServerArgs(**ns)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
