"""The launcher as users and Kubernetes meet it: a real `python -m minisgl` subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.worker.server.conftest import START_TIMEOUT_S, free_port, server_env

pytestmark = pytest.mark.slow  # real server processes: tens of seconds each



class Proc:
    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "minisgl", "--device", "cpu", "--port", str(self.port), *args]
        self.popen = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                      env={**server_env(), **(env or {})})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"exited {self.popen.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # poll interval
        raise AssertionError(f"not ready in time:\n{self.text()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"did not exit in {timeout}s:\n{self.text()[-3000:]}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def descendants(pid: int) -> dict[int, str]:
    """pid -> command name of every process below `pid` (from /proc, no psutil)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), name)
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, name) in parents.items():
            if ppid == parent and child not in found:
                found[child] = name
                frontier.append(child)
    return found


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def assert_no_orphans(pids, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval
    assert alive(pids) == [], "children outlived the server"


def child_pid(proc: Proc, name: str) -> int:
    """The pid the launcher logged for child `name` ('started NAME (pid N)')."""
    for line in proc.text().splitlines():
        if f"started {name} (pid " in line:
            return int(line.rsplit("(pid ", 1)[1].rstrip(")"))
    raise AssertionError(f"no pid for {name} in the log")


@pytest.fixture
def model(tiny_llama) -> str:
    return tiny_llama


def test_bad_model_path_fails_before_any_process_starts(tmp_path):
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "minisgl", "--model-path", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=server_env(), timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model-path" in lines[0] and "nope" in lines[0]
    assert time.monotonic() - start < 30


def test_child_start_up_failure_exits_nonzero_with_the_childs_error(tmp_path, model):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(model).iterdir():
        if not f.name.endswith(".safetensors"):
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = Proc(tmp_path / "log", "--model-path", str(broken))
    try:
        start = time.monotonic()
        assert proc.wait_exit(60) == 1
        assert time.monotonic() - start < 60
        text = proc.text()
        assert "scheduler0 failed to start" in text and "Traceback" in text
        assert "start-up failed" in text
        assert_no_orphans([child_pid(proc, "scheduler0")])
    finally:
        proc.close()


def _stream_completion(url: str, max_tokens: int, first_chunk: threading.Event, result: dict):
    body = {"model": "m", "prompt": "hello world", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    chunks = []
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            result["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
                    first_chunk.set()
                elif line == "data: [DONE]":
                    result["done"] = True
    finally:
        result["chunks"] = chunks
        first_chunk.set()


def _wait_for_phase(proc: Proc, phase: str, seen: list[str]) -> None:
    """Poll /health until it reports `phase`; once the port has answered it must keep answering."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert time.monotonic() < deadline and proc.popen.poll() is None, proc.text()[-3000:]
        try:
            r = httpx.get(f"{proc.url}/health", timeout=5)
        except httpx.ConnectError:
            assert not seen, f"the port refused a connection after answering ({seen})"
            time.sleep(0.02)  # poll interval
            continue
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok" and isinstance(body["startup_seconds_so_far"], float)
        if not seen or seen[-1] != body["phase"]:
            seen.append(body["phase"])
        if body["phase"] == phase:
            return
        time.sleep(0.02)  # poll interval


def _assert_starting(proc: Proc, phase: str) -> None:
    ready = httpx.get(f"{proc.url}/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "starting"
    assert ready.json()["phase"] == phase and int(ready.headers["retry-after"]) >= 1
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/nope")):
        r = httpx.request(method, f"{proc.url}{path}", timeout=5, json={"model": "m", "prompt": "hi"})
        assert r.status_code == 503, (path, r.text)
        err = r.json()["error"]
        assert err["type"] == "service_unavailable" and phase in err["message"] and err["code"] == 503
        assert int(r.headers["retry-after"]) >= 1


def test_port_opens_at_once_and_health_reports_the_start_up_phases_in_order(tmp_path, model):
    """The start-up phases are held open by gate files (MINISGL_STARTUP_GATE), so each one is
    observed for certain; the port answers throughout and switches to the real app with no gap."""
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = Proc(tmp_path / "log", "--model-path", model, "--served-model-name", "m",
                "--num-tokenizer", "1", env={"MINISGL_STARTUP_GATE": str(gate)})
    seen: list[str] = []
    try:
        _wait_for_phase(proc, "loading", seen)
        _assert_starting(proc, "loading")
        (gate / "loading").touch()
        _wait_for_phase(proc, "warming", seen)
        _assert_starting(proc, "warming")
        (gate / "warming").touch()
        deadline = time.monotonic() + START_TIMEOUT_S
        while (r := httpx.get(f"{proc.url}/ready", timeout=5)).status_code != 200:
            assert time.monotonic() < deadline and r.json()["status"] == "starting", r.text
            time.sleep(0.02)  # poll interval; a refused connection here raises and fails the test
        assert seen == ["loading", "warming"]
        health = httpx.get(f"{proc.url}/health", timeout=5).json()
        assert health["status"] == "ok" and health["startup_seconds"] > 0
        r = httpx.post(f"{proc.url}/v1/completions", timeout=60,
                       json={"model": "m", "prompt": "hi", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        text = proc.text()
        assert text.index("Uvicorn running") < text.index("scheduler0 is ready")
        assert text.index("start-up phase: warming") < text.index("scheduler0 is ready")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait_exit(60) == 0
    finally:
        proc.close()


def test_sigterm_during_start_up_exits_zero_without_orphans(tmp_path, model):
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = Proc(tmp_path / "log", "--model-path", model, env={"MINISGL_STARTUP_GATE": str(gate)})
    try:
        _wait_for_phase(proc, "loading", [])
        kids = descendants(proc.popen.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "scheduler0: loading" not in proc.text():  # the child is up and holding
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.text()
            time.sleep(0.05)  # poll interval
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait_exit(60) == 0
        assert "start-up failed" not in proc.text()
        assert_no_orphans(kids)
    finally:
        proc.close()


def test_port_taken_exits_nonzero_without_orphans(tmp_path, model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = Proc(tmp_path / "log", "--model-path", model, port=taken.getsockname()[1])
        try:
            assert proc.wait_exit(60) == 1
            assert "address already in use" in proc.text().lower()
        finally:
            proc.close()


def test_sigterm_drains_in_flight_requests(tmp_path, model):
    proc = Proc(tmp_path / "log", "--model-path", model, "--served-model-name", "m",
                "--num-tokenizer", "2", "--shutdown-timeout", "60")
    try:
        proc.wait_ready()
        kids = descendants(proc.popen.pid)
        assert len(kids) >= 4
        first, result = threading.Event(), {}
        t = threading.Thread(target=_stream_completion, args=(proc.url, 120, first, result))
        t.start()
        assert first.wait(60)
        proc.popen.send_signal(signal.SIGTERM)
        # readiness drops at once and new work is refused, while the stream goes on
        deadline = time.monotonic() + 10
        while httpx.get(f"{proc.url}/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)  # poll interval
        late = httpx.post(f"{proc.url}/v1/completions", timeout=10,
                          json={"model": "m", "prompt": "hi", "max_tokens": 2})
        assert late.status_code == 503
        assert t.is_alive() or result.get("done"), "the in-flight stream was cut"
        t.join(120)
        assert result["status"] == 200 and result.get("done")
        text_chunks = [c for c in result["chunks"] if c.get("choices")]
        assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait_exit(60) == 0
        assert_no_orphans(kids)
    finally:
        proc.close()


@pytest.mark.parametrize("victim", ["scheduler0", "tokenizer0", "server"])
def test_killing_a_child_exits_nonzero_without_orphans(tmp_path, model, victim):
    """SIGKILL a child: the server notices and exits 1. SIGKILL the server itself (say, the
    OOM killer): its children die with it (PR_SET_PDEATHSIG)."""
    proc = Proc(tmp_path / "log", "--model-path", model, "--num-tokenizer", "1")
    try:
        proc.wait_ready()
        kids = descendants(proc.popen.pid)
        if victim == "server":
            proc.popen.kill()
            assert proc.wait_exit(30) == -signal.SIGKILL
        else:
            pid = child_pid(proc, victim)
            assert pid in kids
            os.kill(pid, signal.SIGKILL)
            assert proc.wait_exit(30) == 1
            assert f"{victim} (pid {pid}) exited with code -9" in proc.text()
        assert_no_orphans(kids)
    finally:
        proc.close()
