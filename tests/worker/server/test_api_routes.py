"""/health, /ready, /v1/models, /generate and 64 concurrent streams on the real server."""

from __future__ import annotations

import asyncio
import json

import httpx

from minisgl.sampling_params import SamplingParams
from tests.worker.server.conftest import SERVED_NAME


def test_health_ready_and_models(server, client):
    h = httpx.get(f"{server.base_url}/health", timeout=10)
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok" and body["model"] == SERVED_NAME
    assert body["version"] and body["timestamp"] > 0
    r = httpx.get(f"{server.base_url}/ready", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    models = client.models.list().data
    assert [m.id for m in models] == [SERVED_NAME]


def test_generate_streams_seed_format(server, llm):
    ref = llm.generate(["hello world"], SamplingParams(temperature=0.0, max_tokens=6,
                                                       ignore_eos=True))[0]
    body = {"prompt": "hello world", "max_tokens": 6, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/generate", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(e["text"] for e in events) == ref.text
    assert events[-1]["finished"] and events[-1]["finish_reason"] == "length"
    whole = httpx.post(f"{server.base_url}/generate", json={**body, "stream": False}, timeout=60)
    assert whole.json()["text"] == ref.text and whole.json()["token_ids"] == ref.token_ids


def test_64_concurrent_streams_all_complete_correctly(server, llm):
    prompts = [f"hello {i} the model" for i in range(64)]
    refs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))

    async def one(client: httpx.AsyncClient, prompt: str) -> tuple[str, str | None, bool]:
        body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                "stream": True}
        text, reason, done = [], None, False
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    choice = json.loads(line[6:])["choices"][0]
                    text.append(choice["text"])
                    reason = choice["finish_reason"] or reason
        return "".join(text), reason, done

    async def main():
        limits = httpx.Limits(max_connections=128)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120,
                                     limits=limits) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(main())
    assert [r[0] for r in results] == [ref.text for ref in refs]
    assert all(r[1] == "length" and r[2] for r in results)
