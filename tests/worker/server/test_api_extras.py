"""Endpoints and headers users expect beyond completions: /tokenize, /detokenize,
X-Request-Id, CORS, --chat-template, and chat_template_kwargs that cannot replace it."""

from __future__ import annotations

import httpx
import pytest

from minisgl.tokenizer.tokenize import load_tokenizer
from tests.worker.server.conftest import start_server

ORIGIN = "http://ui.example"
TEMPLATE = "{% for m in messages %}<<{{ m.role }}:{{ m.content }}>>{% endfor %}{% if flag %}!{% endif %}"


@pytest.fixture(scope="module")
def extras_server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("extras")
    (d / "template.jinja").write_text(TEMPLATE)
    s = start_server(tiny_model, d / "server.log", "--allowed-origins", ORIGIN,
                     "--chat-template", str(d / "template.jinja"), "--reasoning-parser", "qwen3")
    yield s
    s.stop()


def post(server, path, body, **kw):
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30, **kw)


def test_tokenize_and_detokenize_round_trip(extras_server, tiny_model):
    tok = load_tokenizer(str(tiny_model))
    r = post(extras_server, "/tokenize", {"prompt": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tok.encode("hello world") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] > 0
    r = post(extras_server, "/detokenize", {"tokens": body["tokens"]})
    assert r.status_code == 200 and r.json()["prompt"] == tok.decode(body["tokens"])
    for path, bad, param in [("/tokenize", {}, "prompt"),
                             ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "prompt"),
                             ("/detokenize", {"tokens": [len(tok) + 5]}, "tokens")]:
        r = post(extras_server, path, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_chat_template_flag_replaces_the_tokenizers_and_kwargs_cannot(extras_server):
    msgs = [{"role": "user", "content": "hi"}]
    ids = post(extras_server, "/tokenize", {"messages": msgs}).json()["tokens"]
    assert post(extras_server, "/detokenize", {"tokens": ids}).json()["prompt"] == "<<user:hi>>"
    ids = post(extras_server, "/tokenize", {"messages": msgs, "chat_template_kwargs": {"flag": True}}
               ).json()["tokens"]
    assert post(extras_server, "/detokenize", {"tokens": ids}).json()["prompt"] == "<<user:hi>>!"
    for key in ("chat_template", "tokenize", "tools"):
        body = {"messages": msgs, "max_tokens": 2, "chat_template_kwargs": {key: "{{ 7 * 7 }}"}}
        r = post(extras_server, "/v1/chat/completions", body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "chat_template_kwargs" and key in r.json()["error"]["message"]
    r = post(extras_server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_x_request_id_is_returned(extras_server):
    r = post(extras_server, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
             headers={"X-Request-Id": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    r = post(extras_server, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r.headers["x-request-id"]  # made up when the client sent none


def test_cors_allows_only_the_configured_origin(extras_server):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = httpx.options(f"{extras_server.base_url}/v1/completions", timeout=10,
                      headers={"Origin": ORIGIN, **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.options(f"{extras_server.base_url}/v1/completions", timeout=10,
                      headers={"Origin": "http://evil.example", **pre})
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"
    r = post(extras_server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_reasoning_parser_adds_reasoning_content(extras_server):
    r = post(extras_server, "/v1/chat/completions",
             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    message = r.json()["choices"][0]["message"]
    assert "reasoning_content" in message  # None: this random model did not open <think>
    assert message["reasoning_content"] is None or isinstance(message["reasoning_content"], str)
