"""The benchmark tokenizer covers every model id, so each sampled token streams as text."""

from __future__ import annotations

from benchmarks.make_tokenizer import make_tokenizer
from minisgl.sampling_params import SamplingParams
from minisgl.tokenizer.detokenize import IncrementalDetokenizer
from minisgl.tokenizer.tokenize import load_tokenizer


def test_every_id_decodes_to_text_incrementally(tmp_path):
    tok = load_tokenizer(str(make_tokenizer(1000, tmp_path / "tok")))
    assert len(tok) == 1000
    detok = IncrementalDetokenizer(tok, SamplingParams(max_tokens=8), [1, 2])
    texts = [detok.add([t], finished=False)[0] for t in (998, 5, 731)]
    assert all(texts), texts  # no token decodes to "" (the demo tokenizer's 920 ids would)
    assert "".join(texts).split() == ["w998", "w5", "w731"]


def test_chars_tokenizer_spells_json_that_a_grammar_accepts(tmp_path):
    import json

    import pytest

    pytest.importorskip("xgrammar")
    from benchmarks.make_tokenizer import CHARS
    from benchmarks.structured import SCHEMA
    from minisgl.grammar import GrammarBackend

    tok = load_tokenizer(str(make_tokenizer(1000, tmp_path / "tok", chars=True)))
    doc = json.dumps({"name": "w7 x", "age": 31, "tags": ["ab"],  # xgrammar's ", " / ": "
                      "address": {"city": "P", "zip": "75001"}})
    ids = [CHARS.index(c) for c in doc]
    assert tok.decode(ids) == doc  # joined as they are: numbers stay numbers
    backend = GrammarBackend(tok, 1000, [999])
    matcher = backend.matcher(backend.compile(("json", json.dumps(SCHEMA))))
    assert all(matcher.accept_token(i) for i in ids)
    assert matcher.accept_token(999) and matcher.is_terminated()  # the stop token ends it
