"""Write a tokenizer directory whose vocabulary covers every id of a model (for GPU serving
benchmarks of config-only `--dummy-weight` models; no hub here).

The built-in demo tokenizer has 920 ids: a random-weight Qwen3 samples ids up to 151,935,
which it decodes to "", so streams send almost no text events and TTFT measures the finish
event. This word-level tokenizer maps id i to the word "w{i}" (decoded with a space between
words), so every token is text and the server does the per-token work a real model causes.

    python benchmarks/make_tokenizer.py --vocab 151936 --out /tmp/tok
    python -m minisgl --model-path benchmarks/configs/qwen3-0.6b --dummy-weight --tokenizer-path /tmp/tok
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_tokenizer(vocab: int, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 1)}
    words["<|endoftext|>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, required=True, help="ids the tokenizer must cover")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    print(make_tokenizer(args.vocab, args.out))


if __name__ == "__main__":
    main()
