"""A real `python -m minisgl` on the CPU with a tiny model built here, shared by the API tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[3]
SERVED_NAME = "tiny"
START_TIMEOUT_S = 120.0


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "worker"), str(REPO / "operator"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("MINISGL_API_KEY", None)
    return env


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_server(model_dir: Path, log: Path, *extra: str) -> Server:
    """Start the server and wait (with a deadline) until /ready answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "minisgl", "--model-path", str(model_dir), "--device", "cpu",
           "--port", str(port), "--served-model-name", SERVED_NAME, *extra]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env())
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling interval, not synchronisation
    server.stop()
    raise RuntimeError(f"server not ready in {START_TIMEOUT_S}s:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def tiny_model(tiny_llama) -> Path:
    return Path(tiny_llama)


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory) -> Server:
    s = start_server(tiny_model, tmp_path_factory.mktemp("server") / "server.log",
                     "--max-running-requests", "128")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def llm(tiny_model):
    """The offline engine on the same model: the reference for greedy outputs."""
    from minisgl import LLM

    return LLM(str(tiny_model), device="cpu")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0,
                         timeout=60.0)
