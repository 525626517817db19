"""Shared benchmark helpers: the seeded workloads, hardware anchors, result records."""

from __future__ import annotations

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
    return {"read_bandwidth_gbs": round(bw, 1), "bf16_tflops": round(2 * 8192**3 / best / 1e12, 1)}


def record(result: dict, name: str, device: str) -> Path:
    result.setdefault("date", datetime.date.today().isoformat())
    result.setdefault("git", git_sha())
    result.setdefault("command", " ".join([Path(sys.executable).name] + sys.argv))
    RESULTS.mkdir(exist_ok=True)
    def slug(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")

    model = slug(result.get("model", "").split(" (")[0])
    path = RESULTS / f"{name}-{model + '-' if model else ''}{slug(result['device'])}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
