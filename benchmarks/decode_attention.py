"""Decode attention kernels inside a CUDA graph, as the engine replays them.

For each (batch, context) case: a graph of `--layers` attention calls through the real
FlashInfer backend (its graph wrappers, the engine's slot table), replayed; the figure is
microseconds per layer, kernels and merge included. Variants: FlashInfer's tensor-core
decode kernel with its graph-mode KV split (`fi-split`), the same without the split
(`fi-nosplit`, what MINISGL_FI_NO_SPLIT_MIN_BS selects) and the Triton split-KV kernel
(`triton-split`, MINISGL_SPLIT_DECODE_MAX_BS; `--tiles` adds it at other tile configs,
`triton-<block_n>x<warps>x<stages>[h]`), and FlashInfer's FA3-template Hopper kernel
(`fa3`, what `--attention-backend fa3` decodes with). `--layouts` places each row's
slots: `random` (a permutation of the pool), `interleaved` (slot = token x rows + row: one
slot per row per decode step, as the engine allocates them) or `contiguous` (each row one
run of slots; this layout adds `fi-page16`, FlashInfer at page size 16). Each layer has its own KV buffers, so a
batch's cache is re-read from HBM unless it fits in L2 with all the others (small batches
can partly hit L2 here, unlike a real model whose weights flush it between layers).

  python benchmarks/decode_attention.py --model llama-3.1-8b
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, emit, replay_us, resolve_model  # noqa: E402

from minisgl.attention.flashinfer_backend import fa3, fa3_fi, fi  # noqa: E402
from minisgl.engine.batch import Batch  # noqa: E402
from minisgl.kvcache.storage import KVStorage  # noqa: E402
from minisgl.models.config import ModelConfig  # noqa: E402

CASES = [(1, 256), (1, 1024), (1, 4096), (2, 512), (4, 512), (8, 512), (16, 512), (32, 512),
         (64, 512), (128, 512), (256, 512), (256, 1024)]
VARIANTS = ("fi-split", "fi-nosplit", "triton-split", "fa3")
TILE_ENV = "MINISGL_SPLIT_DECODE_TILE"


def slot_table(bs: int, ctx: int, layout: str) -> torch.Tensor:
    """[bs, ctx] int32 slots of the pool of bs x ctx (+1) slots, placed as `layout` says."""
    if layout == "random":
        slots = torch.randperm(bs * ctx, device="cuda").view(bs, ctx)
    elif layout == "interleaved":
        slots = torch.arange(bs * ctx, device="cuda").view(ctx, bs).t()
    elif layout == "contiguous":
        slots = torch.arange(bs * ctx, device="cuda").view(bs, ctx)
    else:
        raise SystemExit(f"unknown layout {layout!r}: random, interleaved or contiguous")
    return slots.contiguous().to(torch.int32)


def tile_name(tile: str) -> str:
    parts = tile.split(",")
    return "triton-" + "x".join(parts[:3]) + ("h" if len(parts) > 3 and parts[3] == "1" else "")


def graph_us(attn, q: torch.Tensor, table: torch.Tensor, layers: int, variant: str
             ) -> tuple[float, torch.Tensor]:
    """us a layer of the variant in a graph, and its eager output of layer 0 (a copy)."""
    bs, ctx = table.shape
    batch = Batch(phase="decode", rows=[None] * bs, prefix_lens=[ctx - 1] * bs,
                  extend_lens=[1] * bs, sample_rows=[],
                  state_slots=torch.arange(bs, device="cuda"),
                  seq_lens_dev=torch.full((bs,), ctx, device="cuda"), slot_table=table)
    attn.split_max_bs = bs if variant.startswith("triton") else 0
    attn.split_from_bs = 0
    attn.no_split_min_bs = 1 if variant == "fi-nosplit" else 1 << 30
    wrapper = attn.graph_wrapper(bs, bs * ctx + 1)
    attn.use_graph_wrapper(wrapper, batch)
    first = attn.attend(q, 0, batch).clone()  # the split kernel reuses its output buffer
    for layer in range(1, layers):  # compile, warm
        attn.attend(q, layer, batch)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(layers):
            attn.attend(q, layer, batch)
    return replay_us(graph, 20, 3) / layers, first


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--cases", default=None,
                    help="comma-separated BSxCTX cases (default: the built-in list)")
    ap.add_argument("--layouts", default="random",
                    help="comma-separated slot layouts: random, interleaved, contiguous")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8_e4m3"),
                    help="the cache's dtype (fp8_e4m3: FlashInfer's fi kernels and Triton only)")
    ap.add_argument("--tiles", default="",
                    help="extra Triton tiles, ';'-separated 'block_n,warps,stages[,heads_inner]'")
    args = ap.parse_args(argv)
    cases = (CASES if not args.cases else
             [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")])
    tiles = [t for t in args.tiles.split(";") if t.strip()]
    cfg = ModelConfig.from_path(Path(resolve_model(args.model)))
    h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rows = []
    for (bs, ctx), layout in [(c, lay) for c in cases for lay in args.layouts.split(",")]:
        fp8 = args.kv_cache_dtype == "fp8_e4m3"
        kv = KVStorage(args.layers, bs * ctx + 16, hkv, d,
                       torch.float8_e4m3fn if fp8 else torch.bfloat16, torch.device("cuda"),
                       compute_dtype=torch.bfloat16)
        for cache in (kv.k, kv.v):
            for layer in cache:  # layer by layer: no full-size float temporary
                layer.copy_(torch.randn(layer.shape, device="cuda"))
        backends = {"fi": (fi if fp8 else fa3_fi)(kv, h, hkv, d, 1)}
        if not fp8:
            backends["fa3"] = fa3(kv, h, hkv, d, 1)
        if layout == "contiguous" and ctx % 16 == 0:
            backends["page16"] = (fi if fp8 else fa3_fi)(kv, h, hkv, d, 16)
        row = {"bs": bs, "ctx": ctx, "layout": layout, "kv": str(kv.k.dtype)[6:]}
        ref = None
        q = torch.randn(bs, h, d, dtype=torch.bfloat16, device="cuda")
        table = slot_table(bs, ctx, layout)
        runs = [(v, v, None) for v in args.variants.split(",") if v != "fa3" or "fa3" in backends]
        if not runs and not tiles:
            raise SystemExit("no variant to run (fa3 reads no FP8 cache here)")
        runs += [(tile_name(t), "triton-split", t) for t in tiles]
        if "page16" in backends:
            runs.append(("fi-page16", "fi-nosplit", None))
        for name, variant, tile in runs:  # the same queries and slots for every variant
            attn = backends["fa3" if name == "fa3" else "page16" if name == "fi-page16" else "fi"]
            with patch.dict(os.environ, {TILE_ENV: tile} if tile else {}):  # restored after
                us, out = graph_us(attn, q, table, args.layers, variant)
            row[name + "_us"] = round(us, 2)
            ref = out if ref is None else ref
            row[name + "_max_diff"] = round((out.float() - ref.float()).abs().max().item(), 4)
        best = min((row[n + "_us"], n) for n, _, _ in runs)
        row["best"] = best[1]
        row["kv_tbs_best"] = round(2 * bs * ctx * hkv * d * kv.k.element_size() / best[0] / 1e6, 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
        del kv, backends
        torch.cuda.empty_cache()
    result = {"benchmark": "decode-attention", "model": args.model, "device": device_name("cuda"),
              "layers": args.layers, "rows": rows}
    args.device = "cuda"
    emit(result, "decode-attention", args)
    return result


if __name__ == "__main__":
    main()
