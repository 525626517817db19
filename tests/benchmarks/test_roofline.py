"""The offline roofline walks the requests step by step: checked by hand on a tiny case."""

from __future__ import annotations

import pytest

from benchmarks.roofline import main, roofline
from minisgl.models.config import ModelConfig

CFG = ModelConfig.from_dict({
    "model_type": "llama", "vocab_size": 100, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1})


def test_tiny_workload_matches_a_hand_count():
    # params: a layer's q, k, v, o 8 x 4 x (2 + 1 + 1 + 2) = 192, MLP 3 x 8 x 16 = 384; embedding
    # and lm_head 800 each
    assert CFG.weight_bytes == 2 * (192 + 384) + 1600
    r = roofline(CFG, [(4, 3), (2, 2)], read_tbs=1e-12, tflops=1e-12)  # 1 byte/s, 1 FLOP/s
    # prefill: 6 prompt tokens x 2 x 1152 layer params + 2 rows x 2 x 800 lm_head
    #          + attention 4 * L^2/2 * 2 heads * 4 dims * 2 layers for L = 4 and 2
    assert r["prefill_s"] == pytest.approx(6 * 2 * 1152 + 2 * 2 * 800 + 4 * (16 / 2 + 4 / 2) * 2 * 4 * 2)
    # decode step 1: 2 rows (contexts 5, 3); step 2: 1 row (context 6). GEMMs: max(FLOPs, the
    # weight read of 2,752 bf16 bytes); KV: 2 layers x 1 head x 4 dims x K,V x 2 bytes = 32 a token
    assert r["decode_steps"] == 2
    assert r["decode_gemm_s"] == pytest.approx(max(2 * 2 * 1952, 2 * 2752) + max(2 * 1952, 2 * 2752))
    assert r["decode_attention_s"] == pytest.approx((5 + 3 + 6) * 32)
    assert r["output_tokens"] == 5
    assert r["output_tokens_per_s"] == pytest.approx(5 / r["total_s"])


def test_faster_card_is_a_lower_bound_and_bad_input_is_refused(capsys):
    base = roofline(CFG, [(10, 20)] * 4, read_tbs=1.0, tflops=100.0)
    fast = roofline(CFG, [(10, 20)] * 4, read_tbs=2.0, tflops=100.0)
    assert fast["total_s"] < base["total_s"]
    with pytest.raises(ValueError, match="no requests"):
        roofline(CFG, [], read_tbs=1.0, tflops=1.0)
    with pytest.raises(SystemExit):
        main(["--model", "llama-3.1-8b", "--read-tbs", "0", "--tflops", "1"])
    assert "--read-tbs must be positive" in capsys.readouterr().err
    r = main(["--model", "llama-3.1-8b", "--read-tbs", "4.15", "--tflops", "760",
              "--measured-tok-s", "10182"])
    assert r["output_tokens"] == 142445 and 0 < r["measured_vs_roofline"] < 1
