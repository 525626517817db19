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
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_engine_args, add_floor, build_llm, device_name, emit,  # noqa: E402
                    engine_record, finish_engine_args, hardware_anchors, offline_workload, sync)

from minisgl import SamplingParams  # noqa: E402


class Timeline:
    """Where a run's time goes on the GPU: CUDA events at the start of every engine launch,
    just before its forward (the graph replay or the eager model call) and at its end, with
    its phase and size. Under overlap the GPU reaches a step's start event as the previous
    step ends, then waits for the host to plan this one (attention metadata, copies):
    `host_wait_s` is start -> forward (its few metadata copies included), `gpu_s` forward ->
    end (forward, sampling, copies out); the GPU idles between steps for `gpu_idle_s`."""

    BUCKETS = (1, 8, 32, 64, 128, 192, 256)  # decode rows: lower bounds of the buckets

    def __init__(self, engine) -> None:
        self.engine, self.launch, self.steps = engine, engine.launch, []
        self.replay, self.forward = torch.cuda.CUDAGraph.replay, engine.model.forward
        self._forward_event = None  # the current step's, set by whichever runs first

        def mark():
            if self._forward_event is None:
                self._forward_event = torch.cuda.Event(enable_timing=True)
                self._forward_event.record()

        def replay(graph, *args, **kwargs):
            mark()
            return self.replay(graph, *args, **kwargs)

        def forward(*args, **kwargs):
            mark()
            return self.forward(*args, **kwargs)

        def launch(batch, mask=None):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            self._forward_event = None
            pending = self.launch(batch, mask)
            end.record()
            fwd = self._forward_event or start
            self.steps.append((batch.phase, batch.size, sum(batch.extend_lens), start, fwd, end))
            return pending

        engine.launch = launch
        torch.cuda.CUDAGraph.replay = replay
        engine.model.forward = forward

    def close(self) -> dict:
        self.engine.launch = self.launch
        torch.cuda.CUDAGraph.replay = self.replay
        del self.engine.model.forward  # the instance attribute: back to the class's
        torch.cuda.synchronize()
        groups: dict[str, list[float]] = {}
        idle = 0.0
        for i, (phase, size, tokens, start, fwd, end) in enumerate(self.steps):
            if phase == "decode":
                low = max(b for b in self.BUCKETS if b <= size)
                key = f"decode {low}+"
            else:
                key = "prefill"
            g = groups.setdefault(key, [0, 0, 0.0, 0.0])
            g[0] += 1
            g[1] += tokens
            g[2] += fwd.elapsed_time(end) / 1e3
            g[3] += start.elapsed_time(fwd) / 1e3
            if i:
                idle += max(0.0, self.steps[i - 1][5].elapsed_time(start) / 1e3)
        span = self.steps[0][3].elapsed_time(self.steps[-1][5]) / 1e3 if self.steps else 0.0
        return {"span_s": round(span, 3), "gpu_idle_s": round(idle, 3),
                "host_wait_s": round(sum(g[3] for g in groups.values()), 3), "steps": {
                    k: {"steps": n, "tokens": t, "gpu_s": round(s, 3),
                        "ms_per_step": round(1e3 * s / n, 3), "host_wait_s": round(w, 3)}
                    for k, (n, t, s, w) in sorted(groups.items())}}


def run_minisgl(args, reqs) -> tuple[float, int, dict | None]:
    llm = build_llm(args)
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
    timeline = None
    if args.timeline:  # a second, instrumented run from a cold prefix cache
        llm.flush_cache()
        recorder = Timeline(llm.scheduler.engine)
        t = time.perf_counter()
        llm.generate(prompts, params)
        timeline = recorder.close()
        timeline["elapsed_s"] = round(time.perf_counter() - t, 3)
    return elapsed, tokens, timeline


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--hf-baseline", action="store_true", help="also time HF transformers generate")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--name", default=None, help="benchmark name in the result (default offline-N)")
    ap.add_argument("--timeline", action="store_true",
                    help="then run again with CUDA events around every step (CUDA only): GPU "
                         "time by phase and decode batch size, GPU idle time")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    finish_engine_args(args)
    mcfg = args.model_config
    reqs = offline_workload(args.num_requests, tuple(args.input_len), tuple(args.output_len),
                            args.seed, mcfg.vocab_size)
    elapsed, tokens, timeline = run_minisgl(args, reqs)
    print(f"minisgl: {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.1f} tok/s", flush=True)
    if timeline is not None:
        print(json.dumps(timeline, indent=1), flush=True)
    result = {
        "benchmark": args.name or f"offline-{args.num_requests}", "model": args.model_label,
        "device": device_name(args.device), "tp": 1,
        "workload": {"requests": args.num_requests, "input_len": args.input_len,
                     "output_len": args.output_len, "seed": args.seed, "ignore_eos": True},
        "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
        "output_tokens_per_s": round(tokens / elapsed, 1),
        "ms_per_output_token": round(1000 * elapsed / tokens, 3),
        "anchors": hardware_anchors(args.device), "ratios": {},
    }
    if timeline is not None:
        result["timeline"] = timeline
    result["engine"] = engine_record(args)
    add_floor(result, mcfg, args.dtype)
    if args.hf_baseline:
        hf_elapsed, hf_tokens = run_hf(args, reqs)
        hf_tps = hf_tokens / hf_elapsed
        result["anchors"]["hf_transformers_tokens_per_s"] = round(hf_tps, 1)
        result["anchors"]["hf_batch_size"] = args.hf_batch_size
        result["ratios"]["vs_hf"] = round(result["output_tokens_per_s"] / hf_tps, 2)
        result["anchors"]["hf_ms_per_output_token"] = round(1000 / hf_tps, 3)
    emit(result, result["benchmark"], args)


if __name__ == "__main__":
    main()
