"""API keys from a file (reloaded on change), per-key rpm / tpm limits -> 429 with
Retry-After, and queue backpressure -> 503 with Retry-After, through a real server."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from minisgl.errors import InvalidRequest
from minisgl.server.access import AccessControl, QueueFull, RateLimited, parse_key_file
from minisgl.server.errors import Unauthorized
from tests.worker.server.conftest import start_server


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_key_file_format_and_errors():
    keys = parse_key_file("sk-a rpm=2 tpm=100  # team a\n\n# comment\nsk-b\n")
    assert keys["sk-a"].rpm == 2 and keys["sk-a"].tpm == 100 and keys["sk-b"].rpm is None
    for bad in ("sk-a rpm=0", "sk-a rpm=x", "sk-a qps=3"):
        with pytest.raises(ValueError, match="line 1"):
            parse_key_file(bad)


def test_rpm_and_tpm_windows_with_retry_after(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-a rpm=2\nsk-t tpm=50\n")
    clock = Clock()
    ac = AccessControl(key_file=str(f), clock=clock)
    assert ac.authenticate("Bearer sk-a") == "sk-a"
    for bad in (None, "Bearer nope", "Basic sk-a", "Bearer "):
        with pytest.raises(Unauthorized):
            ac.authenticate(bad)
    ac.admit("sk-a", 0)
    clock.t += 10
    ac.admit("sk-a", 0)
    with pytest.raises(RateLimited) as info:
        ac.admit("sk-a", 0)
    assert info.value.retry_after_s == pytest.approx(50.0)  # the first request leaves the window
    clock.t += 50.01
    ac.admit("sk-a", 0)
    ac.admit("sk-t", 0)
    ac.record_tokens("sk-t", 60)
    with pytest.raises(RateLimited, match="tokens per minute"):
        ac.admit("sk-t", 0)
    clock.t += 61
    ac.admit("sk-t", 0)
    with pytest.raises(QueueFull):
        AccessControl(max_waiting=3).admit(None, 3)


def test_key_file_is_reloaded_when_it_changes_and_bad_edits_keep_the_old_keys(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-old\n")
    clock = Clock()
    ac = AccessControl(key_file=str(f), clock=clock)
    assert ac.authenticate("Bearer sk-old") == "sk-old"
    f.write_text("sk-new\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    clock.t += 2  # past the reload check interval
    assert ac.authenticate("Bearer sk-new") == "sk-new"
    with pytest.raises(Unauthorized):
        ac.authenticate("Bearer sk-old")
    f.write_text("sk-new rpm=oops\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    clock.t += 2
    assert ac.authenticate("Bearer sk-new") == "sk-new"  # the broken edit is not taken
    with pytest.raises(ValueError, match="--api-key-file"):
        AccessControl(key_file=str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def limited_server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("limited")
    (d / "keys").write_text("sk-slow rpm=2\nsk-free\n")
    s = start_server(tiny_model, d / "server.log", "--api-key-file", str(d / "keys"),
                     "--max-running-requests", "1", "--max-queued-requests", "0")
    yield s
    s.stop()


def _post(server, key, body, **kw):
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}, **kw)


def test_rate_limit_and_backpressure_through_the_server(limited_server):
    s = limited_server
    body = {"prompt": "hi", "max_tokens": 2}
    assert _post(s, "wrong", body).status_code == 401
    flush = f"{s.base_url}/flush_cache"  # an admin call: behind the same keys
    assert httpx.post(flush, timeout=30).status_code == 401
    assert httpx.post(flush, timeout=30, headers={"Authorization": "Bearer sk-free"}).status_code == 200
    assert [_post(s, "sk-slow", body).status_code for _ in range(2)] == [200, 200]
    r = _post(s, "sk-slow", body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    # One running request fills the server (1 running, 0 queued): the next gets 503.
    done: dict = {"lines": []}
    streaming = threading.Event()
    long = {"prompt": "hello", "max_tokens": 400, "ignore_eos": True, "stream": True}

    def stream() -> None:
        with httpx.stream("POST", f"{s.base_url}/v1/completions", json=long, timeout=120,
                          headers={"Authorization": "Bearer sk-free"}) as resp:
            for ln in resp.iter_lines():
                if ln:
                    done["lines"].append(ln)
                    streaming.set()

    t = threading.Thread(target=stream)
    t.start()
    assert streaming.wait(60)
    r = _post(s, "sk-free", body)
    alive = t.is_alive()
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, (alive, r.text)
    t.join(timeout=120)
    assert done["lines"][-1] == "data: [DONE]"  # the admitted request completed
    assert _post(s, "sk-free", body).status_code == 200
    m = httpx.get(f"{s.base_url}/metrics", timeout=10).text
    assert "minisgl_rate_limited_requests_total" in m and "minisgl_shed_requests_total" in m
    for line in m.splitlines():
        if line.startswith(("minisgl_rate_limited_requests_total", "minisgl_shed_requests_total")):
            assert float(line.split()[-1]) >= 1, line
        if line.startswith("minisgl_num_running_requests"):
            assert float(line.split()[-1]) == 0, line  # nothing left running
