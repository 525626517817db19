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


def test_redraw_ids_keeps_lengths_and_run_zero():
    bench = load_bench()
    reqs = [([1, 2, 3], 5), ([4] * 10, 7)]
    assert bench.redraw_ids(reqs, 0, 1000) is reqs
    again = bench.redraw_ids(reqs, 1, 1000)
    assert [(len(p), o) for p, o in again] == [(3, 5), (10, 7)] and again != reqs
    assert again == bench.redraw_ids(reqs, 1, 1000)


def test_cold_start_burst_with_vs_offline_and_client_processes(tiny_llama):
    bench = load_bench()
    result = bench.main(["--launch", f"--model-path {tiny_llama} --device cpu --log-level warning",
                         "--name", "http-burst", "--cold-start", "--client-procs", "2",
                         "--offline-args", f"--model {tiny_llama} --device cpu",
                         "--num-prompts", "6", "--input-len", "8", "24", "--output-len", "4", "8",
                         "--no-record"])
    cold, warm = result["runs"]
    for run in (cold, warm):
        assert run["completed"] == 6 and run["failed"] == 0 and run["client_procs"] == 2, run["errors"]
    c = result["cold_start"]
    assert c["ttft_p50_ms_cold"] == cold["ttft_ms"]["p50"] and c["ttft_p50_ms_warm"] == warm["ttft_ms"]["p50"]
    assert result["ratios"]["cold_vs_warm_ttft_p50"] > 0
    assert result["offline"]["output_tokens_per_s"] > 0
    assert result["ratios"]["vs_offline"] == round(warm["output_tokens_per_s"]
                                                   / result["offline"]["output_tokens_per_s"], 3)
