"""Batch-1 decode latency (BENCHMARKS.md `latency-b1`): ms per output token after the first.

One request, 128 prompt ids from Random(1), 256 output tokens, ignore_eos, through `LLM`.
Each run times the same request twice — max_tokens=1 (prefill + first token) and
max_tokens=N — so (t_N - t_1) / (N - 1) is pure decode; the prompt is prefix-cached after
the warm-up in both, so their prefills cost the same. Reported: the median of --runs runs,
with the card's read bandwidth and the weight-streaming floor (weight bytes / bandwidth).

  python benchmarks/latency.py --model llama-3.1-8b --device cuda --dtype bfloat16 \\
      --attention-backend fa3,fi
  python benchmarks/latency.py --model demo --device cpu --output-len 16 --runs 3 --no-record
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_engine_args, add_floor, build_llm, device_name, emit,  # noqa: E402
                    engine_record, finish_engine_args, hardware_anchors, latency_prompt, sync)

from minisgl import SamplingParams  # noqa: E402


def timed(llm, prompt: list[int], max_tokens: int, device: str) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    sync(device)
    t = time.perf_counter()
    out = llm.generate([prompt], params)[0]
    sync(device)
    if out.num_output_tokens != max_tokens:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {out.num_output_tokens}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap, model="llama-3.1-8b")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (median; >= 3)")
    args = ap.parse_args(argv)
    if args.runs < 3 or args.output_len < 2:
        ap.error("--runs must be >= 3 and --output-len >= 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    finish_engine_args(args)
    anchors = hardware_anchors(args.device)  # before the engine sizes its KV pool
    llm = build_llm(args)
    prompt = latency_prompt(args.input_len, args.seed, args.model_config.vocab_size)
    n = args.output_len
    timed(llm, prompt, n, args.device)  # warm-up: kernels, graphs, and the prompt in the cache
    runs = []
    for _ in range(args.runs):
        first, full = timed(llm, prompt, 1, args.device), timed(llm, prompt, n, args.device)
        runs.append({"first_token_s": round(first, 5), "total_s": round(full, 5),
                     "ms_per_output_token": round(1000 * (full - first) / (n - 1), 4)})
        print(f"latency: {runs[-1]}", flush=True)
    ms = statistics.median(r["ms_per_output_token"] for r in runs)
    result = {
        "benchmark": "latency-b1", "model": args.model_label, "device": device_name(args.device),
        "tp": 1, "batch_size": 1,
        "workload": {"requests": 1, "input_len": args.input_len, "output_len": n, "seed": args.seed,
                     "ignore_eos": True, "metric": "(t(max_tokens=N) - t(max_tokens=1)) / (N - 1)"},
        "ms_per_output_token": round(ms, 4),
        "output_tokens_per_s": round(1000 / ms, 1),
        # prefill of a prompt already in the prefix cache + the first token: not a cold TTFT
        "first_token_ms_cached_prompt": round(1000 * statistics.median(r["first_token_s"] for r in runs), 3),
        "runs": runs, "engine": engine_record(args), "anchors": anchors, "ratios": {},
    }
    add_floor(result, args.model_config, args.dtype)
    emit(result, "latency-b1", args)
    return result


if __name__ == "__main__":
    main()
