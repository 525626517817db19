"""benchmarks/serving.py drives a real server it launches and reports sane statistics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_percentiles_pick_nearest_rank():
    bench = load_bench()
    p = bench.percentiles([0.001 * i for i in range(1, 101)])
    assert (p["p50"], p["p90"], p["p99"]) == (51.0, 91.0, 100.0)
    assert bench.percentiles([]) == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_sweep_against_launched_server_counts_every_token(tiny_llama, capsys):
    bench = load_bench()
    result = bench.main(["--launch", f"--model-path {tiny_llama} --device cpu --log-level warning",
                         "--num-prompts", "8", "--input-len", "8", "32", "--output-len", "4", "12",
                         "--request-rate", "20,inf", "--max-concurrency", "4", "--no-record"])
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        assert run["completed"] == 8 and run["failed"] == 0, run["errors"]
        assert run["output_tokens_per_s"] > 0 and run["request_throughput"] > 0
        for key in ("ttft_ms", "itl_ms", "e2e_ms"):
            p = run[key]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"]
    assert result["output_tokens_per_s"] == result["runs"][-1]["output_tokens_per_s"]
