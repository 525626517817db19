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


def streamed(name: str, pieces: list[str], **kw):
    """Drive the streaming parser like the server does and rebuild the message the client sees
    from the deltas (as the openai SDK accumulates them), checking their shape on the way."""
    parser = create_tool_parser(name, **kw)
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
    result = parse_tool_calls(name, text, **kw)
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
    from tests.helpers.tiny_model import CHAT_TEMPLATE
    assert default_parser_for_template(CHAT_TEMPLATE) is None
    assert default_parser_for_template(None) is None
