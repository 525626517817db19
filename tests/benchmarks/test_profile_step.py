"""benchmarks/profile_step.py's trace arithmetic (the profile itself needs a GPU) and its
summary line."""

from __future__ import annotations

import json

from tests.benchmarks.helpers import load


def _kernel(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_kernel_table_counts_kernels_and_their_union(tmp_path):
    prof = load("profile_step")
    events = [_kernel("gemv", 0, 10), _kernel("gemv", 20, 10), _kernel("norm", 25, 10),  # overlaps
              _kernel("Memcpy HtoD", 40, 2, "gpu_memcpy"),
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 100}]  # not GPU
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    t = prof.kernel_table(path, top=2)
    assert t["kernels"] == 4 and t["kernel_us"] == 32.0
    assert t["busy_us"] == 27.0  # [0,10] + [20,35] + [40,42]: overlapping kernels count once
    assert t["span_us"] == 42.0
    assert [r["name"] for r in t["top"]] == ["gemv", "norm"]
    assert t["top"][0] == {"name": "gemv", "count": 2, "total_us": 20.0, "mean_us": 10.0}


def test_summary_line_of_a_profile():
    line = load("summarize").line({"benchmark": "profile", "model": "m", "phases": {
        "b1": {"ms_per_token": 5.0, "graph_replay_us": 4890.0}, "prefill": {"tokens_per_s": 42000}}})
    assert "b1: ms_per_token 5.0, graph_replay_us 4890.0" in line
    assert "prefill: tokens_per_s 42000" in line
