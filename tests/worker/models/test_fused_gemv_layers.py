"""The decoder layers' fused-GEMV path (CausalLM → DecoderLayer.forward_fused) computes what
the unfused layers do: greedy tokens equal and logprobs within float32 noise, for Llama, Qwen2
(qkv bias) and Qwen3 (q/k norm), at one-token steps and with several tokens a step (prefill and decode).

The path is CUDA-only in the engine; here its one device gate is lifted and the Triton kernels
run under Triton's interpreter (a subprocess: TRITON_INTERPRET=1 is read at import).
"""

from __future__ import annotations

import pytest

from tests.helpers.triton_interpreter import run_interpreted

pytest.importorskip("triton")

SCRIPT = r"""
import json, os, sys, tempfile
from pathlib import Path
import minisgl.models.llama as llama
from minisgl import LLM, SamplingParams
from tests.helpers.tiny_model import build_tiny_model

llama.use_fused_gemv = lambda x, w: True  # the CUDA gate; the kernels run interpreted
calls = {"n": 0}
norm_gemv = llama.norm_gemv
def counted(*args, **kwargs):
    calls["n"] += 1
    return norm_gemv(*args, **kwargs)
llama.norm_gemv = counted
root = Path(tempfile.mkdtemp())
prompts = [[5, 9, 14, 3], [7, 7, 2, 30, 31, 8], [11]]
p = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=0)
results = []
for arch in ("llama", "qwen2", "qwen3"):
    model = str(build_tiny_model(root / arch, arch, random_vectors=True))
    runs = {}
    for max_tokens in ("0", "4"):
        os.environ["MINISGL_FUSED_GEMV_MAX_TOKENS"] = max_tokens
        llm = LLM(model, dtype="float32", overlap=False)
        calls["n"] = 0
        # one request alone (one-token decode steps), then three together (3-token steps)
        outs = llm.generate(prompts[:1], p) + llm.generate(prompts, p)
        runs[max_tokens] = ([o.token_ids for o in outs], [o.outputs[0].logprobs for o in outs],
                            calls["n"])
    ref_tokens, ref_lps, ref_calls = runs["0"]
    for max_tokens in ("4",):
        tokens, lps, n_calls = runs[max_tokens]
        diff = max(abs(a - b) for x, y in zip(lps, ref_lps) for a, b in zip(x, y))
        results.append(dict(arch=arch, max_tokens=max_tokens, same=tokens == ref_tokens,
                            diff=diff, n=sum(map(len, tokens)), calls=n_calls,
                            ref_calls=ref_calls))
print(json.dumps(results))
"""


def test_fused_layers_equal_unfused_layers_under_the_triton_interpreter():
    results = run_interpreted(SCRIPT, timeout=900)
    assert len(results) == 3
    for r in results:
        assert r["n"] == 16 and r["same"], r
        assert r["diff"] <= 1e-3, r
        # 2 layers x 2 fused norm-GEMVs a step: the lone request's 4-token prefill and its 3
        # one-token decode steps, then the 3 three-row decode steps (the 11-token prefill of
        # the three is past the threshold)
        assert r["ref_calls"] == 0
        assert r["calls"] == 4 * 7, r
