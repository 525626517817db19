"""FlashInfer backends and CUDA graphs agree with the pure-PyTorch backend (GPU only)."""

from __future__ import annotations

import random

import pytest
import torch

from minisgl import LLM, SamplingParams
from tests.helpers.tiny_model import build_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory) -> str:
    # FlashInfer kernels need head_dim 64/128/256.
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu") / "qwen3", "qwen3", hidden_size=256,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                                max_position_embeddings=2048))


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(rng.randint(1, 300))] for _ in range(n)]


def _prompt_logprobs(model: str, prompts: list[list[int]], dtype: str, **kwargs) -> list[torch.Tensor]:
    """Per-prompt logprobs of tokens 1.. (float64, on the host) from one LLM."""
    p = SamplingParams(max_tokens=0, prompt_logprobs=True)
    outs = LLM(model, device="cuda", dtype=dtype, num_pages=4096, **kwargs).generate(prompts, p)
    return [torch.tensor(o.prompt_logprobs[1:], dtype=torch.float64) for o in outs]


def _errors(got: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, float, list[float]]:
    """(mean, max, per-prompt means) of |got - ref| over all prompt tokens."""
    diffs = [(g - r).abs() for g, r in zip(got, ref)]
    flat = torch.cat(diffs)
    return flat.mean().item(), flat.max().item(), [d.mean().item() if len(d) else 0.0 for d in diffs]


@pytest.fixture(scope="module")
def logprob_reference(gpu_model):
    """The float32 torch-backend logprobs (the reference) and bf16's own error against them:
    the torch backend in bfloat16, same weights, so the tolerance is what bf16 costs here."""
    prompts = _prompts(6)
    ref = _prompt_logprobs(gpu_model, prompts, "float32", attention_backend="torch")
    bf16 = _prompt_logprobs(gpu_model, prompts, "bfloat16", attention_backend="torch")
    return prompts, ref, _errors(bf16, ref)


@pytest.mark.parametrize("backend", ["fi", "fa3", "fa3,fi"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_prompt_logprobs_match_float32_reference(gpu_model, logprob_reference, backend, page_size):
    """Each bf16 backend is as close to float32 as bf16 itself allows (comparing two bf16 runs
    would measure two roundings, not a bug). A real bug (mask, page table, chunk offsets)
    moves logprobs by far more than bf16 does, on average and in some prompt."""
    if backend.startswith("fa3") and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("fa3 needs Hopper")
    prompts, ref, (base_mean, base_max, base_per_prompt) = logprob_reference
    # bf16 of a sane engine: the tiny random model's logits are large (mean logprob ~ -50),
    # so bf16 rounding alone moves logprobs by ~0.1-0.3 on average; a torch-backend
    # bf16 error far past that means the reference itself is broken.
    assert base_mean < 1.0, f"torch bf16 vs float32: mean |dlogprob| {base_mean:.3f}"
    got = _prompt_logprobs(gpu_model, prompts, "bfloat16", page_size=page_size,
                           attention_backend=backend, max_prefill_length=128)
    mean, peak, per_prompt = _errors(got, ref)
    detail = (f"{backend} page {page_size}: mean {mean:.4f} max {peak:.3f} per prompt "
              f"{[round(x, 4) for x in per_prompt]}; torch bf16: mean {base_mean:.4f} max {base_max:.3f} "
              f"per prompt {[round(x, 4) for x in base_per_prompt]}")
    assert mean <= 2.0 * base_mean + 0.02, detail
    # a short prompt's mean is noisy: never hold it tighter than the overall bf16 error
    assert all(x <= 2.5 * max(b, base_mean) + 0.05 for x, b in zip(per_prompt, base_per_prompt)), detail
    assert peak <= 2.0 * base_max + 0.5, detail


@pytest.mark.parametrize("backend", ["fi", "fa3,fi"])
def test_cuda_graph_decode_equals_eager(gpu_model, backend):
    if backend.startswith("fa3") and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("fa3 needs Hopper")
    prompts = _prompts(20, seed=1)
    p = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    eager = LLM(gpu_model, device="cuda", dtype="bfloat16", num_pages=4096, attention_backend=backend,
                cuda_graph_max_bs=0)
    graph = LLM(gpu_model, device="cuda", dtype="bfloat16", num_pages=4096, attention_backend=backend,
                cuda_graph_max_bs=16)
    assert graph.scheduler.engine.graphs is not None
    a = [o.token_ids for o in eager.generate(prompts, p)]
    b = [o.token_ids for o in graph.generate(prompts, p)]
    same = sum(x == y for x, y in zip(a, b))
    assert same >= len(prompts) - 1, (a, b)  # bf16 ties may flip one sequence at most


def test_radix_sharing_on_gpu(gpu_model):
    llm = LLM(gpu_model, device="cuda", dtype="bfloat16", num_pages=4096, attention_backend="fi", page_size=16,
              cuda_graph_max_bs=8)
    prefix = _prompts(1, seed=5)[0] + list(range(10, 110))
    first = llm.generate([prefix + [1, 2, 3]], SamplingParams(max_tokens=8, temperature=0.0))[0]
    again = llm.generate([prefix + [1, 2, 3]], SamplingParams(max_tokens=8, temperature=0.0))[0]
    assert again.num_cached_tokens >= len(prefix) - 16
    assert again.token_ids == first.token_ids


def test_fused_bf16_kernels_track_float32(gpu_model):
    """FlashInfer's fused norm / rope / silu (bf16) stay close to the float32 reference path."""
    prompts = _prompts(4, seed=7)
    p = SamplingParams(max_tokens=0, prompt_logprobs=True)
    ref = LLM(gpu_model, device="cuda", dtype="float32", num_pages=4096).generate(prompts, p)
    got = LLM(gpu_model, device="cuda", dtype="bfloat16", num_pages=4096,
              attention_backend="fa3,fi" if torch.cuda.get_device_capability()[0] >= 9 else "fi",
              ).generate(prompts, p)
    for a, b in zip(ref, got):
        torch.testing.assert_close(torch.tensor(b.prompt_logprobs[1:]),
                                   torch.tensor(a.prompt_logprobs[1:]), atol=0.5, rtol=0.1)


def test_overlap_scheduling_gives_the_sync_loop_tokens(gpu_model):
    """Overlap (launch step N+1 before reading step N) on the GPU with CUDA graphs and the
    fused kernels: greedy tokens equal the synchronous loop's, with chunked prefill and
    requests of different lengths ending at different steps; no page leaks. (Naive cache:
    with radix, when a prompt enters the cache moves by a step under overlap, so a later
    request's prefix hit — and its bf16 rounding — could differ.)"""
    from tests.helpers.pages import assert_no_leak

    prompts = _prompts(24, seed=3)
    params = [SamplingParams(max_tokens=8 + 5 * (i % 7), temperature=0.0, ignore_eos=True)
              for i in range(len(prompts))]
    runs = {}
    for overlap in (False, True):
        llm = LLM(gpu_model, device="cuda", dtype="bfloat16", num_pages=8192, max_prefill_length=256,
                  cache_type="naive", overlap=overlap)
        assert llm.scheduler.overlap is overlap and llm.scheduler.engine.graphs is not None
        runs[overlap] = [o.token_ids for o in llm.generate(prompts, params)]
        assert_no_leak(llm.scheduler)
    assert [len(t) for t in runs[True]] == [p.max_tokens for p in params]
    assert runs[True] == runs[False]


@pytest.fixture(scope="module")
def gqa4_model(tmp_path_factory) -> str:
    """4 query heads per KV head (Llama-3-8B's grouping): the tensor-core decode kernel's case."""
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu") / "gqa4", "llama", hidden_size=512,
                                num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                max_position_embeddings=2048))


@pytest.fixture(scope="module")
def references():
    """model -> its teacher-forced reference function; the engines live for this module."""
    cache = {}

    def get(model: str):
        if model not in cache:
            cache[model] = _references(model)
        return cache[model]
    return get


@pytest.fixture(scope="module")
def gqa4_references(gqa4_model, references):
    return references(gqa4_model)


@pytest.mark.parametrize("tc_min_bs,split_max_bs,split_from_bs,no_split_min_bs", [
    ("1", "0", "0", "1"),  # FlashInfer's tensor-core kernel everywhere, unsplit in every graph
    ("9", "8", "0", "64"),  # the defaults: Triton in the graphs, FlashInfer past them
    ("1000000", "0", "0", "64"),  # the CUDA-core kernel everywhere
    ("1", "0", "3", "64"),  # Triton from 3 rows (graphs and eager), FlashInfer at 1-2
])
def test_decode_kernels_match_float32_reference(gqa4_model, gqa4_references, monkeypatch,
                                                tc_min_bs, split_max_bs, split_from_bs,
                                                no_split_min_bs):
    """Every decode kernel, chosen by batch size — FlashInfer's CUDA-core and tensor-core
    kernels ($MINISGL_FI_DECODE_TC_MIN_BS), split or not in a graph
    ($MINISGL_FI_NO_SPLIT_MIN_BS), and the Triton split-KV kernel for small and large batches
    ($MINISGL_SPLIT_DECODE_MAX_BS / _FROM_BS) — inside CUDA graphs (up to 8 rows) and eager
    past them: each decoded token's logprob is as close to the float32 torch backend's
    (teacher-forced on the same tokens) as bf16 itself allows."""
    from minisgl.attention.flashinfer_backend import (DECODE_TC_ENV, NO_SPLIT_ENV,
                                                      SPLIT_DECODE_ENV, SPLIT_DECODE_FROM_ENV)

    prompts, params = _decode_prompts()
    monkeypatch.setenv(DECODE_TC_ENV, tc_min_bs)
    monkeypatch.setenv(SPLIT_DECODE_ENV, split_max_bs)
    monkeypatch.setenv(SPLIT_DECODE_FROM_ENV, split_from_bs)
    monkeypatch.setenv(NO_SPLIT_ENV, no_split_min_bs)
    backend = "fa3,fi" if torch.cuda.get_device_capability()[0] >= 9 else "fi"
    llm = LLM(gqa4_model, device="cuda", dtype="bfloat16", num_pages=8192, attention_backend=backend,
              cuda_graph_max_bs=8)  # eager decode past 8 rows, graphs below
    engine = llm.scheduler.engine
    attn = engine.attn
    assert (attn.tc_min_bs, attn.split_max_bs, attn.split_from_bs, attn.no_split_min_bs) == (
        int(tc_min_bs), int(split_max_bs), int(split_from_bs), int(no_split_min_bs))
    from minisgl.attention.split_decode import SplitDecode

    for bs, wrapper in engine.graphs.wrappers.items():  # the kernel each graph captured
        assert isinstance(wrapper, SplitDecode) == attn.uses_split_decode(bs), bs
    outs = llm.generate(prompts, params)
    # decode steps of 20 down to 1 rows: the split kernel ran exactly when it was chosen
    uses = attn.uses_split_decode
    assert (attn.split_steps > 0) == any(uses(b) for b in range(1, 21))
    _assert_decode_tracks_float32(prompts, outs, gqa4_references)


def _decode_prompts() -> tuple[list[list[int]], list[SamplingParams]]:
    """20 prompts whose rows end one step apart: decode batches of 20 down to 1."""
    return _prompts(20, seed=11), [SamplingParams(max_tokens=6 + i, temperature=0.0,
                                                  ignore_eos=True, logprobs=0) for i in range(20)]


def _assert_decode_tracks_float32(prompts, outs, references) -> None:
    """Each decoded token's logprob is as close to the float32 torch backend's (teacher-forced
    on the same tokens) as the bf16 torch backend's is."""
    seqs = [pr + o.token_ids for pr, o in zip(prompts, outs)]
    ref, bf16 = references("float32", seqs), references("bfloat16", seqs)
    got, want, base = [], [], []
    for pr, o, r, b in zip(prompts, outs, ref, bf16):
        n = len(o.token_ids)
        lps = o.outputs[0].logprobs
        assert len(lps) == n
        got += lps[1:]  # token 0 comes from the prefill; 1.. from decode steps
        want += r[len(pr) + 1 : len(pr) + n]
        base += b[len(pr) + 1 : len(pr) + n]
    got, want, base = (torch.tensor(x, dtype=torch.float64) for x in (got, want, base))
    err, base_err = (got - want).abs(), (base - want).abs()
    detail = (f"decode vs float32: mean {err.mean():.4f} max {err.max():.3f}; torch bf16 vs "
              f"float32: mean {base_err.mean():.4f} max {base_err.max():.3f}")
    assert err.mean() <= 2.0 * base_err.mean() + 0.02, detail
    assert err.max() <= 2.0 * base_err.max() + 0.5, detail


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory) -> str:
    """q/k/v biases (random, as are its norm weights): the fused qkv GEMV's bias epilogue."""
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu") / "qwen2", "qwen2", hidden_size=512,
                                num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                max_position_embeddings=2048, random_vectors=True))


def _references(model: str, **kwargs):
    """Teacher-forced logprobs of full sequences from the torch backend, float32 (the
    reference) and bfloat16 (what bf16 itself costs); one pair of engines per model."""
    llms = {d: LLM(model, device="cuda", dtype=d, num_pages=8192, attention_backend="torch",
                   **kwargs) for d in ("float32", "bfloat16")}
    p = SamplingParams(max_tokens=0, prompt_logprobs=True)
    return lambda dtype, seqs: [o.prompt_logprobs for o in llms[dtype].generate(seqs, p)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("max_tokens,pdl", [("0", "1"), ("1", "1"), ("4", "1"), ("1", "0")])
def test_fused_gemv_layers_match_float32_reference(request, references, monkeypatch, arch,
                                                   max_tokens, pdl):
    """The fused-GEMV decoder layers ($MINISGL_FUSED_GEMV_MAX_TOKENS: off, one-token steps,
    up to four), with and without programmatic dependent launch ($MINISGL_PDL, Hopper+), in
    graphs and eager steps, for Llama, Qwen2 (qkv bias) and Qwen3 (q/k norm): decode
    logprobs track float32 as closely as bf16 does, and the path is taken exactly for steps
    of at most that many tokens."""
    from minisgl.env import ENV
    from minisgl.layers.fused import _pdl_supported, pdl_launch

    model = request.getfixturevalue({"llama": "gqa4_model", "qwen2": "qwen2_model",
                                     "qwen3": "gpu_model"}[arch])
    monkeypatch.setenv("MINISGL_FUSED_GEMV_MAX_TOKENS", max_tokens)
    monkeypatch.setenv("MINISGL_PDL", pdl)
    assert ENV.fused_gemv_max_tokens == int(max_tokens)
    probe = torch.zeros(1, device="cuda")
    assert pdl_launch(probe) == ({"launch_pdl": True} if pdl == "1" and _pdl_supported(0) else {})
    llm = LLM(model, device="cuda", dtype="bfloat16", num_pages=8192, attention_backend="fi",
              cuda_graph_max_bs=2)  # graphs at 1-2 rows, eager steps of 3-20
    net = llm.scheduler.engine.model
    hidden = net.cfg.hidden_size
    for t in (1, 2, 4, 5):
        h = torch.zeros(t, hidden, dtype=torch.bfloat16, device="cuda")
        assert net._fused_gemv(h) == (t <= int(max_tokens)), t
    prompts, params = _decode_prompts()
    _assert_decode_tracks_float32(prompts, llm.generate(prompts, params), references(model))


@pytest.mark.parametrize("split_max_bs,split_from_bs,page_size", [
    ("8", "32", 1),  # the defaults: Triton in the graphs (<= 8 rows), FlashInfer eager past them
    ("0", "3", 16),  # Triton from 3 rows, eager too; FlashInfer at 1-2 rows; page size 16
])
def test_fp8_kv_cache_matches_float32_with_the_same_cache(gqa4_model, monkeypatch, split_max_bs,
                                                          split_from_bs, page_size):
    """--kv-cache-dtype fp8_e4m3 on the GPU (qk_rope_store's saturating FP8 store, FlashInfer's
    FA2 prefill and decode kernels reading FP8 with a bf16 query, the Triton split-KV kernel,
    CUDA graphs, the fused-GEMV one-token path) against the torch backend in float32 with an
    FP8 cache too (its correctness against a float32 cache of FP8-rounded values is a CPU
    test, tests/worker/engine/test_kv_fp8.py): decode logprobs within bf16's own error."""
    from minisgl.attention.flashinfer_backend import SPLIT_DECODE_ENV, SPLIT_DECODE_FROM_ENV

    monkeypatch.setenv(SPLIT_DECODE_ENV, split_max_bs)
    monkeypatch.setenv(SPLIT_DECODE_FROM_ENV, split_from_bs)
    llm = LLM(gqa4_model, device="cuda", dtype="bfloat16", num_pages=8192, page_size=page_size,
              attention_backend="fi", cuda_graph_max_bs=8, kv_cache_dtype="fp8_e4m3",
              max_prefill_length=128)  # chunked prefill: later chunks read the FP8 prefix
    engine = llm.scheduler.engine
    assert engine.kv.k.dtype == torch.float8_e4m3fn
    prompts, params = _decode_prompts()
    outs = llm.generate(prompts, params)
    assert engine.attn.split_steps > 0
    _assert_decode_tracks_float32(prompts, outs, _references(gqa4_model, kv_cache_dtype="fp8_e4m3"))
