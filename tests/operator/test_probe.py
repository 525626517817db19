"""PhaseProber against a real HTTP server answering like the worker's start-up app."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minisgl_operator.probe import MAX_PODS, PhaseProber, fetch_phase, starting


class Worker:
    """/health 200 {"phase": ...}; counts requests."""

    def __init__(self) -> None:
        self.phase = "loading"
        self.requests = 0
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                worker.requests += 1
                body = json.dumps({"status": "ok", "phase": worker.phase}).encode()
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.server.shutdown()
    w.server.server_close()


def pod(name: str, port: int, ready: bool = False, phase: str = "Running") -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "worker", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": phase, "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_fetch_phase_reads_the_workers_health(worker):
    assert fetch_phase("127.0.0.1", worker.port) == "loading"
    worker.phase = "warming"
    assert fetch_phase("127.0.0.1", worker.port) == "warming"


def test_fetch_phase_is_none_when_nothing_listens():
    from tests.e2e.kube import free_port

    assert fetch_phase("127.0.0.1", free_port(), timeout=0.5) is None


def test_only_starting_pods_are_asked_and_answers_are_cached(worker):
    now = [0.0]
    prober = PhaseProber(cache_seconds=10, clock=lambda: now[0])
    pods = [pod("a", worker.port), pod("b", worker.port, ready=True), pod("c", worker.port, phase="Pending")]
    assert [starting(p) for p in pods] == [True, False, False]
    assert prober.phases(pods) == {"a": "loading"}
    assert worker.requests == 1
    worker.phase = "warming"
    assert prober.phases(pods) == {"a": "loading"}  # cached: no new request
    assert worker.requests == 1
    now[0] = 11
    assert prober.phases(pods) == {"a": "warming"} and worker.requests == 2
    worker.phase = "ready"
    now[0] = 22
    assert prober.phases(pods) == {}  # ready (or unknown) is not a start-up phase


def test_at_most_max_pods_are_asked_per_resource(worker):
    prober = PhaseProber()
    pods = [pod(f"p{i}", worker.port) for i in range(3 * MAX_PODS)]
    assert len(prober.phases(pods)) == MAX_PODS
    assert worker.requests == MAX_PODS


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_real_workers_health_speaks_the_contract(tmp_path):
    """fetch_phase against a real CPU `python -m minisgl`: phases only move forward
    (loading -> warming -> ready) and end at ready when /ready turns 200."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from tests.e2e.kube import free_port
    from tests.helpers.tiny_model import build_tiny_model

    repo = Path(__file__).resolve().parents[2]
    model = build_tiny_model(tmp_path / "model", "llama")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "worker"), os.environ.get("PYTHONPATH", "")])}
    env.pop("MINISGL_API_KEY", None)
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "minisgl", "--model-path", str(model), "--device", "cpu",
                             "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    order = ["loading", "warming", "ready"]
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            phase = fetch_phase("127.0.0.1", port, timeout=1.0)
            if phase is not None and (not seen or seen[-1] != phase):
                seen.append(phase)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"worker not ready; phases seen {seen}"
            time.sleep(0.05)
        final = fetch_phase("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    if final is not None and (not seen or seen[-1] != final):
        seen.append(final)
    assert seen and seen[-1] == "ready", seen
    assert all(p in order for p in seen) and seen == sorted(seen, key=order.index), seen
