"""Serving benchmark: an OpenAI-API load generator (BENCHMARKS.md `serving-sweep`).

Sends seeded random token-id prompts to /v1/completions (streaming, ignore_eos) with Poisson
arrivals at each given rate ("inf" = all at once), optionally capped at a maximum concurrency,
and reports request throughput, output tokens/s and TTFT / ITL / end-to-end percentiles.
Works against any OpenAI-compatible server; `--launch` starts `python -m minisgl` itself.
Every run sends the same lengths (run i redraws the ids with seed + i, so no run hits the
prefix cache of another); run 0 is exactly offline.py's workload of the same seed.

BENCHMARKS.md `http-burst`: `--request-rate inf` plus `--offline-args` (offline.py runs the
same requests in a subprocess first, its GPU memory freed before the server starts) or
`--offline-result` (an offline.py JSON of this run) gives `ratios.vs_offline`. `--cold-start`
sends the burst as the very first traffic after /ready, then again (warm), and reports
both TTFT p50 and their ratio. `--client-procs N` splits the load generator over N processes
so that parsing 256 streams in one Python process does not cap the figure.

  python benchmarks/serving.py --launch "--model-path demo --device cpu" --device cpu \\
      --num-prompts 16 --input-len 16 128 --output-len 16 64 --request-rate 1,4,inf
  python benchmarks/serving.py --base-url http://127.0.0.1:1919 --model-label qwen3-0.6b \\
      --device cuda --request-rate 4,8,16,32,inf --num-prompts 256
  python benchmarks/serving.py --name http-burst --cold-start --client-procs 4 --device cuda \\
      --launch "--model-path benchmarks/configs/qwen3-0.6b --dummy-weight --device cuda \\
                --tokenizer-path worker/minisgl/models/demo --dtype bfloat16" \\
      --offline-args "--model qwen3-0.6b --device cuda --dtype bfloat16 --attention-backend fa3,fi"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, offline_workload, record  # noqa: E402

OFFLINE = Path(__file__).resolve().parent / "offline.py"


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, model: str | None, prompt: list[int],
                      max_tokens: int) -> Result:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True,
                                               "continuous_usage_stats": True}}
    if model:
        body["model"] = model
    res, start = Result(input_tokens=len(prompt)), time.perf_counter()
    last, seen = None, 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                usage = obj.get("usage") or {}
                tokens = usage.get("completion_tokens", seen)
                if obj.get("choices") and tokens > seen:
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - start
                    else:  # a chunk carrying k tokens counts as k gaps of equal length
                        res.itl += [(now - last) / (tokens - seen)] * (tokens - seen)
                    last, seen = now, tokens
        res.output_tokens, res.e2e, res.ok = seen, time.perf_counter() - start, True
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = repr(e)
    return res


def percentiles(xs: list[float], scale: float = 1000.0) -> dict:
    if not xs:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    s = sorted(xs)

    def pct(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * scale, 2)

    return {"mean": round(sum(s) / len(s) * scale, 2), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99)}


async def send(base_url: str, model: str | None, reqs: list[tuple[list[int], int]], rate: float,
               max_concurrency: int | None, seed: int) -> tuple[list[Result], float, float]:
    """Send reqs (Poisson arrivals at `rate`, inf = at once); results and perf_counter span."""
    arrivals = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(reqs))
    conns = httpx.Limits(max_connections=max_concurrency or len(reqs) + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=None, limits=conns) as client:
        async def gated(prompt: list[int], out: int) -> Result:
            async with limit:
                return await one_request(client, model, prompt, out)

        start, tasks = time.perf_counter(), []
        for prompt, out in reqs:
            tasks.append(asyncio.create_task(gated(prompt, out)))
            if rate != float("inf"):
                await asyncio.sleep(arrivals.expovariate(rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
    return list(results), start, time.perf_counter()


def send_shard(job: tuple) -> tuple[list[Result], float, float]:
    return asyncio.run(send(*job))


def run_rate(base_url: str, model: str | None, reqs: list[tuple[list[int], int]], rate: float,
             max_concurrency: int | None, seed: int, procs: int = 1) -> dict:
    """One run; procs > 1 splits reqs round-robin over forked client processes (each with
    rate / procs: Poisson streams add up to one of the full rate). perf_counter is the
    system-wide monotonic clock, so the shards' spans combine into one duration."""
    if procs <= 1:
        results, start, end = asyncio.run(send(base_url, model, reqs, rate, max_concurrency, seed))
    else:
        cap = math.ceil(max_concurrency / procs) if max_concurrency else None
        jobs = [(base_url, model, reqs[i::procs], rate / procs, cap, seed + i) for i in range(procs)]
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(send_shard, jobs)
        results = [r for part, _, _ in parts for r in part]
        start, end = min(p[1] for p in parts), max(p[2] for p in parts)
    duration = end - start
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    errors = sorted({r.error for r in results if not r.ok})
    return {
        "request_rate": "inf" if rate == float("inf") else rate,
        "max_concurrency": max_concurrency, "client_procs": procs, "completed": len(done),
        "failed": len(results) - len(done), "errors": errors[:5],
        "duration_s": round(duration, 3),
        "request_throughput": round(len(done) / duration, 3),
        "input_tokens_per_s": round(sum(r.input_tokens for r in done) / duration, 1),
        "output_tokens_per_s": round(out_tokens / duration, 1),
        "ttft_ms": percentiles([r.ttft for r in done]),
        "itl_ms": percentiles([x for r in done for x in r.itl]),
        "e2e_ms": percentiles([r.e2e for r in done]),
    }


def redraw_ids(reqs: list[tuple[list[int], int]], run: int, vocab: int) -> list[tuple[list[int], int]]:
    """Run `run`'s requests: reqs' lengths, fresh ids from Random(run) for run > 0 (equal
    work, no prefix-cache hits across runs); run 0 is reqs itself."""
    if run == 0:
        return reqs
    rng, top = random.Random(run), min(9999, vocab - 1)
    return [([rng.randint(0, top) for _ in p], out) for p, out in reqs]


def offline_rate(args: argparse.Namespace) -> dict | None:
    """offline.py's figure for the same requests: from --offline-result, or run now (a
    subprocess, so its GPU memory is free again before the server starts)."""
    want = {"requests": args.num_prompts, "input_len": args.input_len,
            "output_len": args.output_len, "seed": args.seed}
    if args.offline_result:
        res = json.loads(Path(args.offline_result).read_text())
        command = res.get("command")
    elif args.offline_args:
        cmd = [sys.executable, str(OFFLINE), *shlex.split(args.offline_args), "--no-record",
               "--num-requests", str(args.num_prompts), "--input-len", *map(str, args.input_len),
               "--output-len", *map(str, args.output_len), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"offline.py failed with code {proc.returncode}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        command = "python " + shlex.join(["benchmarks/offline.py", *cmd[2:]])
    else:
        return None
    got = {k: res.get("workload", {}).get(k) for k in want}
    if got != want:
        raise SystemExit(f"offline result is for other requests: {got} != {want}")
    return {"output_tokens_per_s": res["output_tokens_per_s"], "elapsed_s": res["elapsed_s"],
            "model": res.get("model"), "engine": res.get("engine"), "command": command}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(server_args: str, timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    """Start `python -m minisgl server_args` on a free port; return once /ready is 200."""
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "worker"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "minisgl", *shlex.split(server_args), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not ready within {timeout:.0f}s")


def model_vocab(server_args: str) -> int | None:
    """The vocab size of a --launch'ed model, so random prompt ids stay in range."""
    argv = shlex.split(server_args)
    if "--model-path" not in argv:
        return None
    from minisgl.models import resolve_model_path

    config = Path(resolve_model_path(argv[argv.index("--model-path") + 1])) / "config.json"
    return json.loads(config.read_text()).get("vocab_size") if config.is_file() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:1919")
    where.add_argument("--launch", metavar="ARGS", help="start python -m minisgl ARGS here")
    p.add_argument("--model", default=None, help="the request's model field (default: none)")
    p.add_argument("--model-label", default=None, help="model name for the result record")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the server runs (names the device in the record)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--vocab", type=int, default=None, help="prompt ids < this (default: model's)")
    p.add_argument("--request-rate", default="inf",
                   help="comma-separated requests/s, 'inf' = all at once (e.g. 1,2,4,inf)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client-procs", type=int, default=1,
                   help="load-generator processes (one Python process tops out near 10k chunks/s)")
    p.add_argument("--cold-start", action="store_true",
                   help="no warm-up: the burst is the first traffic after /ready, then sent again")
    off = p.add_mutually_exclusive_group()
    off.add_argument("--offline-args", metavar="ARGS",
                     help="run benchmarks/offline.py ARGS on the same requests first (vs_offline)")
    off.add_argument("--offline-result", metavar="JSON",
                     help="offline.py's result for the same requests, from this run (vs_offline)")
    p.add_argument("--name", default="serving-sweep", help="benchmark name in the record")
    p.add_argument("--out-dir", default=None, help="where the result JSON goes (default benchmarks/results)")
    p.add_argument("--no-record", action="store_true", help="print only, write no JSON")
    args = p.parse_args(argv)
    if args.cold_start and args.request_rate != "inf":
        p.error("--cold-start sends one burst: use --request-rate inf")
    if args.cold_start and not args.launch:
        p.error("--cold-start needs --launch (a fresh server)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    rates = [float(r) for r in args.request_rate.split(",")]
    if args.cold_start:
        rates = rates * 2  # the cold burst, then the same burst warm
    offline = offline_rate(args)  # before the server, which then gets the whole GPU
    t0 = time.perf_counter()
    proc, url = launch(args.launch) if args.launch else (None, args.base_url.rstrip("/"))
    startup_s = time.perf_counter() - t0
    vocab = args.vocab or (model_vocab(args.launch) if args.launch else None) or 10000
    reqs = offline_workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len),
                            seed=args.seed, vocab=vocab)
    try:
        if not args.cold_start:
            warm = offline_workload(2, tuple(args.input_len), tuple(args.output_len),
                                    seed=args.seed + 10_000, vocab=vocab)
            run_rate(url, args.model, warm, float("inf"), None, args.seed)
        runs = [run_rate(url, args.model, redraw_ids(reqs, i, vocab), r, args.max_concurrency,
                         args.seed, args.client_procs)
                for i, r in enumerate(rates)]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    last = runs[-1]
    result = {
        "benchmark": args.name, "model": args.model_label or args.model or args.launch or url,
        "device": device_name(args.device), "tp": args.tp,
        "workload": {"requests": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "seed": args.seed,
                     "seeds": "every run: seed's lengths; run i > 0 redraws the ids with seed i "
                              "(no prefix-cache hits across runs)",
                     "ignore_eos": True,
                     "api": "/v1/completions stream, token-id prompts"},
        "output_tokens_per_s": last["output_tokens_per_s"], "ttft_ms": last["ttft_ms"],
        "itl_ms": last["itl_ms"], "runs": runs, "ratios": {},
        "server_startup_s": round(startup_s, 2) if proc is not None else None,
        # other work on the host skews CPU figures: the 1-minute load average before and after
        "host_load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "command": "python " + shlex.join(["benchmarks/serving.py", *(argv or sys.argv[1:])]),
    }
    if args.cold_start:
        cold, warm = runs[0]["ttft_ms"]["p50"], runs[1]["ttft_ms"]["p50"]
        result["cold_start"] = {"ttft_p50_ms_cold": cold, "ttft_p50_ms_warm": warm,
                                "output_tokens_per_s_cold": runs[0]["output_tokens_per_s"],
                                "duration_s_cold": runs[0]["duration_s"]}
        result["ratios"]["cold_vs_warm_ttft_p50"] = round(cold / warm, 3) if warm else None
    if offline is not None and last["request_rate"] == "inf":  # all at once, like offline
        result["offline"] = offline
        result["ratios"]["vs_offline"] = round(last["output_tokens_per_s"]
                                               / offline["output_tokens_per_s"], 3)
    if any(r["failed"] for r in runs):
        print(f"warning: failed requests: {[r['errors'] for r in runs]}", file=sys.stderr)
    if args.no_record:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {record(result, args.name, args.device, args.out_dir)}")
    return result

if __name__ == "__main__":
    main()
