"""Decode attention kernels inside a CUDA graph, as the engine replays them.

For each (batch, context) case: a graph of `--layers` attention calls through the real
FlashInfer backend (its graph wrappers, the engine's slot table), replayed; the figure is
microseconds per layer, kernels and merge included. Variants: FlashInfer's tensor-core
decode kernel with its graph-mode KV split (`fi-split`), the same without the split
(`fi-nosplit`, what MINISGL_FI_NO_SPLIT_MIN_BS selects) and the Triton split-KV kernel
(`triton-split`, MINISGL_SPLIT_DECODE_MAX_BS). Each layer has its own KV buffers, so a
batch's cache is re-read from HBM unless it fits in L2 with all the others (small batches
can partly hit L2 here, unlike a real model whose weights flush it between layers).

  python benchmarks/decode_attention.py --model llama-3.1-8b
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, emit, replay_us, resolve_model  # noqa: E402

from minisgl.attention.flashinfer_backend import fa3_fi  # noqa: E402
from minisgl.engine.batch import Batch  # noqa: E402
from minisgl.kvcache.storage import KVStorage  # noqa: E402
from minisgl.models.config import ModelConfig  # noqa: E402

CASES = [(1, 256), (1, 1024), (1, 4096), (2, 512), (4, 512), (8, 512), (16, 512), (32, 512),
         (64, 512), (128, 512), (256, 512), (256, 1024)]
VARIANTS = ("fi-split", "fi-nosplit", "triton-split")


def graph_us(attn, q: torch.Tensor, table: torch.Tensor, layers: int, variant: str
             ) -> tuple[float, torch.Tensor]:
    """us a layer of the variant in a graph, and its eager output of layer 0 (a copy)."""
    bs, ctx = table.shape
    batch = Batch(phase="decode", rows=[None] * bs, prefix_lens=[ctx - 1] * bs,
                  extend_lens=[1] * bs, sample_rows=[],
                  state_slots=torch.arange(bs, device="cuda"),
                  seq_lens_dev=torch.full((bs,), ctx, device="cuda"), slot_table=table)
    attn.split_max_bs = bs if variant == "triton-split" else 0
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
    args = ap.parse_args(argv)
    cfg = ModelConfig.from_path(Path(resolve_model(args.model)))
    h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rows = []
    for bs, ctx in CASES:
        kv = KVStorage(args.layers, bs * ctx + 1, hkv, d, torch.bfloat16, torch.device("cuda"))
        kv.k.normal_()
        kv.v.normal_()
        attn = fa3_fi(kv, h, hkv, d, 1)
        row = {"bs": bs, "ctx": ctx}
        ref = None
        q = torch.randn(bs, h, d, dtype=torch.bfloat16, device="cuda")
        table = torch.randperm(bs * ctx, device="cuda").view(bs, ctx).to(torch.int32)
        for variant in VARIANTS:  # the same queries and slots for every variant
            us, out = graph_us(attn, q, table, args.layers, variant)
            row[variant + "_us"] = round(us, 2)
            ref = out if ref is None else ref
            row[variant + "_max_diff"] = round((out.float() - ref.float()).abs().max().item(), 4)
        row["kv_tbs_best"] = round(2 * bs * ctx * hkv * d * 2 / min(
            row[v + "_us"] for v in VARIANTS) / 1e6, 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
        del kv, attn
        torch.cuda.empty_cache()
    result = {"benchmark": "decode-attention", "model": args.model, "device": device_name("cuda"),
              "layers": args.layers, "rows": rows}
    args.device = "cuda"
    emit(result, "decode-attention", args)
    return result


if __name__ == "__main__":
    main()
