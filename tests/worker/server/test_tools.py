"""Tool calling: parsers (whole and streamed agree on every chunking), request validation,
forced-call schemas (checked with jsonschema and compiled with xgrammar), tool messages
through chat templates."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from minisgl.errors import InvalidRequest
from minisgl.server.errors import error_response
from minisgl.server.tools import (ForcedParser, create_tool_parser, default_parser_for_template,
                                  normalize_messages, parse_forced, parse_tool_calls, plan_tools,
                                  required_schema)

WEATHER = {"city": "Paris </tool_call> }", "days": [1, {"unit": "°C"}], "note": "a \"quoted\" {x}"}
HERMES_TWO = ("Let me check.\n\n<tool_call>\n"
              + json.dumps({"name": "get_weather", "arguments": WEATHER})
              + "\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>")

# Texts whose parse each parser must give identically however the text is chunked.
CORPUS = {
    "hermes": [
        HERMES_TWO,
        HERMES_TWO + "\n\nDone, 中文 🙂.",
        "plain text with < and <tool and <tool_cal but no call",
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}",  # EOS right after the JSON
        "<tool_call>{\"name\": bad json}</tool_call> then text",
        "<tool_call>not json at all</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"unterminated}</tool_call> more",
        "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",  # arguments not an object
        "<tool_call>{\"name\": \"f\"} trailing</tool_call>",
        "a <tool_call>broken<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": NaN}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"s\\\": 2}\"}</tool_call>",  # string args
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>\n  <tool_call>",
        "  \n",
        "",
    ],
    "llama3_json": [
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": " + json.dumps(WEATHER) + "}",
        "{\"name\": \"a\", \"parameters\": {\"q\": \"};{\"}}; {\"name\": \"b\", \"parameters\": {}}",
        "{\"name\": \"a\", \"parameters\": {}}\n{\"name\": \"b\", \"parameters\": {}};",
        "{\"answer\": 42, \"why\": \"json, not a call\"}",
        "The weather is {\"sunny\"}.",
        "{\"name\": \"a\", \"parameters\": {}}; and then some prose",
        "{\"name\": \"a\", \"parameters\": {}}; {\"name\": 3}",
        "<|python_tag|>brave_search.call(query=\"x\")",
        "<|python_", "{\"name\": \"a\", \"parameters\": {\"x\": [1, 2",
        "  {\"name\": \"日本\", \"parameters\": {\"emoji\": \"🙂\"}}  ",
    ],
    "mistral": [
        "Sure. [TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"q\": \"]\"}}, "
        "{\"name\": \"g\", \"arguments\": {}}] ok",
        "[TOOL_CALLS]{\"name\": \"f\", \"arguments\": {}}",
        "[TOOL_CALLS] not a list", "[TOOL_CALLS][]", "no calls [TOOL_C",
    ],
}
CASES = [(name, text) for name, texts in CORPUS.items() for text in texts]


def make_parser(name: str, **kw):
    if name.startswith("forced"):
        return ForcedParser(single=name == "forced_single", **kw)
    return create_tool_parser(name, **kw)


def streamed(name: str, pieces: list[str], **kw):
    """Drive the streaming parser like the server does and rebuild the message the client sees
    from the deltas (as the openai SDK accumulates them), checking their shape on the way."""
    parser = make_parser(name, **kw)
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    content, calls = [], []
    for event in events:
        assert set(event) in ({"content"}, {"tool_calls"})
        if "content" in event:
            assert event["content"]
            content.append(event["content"])
            continue
        (delta,) = event["tool_calls"]
        if "id" in delta:  # a new call: index, id, type, name first, with empty arguments
            assert delta["index"] == len(calls) and delta["type"] == "function"
            assert delta["function"]["arguments"] == ""
            calls.append({"id": delta["id"], "name": delta["function"]["name"], "arguments": ""})
        else:
            assert delta["index"] == len(calls) - 1 and set(delta["function"]) == {"arguments"}
            calls[-1]["arguments"] += delta["function"]["arguments"]
    text = "".join(content)
    return (text if text or not calls else None), calls


def whole(name: str, text: str, **kw):
    result = make_parser(name, **kw).parse(text)
    return result.content, [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.calls]


def without_ids(result):
    content, calls = result
    return content, [(c["name"], c["arguments"]) for c in calls]


def random_splits(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.choice([1, 1, 2, 3, 5, 8, 13])
        pieces.append(text[i:i + n])
        i += n
    return pieces


@pytest.mark.parametrize("name,text", CASES)
def test_streamed_deltas_rebuild_the_whole_parse_for_every_chunking(name, text):
    expected = without_ids(whole(name, text))
    assert without_ids(streamed(name, list(text))) == expected  # 1-character deltas
    assert without_ids(streamed(name, [text])) == expected
    rng = random.Random(hash(text) & 0xFFFF)
    for _ in range(30):
        assert without_ids(streamed(name, random_splits(text, rng))) == expected
    for cut in range(len(text) + 1):  # every split into two deltas
        assert without_ids(streamed(name, [text[:cut], text[cut:]])) == expected


FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool_", "</tool", "\n", " ", "{", "}", "[", "]", '"',
             "\\", ";", ",", ":", "x", "é🙂", '"name"', '{"name": "f", "arguments": {"a": 1}}',
             '{"name": "g", "parameters": {}}', '[{"name": "h", "arguments": {}}]', "NaN",
             "[TOOL_CALLS]", "<|python_tag|>", "<|python"]


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral", "forced", "forced_single"])
def test_random_markup_soup_parses_the_same_streamed_and_whole(name):
    """Texts glued from markup, JSON and separators: the streamed result equals the whole
    parse, and a text without calls comes back unchanged."""
    rng = random.Random(name)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        expected = without_ids(whole(name, text, names={"f", "g", "h"}))
        assert without_ids(streamed(name, random_splits(text, rng), names={"f", "g", "h"})) == expected
        if not expected[1] and not name.startswith("forced"):
            assert expected[0] == text


@pytest.mark.parametrize("name,text", CASES)
def test_text_is_kept_or_becomes_calls_never_lost(name, text):
    """Without calls the content is the text itself; with calls, the content is the text with
    pieces taken out (nothing invented) and every call's arguments are a JSON object."""
    content, calls = whole(name, text)
    if not calls:
        assert content == text
    for call in calls:
        assert isinstance(json.loads(call["arguments"]), dict)
        assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call["id"])
    assert len({c["id"] for c in calls}) == len(calls)
    rest = iter(text)
    assert all(ch in rest for ch in content or "")  # a subsequence of the text


def test_hermes_calls_content_and_markup_inside_strings():
    content, calls = whole("hermes", HERMES_TWO + "\n\nDone.")
    assert content == "Let me check.Done."
    assert [c["name"] for c in calls] == ["get_weather", "now"]
    # Arguments are the model's object re-serialized compactly, whatever it contained.
    assert json.loads(calls[0]["arguments"]) == WEATHER
    assert calls[0]["arguments"] == json.dumps(WEATHER, ensure_ascii=False, separators=(",", ":"))
    assert calls[1]["arguments"] == "{}"
    # A call ending at EOS without its end tag is still a call; string arguments are decoded.
    assert without_ids(whole("hermes", CORPUS["hermes"][3])) == (None, [("f", '{"a":1}')])
    assert without_ids(whole("hermes", CORPUS["hermes"][11])) == (None, [("f", '{"s":2}')])


def test_hermes_malformed_calls_are_returned_as_text():
    for text in CORPUS["hermes"][4:11]:
        content, calls = whole("hermes", text)
        assert content is not None
        assert not [c for c in calls if c["name"] == "f"]
    # A broken block ends at the next start tag: the call after it still parses.
    assert without_ids(whole("hermes", CORPUS["hermes"][9])) == (
        "a <tool_call>broken", [("g", "{}")])


def test_streamed_content_never_shows_markup_before_the_call_is_decided():
    parser = create_tool_parser("hermes")
    shown = ""
    for ch in "Checking <tool_call>\n{\"name\": \"now\", \"arguments\": {}}":
        shown += "".join(e.get("content", "") for e in parser.feed(ch))
    assert shown == "Checking"  # the space and the tag are held until the call closes
    events = parser.finish()
    assert [e["tool_calls"][0]["function"].get("name") for e in events] == ["now", None]


def test_llama3_json_calls_and_plain_json_answers():
    content, calls = whole("llama3_json", CORPUS["llama3_json"][1])
    assert content is None and [c["name"] for c in calls] == ["a", "b"]
    assert json.loads(calls[0]["arguments"]) == {"q": "};{"}
    assert whole("llama3_json", CORPUS["llama3_json"][3]) == (CORPUS["llama3_json"][3], [])
    assert without_ids(whole("llama3_json", CORPUS["llama3_json"][5])) == (
        "; and then some prose", [("a", "{}")])  # ";" is dropped only before a call
    assert without_ids(whole("llama3_json", CORPUS["llama3_json"][6])) == (
        '; {"name": 3}', [("a", "{}")])
    assert without_ids(whole("llama3_json", CORPUS["llama3_json"][10])) == (
        None, [("日本", '{"emoji":"🙂"}')])


def test_mistral_call_list():
    assert without_ids(whole("mistral", CORPUS["mistral"][0])) == (
        "Sure.ok", [("f", '{"q":"]"}'), ("g", "{}")])
    assert whole("mistral", "[TOOL_CALLS] not a list") == ("[TOOL_CALLS] not a list", [])


def test_calls_to_unknown_tools_are_text_and_max_calls_keeps_the_first():
    text = HERMES_TWO
    content, calls = whole("hermes", text, names={"now"})
    assert [c["name"] for c in calls] == ["now"] and "get_weather" in content
    for pieces in (list(text), [text]):
        assert without_ids(streamed("hermes", pieces, names={"now"})) == without_ids(
            whole("hermes", text, names={"now"}))
        assert [c["name"] for c in streamed("hermes", pieces, max_calls=1)[1]] == ["get_weather"]


def test_unknown_parser_names_the_choices():
    with pytest.raises(ValueError, match="hermes"):
        create_tool_parser("qwen9")


def test_default_parser_from_chat_template():
    qwen = ("{%- for tool_call in message.tool_calls %}{{- '<tool_call>\\n{\"name\": \"' }}"
            "{{- tool_call.function.name }}{%- endfor %}")
    llama = ("{%- if builtin_tools is defined %}{{- '<|python_tag|>' }}{%- endif %}"
             "{{- '\"parameters\": ' }}{{- tool_call.arguments | tojson }}")
    llama32 = "{{- '{\"name\": function name, \"parameters\": dictionary of argument name' }}"
    assert default_parser_for_template(qwen) == "hermes"
    assert default_parser_for_template(llama) == "llama3_json"
    assert default_parser_for_template(llama32) == "llama3_json"
    assert default_parser_for_template("{{ '[TOOL_CALLS]' }}") == "mistral"
    # A template that only lists the tools' schemas implies no call format.
    assert default_parser_for_template("{{ tool['function']['parameters'] | tojson }}") is None
    from tests.helpers.tiny_model import CHAT_TEMPLATE
    assert default_parser_for_template(CHAT_TEMPLATE) is None
    assert default_parser_for_template(None) is None


# --- the request side: tools, tool_choice, parallel_tool_calls --------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["C", "F"]}},
        "required": ["city"], "additionalProperties": False}}}
NOW_TOOL = {"type": "function", "function": {"name": "now"}}  # no parameters
TOOLS = [WEATHER_TOOL, NOW_TOOL]


@pytest.mark.parametrize("tools,choice,parallel,param", [
    ("get_weather", None, None, "tools"),
    ([{"type": "retrieval"}], None, None, "tools[0].type"),
    ([{"type": "function"}], None, None, "tools[0].function"),
    ([{"type": "function", "function": {"name": "has space"}}], None, None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], None, None, "tools[0].function.name"),
    ([NOW_TOOL, NOW_TOOL], None, None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], None, None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None, None,
     "tools[0].function.parameters.type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}], None,
     None, "tools[0].function.parameters.properties"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}], None,
     None, "tools[0].function.parameters.required"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], None, None,
     "tools[0].function.description"),
    ([NOW_TOOL] * 129, None, None, "tools"),
    (None, "required", None, "tool_choice"),
    (TOOLS, "sometimes", None, "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "missing"}}, None, "tool_choice.function.name"),
    (None, {"type": "function", "function": {"name": "now"}}, None, "tool_choice.function.name"),
    (TOOLS, {"type": "function"}, None, "tool_choice.function.name"),
    (TOOLS, None, "yes", "parallel_tool_calls"),
])
def test_bad_tool_fields_are_400s_naming_the_field(tools, choice, parallel, param):
    with pytest.raises(InvalidRequest) as info:
        plan_tools(tools, choice, parallel)
    assert info.value.param == param
    response = error_response(info.value)
    assert response.status_code == 400
    body = json.loads(response.body)["error"]
    assert body["param"] == param and body["message"]


def test_tool_choice_resolution():
    assert plan_tools(None) is None and plan_tools([], "auto") is None and plan_tools(None, "none") is None
    auto = plan_tools(TOOLS)
    assert (auto.choice, auto.forced, auto.parallel, auto.names) == (
        "auto", False, True, {"get_weather", "now"})
    assert auto.schema() is None
    assert plan_tools(TOOLS, "none").parser("hermes") is None  # tools reach the template, no parsing
    parser = auto.parser("hermes")
    calls = parser.parse(HERMES_TWO).calls
    assert [c.name for c in calls] == ["get_weather", "now"]
    assert calls[0].to_openai() == {"id": calls[0].id, "type": "function", "function": {
        "name": "get_weather", "arguments": calls[0].arguments}}
    single = plan_tools(TOOLS, "auto", parallel_tool_calls=False).parser("hermes")
    assert [c.name for c in single.parse(HERMES_TWO).calls] == ["get_weather"]
    with pytest.raises(InvalidRequest, match="--tool-call-parser"):
        auto.parser(None)
    named = plan_tools(TOOLS, {"type": "function", "function": {"name": "now"}})
    assert (named.choice, named.function, named.forced) == ("function", "now", True)


def forced_output(rng: random.Random, tools: list[dict]) -> dict:
    """A call as a constrained model would write it: a tool and arguments valid for it."""
    tool = rng.choice(tools)["function"]
    if tool["name"] == "get_weather":
        args = {"city": rng.choice(["Paris", "東京", "a\"b}"])}
        if rng.random() < 0.5:
            args["unit"] = rng.choice(["C", "F"])
    else:
        args = {}
    return {"name": tool["name"], "arguments": args}


def test_required_schema_accepts_exactly_valid_calls():
    rng = random.Random(0)
    required = required_schema(TOOLS, "required", parallel=True, max_calls=3)
    single = required_schema(TOOLS, "required", parallel=False)
    named = required_schema(TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    for schema in (required, single, named):
        jsonschema.Draft202012Validator.check_schema(schema)
    ok = jsonschema.Draft202012Validator
    for _ in range(20):
        calls = [forced_output(rng, TOOLS) for _ in range(rng.randint(1, 3))]
        assert ok(required).is_valid(calls)
        assert ok(single).is_valid(calls[:1]) and ok(single).is_valid(calls) == (len(calls) == 1)
    assert ok(named).is_valid({"name": "get_weather", "arguments": {"city": "Oslo"}})
    bad = [[], [{"name": "nope", "arguments": {}}], [{"name": "now", "arguments": {"x": 1}}],
           [{"name": "get_weather", "arguments": {"unit": "C"}}],
           [{"name": "get_weather", "arguments": {"city": "Oslo"}, "extra": 1}],
           [{"name": "now"}], [forced_output(rng, TOOLS)] * 4]
    for calls in bad:
        assert not ok(required).is_valid(calls), calls
    assert not ok(named).is_valid({"name": "now", "arguments": {}})
    with pytest.raises(ValueError):
        required_schema(TOOLS, "auto")


def test_required_schema_compiles_with_xgrammar_and_constrains_to_calls():
    xgr = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string as accepts
    grammar = xgr.Grammar.from_json_schema(json.dumps(
        plan_tools(TOOLS, "required", parallel_tool_calls=False).schema()))
    good = json.dumps([{"name": "get_weather", "arguments": {"city": "Rome", "unit": "F"}}])
    assert accepts(grammar, good)
    assert not accepts(grammar, json.dumps([{"name": "other", "arguments": {}}]))
    assert not accepts(grammar, json.dumps([{"name": "now", "arguments": {}}] * 2))
    named = xgr.Grammar.from_json_schema(json.dumps(plan_tools(
        TOOLS, {"type": "function", "function": {"name": "now"}}).schema()))
    assert accepts(named, '{"name": "now", "arguments": {}}')
    assert not accepts(named, '{"name": "now", "arguments": {"a": 1}}')


def test_forced_output_parses_back_into_calls_whole_and_streamed():
    rng = random.Random(1)
    for _ in range(10):
        calls = [forced_output(rng, TOOLS) for _ in range(rng.randint(1, 3))]
        text = json.dumps(calls, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
        parsed = parse_forced(text, single=False)
        assert [(c.name, json.loads(c.arguments)) for c in parsed] == [
            (c["name"], c["arguments"]) for c in calls]
        parser = ForcedParser(single=False)
        events = [e for ch in text for e in parser.feed(ch)] + parser.finish()
        assert not [e for e in events if "content" in e]
        assert without_ids(whole_from(parser)) == without_ids(
            (None, [{"name": c.name, "arguments": c.arguments} for c in parsed]))
    one = parse_forced('{"name": "now", "arguments": {}}', single=True)
    assert [(c.name, c.arguments) for c in one] == [("now", "{}")]
    # Cut by max_tokens: the finished calls are kept, the rest is content.
    cut = ForcedParser(single=False).parse('[{"name": "now", "arguments": {}}, {"name": "get_w')
    assert [c.name for c in cut.calls] == ["now"] and cut.content == '{"name": "get_w'


def whole_from(parser):
    result = parser.result()
    return result.content, [{"name": c.name, "arguments": c.arguments} for c in result.calls]


# --- tool messages through chat templates -------------------------------------------------------

# Small templates that read the same fields as the real ones (written here, not copied):
# Qwen2.5 writes `arguments | tojson`, Qwen3 passes a string through and tojson's a dict, and
# Llama 3.1 writes the first call as {"name", "parameters"} and the tool result's content.
QWEN25_LIKE = (
    "{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}"
    "{%- for tc in m.tool_calls %}{%- if tc.function is defined %}{%- set tc = tc.function %}{%- endif %}"
    "<tool_call>\n{\"name\": \"{{ tc.name }}\", \"arguments\": {{ tc.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}{%- elif m.role == 'tool' %}<tool_response>\n{{ m.content }}\n</tool_response>"
    "{%- else %}{{ m.role }}: {{ m.content }}\n{%- endif %}{%- endfor %}")
QWEN3_LIKE = QWEN25_LIKE.replace(
    "{{ tc.arguments | tojson }}",
    "{%- if tc.arguments is string %}{{ tc.arguments }}{%- else %}{{ tc.arguments | tojson }}{%- endif %}")
LLAMA31_LIKE = (
    "{%- for m in messages %}{%- if m.tool_calls %}{%- set tc = m.tool_calls[0].function %}"
    "{{ '{\"name\": \"' + tc.name + '\", \"parameters\": ' }}{{ tc.arguments | tojson }}}"
    "{%- elif m.role == 'tool' %}ipython[{{ m.tool_call_id }}|{{ m.name }}]: {{ m.content }}"
    "{%- else %}{{ m.role }}: {{ m.content }}{%- endif %}{{ '\\n' }}{%- endfor %}")

HISTORY = [
    {"role": "user", "content": "Weather in Paris and the time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "note": "é\"}"})}},
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "18C"}]},
    {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
]


def render(template: str, messages: list[dict]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template
    rendered, _ = render_jinja_template([messages], chat_template=template)
    return rendered[0]


@pytest.mark.parametrize("template", [QWEN25_LIKE, QWEN3_LIKE])
def test_tool_history_renders_in_hermes_templates_as_the_calls_the_model_made(template):
    text = render(template, normalize_messages(HISTORY))
    # What the template wrote is what the hermes parser reads back: the same calls.
    calls = parse_tool_calls("hermes", text).calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (tc["function"]["name"], json.loads(tc["function"]["arguments"]))
        for tc in HISTORY[1]["tool_calls"]]
    assert "<tool_response>\n18C\n</tool_response>" in text
    bodies = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text)
    assert [type(json.loads(b)["arguments"]) for b in bodies] == [dict, dict]
    if template is QWEN25_LIKE:  # unnormalized, the template writes the arguments as a string
        raw = [dict(m, content=m["content"] if isinstance(m["content"], str) else "") for m in HISTORY]
        bodies = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", render(template, raw))
        assert [type(json.loads(b)["arguments"]) for b in bodies] == [str, str]


def test_tool_history_renders_in_a_llama_template_with_ids_and_names():
    text = render(LLAMA31_LIKE, normalize_messages(HISTORY))
    calls = parse_tool_calls("llama3_json", text.split("\n")[1]).calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "note": "é\"}"})]
    assert "ipython[call_a|get_weather]: 18C" in text and "ipython[call_b|now]: 12:00" in text


def test_normalize_messages_accepts_request_models_and_rejects_bad_calls():
    from minisgl.server.protocol import ChatCompletionRequest
    req = ChatCompletionRequest.model_validate({"messages": HISTORY})
    assert normalize_messages(req.messages) == normalize_messages(HISTORY)
    assert normalize_messages(HISTORY)[1]["tool_calls"][0] == {
        "id": "call_a", "type": "function",
        "function": {"name": "get_weather", "arguments": json.loads(
            HISTORY[1]["tool_calls"][0]["function"]["arguments"])}}
    bad = [
        ([{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}]}],
         "messages[0].tool_calls[0].function.arguments"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
         "messages[0].tool_calls[0].function.arguments"),
        ([{"role": "assistant", "tool_calls": {"function": {}}}], "messages[0].tool_calls"),
        ([{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}],
         "messages[0].tool_calls[0].id"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ]
    for messages, param in bad:
        with pytest.raises(InvalidRequest) as info:
            normalize_messages(messages)
        assert info.value.param == param
