"""Structured output through the real server: xgrammar-constrained sampling of the tiny random
model at temperature 1 must always give output that strict parsers accept and that validates
against its schema — through the openai SDK's `parse`, raw JSON schemas, and vLLM's fields."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pydantic
import pytest

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "describe a person"}]

# Bounded strings and arrays: a random model reaches the end of each within max_tokens.
SCHEMAS = {
    "flat": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"}}, "required": ["name", "age", "ok"],
        "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "id": {"type": "integer"}, "email": {"type": "string", "maxLength": 16}},
            "required": ["id", "email"], "additionalProperties": False},
        "score": {"type": "number"}}, "required": ["user", "score"],
        "additionalProperties": False},
    "array_enum": {"type": "object", "properties": {
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                   "minItems": 1, "maxItems": 4},
        "mode": {"enum": ["fast", "slow", None]}}, "required": ["colors", "mode"],
        "additionalProperties": False},
    "optional_fields": {"type": "object", "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 8},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "count": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["title"], "additionalProperties": False},
    "refs": {"$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"],
        "additionalProperties": False}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/point"},
                                         "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"], "additionalProperties": False},
}


def _strict_loads(text: str):
    """Python's json.loads with strict=True (the default) rejects raw control characters."""
    return json.loads(text, strict=True)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate_at_temperature_1(client, name):
    schema = SCHEMAS[name]
    resp = client.chat.completions.create(
        model="tiny", messages=MSG, temperature=1.0, max_tokens=200, n=6, seed=7,
        response_format={"type": "json_schema",
                         "json_schema": {"name": name, "schema": schema, "strict": True}})
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(_strict_loads(choice.message.content), schema)


def test_openai_parse_with_a_pydantic_model(client):
    class Point(pydantic.BaseModel):
        x: int
        y: int

    class Shape(pydantic.BaseModel):
        kind: str = pydantic.Field(max_length=10)
        points: list[Point] = pydantic.Field(max_length=3)
        closed: bool

    for seed in range(3):
        completion = client.chat.completions.parse(
            model="tiny", messages=MSG, response_format=Shape, temperature=1.0,
            max_tokens=300, seed=seed)
        message = completion.choices[0].message
        assert isinstance(message.parsed, Shape), message.content
        assert Shape.model_validate_json(message.content, strict=True) == message.parsed


def test_json_object_on_completions_and_streamed(server):
    body = {"prompt": "hello", "max_tokens": 200, "temperature": 1.0, "seed": 3, "n": 4,
            "response_format": {"type": "json_object"}}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        if choice["finish_reason"] == "stop":
            assert isinstance(_strict_loads(choice["text"]), dict)
    # The same request streamed: the concatenated deltas are the same texts.
    texts = [""] * 4
    with httpx.stream("POST", f"{server.base_url}/v1/completions",
                      json={**body, "stream": True}, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    texts[c["index"]] += c["text"]
    assert texts == [c["text"] for c in r.json()["choices"]]


def test_vllm_guided_fields(server):
    url = f"{server.base_url}/v1/completions"

    def complete(**extra) -> list[str]:
        body = {"prompt": "token cache", "max_tokens": 40, "temperature": 1.0, "n": 5,
                "seed": 11, **extra}
        r = httpx.post(url, json=body, timeout=120)
        assert r.status_code == 200, r.text
        return [c["text"] for c in r.json()["choices"]]

    choices = ["yes", "no", "maybe so"]
    assert set(complete(guided_choice=choices)) <= set(choices)
    assert set(complete(structured_outputs={"choice": choices})) <= set(choices)
    for text in complete(guided_regex=r"[0-9]{3}-[a-z]{2}"):
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", text), text
    grammar = 'root ::= "(" item ("," item)* ")"\nitem ::= [a-c]'
    for text in complete(guided_grammar=grammar):
        assert re.fullmatch(r"\([a-c](,[a-c])*\)", text), text
    schema = SCHEMAS["flat"]
    for text in complete(guided_json=schema, max_tokens=200):
        jsonschema.validate(_strict_loads(text), schema)
    for text in complete(structured_outputs={"json": json.dumps(schema)}, max_tokens=200):
        jsonschema.validate(_strict_loads(text), schema)


def test_unconstrained_rows_unchanged_beside_constrained_ones(server):
    """Greedy unconstrained requests give the same tokens alone and in a batch full of
    constrained ones (the mask touches only its own rows)."""
    url = f"{server.base_url}/v1/completions"
    plain = {"prompt": "hello model server", "max_tokens": 24, "temperature": 0,
             "ignore_eos": True}
    alone = httpx.post(url, json=plain, timeout=120).json()["choices"][0]["text"]

    def constrained(i: int) -> int:
        body = {"prompt": f"batch {i}", "max_tokens": 200, "temperature": 1.0, "seed": i,
                "guided_json": SCHEMAS["nested"]}
        return httpx.post(url, json=body, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(constrained, i) for i in range(6)]
        mixed = [pool.submit(lambda: httpx.post(url, json=plain, timeout=120).json())
                 for _ in range(2)]
        assert all(f.result() == 200 for f in busy)
        assert [m.result()["choices"][0]["text"] for m in mixed] == [alone, alone]


def test_logit_bias_forces_and_bans_tokens(server, tokenizer):
    url = f"{server.base_url}/v1/completions"
    token = tokenizer.encode(" cache", add_special_tokens=False)[0]
    body = {"prompt": "hello", "max_tokens": 6, "temperature": 1.0, "seed": 1,
            "ignore_eos": True}
    r = httpx.post(url, json={**body, "logit_bias": {str(token): 100}, "logprobs": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == tokenizer.decode([token] * 6)
    greedy = httpx.post(url, json={**body, "temperature": 0}, timeout=60).json()
    first = tokenizer.encode(greedy["choices"][0]["text"], add_special_tokens=False)[0]
    banned = httpx.post(url, json={**body, "temperature": 0, "logit_bias": {str(first): -100}},
                        timeout=60).json()
    assert tokenizer.encode(banned["choices"][0]["text"], add_special_tokens=False)[0] != first


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def test_grammar_metrics_count_compiles_and_cache_hits(server):
    url = f"{server.base_url}/v1/completions"
    before = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    regex = r"[a-f]{3}-metrics"  # a grammar no other test compiles
    for _ in range(2):
        r = httpx.post(url, json={"prompt": "hi", "max_tokens": 20, "guided_regex": regex}, timeout=60)
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:  # the scheduler's stats reach the API process within a second
        after = httpx.get(f"{server.base_url}/metrics", timeout=30).text
        if _metric(after, "minisgl_grammar_cache_hits_total") >= _metric(
                before, "minisgl_grammar_cache_hits_total") + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval
    assert _metric(after, "minisgl_grammar_compiles_total") == _metric(
        before, "minisgl_grammar_compiles_total") + 1
    assert _metric(after, "minisgl_grammar_cache_hits_total") >= _metric(
        before, "minisgl_grammar_cache_hits_total") + 1
    assert _metric(after, "minisgl_grammar_compile_seconds_total") > _metric(
        before, "minisgl_grammar_compile_seconds_total")
