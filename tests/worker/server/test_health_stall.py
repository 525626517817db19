"""/health catches a hung tokenizer or detokenizer (not only a hung scheduler): a worker
stopped with SIGSTOP stops answering pings and /health turns 503 naming it; SIGCONT heals."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from tests.worker.server.conftest import start_server

pytestmark = pytest.mark.slow


def _wait_health(url: str, status: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/health", timeout=5)
        if r.status_code == status:
            return r.json()
        time.sleep(0.2)  # polling interval, not synchronisation
    raise AssertionError(f"/health never answered {status}; last: {r.status_code} {r.text}")


@pytest.mark.parametrize("worker", ["tokenizer0", "detokenizer"])
def test_a_stopped_worker_fails_health_then_recovers(tiny_model, tmp_path, monkeypatch, worker):
    monkeypatch.setenv("MINISGL_HEALTH_STALL_TIMEOUT_S", "2")
    server = start_server(tiny_model, tmp_path / "server.log", "--num-tokenizer", "1")
    try:
        pid = int(re.search(rf"started {worker} \(pid (\d+)\)", server.log.read_text()).group(1))
        assert _wait_health(server.base_url, 200)["status"] == "ok"
        os.kill(pid, signal.SIGSTOP)
        try:
            body = _wait_health(server.base_url, 503)
            assert worker in body["reason"] and body["status"] == "unhealthy"
        finally:
            os.kill(pid, signal.SIGCONT)
        _wait_health(server.base_url, 200)
        r = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                       json={"prompt": "hello", "max_tokens": 3})
        assert r.status_code == 200, r.text  # nothing was lost while it was stopped
    finally:
        server.stop()
