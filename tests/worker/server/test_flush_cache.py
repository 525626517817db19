"""POST /flush_cache through the real server: the prefix cache empties when idle (a repeated
prompt hits the cache before and not after), a flush while a request runs is a 409 in the
OpenAI error format and the running request finishes untouched."""

from __future__ import annotations

import json
import threading

import httpx


def _cached(server, prompt: str) -> int:
    r = httpx.post(f"{server.base_url}/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_flush_empties_the_prefix_cache(server):
    prompt = "the quick brown fox jumps over the lazy dog " * 6
    _cached(server, prompt)
    assert _cached(server, prompt) > 0
    r = httpx.post(f"{server.base_url}/flush_cache", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["flushed"] is True and r.json()["dropped_tokens"] > 0
    assert _cached(server, prompt) == 0


def test_flush_while_a_request_runs_is_a_conflict_and_loses_nothing(server):
    body = {"prompt": "count with me", "max_tokens": 300, "temperature": 0, "stream": True,
            "ignore_eos": True}
    started, events, errors = threading.Event(), [], []

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body,
                              timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))
                        started.set()
        except Exception as e:  # reported below
            errors.append(e)
            started.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert started.wait(60)
    r = httpx.post(f"{server.base_url}/flush_cache", timeout=30)
    worker.join(120)
    assert not errors, errors
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["type"] == "conflict_error" and "requests are running" in err["message"]
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finish == ["length"]
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text  # every token streamed
    assert httpx.post(f"{server.base_url}/flush_cache", timeout=30).status_code == 200  # idle now
