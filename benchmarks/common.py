"""Shared benchmark helpers: the seeded workloads, engine options, hardware anchors, records."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).parent / "configs"


def offline_workload(n: int, in_range: tuple[int, int], out_range: tuple[int, int], seed: int = 0,
                     vocab: int = 10000) -> list[tuple[list[int], int]]:
    """BENCHMARKS.md's offline-256 generator (defaults 100-1024 / 100-1024, ids < 10000)."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        in_len, out_len = rng.randint(*in_range), rng.randint(*out_range)
        reqs.append(([rng.randint(0, min(9999, vocab - 1)) for _ in range(in_len)], out_len))
    return reqs


def shared_prefix_workload(groups: int = 16, per_group: int = 64, prefix_len: int = 1024,
                           question_range: tuple[int, int] = (64, 256), output_len: int = 128,
                           seed: int = 0, vocab: int = 10000) -> list[tuple[list[int], int]]:
    """BENCHMARKS.md's shared-prefix generator: `groups` system prompts x `per_group` questions."""
    rng = random.Random(seed)
    top = min(9999, vocab - 1)
    prefixes = [[rng.randint(0, top) for _ in range(prefix_len)] for _ in range(groups)]
    reqs = [(prefixes[g] + [rng.randint(0, top) for _ in range(rng.randint(*question_range))],
             output_len) for g in range(groups) for _ in range(per_group)]
    rng.shuffle(reqs)
    return reqs


def latency_prompt(input_len: int = 128, seed: int = 1, vocab: int = 10000) -> list[int]:
    """BENCHMARKS.md's latency-b1 prompt: Random(1), `input_len` ids < 10000."""
    rng = random.Random(seed)
    return [rng.randint(0, min(9999, vocab - 1)) for _ in range(input_len)]


def resolve_model(name: str) -> str:
    """A config name under benchmarks/configs (dummy weights), 'demo', or a model directory."""
    if (CONFIGS / name / "config.json").is_file():
        return str(CONFIGS / name)
    return name


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware_anchors(device: str) -> dict:
    """Read bandwidth (torch.sum over 4 GiB bf16) and bf16 matmul TFLOP/s (8192^3), best of 5."""
    if device != "cuda":
        return {}
    x = torch.empty(2 << 30, dtype=torch.bfloat16, device="cuda").normal_()
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        x.sum()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    bw = x.numel() * 2 / best / 1e9
    del x
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ a
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del a
    torch.cuda.empty_cache()  # give the 4 GiB back before an engine sizes its KV pool from free memory
    return {"read_bandwidth_gbs": round(bw, 1), "bf16_tflops": round(2 * 8192**3 / best / 1e12, 1)}


def add_floor(result: dict, model_config, dtype: str) -> float | None:
    """Batch-1 decode cannot beat streaming every weight once per token: floor = weight bytes /
    read bandwidth. Sets anchors.floor_ms_per_token and, for a batch-1 result, ratios.vs_floor
    (floor / measured: the fraction of the floor's speed reached) and ratios.ms_over_floor."""
    bw = result.get("anchors", {}).get("read_bandwidth_gbs")
    if not bw:
        return None
    size = 4 if dtype == "float32" else 2
    floor = model_config.weight_bytes * size / (bw * 1e9) * 1000  # bytes / (bytes/s) -> ms
    result["anchors"]["floor_ms_per_token"] = round(floor, 3)
    result["anchors"]["weight_bytes"] = model_config.weight_bytes * size
    ms = result.get("ms_per_output_token")
    if ms and result.get("batch_size", result.get("workload", {}).get("requests")) == 1:
        result.setdefault("ratios", {})["vs_floor"] = round(floor / ms, 3)
        result["ratios"]["ms_over_floor"] = round(ms / floor, 3)
    return floor


# ---- engine options shared by the LLM-driven benchmarks -----------------------------------
def add_engine_args(ap: argparse.ArgumentParser, model: str = "qwen3-0.6b") -> None:
    """The LLM(...) options every offline benchmark takes, plus --out-dir / --no-record."""
    ap.add_argument("--model", default=model, help="config name in benchmarks/configs, 'demo', or a dir")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--dummy-weight", action="store_true", help="implied for benchmarks/configs models")
    ap.add_argument("--max-running-requests", type=int, default=256)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--memory-ratio", type=float, default=0.9)
    ap.add_argument("--attention-backend", default="torch")
    ap.add_argument("--cuda-graph-max-bs", type=int, default=None,
                    help="default 256 on cuda with a FlashInfer backend, else 0")
    ap.add_argument("--max-prefill-length", type=int, default=None)
    ap.add_argument("--cpu-kv-budget-mb", type=int, default=1024)
    ap.add_argument("--disable-overlap", action="store_true", help="the non-overlapped loop (ablation)")
    ap.add_argument("--kv-cache-dtype", default="auto", help="auto | fp8_e4m3")
    ap.add_argument("--out-dir", default=None, help="where the result JSON goes (default benchmarks/results)")
    ap.add_argument("--no-record", action="store_true", help="print the result, write no JSON")


def finish_engine_args(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the model, its config (args.model_config) and the defaults that depend on them."""
    from minisgl.models import resolve_model_path
    from minisgl.models.config import ModelConfig

    args.model_path = resolve_model(args.model)
    if args.cuda_graph_max_bs is None:
        args.cuda_graph_max_bs = 256 if args.device == "cuda" and args.attention_backend != "torch" else 0
    if "configs" in args.model_path:
        args.dummy_weight = True
    args.model_config = ModelConfig.from_path(resolve_model_path(args.model_path, weights=False))
    args.model_label = f"{args.model} (dummy)" if args.dummy_weight or args.model == "demo" else args.model
    return args


def build_llm(args: argparse.Namespace, **overrides):
    """LLM(...) from add_engine_args' options; options left at their default are not passed,
    so a script runs on an LLM that predates them."""
    from minisgl import LLM

    kwargs = dict(device=args.device, dtype=args.dtype, dummy_weight=args.dummy_weight,
                  max_running_requests=args.max_running_requests, page_size=args.page_size,
                  attention_backend=args.attention_backend, cuda_graph_max_bs=args.cuda_graph_max_bs,
                  memory_ratio=args.memory_ratio)
    if args.device == "cpu":
        kwargs["cpu_kv_budget_mb"] = args.cpu_kv_budget_mb
    if args.max_prefill_length:
        kwargs["max_prefill_length"] = args.max_prefill_length
    if args.disable_overlap:
        kwargs["disable_overlap"] = True
    if args.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    kwargs.update(overrides)
    return LLM(args.model_path, **kwargs)


def engine_record(args: argparse.Namespace) -> dict:
    """The engine options a result was measured with."""
    keys = ("dtype", "attention_backend", "cuda_graph_max_bs", "page_size", "max_running_requests",
            "memory_ratio", "disable_overlap")
    rec = {k: getattr(args, k) for k in keys}
    if getattr(args, "kv_cache_dtype", "auto") != "auto":
        rec["kv_cache_dtype"] = args.kv_cache_dtype
    import os

    from minisgl.attention.flashinfer_backend import (DECODE_TC_ENV, NO_SPLIT_ENV,
                                                      SPLIT_DECODE_ENV, SPLIT_DECODE_FROM_ENV)

    knobs = (DECODE_TC_ENV, NO_SPLIT_ENV, SPLIT_DECODE_ENV, SPLIT_DECODE_FROM_ENV,  # decode kernels
             "MINISGL_FUSED_GEMV_MAX_TOKENS", "MINISGL_PDL", "MINISGL_GEMV_SILU_BLOCKS",
             "MINISGL_SPLIT_DECODE_TILE")
    env = {k: os.environ[k] for k in knobs if os.environ.get(k)}
    if env:
        rec["env"] = env
    return rec


def replay_us(graph, n: int = 20, warm: int = 1) -> float:
    """Microseconds of one replay of a captured CUDA graph (CUDA events, after warm replays)."""
    for _ in range(warm):
        graph.replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    stop.record()
    stop.synchronize()
    return 1000 * start.elapsed_time(stop) / n


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def emit(result: dict, name: str, args: argparse.Namespace) -> None:
    """Print the result; unless --no-record, also write its JSON (record)."""
    if args.no_record:
        print(json.dumps(result))
    else:
        print(f"wrote {record(result, name, args.device, args.out_dir)}")


def record(result: dict, name: str, device: str, out_dir: str | Path | None = None) -> Path:
    """Write result as <out_dir>/<name>-<model>-<device>-<date>.json (default benchmarks/results)."""
    result.setdefault("date", datetime.date.today().isoformat())
    result.setdefault("git", git_sha())
    result.setdefault("command", " ".join([Path(sys.executable).name] + sys.argv))
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    def slug(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")

    model = slug(result.get("model", "").split(" (")[0])
    path = out / f"{name}-{model + '-' if model else ''}{slug(result['device'])}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
