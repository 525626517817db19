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
