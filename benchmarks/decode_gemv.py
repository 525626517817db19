"""Decode GEMVs (one token, or --tokens of them) inside a CUDA graph: cuBLAS with the layer's small kernels vs the
fused Triton kernels of layers/decode_gemv.py, per projection of a decoder layer.

Per op, microseconds in a graph over `--copies` distinct weight copies (so W comes from HBM,
not L2): `cublas` is F.linear alone, `unfused` what the model runs without the fused path
(qkv: add+RMSNorm then F.linear; gate_up: add+RMSNorm, F.linear, SiLU-and-mul; o / down:
F.linear, whose residual add is in the next norm), `fused` the Triton kernel with the
default blocks and programmatic dependent launch on Hopper (as the engine runs it: one
kernel starts loading its W while the previous drains), `fused_no_pdl` with plain launches,
`best` the fastest of a sweep of blocks (and which). `gbs` is W's bytes over the fused time.

  python benchmarks/decode_gemv.py --model llama-3.1-8b [--sweep] [--tokens 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, emit, replay_us, resolve_model  # noqa: E402

from minisgl.layers.decode_gemv import (GemvConfig, default_config, gemv_add, norm_gemv,  # noqa: E402
                                        small_config)
from minisgl.layers.fused import flashinfer_ops  # noqa: E402
from minisgl.models.config import ModelConfig  # noqa: E402

SWEEP = [GemvConfig(n, k, w) for n, k, w in itertools.product((4, 8, 16, 32), (256, 512, 1024),
                                                                (4, 8))]


def graph_us(fn, copies: int, reps: int = 20) -> float:
    """us of one fn(i) call, i over the weight copies, replayed in a CUDA graph."""
    for i in range(copies):  # compile and warm outside the graph
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    return replay_us(graph, reps) / copies


def no_pdl(fn):
    """fn() with $MINISGL_PDL=0 (plain launches)."""
    old = os.environ.get("MINISGL_PDL")
    os.environ["MINISGL_PDL"] = "0"
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["MINISGL_PDL"]
        else:
            os.environ["MINISGL_PDL"] = old


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1, help="rows a step (2-16: the tl.dot kernel)")
    ap.add_argument("--sweep", action="store_true", help="also time every block config")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    cfg = ModelConfig.from_path(Path(resolve_model(args.model)))
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    fi, bf, dev, eps = flashinfer_ops(), torch.bfloat16, "cuda", cfg.rms_norm_eps
    ops = {  # name: (n_out, k, kind)
        "qkv": (qkv, hid, "norm"), "o": (hid, cfg.num_heads * cfg.head_dim, "add"),
        "gate_up": (inter, hid, "silu"), "down": (hid, inter, "add")}
    rows = []
    for name, (n, k, kind) in ops.items():
        w_rows = 2 * n if kind == "silu" else n
        ws = [torch.randn(w_rows, k, dtype=bf, device=dev) / k**0.5 for _ in range(args.copies)]
        x = torch.randn(args.tokens, k, dtype=bf, device=dev)
        res = torch.randn(args.tokens, hid, dtype=bf, device=dev)
        g = torch.ones(k, dtype=bf, device=dev)
        out = torch.randn(args.tokens, n, dtype=bf, device=dev)

        def fused(i: int, c: GemvConfig | None = None):
            if kind == "add":
                return gemv_add(x, ws[i], out, config=c)
            return norm_gemv(x, g, eps, ws[i], silu=kind == "silu", config=c)

        def unfused(i: int):
            if kind == "add":
                return F.linear(x, ws[i])
            fi.norm.fused_add_rmsnorm(x, res, g, eps)  # k == hidden here
            y = F.linear(x, ws[i])
            return fi.activation.silu_and_mul(y) if kind == "silu" else y

        row = {"op": name, "n": w_rows, "k": k, "kind": kind,
               "cublas_us": round(graph_us(lambda i: F.linear(x, ws[i]), args.copies), 2),
               "unfused_us": round(graph_us(unfused, args.copies), 2),
               "fused_us": round(graph_us(fused, args.copies), 2),
               "fused_no_pdl_us": round(no_pdl(lambda: graph_us(fused, args.copies)), 2),
               "default": list(default_config(n, k, kind == "silu") if args.tokens == 1
                               else small_config(k))}
        if args.sweep:
            times = {c: graph_us(lambda i, c=c: fused(i, c), args.copies)
                     for c in SWEEP if c.block_k <= k and (args.tokens == 1 or c.block_n >= 16)}
            best = min(times, key=times.get)
            row.update(best_us=round(times[best], 2), best=list(best),
                       sweep={",".join(map(str, c)): round(us, 2) for c, us in times.items()})
        row["gbs"] = round(w_rows * k * 2 / row["fused_us"] / 1e3, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        ws.clear()  # free the copies before the next op's
        torch.cuda.empty_cache()
    total = {key: round(sum(r[key] for r in rows), 2)
             for key in ("cublas_us", "unfused_us", "fused_us", "fused_no_pdl_us", "best_us")
             if all(key in r for r in rows)}
    result = {"benchmark": "decode-gemv", "model": args.model, "device": device_name("cuda"),
              "copies": args.copies, "tokens": args.tokens, "rows": rows, "layer_total": total}
    args.device = "cuda"
    emit(result, "decode-gemv", args)
    return result


if __name__ == "__main__":
    main()
