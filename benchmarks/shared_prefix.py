"""Shared-prefix throughput (BENCHMARKS.md `shared-prefix`): measures the radix cache.

16 system prompts of 1,024 ids x 64 questions of 64-256 ids each, 128 output tokens,
shuffled (seed 0), all submitted at once through `LLM`, --repeats times on one engine (the
prefix cache flushed before each run; the median run is the figure, every run is listed).
Reports output tokens/s and the prefix-cache hit ratio: cached prompt tokens over all prompt tokens, and over the ideal
(every request but the first of its group reuses the whole page-aligned prefix).

  python benchmarks/shared_prefix.py --model qwen3-0.6b --device cuda --dtype bfloat16 \\
      --attention-backend fa3,fi
  python benchmarks/shared_prefix.py --model demo --device cpu --groups 2 --per-group 4 \\
      --prefix-len 64 --question-len 8 16 --output-len 8 --no-record
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_engine_args, build_llm, device_name, emit, engine_record,  # noqa: E402
                    finish_engine_args, shared_prefix_workload, sync)

from minisgl import SamplingParams  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--per-group", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--question-len", type=int, nargs=2, default=[64, 256])
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs on one engine, the prefix cache flushed before each; the median counts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    finish_engine_args(args)
    reqs = shared_prefix_workload(args.groups, args.per_group, args.prefix_len,
                                  tuple(args.question_len), args.output_len, args.seed,
                                  args.model_config.vocab_size)
    llm = build_llm(args)
    # Warm-up on ids that no workload prompt starts with (they are all < 10000).
    warm = [min(10000, args.model_config.vocab_size - 1)] * 16
    llm.generate([warm], SamplingParams(max_tokens=4, ignore_eos=True))
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    runs = []
    for _ in range(args.repeats):  # each from a cold prefix cache: the same cache hits each time
        llm.flush_cache()
        sync(args.device)
        t = time.perf_counter()
        outs = llm.generate([p for p, _ in reqs], params)
        sync(args.device)
        elapsed = time.perf_counter() - t
        tokens = sum(o.num_output_tokens for o in outs)
        if tokens != len(reqs) * args.output_len:
            raise RuntimeError("minisgl produced fewer tokens than requested")
        cached = sum(o.num_cached_tokens for o in outs)
        runs.append({"elapsed_s": round(elapsed, 3), "output_tokens_per_s": round(tokens / elapsed, 1),
                     "cached_tokens": cached})
    median = sorted(runs, key=lambda r: r["elapsed_s"])[len(runs) // 2]
    elapsed, cached = median["elapsed_s"], median["cached_tokens"]
    prompt_tokens = sum(len(p) for p, _ in reqs)
    aligned = args.prefix_len - args.prefix_len % args.page_size
    ideal = args.groups * (args.per_group - 1) * aligned
    print(f"minisgl: {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.1f} tok/s (median of "
          f"{len(runs)}: {[r['output_tokens_per_s'] for r in runs]}), {cached}/{ideal} ideal "
          f"cached tokens", flush=True)
    result = {
        "benchmark": "shared-prefix", "model": args.model_label, "device": device_name(args.device),
        "tp": 1,
        "workload": {"requests": len(reqs), "groups": args.groups, "per_group": args.per_group,
                     "prefix_len": args.prefix_len, "question_len": args.question_len,
                     "output_len": args.output_len, "seed": args.seed, "ignore_eos": True},
        "output_tokens": tokens, "elapsed_s": elapsed,
        "output_tokens_per_s": round(tokens / elapsed, 1), "runs": runs,
        "prefix_cache": {"cached_tokens": cached, "prompt_tokens": prompt_tokens,
                         "ideal_cached_tokens": ideal,
                         "hit_ratio": round(cached / prompt_tokens, 4),
                         "vs_ideal": round(cached / ideal, 4) if ideal else None},
        "engine": engine_record(args), "anchors": {}, "ratios": {},
    }
    emit(result, "shared-prefix", args)
    return result


if __name__ == "__main__":
    main()
