"""Where the time of one decode / prefill step goes on the GPU (torch profiler, CUDA events).

Builds one LLM and prints, for each phase, the wall time, the GPU kernel time and the top
kernels (count, total, mean): `b1` (batch-1 decode of a prefix-cached 128-id prompt),
`b256` (256 prefix-cached 512-id prompts decoding together), `prefill` (those 256 prompts'
prefill, chunked as the engine does). Also the pure replay time of the captured CUDA graphs
(no host work), and the linear layers' GEMMs alone at several M (achieved TB/s and TFLOP/s).
Writes profile-<model>-<device>-<date>.json (or prints it with --no-record).

  python benchmarks/profile_step.py --model llama-3.1-8b --device cuda --dtype bfloat16 \\
      --attention-backend fa3,fi --memory-ratio 0.85
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_engine_args, build_llm, device_name, emit, engine_record,  # noqa: E402
                    finish_engine_args, hardware_anchors, latency_prompt, offline_workload, replay_us)

from minisgl import SamplingParams  # noqa: E402


def _short(name: str) -> str:
    return name if len(name) <= 110 else name[:107] + "..."


def kernel_table(trace_path: Path, top: int) -> dict:
    """Kernel events of a chrome trace -> totals and the top kernels by time."""
    events = json.loads(trace_path.read_text()).get("traceEvents", [])
    by_name: dict[str, list[float]] = defaultdict(list)
    spans = []
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            by_name[_short(e["name"])].append(float(e["dur"]))
            spans.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    spans.sort()
    busy, end = 0.0, float("-inf")
    for s, t in spans:  # union of kernel intervals (streams may overlap)
        if t > end:
            busy += t - max(s, end)
            end = t
    rows = sorted(((sum(d), len(d), n) for n, d in by_name.items()), reverse=True)
    return {
        "kernels": sum(len(d) for d in by_name.values()),
        "kernel_us": round(sum(sum(d) for d in by_name.values()), 1),
        "busy_us": round(busy, 1),
        "span_us": round(spans[-1][1] - spans[0][0], 1) if spans else 0.0,
        "top": [{"name": n, "count": c, "total_us": round(t, 1), "mean_us": round(t / c, 2)}
                for t, c, n in rows[:top]],
    }


def profiled(fn, top: int) -> tuple[float, dict]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        return wall, kernel_table(path, top)


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_us(fn, n: int = 30) -> float:
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    stop.record()
    stop.synchronize()
    return 1000 * start.elapsed_time(stop) / n


GEMV_CONFIGS = [(8, 512, 4, 3), (16, 512, 4, 3), (16, 256, 4, 4), (32, 256, 8, 3),
                (8, 1024, 4, 2), (4, 1024, 4, 3), (16, 1024, 8, 2), (32, 512, 8, 2)]


def triton_gemv_best(x: torch.Tensor, copies: list[torch.Tensor]) -> dict:
    """A plain Triton GEMV (one program per BLOCK_N outputs) at M=1: the best of a few configs."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv(x_ptr, w_ptr, y_ptr, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(x_ptr + rk).to(tl.float32)
            wv = tl.load(w_ptr + rn[:, None] * K + rk[None, :]).to(tl.float32)
            acc += wv * xv[None, :]
        tl.store(y_ptr + rn, tl.sum(acc, 1).to(y_ptr.dtype.element_ty))

    n, k = copies[0].shape
    ref = torch.nn.functional.linear(x, copies[0]).float()
    best = None
    for bn, bk, warps, stages in GEMV_CONFIGS:
        if n % bn or k % bk:
            continue
        y = torch.empty(1, n, dtype=x.dtype, device=x.device)
        it = iter(range(1 << 30))

        def call(w=None):
            w = copies[next(it) % len(copies)] if w is None else w
            gemv[(n // bn,)](x, w, y, k, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
        try:
            call(copies[0])
            err = (y.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-6)
            us = bench_us(call)
        except Exception as e:  # a config that does not compile is skipped
            print("gemv config", (bn, bk, warps, stages), "failed:", str(e)[:200], flush=True)
            continue
        if best is None or us < best["us"]:
            best = {"us": round(us, 2), "cfg": [bn, bk, warps, stages], "rel_err": round(err, 5),
                    "tbs": round(n * k * 2 / us / 1e6, 3)}
    return best or {}


def attention_table(heads: int, kv_heads: int, head_dim: int, cases: list[tuple[int, int, int]]
                    ) -> list[dict]:
    """FlashInfer's decode kernels alone on a synthetic paged cache: for each (batch, context,
    page size), the tensor-core and the CUDA-core decode kernel (us, KV TB/s read)."""
    import flashinfer

    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for bs, ctx, page in cases:
        pages_per = -(-ctx // page)
        num_pages = bs * pages_per + 1
        k = torch.randn(num_pages, page, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        q = torch.randn(bs, heads, head_dim, dtype=torch.bfloat16, device="cuda")
        indptr = torch.arange(bs + 1, dtype=torch.int32) * pages_per
        indices = torch.arange(bs * pages_per, dtype=torch.int32, device="cuda")
        last = torch.full((bs,), ctx - (pages_per - 1) * page, dtype=torch.int32)
        row = {"bs": bs, "ctx": ctx, "page": page}
        outs = {}
        for tc in (True, False):
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=tc)
            w.plan(indptr, indices, last, heads, kv_heads, head_dim, page,
                   q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
            outs[tc] = w.run(q, (k, v))
            us = bench_us(lambda: w.run(q, (k, v)))
            key = "tc" if tc else "cc"
            row[key + "_us"] = round(us, 2)
            row[key + "_tbs"] = round(2 * bs * ctx * kv_heads * head_dim * 2 / us / 1e6, 3)
        row["max_diff"] = round((outs[True].float() - outs[False].float()).abs().max().item(), 4)
        rows.append(row)
        del k, v
    torch.cuda.empty_cache()
    return rows


def gemm_table(model, ms: list[int]) -> list[dict]:
    """Each distinct linear of a layer (and the lm head) alone, per M: us, TB/s, TFLOP/s."""
    layer = model.layers[0]
    mats = {"qkv": layer.self_attn.qkv_proj.weight, "o": layer.self_attn.o_proj.weight,
            "gate_up": layer.mlp.gate_up_proj.weight, "down": layer.mlp.down_proj.weight,
            "lm_head": model.lm_head.weight}
    # Rotate over copies so that each call streams its weight from HBM (no L2 reuse).
    rows = []
    for name, w in mats.items():
        extra = min(7, max(1, (1 << 30) // (w.numel() * 2)) - 1)
        copies = [w] + [torch.empty_like(w).normal_() for _ in range(extra)]
        n, k = w.shape
        for m in ms:
            x = torch.randn(m, k, dtype=w.dtype, device=w.device)
            it = iter(range(1 << 30))
            if name == "lm_head":
                f32 = lambda: torch.mm(x, copies[next(it) % len(copies)].t(), out_dtype=torch.float32)  # noqa: E731
                us_f32 = bench_us(f32)
            us = bench_us(lambda: torch.nn.functional.linear(x, copies[next(it) % len(copies)]))
            row = {"mat": name, "m": m, "n": n, "k": k, "us": round(us, 2),
                   "tbs": round((n * k + m * k + m * n) * 2 / us / 1e6, 3),
                   "tflops": round(2 * m * n * k / us / 1e6, 1)}
            if name == "lm_head":
                row["us_f32_out"] = round(us_f32, 2)
            if m == 1:
                row["triton_gemv"] = triton_gemv_best(x, copies)
            rows.append(row)
        del copies
    torch.cuda.empty_cache()
    return rows


PHASES = ("gemm", "attn", "b1", "prefill", "b256")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap, model="llama-3.1-8b")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--b256-input", type=int, default=512)
    ap.add_argument("--b256-steps", type=int, default=24)
    ap.add_argument("--gemm-m", type=int, nargs="*", default=[1, 8, 64, 256, 2048, 8192])
    ap.add_argument("--skip", nargs="*", default=[], choices=PHASES, help="phases to skip")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    finish_engine_args(args)
    anchors = hardware_anchors(args.device)
    result = {"benchmark": "profile", "model": args.model_label, "device": device_name(args.device),
              "engine": engine_record(args), "anchors": anchors, "phases": {}}
    llm = engine = None
    if set(PHASES) - {"attn"} - set(args.skip):  # the attention microbenchmark needs no engine
        t0 = time.perf_counter()
        llm = build_llm(args)
        engine = llm.scheduler.engine
        result["startup_s"] = round(time.perf_counter() - t0, 1)
        print(f"engine up in {result['startup_s']} s", flush=True)

    def greedy(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)

    def phase(name: str):
        """Run a phase unless skipped; a failing phase is recorded and the rest still run."""
        def wrap(fn):
            if name in args.skip:
                return
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a profile reports what it could measure
                traceback.print_exc()
                result["phases"][name] = {"error": repr(e)[:500]}
        return wrap

    @phase("gemm")
    def _gemm():
        result["gemm"] = gemm_table(engine.model, args.gemm_m)
        for r in result["gemm"]:
            print("gemm", r, flush=True)

    @phase("attn")
    def _attn():
        c = args.model_config
        cases = [(b, ctx, p) for p in (1, 16) for b, ctx in
                 [(1, 256), (8, 512), (32, 512), (64, 512), (128, 512), (256, 512), (256, 1024)]]
        result["attn"] = attention_table(c.num_heads, c.num_kv_heads, c.head_dim, cases)
        for r in result["attn"]:
            print("attn", r, flush=True)

    @phase("b1")
    def _b1():
        prompt = latency_prompt(128, 1, args.model_config.vocab_size)
        llm.generate([prompt], greedy(64))  # warm-up, prompt cached
        t1 = timed(lambda: llm.generate([prompt], greedy(1)))
        tn = timed(lambda: llm.generate([prompt], greedy(257)))
        steps = 32
        wall, table = profiled(lambda: llm.generate([prompt], greedy(steps + 1)), args.top)
        phase = {"ms_per_token": round(1000 * (tn - t1) / 256, 4), "profiled_steps": steps,
                 "profiled_wall_ms": round(1000 * wall, 2), **table}
        if engine.graphs is not None:
            phase["graph_replay_us"] = round(replay_us(engine.graphs.graphs[1], 50, 3), 1)
        result["phases"]["b1"] = phase
        print("b1", json.dumps(phase, indent=1), flush=True)

    @phase("b256" if "b256" not in args.skip else "prefill")
    def _b256():
        reqs = offline_workload(256, (args.b256_input, args.b256_input), (1, 1), seed=0,
                                vocab=args.model_config.vocab_size)
        prompts = [p for p, _ in reqs]
        if "prefill" not in args.skip:
            wall, table = profiled(lambda: llm.generate(prompts, greedy(1)), args.top)
            ntok = sum(len(p) for p in prompts)
            result["phases"]["prefill"] = {"tokens": ntok, "wall_ms": round(1000 * wall, 1),
                                           "tokens_per_s": round(ntok / wall), **table}
            print("prefill", json.dumps(result["phases"]["prefill"], indent=1), flush=True)
        else:
            llm.generate(prompts, greedy(1))
        if "b256" not in args.skip:
            n = args.b256_steps
            t1 = timed(lambda: llm.generate(prompts, greedy(1)))
            tn = timed(lambda: llm.generate(prompts, greedy(n + 1)))
            wall, table = profiled(lambda: llm.generate(prompts, greedy(n + 1)), args.top)
            phase = {"ms_per_step": round(1000 * (tn - t1) / n, 3), "context": args.b256_input,
                     "profiled_steps": n, "profiled_wall_ms": round(1000 * wall, 1), **table}
            if engine.graphs is not None:
                phase["graph_replay_us"] = round(replay_us(engine.graphs.graphs[256], 20, 3), 1)
            result["phases"]["b256"] = phase
            print("b256", json.dumps(phase, indent=1), flush=True)
    emit(result, "profile", args)
    return result


if __name__ == "__main__":
    main()
