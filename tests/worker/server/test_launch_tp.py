"""Tensor parallelism through the real server on CPU (gloo): TP=2 == TP=1 greedy."""

from __future__ import annotations

import signal

import httpx
import pytest

from minisgl.sampling_params import SamplingParams
from tests.worker.server.test_launch import Proc, assert_no_orphans, descendants

pytestmark = pytest.mark.slow  # real server processes: tens of seconds each

PROMPTS = [[5, 17, 42, 99, 3], [200, 201, 7], [11] * 9, [300, 12, 77, 150, 64, 8, 1]]


def test_tp2_server_matches_tp1_greedy_and_ctrl_c_leaves_no_orphans(tmp_path, tiny_llama):
    from minisgl import LLM

    want = [o.token_ids for o in LLM(tiny_llama, device="cpu").generate(
        PROMPTS, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))]
    proc = Proc(tmp_path / "log", "--model-path", tiny_llama, "--served-model-name", "m",
                "--tp-size", "2")
    try:
        proc.wait_ready()
        kids = descendants(proc.popen.pid)
        assert "started scheduler1" in proc.text()
        got = []
        for prompt in PROMPTS:
            r = httpx.post(f"{proc.url}/generate", timeout=60, json={
                "prompt": prompt, "max_tokens": 12, "ignore_eos": True, "temperature": 0,
                "stream": False})
            assert r.status_code == 200, r.text
            got.append(r.json())
        proc.popen.send_signal(signal.SIGINT)
        assert proc.wait_exit(30) == 0
        assert_no_orphans(kids)
    finally:
        proc.close()
    assert [g["token_ids"] for g in got] == want
