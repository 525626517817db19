"""Write a tokenizer directory whose vocabulary covers every id of a model (for GPU serving
benchmarks of config-only `--dummy-weight` models; no hub here).

The built-in demo tokenizer has 920 ids: a random-weight Qwen3 samples ids up to 151,935,
which it decodes to "", so streams send almost no text events and TTFT measures the finish
event. This word-level tokenizer maps id i to the word "w{i}" (decoded with a space between
words), so every token is text and the server does the per-token work a real model causes.

    python benchmarks/make_tokenizer.py --vocab 151936 --out /tmp/tok
    python -m minisgl --model-path benchmarks/configs/qwen3-0.6b --dummy-weight --tokenizer-path /tmp/tok

--chars (for structured output): ids 0-94 are the printable ASCII characters, so a grammar can
spell any JSON with them, and tokens decode joined with nothing between them (JSON's numbers
stay numbers). A tokenizer smaller than the model (the demo's 920 ids on Qwen3's 151,936) is
no stand-in there: xgrammar treats every id past the tokenizer as a special token and scans
them on every accepted token (~45 us a token at 151,016 of them, ~2 us with none).

    python benchmarks/make_tokenizer.py --vocab 151936 --chars --out /tmp/tok-chars
    python benchmarks/structured.py --model qwen3-0.6b --device cuda --tokenizer-path /tmp/tok-chars ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


CHARS = [chr(c) for c in range(32, 127)]  # printable ASCII, space included


def make_tokenizer(vocab: int, out: Path, chars: bool = False) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    first = CHARS if chars else []
    words = {w: i for i, w in enumerate(first)}
    words.update({f"w{i}": i for i in range(len(first), vocab - 1)})
    words["<|endoftext|>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # --chars: tokens joined as they are; else words with spaces between them
    tok.decoder = decoders.Fuse() if chars else decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, required=True, help="ids the tokenizer must cover")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chars", action="store_true",
                   help="ids 0-94: printable ASCII, decoded without separators (structured output)")
    args = p.parse_args()
    print(make_tokenizer(args.vocab, args.out, args.chars))


if __name__ == "__main__":
    main()
