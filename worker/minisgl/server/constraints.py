"""What constrains a request's output, from its OpenAI / vLLM fields: a grammar for
structured output (`response_format`, `guided_*`, `structured_outputs`) and `logit_bias`.
The shapes are pydantic's (protocol.py); the meaning is checked by SamplingParams.validate
and, for what only a compiler can tell, by the scheduler's xgrammar compile (also a 400)."""

from __future__ import annotations

from minisgl.errors import InvalidRequest
from minisgl.grammar import choice_grammar, json_grammar
from minisgl.server.protocol import _SamplingFields


def request_grammar(req: _SamplingFields) -> tuple[str, str] | None:
    """The request's one grammar, or None; a 400 when it sets several."""
    found: list[tuple[str, tuple[str, str]]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(("response_format", json_grammar(None)))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise InvalidRequest("response_format json_schema needs json_schema.schema",
                                 param="response_format")
        found.append(("response_format", json_grammar(fmt.json_schema.schema_)))
    so = req.structured_outputs
    candidates = [
        ("guided_json", req.guided_json, json_grammar),
        ("guided_regex", req.guided_regex, lambda v: ("regex", v)),
        ("guided_choice", req.guided_choice, choice_grammar),
        ("guided_grammar", req.guided_grammar, lambda v: ("ebnf", v)),
    ]
    if so is not None:
        candidates += [
            ("structured_outputs.json", so.json_, json_grammar),
            ("structured_outputs.regex", so.regex, lambda v: ("regex", v)),
            ("structured_outputs.choice", so.choice, choice_grammar),
            ("structured_outputs.grammar", so.grammar, lambda v: ("ebnf", v)),
            ("structured_outputs.json_object", so.json_object or None, lambda v: json_grammar(None)),
        ]
    found += [(name, make(value)) for name, value, make in candidates if value is not None]
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise InvalidRequest(f"set at most one output constraint, got {names}",
                             param=found[1][0])
    return found[0][1] if found else None


def logit_bias(req: _SamplingFields) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as sorted (id, bias) pairs."""
    pairs = []
    for key, bias in (req.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequest(f"logit_bias key {key!r} is not a token id",
                                 param="logit_bias") from None
        pairs.append((token, float(bias)))
    return tuple(sorted(pairs))
