"""benchmarks/ablations.py: one row per variant, the base row reusable from offline.py's JSON."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.helpers import load, run_script

WORKLOAD = ["--num-requests", "4", "--input-len", "8", "16", "--output-len", "4", "8"]


def test_ablation_rows_with_base_from_offline_result(tmp_path):
    offline = tmp_path / "offline-4-demo.json"  # as offline.py writes it (fields the base row reads)
    offline.write_text(json.dumps({
        "workload": {"requests": 4, "input_len": [8, 16], "output_len": [4, 8], "seed": 0},
        "output_tokens_per_s": 123.4, "elapsed_s": 0.2, "ms_per_output_token": 8.1,
        "model": "demo (dummy)", "command": "python benchmarks/offline.py ..."}))
    r = run_script("ablations.py", "--base-args", "--model demo --device cpu", "--device", "cpu",
                   "--variants", "base,no-graphs,fi", "--base-result", str(offline), *WORKLOAD,
                   "--no-record", cwd=tmp_path)
    rows = {row["variant"]: row for row in r["rows"]}
    assert rows["base"]["from"] == str(offline)
    assert rows["base"]["output_tokens_per_s"] == 123.4
    assert rows["no-graphs"]["output_tokens_per_s"] > 0 and rows["no-graphs"]["vs_base"] > 0
    assert rows["no-graphs"]["engine"]["cuda_graph_max_bs"] == 0
    assert "needs --device cuda" in rows["fi"]["error"]  # a failing variant is a row, not a crash


def test_base_result_for_other_requests_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"workload": {"requests": 256, "input_len": [100, 1024],
                                              "output_len": [100, 1024], "seed": 0}}))
    with pytest.raises(SystemExit, match="other requests"):
        load("ablations").base_from(str(other), {"requests": 4, "input_len": [8, 16],
                                                 "output_len": [4, 8], "seed": 0, "ignore_eos": True})
