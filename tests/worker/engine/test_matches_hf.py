"""Greedy outputs and logprobs of our engine equal Hugging Face transformers', token by token."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from minisgl import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _prompts(seed: int, n: int, vocab: int, lo: int = 1, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def hf_models(tiny_models):
    return {a: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
            for a, d in tiny_models.items()}


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_mixed_batch_greedy_matches_hf(arch, overlap, tiny_models, hf_models):
    llm = LLM(tiny_models[arch], dtype="float32", overlap=overlap)
    prompts = _prompts(1, 8, llm.scheduler.vocab_size)
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == _hf_greedy(hf_models[arch], prompt, 12)
        assert out.finish_reason == "length"


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
@pytest.mark.parametrize("page_size", [1, 4])
def test_chunked_prefill_matches_hf(page_size, overlap, tiny_models, hf_models):
    llm = LLM(tiny_models["qwen3"], dtype="float32", max_prefill_length=16, page_size=page_size,
              overlap=overlap)
    prompts = _prompts(2, 6, llm.scheduler.vocab_size, lo=20, hi=90)
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == _hf_greedy(hf_models["qwen3"], prompt, 12)


@pytest.mark.parametrize("page_size", [1, 4])
def test_prefix_cache_hits_match_hf(page_size, tiny_models, hf_models):
    llm = LLM(tiny_models["llama"], dtype="float32", page_size=page_size)
    rng = random.Random(3)
    prefix = [rng.randrange(3, 400) for _ in range(40)]
    first = llm.generate([prefix + [7, 8, 9]], GREEDY)[0]
    assert first.num_cached_tokens == 0
    prompts = [prefix + [rng.randrange(3, 400) for _ in range(rng.randint(1, 10))] for _ in range(5)]
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.num_cached_tokens >= 40 // page_size * page_size - page_size
        assert out.token_ids == _hf_greedy(hf_models["llama"], prompt, 12)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prompt_logprobs_equal_hf_log_softmax(arch, tiny_models, hf_models):
    llm = LLM(tiny_models[arch], dtype="float32", max_prefill_length=16)
    prompt = _prompts(4, 1, llm.scheduler.vocab_size, lo=40, hi=40)[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=True))[0]
    assert out.token_ids == [] and out.finish_reason == "length"
    with torch.no_grad():
        logits = hf_models[arch](torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    assert out.prompt_logprobs[0] is None
    got = torch.tensor(out.prompt_logprobs[1:])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_chosen_token_logprobs_equal_hf(tiny_models, hf_models):
    llm = LLM(tiny_models["qwen2"], dtype="float32")
    prompt = _prompts(5, 1, llm.scheduler.vocab_size, lo=10, hi=10)[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=5, temperature=0.0, logprobs=0,
                                                ignore_eos=True))[0]
    full = prompt + out.token_ids
    with torch.no_grad():
        logits = hf_models["qwen2"](torch.tensor([full])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    expected = [lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    torch.testing.assert_close(torch.tensor(out.outputs[0].logprobs), torch.tensor(expected),
                               atol=1e-4, rtol=1e-4)


def test_bfloat16_runs_close_to_float32(tiny_models):
    prompts = _prompts(6, 3, 400, lo=5, hi=30)
    p = SamplingParams(max_tokens=0, prompt_logprobs=True)
    f32 = LLM(tiny_models["llama"], dtype="float32").generate(prompts, p)
    bf16 = LLM(tiny_models["llama"], dtype="bfloat16").generate(prompts, p)
    for a, b in zip(f32, bf16):
        torch.testing.assert_close(torch.tensor(a.prompt_logprobs[1:]),
                                   torch.tensor(b.prompt_logprobs[1:]), atol=0.5, rtol=0.1)


def test_sharded_checkpoint_loads_identically(tiny_models, hf_models, tmp_path):
    from tests.helpers.tiny_model import build_tiny_model

    sharded = build_tiny_model(tmp_path / "sharded", "qwen2", max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    prompts = _prompts(8, 2, 400)
    a = LLM(str(sharded), dtype="float32").generate(prompts, GREEDY)
    b = LLM(tiny_models["qwen2"], dtype="float32").generate(prompts, GREEDY)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_dtype_auto_follows_config_and_float16_runs(tiny_models):
    auto = LLM(tiny_models["llama"])  # config says float32
    assert auto.scheduler.engine.dtype == torch.float32
    half = LLM(tiny_models["llama"], dtype="float16")
    assert half.scheduler.engine.kv.k.dtype == torch.float16
    out = half.generate(_prompts(9, 2, 400), SamplingParams(max_tokens=4, ignore_eos=True))
    assert all(len(o.token_ids) == 4 for o in out)


def test_dummy_weights_ignore_the_checkpoint_and_agree_across_loads(tiny_models):
    prompts = _prompts(10, 3, 400)
    a = LLM(tiny_models["qwen3"], dtype="float32", dummy_weight=True).generate(prompts, GREEDY)
    b = LLM(tiny_models["qwen3"], dtype="float32", dummy_weight=True).generate(prompts, GREEDY)
    real = LLM(tiny_models["qwen3"], dtype="float32").generate(prompts, GREEDY)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in real]


def test_long_prompt_logprobs_are_computed_in_blocks(tiny_models, hf_models, monkeypatch):
    import minisgl.engine.engine as engine_mod

    monkeypatch.setattr(engine_mod, "PROMPT_LOGPROB_BLOCK", 7)
    llm = LLM(tiny_models["llama"], dtype="float32")
    prompt = _prompts(11, 1, 400, lo=50, hi=50)[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=True))[0]
    with torch.no_grad():
        logits = hf_models["llama"](torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.prompt_logprobs[1:]), expected, atol=1e-4, rtol=1e-4)
