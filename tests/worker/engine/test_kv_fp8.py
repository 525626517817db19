"""--kv-cache-dtype fp8_e4m3: K/V stored as float8 (clamped, unscaled) and upcast on read.

The reference is the float32 engine whose cache rounds every stored K/V through float8
and back (a float32 cache holding exactly the values an FP8 cache holds): the FP8 engine
must equal it to float32 noise. A slot mix-up or a missed cast moves logprobs far more.
Values past e4m3's 448 saturate (e4m3fn has no infinity; the store clamps explicitly rather
than rely on a torch or Triton version's cast).
"""

from __future__ import annotations

import random

import pytest
import torch

from minisgl import LLM, SamplingParams
from minisgl.config import EngineConfig
from minisgl.kvcache.storage import FP8_MAX, KVStorage

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=0,
                        prompt_logprobs=True)


def _prompts(n: int, vocab: int) -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 70))] for _ in range(n)]


def _rounding_store(kv: KVStorage):
    """kv.store that keeps K/V in its float32 cache as float8 would hold them."""
    def store(layer, slots, k, v):
        KVStorage.store(kv, layer, slots, *(x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
                                           .to(kv.k.dtype) for x in (k, v)))
    return store


def _logprobs(outs) -> torch.Tensor:
    return torch.tensor([lp for o in outs for lp in o.prompt_logprobs[1:] + o.outputs[0].logprobs],
                        dtype=torch.float64)


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_fp8_cache_equals_float32_with_fp8_rounded_kv(tiny_models, overlap):
    model = tiny_models["qwen3"]
    fp8 = LLM(model, dtype="float32", kv_cache_dtype="fp8_e4m3", overlap=overlap,
              max_prefill_length=64)  # chunked prefill: later chunks read the FP8 prefix
    engine = fp8.scheduler.engine
    assert engine.kv.k.dtype == torch.float8_e4m3fn and engine.kv.compute_dtype == torch.float32
    ref = LLM(model, dtype="float32", overlap=overlap, max_prefill_length=64)
    ref.scheduler.engine.kv.store = _rounding_store(ref.scheduler.engine.kv)
    plain = LLM(model, dtype="float32", overlap=overlap, max_prefill_length=64)
    prompts = _prompts(6, fp8.scheduler.vocab_size)
    got, want = fp8.generate(prompts, PARAMS), ref.generate(prompts, PARAMS)
    exact = plain.generate(prompts, PARAMS)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    g, w, e = _logprobs(got), _logprobs(want), _logprobs(exact)
    assert torch.isfinite(g).all()
    assert (g - w).abs().max() < 1e-3, (g - w).abs().max()
    # ... and the rounding is really there: the FP8 run is not the float32 cache's run
    assert (g - e).abs().max() > 1e-3


def test_fp8_store_saturates_instead_of_overflowing():
    kv = KVStorage(1, 4, 1, 4, torch.float8_e4m3fn, torch.device("cpu"), compute_dtype=torch.float32)
    x = torch.tensor([[[1e4, -1e4, 3.0, 0.1]]])
    kv.store(0, torch.tensor([2]), x, -x)
    assert kv.k[0, 2].float().tolist() == [[448.0, -448.0, 3.0, 0.1015625]]
    assert kv.v[0, 2].float().tolist() == [[-448.0, 448.0, -3.0, -0.1015625]]
    assert kv.k[0, 0].float().abs().sum() == 0  # other slots untouched
    with pytest.raises(ValueError, match="needs compute_dtype"):
        KVStorage(1, 4, 1, 4, torch.float8_e4m3fn, torch.device("cpu"))


def test_fp8_cache_holds_more_tokens_in_the_same_budget(tiny_models):
    pages = {}
    for kv_dtype in ("auto", "fp8_e4m3"):
        llm = LLM(tiny_models["llama"], dtype="bfloat16", kv_cache_dtype=kv_dtype,
                  cpu_kv_budget_mb=8)
        pages[kv_dtype] = llm.scheduler.engine.num_pages
    assert pages["fp8_e4m3"] == pytest.approx(2 * pages["auto"], abs=1)


def test_kv_cache_dtype_is_validated():
    with pytest.raises(ValueError, match="--kv-cache-dtype must be one of auto, fp8_e4m3"):
        EngineConfig(model_path="demo", kv_cache_dtype="int4")
    with pytest.raises(ValueError, match="fp8_e4m3 runs on the torch or fi attention backend"):
        EngineConfig(model_path="demo", device="cuda", attention_backend="fa3,fi",
                     kv_cache_dtype="fp8_e4m3")
