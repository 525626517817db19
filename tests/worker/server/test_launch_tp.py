"""Tensor parallelism through the real server on CPU (gloo): TP=2 == TP=1 greedy."""

from __future__ import annotations

import concurrent.futures
import signal

import httpx
import pytest

from minisgl.sampling_params import SamplingParams
from tests.worker.server.test_launch import Proc, assert_no_orphans, descendants

pytestmark = pytest.mark.slow  # real server processes: tens of seconds each

PROMPTS = [[5, 17, 42, 99, 3], [200, 201, 7], [11] * 9, [300, 12, 77, 150, 64, 8, 1]]


def test_tp2_server_matches_tp1_greedy_and_ctrl_c_leaves_no_orphans(tmp_path, tiny_llama):
    from minisgl import LLM

    llm = LLM(tiny_llama, device="cpu")
    want = [o.token_ids for o in llm.generate(
        PROMPTS, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))]
    # A constrained request: its grammar compiles aside on every rank while the free requests
    # run; all ranks must admit it at the same step or their collectives would disagree.
    want_constrained = llm.generate([PROMPTS[0]], SamplingParams(
        temperature=0.0, max_tokens=12, grammar=("regex", "[ab]{3,6}")))[0].text
    proc = Proc(tmp_path / "log", "--model-path", tiny_llama, "--served-model-name", "m",
                "--tp-size", "2")
    try:
        proc.wait_ready()
        kids = descendants(proc.popen.pid)
        assert "started scheduler1" in proc.text()
        constrained = concurrent.futures.ThreadPoolExecutor(1).submit(
            httpx.post, f"{proc.url}/v1/completions", timeout=120, json={
                "model": "m", "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0,
                "guided_regex": "[ab]{3,6}"})
        got = []
        for prompt in PROMPTS:
            r = httpx.post(f"{proc.url}/generate", timeout=60, json={
                "prompt": prompt, "max_tokens": 12, "ignore_eos": True, "temperature": 0,
                "stream": False})
            assert r.status_code == 200, r.text
            got.append(r.json())
        r = constrained.result()
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want_constrained
        # a cache flush reaches both ranks at the same iteration: the next step still agrees
        r = httpx.post(f"{proc.url}/flush_cache", timeout=30)
        assert r.status_code == 200 and r.json()["dropped_tokens"] > 0, r.text
        r = httpx.post(f"{proc.url}/generate", timeout=60, json={
            "prompt": PROMPTS[0], "max_tokens": 12, "ignore_eos": True, "temperature": 0,
            "stream": False})
        assert r.status_code == 200 and r.json()["token_ids"] == want[0], r.text
        proc.popen.send_signal(signal.SIGINT)
        assert proc.wait_exit(30) == 0
        assert_no_orphans(kids)
    finally:
        proc.close()
    assert [g["token_ids"] for g in got] == want
