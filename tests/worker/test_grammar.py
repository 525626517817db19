"""minisgl.grammar against real xgrammar and a byte-level BPE tokenizer trained here: the
JSON control-character hole is closed, compiled grammars are cached, bad grammars are
InvalidRequests, and the sampler's bitmask leaves only allowed tokens."""

from __future__ import annotations

import json

import pytest
import torch

from minisgl.errors import InvalidRequest
from minisgl.grammar import GrammarBackend, apply_bitmask, build_grammar, check_grammar

BOUNDED = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 8}},
           "required": ["s"], "additionalProperties": False}
CASES = [  # (schema, a prefix that ends inside a string)
    (BOUNDED, '{"s": "'),
    ({"type": "object", "properties": {"s": {"type": "string", "minLength": 2}},
      "required": ["s"]}, '{"s": "'),
    ({"type": "object", "properties": {"s": {"type": "array", "maxItems": 2,
                                             "items": {"type": "string", "maxLength": 3}}},
      "required": ["s"]}, '{"s": ["'),
    ({"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}, '{"s": "'),
    (None, '{"s": "'),  # json_object
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def backend(tokenizer):
    return GrammarBackend(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def _allowed(backend, matcher) -> list[int]:
    bitmask, rows = backend.fill([matcher])
    assert rows == [0]
    bits = bitmask[0].tolist()
    return [t for t in range(backend.vocab_size) if (bits[t // 32] >> (t % 32)) & 1]


@pytest.mark.parametrize("schema,prefix", CASES, ids=["maxLength", "minLength", "array",
                                                      "unbounded", "json_object"])
def test_no_raw_control_character_inside_json_strings(backend, tokenizer, schema, prefix):
    grammar = ("json", json.dumps(schema) if schema is not None else "")
    matcher = backend.matcher(backend.compile(grammar))
    for token in tokenizer.encode(prefix, add_special_tokens=False):
        assert matcher.accept_token(token)
    allowed = _allowed(backend, matcher)
    assert len(allowed) > 100  # the string is open: most text tokens fit
    control = [t for t in allowed if any(ord(ch) < 0x20 for ch in tokenizer.decode([t]))]
    assert control == [], [tokenizer.decode([t]) for t in control]


def test_xgrammar_itself_still_has_the_hole_we_patch(backend, tokenizer):
    """Guards the patch: if a new xgrammar closes the hole, this fails and the patch can go."""
    import xgrammar as xgr

    raw = xgr.Grammar.from_json_schema(json.dumps(BOUNDED), any_whitespace=False)
    matcher = xgr.GrammarMatcher(backend.compiler.compile_grammar(raw))
    for token in tokenizer.encode('{"s": "', add_special_tokens=False):
        assert matcher.accept_token(token)
    allowed = _allowed(backend, matcher)
    assert any(ord(tokenizer.decode([t])[0]) < 0x20 for t in allowed if tokenizer.decode([t]))


def test_compiled_grammars_are_cached(backend):
    grammar = ("regex", "[a-z]{2,5}")
    hits = backend.cache_hits_total
    first = backend.compile(grammar)
    assert backend.compile(grammar) is first
    assert backend.cache_hits_total == hits + 1


@pytest.mark.parametrize("grammar", [("regex", "[a-"), ("ebnf", "root ::= (("),
                                     ("json", json.dumps({"$ref": "#/$defs/nope"}))])
def test_uncompilable_grammars_are_invalid_requests(grammar):
    with pytest.raises(InvalidRequest, match="cannot compile"):
        build_grammar(*grammar)


@pytest.mark.parametrize("grammar", [("yaml", "a"), ("json", "[1]"), ("json", "{"),
                                     ("choice", "[]"), ("choice", '["a", 3]'), ("regex", ""),
                                     ("json",)])
def test_check_grammar_refuses_bad_shapes(grammar):
    with pytest.raises(InvalidRequest):
        check_grammar(grammar)


def test_bitmask_leaves_only_allowed_tokens(backend, tokenizer):
    matcher = backend.matcher(backend.compile(("choice", json.dumps(["yes", "no"]))))
    logits = torch.randn(3, backend.vocab_size)
    bitmask, _ = backend.fill([None, matcher, None])
    out = apply_bitmask(logits, bitmask, [1])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    finite = torch.isfinite(out[1]).nonzero().flatten().tolist()
    assert finite == _allowed(backend, matcher)
    assert {tokenizer.decode([t])[0] for t in finite} <= {"y", "n"}
    assert torch.isfinite(logits).all()  # the raw logits are untouched (logprobs use them)


def test_numbers_cannot_run_on(backend, tokenizer):
    """An unbounded integer stops taking digits at 16: a random model cannot fill max_tokens."""
    matcher = backend.matcher(backend.compile(("json", json.dumps(
        {"type": "object", "properties": {"i": {"type": "integer"}}, "required": ["i"]}))))
    for token in tokenizer.encode('{"i": -', add_special_tokens=False):
        assert matcher.accept_token(token)
    digits = [t for t in range(backend.vocab_size) if tokenizer.decode([t]) == "7"]
    for _ in range(16):
        assert digits[0] in _allowed(backend, matcher)
        assert matcher.accept_token(digits[0])
    allowed = _allowed(backend, matcher)
    assert not any(tokenizer.decode([t])[:1].isdigit() for t in allowed if tokenizer.decode([t]))
    assert allowed  # "}" (and whatever else closes the object) is still there


def test_batch_fill_matches_one_by_one(backend, tokenizer):
    grammars = [("choice", json.dumps(["yes", "no"])), ("regex", "[0-9]+"), ("json", "")]
    matchers = [None] + [backend.matcher(backend.compile(g)) for g in grammars] + [None]
    batched, rows = backend.fill(matchers)
    assert rows == [1, 2, 3]
    for i in rows:
        alone, _ = backend.fill([matchers[i]])
        assert batched[i].tolist() == alone[0].tolist()
    assert batched[0].tolist() == batched[4].tolist() == [-1] * batched.shape[1]  # all allowed


def test_a_tokenizer_far_smaller_than_the_model_is_warned_about(tokenizer, caplog):
    """xgrammar treats model ids past the tokenizer as special tokens and scans them on every
    accepted token: the server says so instead of silently running constrained decoding slow."""
    with caplog.at_level("WARNING", logger="minisgl.grammar"):
        GrammarBackend(tokenizer, len(tokenizer) + 10, [tokenizer.eos_token_id])
    assert not caplog.records
    with caplog.at_level("WARNING", logger="minisgl.grammar"):
        GrammarBackend(tokenizer, len(tokenizer) + 50_000, [tokenizer.eos_token_id])
    [record] = caplog.records
    assert "special tokens" in record.getMessage() and "50000 ids past" in record.getMessage()
