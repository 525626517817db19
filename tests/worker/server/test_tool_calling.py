"""Tool calling through the real server, the openai SDK and LangChain: forced calls
(`required`, a named function) are enforced by the grammar, so even the random tiny model
always returns calls whose arguments validate against the tool's schema; `auto` parses the
model family's markup (hermes here, picked from the chat template); tool history reaches the
template intact."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pydantic
import pytest

from tests.worker.server.conftest import SERVED_NAME, start_server

pytestmark = pytest.mark.slow

# A Qwen-style (hermes) template: tools in the system turn (names only: the tiny model's
# context is 512 tokens), calls as <tool_call> blocks.
TEMPLATE = """\
{%- if tools %}<|im_start|>system
<tools>{% for t in tools %} {{ t.function.name }}{% endfor %}</tools>
Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.content %}{{ m.content }}{% endif %}
{%- for c in m.tool_calls or [] %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}, "id": "{{ c.id }}"}
</tool_call>{% endfor %}
{%- if m.role == "tool" %} (answers {{ m.tool_call_id }} from {{ m.name }}){% endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": -100, "maximum": 100},
        "b": {"type": "integer", "minimum": -100, "maximum": 100}},
        "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSG = [{"role": "user", "content": "what is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    (d / "template.jinja").write_text(TEMPLATE)
    s = start_server(tiny_model, d / "server.log", "--chat-template", str(d / "template.jinja"))
    yield s
    s.stop()


@pytest.fixture
def oai(tool_server):
    import openai

    return openai.OpenAI(base_url=f"{tool_server.base_url}/v1", api_key="unused",
                         max_retries=0, timeout=120.0)


def _check_calls(calls, names=None) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_gives_valid_calls(oai, seed):
    resp = oai.chat.completions.create(model=SERVED_NAME, messages=MSG, tools=TOOLS,
                                       tool_choice="required", temperature=1.0, seed=seed,
                                       max_tokens=300)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    _check_calls(choice.message.tool_calls)


def test_named_function_and_no_parallel(oai):
    resp = oai.chat.completions.create(
        model=SERVED_NAME, messages=MSG, tools=TOOLS, temperature=1.0, seed=5, n=4,
        max_tokens=300, tool_choice={"type": "function", "function": {"name": "add"}})
    for choice in resp.choices:
        _check_calls(choice.message.tool_calls, {"add"})
        assert len(choice.message.tool_calls) == 1
    resp = oai.chat.completions.create(model=SERVED_NAME, messages=MSG, tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       temperature=1.0, seed=9, n=4, max_tokens=300)
    assert all(len(c.message.tool_calls) == 1 for c in resp.choices)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function",
                                                      "function": {"name": "get_weather"}}])
def test_streamed_calls_match_whole_ones(oai, tool_choice):
    kwargs = dict(model=SERVED_NAME, messages=MSG, tools=TOOLS, tool_choice=tool_choice,
                  temperature=1.0, seed=3, max_tokens=300)
    whole = oai.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in oai.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = d.id or entry["id"]
                if d.function is not None:
                    entry["name"] += d.function.name or ""
                    entry["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    want = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert got == want
    assert all(calls[i]["id"].startswith("call_") for i in calls)


def test_auto_parses_hermes_markup(tool_server):
    """`auto` reads the model's own markup: the random model is steered to write one call
    (a regex constraint), which the parser must turn into tool_calls, streamed and not."""
    markup = r'Sure\. <tool_call>\n\{"name": "add", "arguments": \{"a": [1-9], "b": 2\}\}\n</tool_call>'
    body = {"model": SERVED_NAME, "messages": MSG, "tools": TOOLS, "max_tokens": 120,
            "temperature": 1.0, "seed": 1, "guided_regex": markup}
    url = f"{tool_server.base_url}/v1/chat/completions"
    r = httpx.post(url, json=body, timeout=120)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["content"] == "Sure."
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "add"
    args = json.loads(call["function"]["arguments"])
    assert args["b"] == 2 and 1 <= args["a"] <= 9
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
    content, arguments = "", ""
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    delta = choice["delta"]
                    content += delta.get("content") or ""
                    for d in delta.get("tool_calls") or []:
                        arguments += d["function"].get("arguments") or ""
    assert content == "Sure." and json.loads(arguments) == args


def test_tool_history_reaches_the_template(tool_server):
    messages = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "21 degrees"}]
    r = httpx.post(f"{tool_server.base_url}/tokenize", json={"messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    d = httpx.post(f"{tool_server.base_url}/detokenize", json={"tokens": r.json()["tokens"]},
                   timeout=60).json()["prompt"]
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": "call_abc"}' in d
    assert "21 degrees (answers call_abc from get_weather)" in d
    r = httpx.post(f"{tool_server.base_url}/v1/chat/completions", timeout=120, json={
        "model": SERVED_NAME, "messages": messages, "tools": TOOLS, "max_tokens": 4})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
])
def test_bad_tool_requests_get_400(tool_server, body, param):
    r = httpx.post(f"{tool_server.base_url}/v1/chat/completions", timeout=60,
                   json={"model": SERVED_NAME, "messages": MSG, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"] or "").startswith(param), r.json()


def test_langchain_chat_openai(tool_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{tool_server.base_url}/v1", api_key="unused", model=SERVED_NAME,
                     temperature=1.0, max_tokens=200, seed=4, max_retries=0)
    reply = llm.invoke("hello")
    assert isinstance(reply.content, str) and reply.response_metadata["finish_reason"]
    pieces = [chunk.content for chunk in llm.stream("hello")]
    assert len(pieces) > 1 and "".join(pieces) == reply.content  # same seed, same text

    @pydantic.validate_call
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    called = llm.bind_tools([add], tool_choice="add").invoke("what is 2 + 3?")
    (call,) = called.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in call["args"].values())
    anything = llm.bind_tools([add], tool_choice="any").invoke("what is 2 + 3?")
    assert anything.tool_calls and anything.tool_calls[0]["name"] == "add"

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=10)
        population: int = pydantic.Field(ge=0, le=10**9)

    city = llm.with_structured_output(City).invoke("name a city")
    assert isinstance(city, City)
