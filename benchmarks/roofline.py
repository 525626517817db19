"""The fastest an engine could run offline-256 (or any offline workload) on a card: a roofline.

Walks BENCHMARKS.md's requests step by step as an engine that admits them all at once runs
them: one prefill of every prompt, then one decode step a token, the batch shrinking as rows
finish. A decode step costs the larger of its GEMMs' weight read and FLOPs, plus its attention's
KV read; prefill costs its GEMM and attention FLOPs. Given the card's peaks it bounds any
engine; given the rates its best kernels reach (measured: profile_step.py, decode_attention.py)
it says what is left to gain. Needs no GPU.

  python benchmarks/roofline.py --model llama-3.1-8b --read-tbs 4.15 --tflops 760
  python benchmarks/roofline.py --model llama-3.1-8b --read-tbs 4.0 --attn-tbs 3.8 \\
      --tflops 660 --prefill-tflops 680 --small-ms 0.65 --measured-tok-s 10182
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import offline_workload, resolve_model  # noqa: E402

from minisgl.models.config import ModelConfig  # noqa: E402


def roofline(cfg: ModelConfig, lengths: list[tuple[int, int]], *, read_tbs: float,
             tflops: float, attn_tbs: float | None = None, prefill_tflops: float | None = None,
             small_ms: float = 0.0, max_rows: int = 256, dtype_bytes: int = 2) -> dict:
    """lengths: (input, output) a request. small_ms: the per-step cost of the small kernels
    (norms, activation, rope) at max_rows rows, scaled by the rows of each step."""
    if not lengths:
        raise ValueError("no requests")
    if len(lengths) > max_rows:
        raise ValueError(f"{len(lengths)} requests > {max_rows} rows: the walk admits all at once")
    emb = cfg.vocab_size * cfg.hidden_size
    gemm_params = cfg.weight_bytes - emb  # every linear layer and the lm_head (no embedding read)
    layer_params = gemm_params - emb
    kv_bytes_a_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * dtype_bytes
    read = read_tbs * 1e12
    attn_read = (attn_tbs or read_tbs) * 1e12
    flops = tflops * 1e12
    prefill_flops = (prefill_tflops or tflops) * 1e12
    # prefill: the linear layers on every prompt token, the lm_head on the last, causal attention
    # (QK^T and PV: 4 * L^2 / 2 * heads * head_dim a layer)
    attn_prefill = sum(4 * (i * i / 2) * cfg.num_heads * cfg.head_dim * cfg.num_layers
                       for i, _ in lengths)
    prefill_s = (sum(i for i, _ in lengths) * 2 * layer_params + len(lengths) * 2 * emb
                 + attn_prefill) / prefill_flops
    gemm_s = attn_s = small_s = 0.0
    steps = 0
    for t in range(1, max(o for _, o in lengths)):  # the first output token comes from prefill
        contexts = [i + t for i, o in lengths if o > t]
        if not contexts:
            break
        steps += 1
        rows = len(contexts)
        gemm_s += max(rows * 2 * gemm_params / flops, cfg.weight_bytes * dtype_bytes / read)
        attn_s += sum(contexts) * kv_bytes_a_token / attn_read
        small_s += small_ms / 1e3 * rows / max_rows
    total = prefill_s + gemm_s + attn_s + small_s
    out = sum(o for _, o in lengths)
    return {"output_tokens": out, "decode_steps": steps, "prefill_s": prefill_s,
            "decode_gemm_s": gemm_s, "decode_attention_s": attn_s, "decode_small_s": small_s,
            "total_s": total, "output_tokens_per_s": out / total}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b", help="config name in benchmarks/configs or a dir")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--read-tbs", type=float, required=True, help="weight read, TB/s")
    ap.add_argument("--attn-tbs", type=float, default=None, help="KV read, TB/s (default --read-tbs)")
    ap.add_argument("--tflops", type=float, required=True, help="decode GEMMs, TFLOP/s")
    ap.add_argument("--prefill-tflops", type=float, default=None, help="default --tflops")
    ap.add_argument("--small-ms", type=float, default=0.0, help="small kernels a full step, ms")
    ap.add_argument("--measured-tok-s", type=float, default=None,
                    help="a measured rate: adds its fraction of the roofline")
    args = ap.parse_args(argv)
    for name in ("read_tbs", "tflops"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    cfg = ModelConfig.from_path(resolve_model(args.model))
    reqs = offline_workload(args.num_requests, tuple(args.input_len), tuple(args.output_len),
                            args.seed, cfg.vocab_size)
    try:
        result = roofline(cfg, [(len(p), o) for p, o in reqs], read_tbs=args.read_tbs,
                          tflops=args.tflops, attn_tbs=args.attn_tbs,
                          prefill_tflops=args.prefill_tflops, small_ms=args.small_ms)
    except ValueError as exc:
        ap.error(str(exc))
    result = {"model": args.model, "requests": args.num_requests,
              **{k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}}
    if args.measured_tok_s:
        result["measured_vs_roofline"] = round(args.measured_tok_s / result["output_tokens_per_s"], 3)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
