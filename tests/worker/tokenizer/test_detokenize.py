from __future__ import annotations

import random

import pytest

from minisgl.sampling_params import SamplingParams
from minisgl.tokenizer.detokenize import IncrementalDetokenizer

TEXTS = [
    "hello world, the model is here",
    "中文 日本 🙂 é ü and more 🙂🙂",
    "a.b,c!d? (e) - 'f' \"g\"",
    "the cache of the radix page batch decode prefill kernel tensor 42 100",
]


def _stream(detok: IncrementalDetokenizer, ids: list[int], step: int = 1) -> tuple[str, bool]:
    out, stopped = [], False
    for i in range(0, len(ids), step):
        last = i + step >= len(ids)
        text, stopped = detok.add(ids[i : i + step], finished=last)
        out.append(text)
        if stopped:
            break
    return "".join(out), stopped


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("step", [1, 2, 5])
def test_streamed_text_equals_full_decode(tokenizer, text, step):
    ids = tokenizer.encode(text)
    got, stopped = _stream(IncrementalDetokenizer(tokenizer, SamplingParams()), ids, step)
    assert got == tokenizer.decode(ids) == text
    assert not stopped


def test_partial_utf8_is_never_emitted_mid_stream(tokenizer):
    ids = tokenizer.encode("🙂中文🙂")
    detok = IncrementalDetokenizer(tokenizer, SamplingParams())
    pieces = [detok.add([t]).text for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "🙂中文🙂"
    assert len(ids) > 4  # the tokenizer really splits these characters


def test_prompt_context_does_not_leak_into_output(tokenizer):
    prompt, out = tokenizer.encode("hello the"), tokenizer.encode(" model is here")
    detok = IncrementalDetokenizer(tokenizer, SamplingParams(), prompt_ids=prompt)
    got, _ = _stream(detok, out)
    assert got == " model is here"


def test_special_tokens_are_skipped_unless_asked(tokenizer):
    ids = tokenizer.encode("hello") + [tokenizer.eos_token_id] + tokenizer.encode(" world")
    assert _stream(IncrementalDetokenizer(tokenizer, SamplingParams()), ids)[0] == "hello world"
    keep = SamplingParams(skip_special_tokens=False)
    assert _stream(IncrementalDetokenizer(tokenizer, keep), ids)[0] == "hello<|im_end|> world"


def _expected(text: str, stops: tuple[str, ...], include: bool) -> tuple[str, bool]:
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, False
    pos, s = min(hits)
    return text[: pos + len(s)] if include else text[:pos], True


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("stops", [("model",), ("del is",), ("🙂",), ("中文 日",), ("e",),
                                   ("zzz", "is h"), ("not there",), ("the", "he")])
def test_stop_strings_cut_across_token_boundaries(tokenizer, stops, include):
    text = "hello world, the model is here 中文 日本 🙂"
    ids = tokenizer.encode(text)
    params = SamplingParams(stop=stops, include_stop_str_in_output=include)
    detok = IncrementalDetokenizer(tokenizer, params)
    pieces, stopped = [], False
    for i, t in enumerate(ids):
        piece, stopped = detok.add([t], finished=i == len(ids) - 1)
        pieces.append(piece)
        if stopped:
            break
        # nothing emitted so far may contain (the start of) a stop string that then completes
        assert not any(s in "".join(pieces) for s in stops)
    assert ("".join(pieces), stopped) == _expected(text, stops, include)
    assert detok.add(ids[:1]) == ("", True) if stopped else True


def test_stop_strings_randomized(tokenizer):
    rng = random.Random(0)
    words = "the a model 中文 🙂 is here , . hello world".split()
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        ids = tokenizer.encode(text)
        if tokenizer.decode(ids) != text:
            continue
        start = rng.randrange(len(text))
        stops = (text[start : start + rng.randint(1, 6)], rng.choice(words))
        include = rng.random() < 0.5
        params = SamplingParams(stop=stops, include_stop_str_in_output=include)
        step = rng.randint(1, 3)
        got = _stream(IncrementalDetokenizer(tokenizer, params), ids, step)
        # streaming semantics: stop at the first step whose text contains any stop string
        expected = (text, False)
        for end in range(step, len(ids) + step, step):
            cut = _expected(tokenizer.decode(ids[:end]), stops, include)
            if cut[1]:
                expected = cut
                break
        assert got == expected, (text, stops, step)


def test_held_back_prefix_is_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("hello mod")
    detok = IncrementalDetokenizer(tokenizer, SamplingParams(stop=("model",)))
    streamed = "".join(detok.add([t]).text for t in ids)
    assert streamed == "hello "  # "mod" might still become "model"
    assert detok.add([], finished=True) == ("mod", False)
    assert detok.text == "hello mod"


def test_batch_decoder_matches_tokenizer_decode(tokenizer):
    import random

    from minisgl.tokenizer.detokenize import _stock_backend, batch_decoder

    assert _stock_backend(tokenizer) is not None  # the test tokenizer takes the fast path
    rng = random.Random(0)
    ids = tokenizer.encode("héllo wörld 🙂 <|im_end|> tokens, spaces  and\nnewlines 中文")
    ids += [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    seqs = [[rng.choice(ids) for _ in range(rng.randint(0, 6))] for _ in range(200)]
    for skip in (True, False):
        want = [tokenizer.decode(s, skip_special_tokens=skip) for s in seqs]
        assert batch_decoder(tokenizer)(seqs, skip) == want


def test_batch_decoder_falls_back_for_an_overridden_decode(tokenizer):
    from minisgl.tokenizer.detokenize import batch_decoder

    class Shouting:
        def decode(self, ids, skip_special_tokens=False):
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).upper()

    assert batch_decoder(Shouting())([tokenizer.encode("hi there")], True) == ["HI THERE"]
