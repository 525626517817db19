"""benchmarks/latency.py (latency-b1) on the CPU, and its floor arithmetic."""

from __future__ import annotations

from tests.benchmarks.helpers import load, run_script


def test_latency_smoke(tmp_path):
    r = run_script("latency.py", "--model", "demo", "--device", "cpu", "--input-len", "16",
                   "--output-len", "8", "--runs", "3", "--no-record", cwd=tmp_path)
    assert r["benchmark"] == "latency-b1" and r["batch_size"] == 1 and len(r["runs"]) == 3
    assert r["ms_per_output_token"] > 0 and r["output_tokens_per_s"] > 0
    assert sorted(x["ms_per_output_token"] for x in r["runs"])[1] == r["ms_per_output_token"]
    assert r["anchors"] == {} and r["ratios"] == {}  # no bandwidth anchor off the GPU


def test_floor_is_weight_bytes_over_bandwidth():
    common = load("common")
    from minisgl.models.config import ModelConfig

    cfg = ModelConfig.from_path(common.CONFIGS / "llama-3.1-8b")
    r = {"batch_size": 1, "ms_per_output_token": 4.0, "anchors": {"read_bandwidth_gbs": 4190.0}}
    floor = common.add_floor(r, cfg, "bfloat16")
    assert 3.7 < floor < 3.9  # BENCHMARKS.md: the 8B batch-1 floor is 3.80 ms on an H200
    assert r["ratios"]["vs_floor"] == round(floor / 4.0, 3)
    assert r["ratios"]["ms_over_floor"] == round(4.0 / floor, 3)
    throughput = {"workload": {"requests": 256}, "ms_per_output_token": 0.1,
                  "anchors": {"read_bandwidth_gbs": 4190.0}}
    common.add_floor(throughput, cfg, "bfloat16")
    assert "floor_ms_per_token" in throughput["anchors"] and "ratios" not in throughput


def test_latency_prompt_is_seeded():
    common = load("common")
    a = common.latency_prompt()
    assert len(a) == 128 and a == common.latency_prompt() and max(a) <= 9999
    assert max(common.latency_prompt(vocab=100)) < 100
