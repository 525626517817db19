"""`python -m minisgl --shell-mode` in a real terminal (tmux): streams replies, keeps the
multi-turn history, /reset clears it, /exit and Ctrl+D quit cleanly."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from minisgl.sampling_params import SamplingParams
from minisgl.server.shell import printable
from tests.worker.server.conftest import server_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
START_TIMEOUT_S = 120.0
MAX_TOKENS = 24


class Tmux:
    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.name = f"minisgl-shell-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                           if k in ("PYTHONPATH", "PATH", "HOME", "MINISGL_SHELL_MAX_TOKENS"))
        line = f"env {exports} {' '.join(shlex.quote(c) for c in cmd)}; echo EXITED=$?; sleep 60"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                        line], check=True)

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-1000", "-t",
                               self.name], capture_output=True, text=True).stdout

    def wait_for(self, cond, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if cond(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"terminal never showed the expected text:\n{text}")
            time.sleep(0.2)  # polling interval

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def shell_reply(llm, tokenizer, history: list[dict]) -> str:
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0].text


@pytest.fixture
def shell(tiny_model):
    cmd = [sys.executable, "-m", "minisgl", "--model-path", str(tiny_model), "--device", "cpu",
           "--shell-mode", "--log-level", "warning"]
    t = Tmux(cmd, {**server_env(), "MINISGL_SHELL_MAX_TOKENS": str(MAX_TOKENS)})
    try:
        t.wait_for(lambda s: ">>>" in s or "EXITED=" in s, START_TIMEOUT_S)
        yield t
    finally:
        t.kill()


def letters(text: str) -> str:
    """Only ASCII letters: what survives any terminal's rendering of random model output."""
    return re.sub(r"[^A-Za-z]", "", text)


def shown(shell, reply: str) -> bool:
    return letters(printable(reply)) in letters(shell.screen())


def test_shell_streams_keeps_history_resets_and_exits(shell, llm, tokenizer):
    assert "EXITED=" not in shell.screen(), shell.screen()
    first = [{"role": "user", "content": "hello model"}]
    reply1 = shell_reply(llm, tokenizer, first)
    shell.send("hello model", "Enter")
    shell.wait_for(lambda s: s.count(">>>") >= 2)
    assert shown(shell, reply1)

    # second turn: the answer is the greedy reply to the whole history
    second = first + [{"role": "assistant", "content": reply1},
                      {"role": "user", "content": "and the cache"}]
    reply2 = shell_reply(llm, tokenizer, second)
    shell.send("and the cache", "Enter")
    shell.wait_for(lambda s: s.count(">>>") >= 3)
    assert shown(shell, reply2)

    shell.send("/reset", "Enter")
    shell.wait_for(lambda s: "(history cleared)" in s)
    fresh = shell_reply(llm, tokenizer, [{"role": "user", "content": "and the cache"}])
    assert letters(fresh) != letters(reply2)  # so the check below tells history from none
    shell.send("and the cache", "Enter")
    shell.wait_for(lambda s: s.count(">>>") >= 5)
    assert shown(shell, fresh)

    shell.send("/exit", "Enter")
    screen = shell.wait_for(lambda s: "EXITED=" in s)
    assert "EXITED=0" in screen and "bye" in screen


def test_shell_ctrl_d_quits_cleanly(shell):
    shell.send("C-d")
    screen = shell.wait_for(lambda s: "EXITED=" in s)
    assert "EXITED=0" in screen
