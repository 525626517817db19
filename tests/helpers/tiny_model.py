"""Build tiny random-weight HF models (config + safetensors + a tokenizer trained here).

Used by the tests (compared against Hugging Face transformers) and to regenerate the
built-in demo model's config and tokenizer (`python -m tests.helpers.tiny_model DIR`).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a of to and in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been "
    "now find any new work part take get place made live where after back little only round "
    "man year came show every good me give our under name very through just form sentence "
    "great think say help low line differ turn cause much mean before move right boy old too "
    "same tell does set three want air well also play small end put home read hand port large "
    "spell add even land here must big high such follow act why ask men change went light kind "
    "off need house picture try us again animal point mother world near build self earth father "
    "hello model server token cache radix page batch decode prefill kernel tensor 0 1 2 3 4 5 6 "
    "7 8 9 10 42 100 . , ! ? : ; ' \" ( ) - é ü 中 文 日本 🙂"
).split()


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 24))) for _ in range(n_lines)]


def train_tokenizer(out_dir: Path, vocab_size: int = 512, seed: int = 0) -> int:
    """Train a byte-level BPE tokenizer, save tokenizer.json + tokenizer_config.json; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(2000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return tok.get_vocab_size()


def tiny_config(arch: str, vocab_size: int, eos_id: int, **overrides) -> "object":
    """A few-layer config of the given architecture (llama | qwen2 | qwen3)."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        eos_token_id=eos_id,
        bos_token_id=None,
        pad_token_id=0,
        tie_word_embeddings=False,
        dtype="float32",
    )
    if arch == "llama":
        common.update(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
            },
            attention_bias=False,
            mlp_bias=False,
        )
        cls = transformers.LlamaConfig
    elif arch == "qwen2":
        common.update(rope_theta=1000000.0, tie_word_embeddings=True)
        cls = transformers.Qwen2Config
    elif arch == "qwen3":
        common.update(rope_theta=1000000.0, head_dim=32, tie_word_embeddings=True)
        cls = transformers.Qwen3Config
    else:
        raise ValueError(f"unknown arch {arch!r}")
    common.update(overrides)
    return cls(**common)


def build_tiny_model(out_dir: Path | str, arch: str = "llama", seed: int = 0,
                     max_shard_size: str | None = None, random_vectors: bool = False,
                     **overrides) -> Path:
    """Write config.json + model.safetensors + tokenizer files for a random tiny model.
    random_vectors: biases and norm weights random too (transformers starts them at 0 and 1,
    which would hide a kernel that drops or misindexes them)."""
    import torch
    import transformers

    out_dir = Path(out_dir)
    vocab = train_tokenizer(out_dir, seed=seed)
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    config = tiny_config(arch, vocab, tok.convert_tokens_to_ids("<|im_end|>"), **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init is tiny (std 0.02): widen it so greedy outputs vary with the prompt.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25 if "embed" not in name else 1.0)
            elif random_vectors and name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif random_vectors:  # norm weights
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out_dir), safe_serialization=True, **extra)
    return out_dir


if __name__ == "__main__":
    # Regenerate the demo model files: python -m tests.helpers.tiny_model worker/minisgl/models/demo
    target = Path(sys.argv[1])
    size = train_tokenizer(target, vocab_size=2048, seed=1)
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(target)).convert_tokens_to_ids("<|im_end|>")
    cfg = tiny_config(
        "qwen3", size, eos, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=4096,
    )
    cfg.save_pretrained(str(target))
    print(json.dumps({"dir": str(target), "vocab": size}))
