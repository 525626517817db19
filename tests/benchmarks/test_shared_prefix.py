"""benchmarks/shared_prefix.py: the BENCHMARKS.md generator, and a CPU run that hits the cache."""

from __future__ import annotations

from tests.benchmarks.helpers import load, run_script


def test_workload_matches_benchmarks_md():
    common = load("common")
    reqs = common.shared_prefix_workload()
    assert len(reqs) == 16 * 64 and all(out == 128 for _, out in reqs)
    assert all(1024 + 64 <= len(p) <= 1024 + 256 for p, _ in reqs)
    assert len({tuple(p[:1024]) for p, _ in reqs}) == 16
    assert reqs == common.shared_prefix_workload()  # seeded


def test_shared_prefix_smoke_hits_the_cache(tmp_path):
    # A small prefill budget spreads the requests over several prefill batches, so later
    # ones find their group's prefix in the radix cache.
    r = run_script("shared_prefix.py", "--model", "demo", "--device", "cpu", "--groups", "2",
                   "--per-group", "4", "--prefix-len", "64", "--question-len", "8", "16",
                   "--output-len", "8", "--max-prefill-length", "80", "--max-running-requests", "4",
                   "--repeats", "2", "--no-record", cwd=tmp_path)
    assert r["output_tokens"] == 2 * 4 * 8 and r["output_tokens_per_s"] > 0
    # the cache is flushed before each run: the second run hits no more than the first
    assert len(r["runs"]) == 2 and r["runs"][0]["cached_tokens"] == r["runs"][1]["cached_tokens"]
    cache = r["prefix_cache"]
    assert cache["ideal_cached_tokens"] == 2 * 3 * 64
    assert 0.5 <= cache["vs_ideal"] <= 1.05, cache
    assert 0 < cache["hit_ratio"] < 1
