"""Offline throughput: N requests with random input/output lengths through `LLM`.

Default workload = BENCHMARKS.md offline-256 (Mini-SGLang / nano-vllm): 256 requests,
input and output lengths uniform in 100-1024, ignore_eos. Optionally the same requests
through Hugging Face transformers `generate` as the baseline, in the same run.

  python benchmarks/offline.py --model qwen3-0.6b --device cuda --dummy-weight
  python benchmarks/offline.py --model demo --device cpu --num-requests 16 \
      --input-len 16 128 --output-len 16 128 --hf-baseline
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, hardware_anchors, offline_workload, record, resolve_model  # noqa: E402

from minisgl import LLM, SamplingParams  # noqa: E402


def run_minisgl(args, reqs) -> tuple[float, int]:
    kwargs = dict(device=args.device, dtype=args.dtype, dummy_weight=args.dummy_weight,
                  max_running_requests=args.max_running_requests, page_size=args.page_size,
                  attention_backend=args.attention_backend, cuda_graph_max_bs=args.cuda_graph_max_bs,
                  memory_ratio=args.memory_ratio)
    if args.device == "cpu":
        kwargs["cpu_kv_budget_mb"] = args.cpu_kv_budget_mb
    llm = LLM(args.model_path, **kwargs)
    prompts = [p for p, _ in reqs]
    params = [SamplingParams(max_tokens=o, temperature=args.temperature, ignore_eos=True) for _, o in reqs]
    llm.generate([prompts[0][:16]], SamplingParams(max_tokens=4))  # warm-up (kernels, graphs)
    sync(args.device)
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    sync(args.device)
    elapsed = time.perf_counter() - t
    tokens = sum(o.num_output_tokens for o in outs)
    if tokens != sum(o for _, o in reqs):
        raise RuntimeError("minisgl produced fewer tokens than requested")
    return elapsed, tokens


def run_hf(args, reqs) -> tuple[float, int]:
    import transformers

    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    from minisgl.models import resolve_model_path

    path = str(resolve_model_path(args.model_path))
    config = transformers.AutoConfig.from_pretrained(path)
    if args.dummy_weight or args.model == "demo":
        with torch.device(args.device):  # random init on the GPU: seconds, not minutes
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(args.device).eval()
    order = sorted(range(len(reqs)), key=lambda i: len(reqs[i][0]))  # batch similar lengths
    bs = args.hf_batch_size
    sync(args.device)
    t = time.perf_counter()
    useful = 0
    for s in range(0, len(order), bs):
        print(f"hf: batch {s // bs + 1} of {-(-len(order) // bs)}", flush=True)
        group = [reqs[i] for i in order[s : s + bs]]
        width = max(len(p) for p, _ in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, _) in enumerate(group):  # left padding
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        n = max(o for _, o in group)
        with torch.no_grad():
            model.generate(ids.to(args.device), attention_mask=mask.to(args.device),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        useful += sum(o for _, o in group)
    sync(args.device)
    return time.perf_counter() - t, useful


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-0.6b", help="config name in benchmarks/configs, 'demo', or a dir")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--dummy-weight", action="store_true")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-running-requests", type=int, default=256)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--memory-ratio", type=float, default=0.9)
    ap.add_argument("--attention-backend", default="torch")
    ap.add_argument("--cuda-graph-max-bs", type=int, default=None, help="default 256 on cuda, 0 on cpu")
    ap.add_argument("--cpu-kv-budget-mb", type=int, default=1024)
    ap.add_argument("--hf-baseline", action="store_true", help="also time HF transformers generate")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--name", default=None, help="benchmark name in the result (default offline-N)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.model_path = resolve_model(args.model)
    if args.cuda_graph_max_bs is None:
        args.cuda_graph_max_bs = 256 if args.device == "cuda" and args.attention_backend != "torch" else 0
    if "configs" in args.model_path:
        args.dummy_weight = True

    from minisgl.models.config import ModelConfig
    from minisgl.models import resolve_model_path

    mcfg = ModelConfig.from_path(resolve_model_path(args.model_path))
    reqs = offline_workload(args.num_requests, tuple(args.input_len), tuple(args.output_len),
                            args.seed, mcfg.vocab_size)
    elapsed, tokens = run_minisgl(args, reqs)
    print(f"minisgl: {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.1f} tok/s", flush=True)
    result = {
        "benchmark": args.name or f"offline-{args.num_requests}", "model": f"{args.model} (dummy)"
        if args.dummy_weight or args.model == "demo" else args.model,
        "device": device_name(args.device), "tp": 1,
        "workload": {"requests": args.num_requests, "input_len": args.input_len,
                     "output_len": args.output_len, "seed": args.seed, "ignore_eos": True},
        "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
        "output_tokens_per_s": round(tokens / elapsed, 1),
        "ms_per_output_token": round(1000 * elapsed / tokens, 3),
        "anchors": hardware_anchors(args.device), "ratios": {},
    }
    bw = result["anchors"].get("read_bandwidth_gbs")
    if bw:  # batch-1 decode cannot beat streaming every weight once per token
        floor = mcfg.weight_bytes * 2 / (bw * 1e9) * 1000  # bf16 bytes / (bytes/s) -> ms
        result["anchors"]["floor_ms_per_token"] = round(floor, 3)
        if args.num_requests == 1:
            result["ratios"]["vs_floor"] = round(floor / result["ms_per_output_token"], 3)
    if args.hf_baseline:
        hf_elapsed, hf_tokens = run_hf(args, reqs)
        hf_tps = hf_tokens / hf_elapsed
        result["anchors"]["hf_transformers_tokens_per_s"] = round(hf_tps, 1)
        result["anchors"]["hf_batch_size"] = args.hf_batch_size
        result["ratios"]["vs_hf"] = round(result["output_tokens_per_s"] / hf_tps, 2)
        result["anchors"]["hf_ms_per_output_token"] = round(1000 / hf_tps, 3)
    if args.no_record:
        print(result)
    else:
        record(result, result["benchmark"], args.device)


if __name__ == "__main__":
    main()
