"""CPU micro-benchmark of the HTTP serving path, stage by stage (no GPU, no model).

Stages (each prints its figures into one JSON line):
  codec   msgpack encode/decode of one step's BatchTokenOutputMsg and BatchReplyMsg (µs/chunk)
  detok   DetokenizeManager.process on one TokenOutput per request per step, demo tokenizer
  intake  pydantic parse + SamplingParams of a /v1/completions body with a ~560-id prompt
  api     the real API process (FrontendManager + FastAPI + uvicorn/httptools/uvloop) with a
          fake backend process that stands in for tokenizer, detokenizer and scheduler: it
          takes each TokenizeMsg and sends one BatchReplyMsg per step (every `--step-ms`) with
          one ReplyChunk per live request, while `--clients` raw asyncio HTTP client processes
          read the SSE streams of `--requests` /v1/completions requests sent at once. Reports
          the API process's CPU time per chunk (what caps it at saturation: 20,700 tok/s at
          256 streams leaves 48 µs per chunk for the whole process), the stream rate the
          clients saw, TTFT and how late the API process parsed the burst (intake).

  python benchmarks/http_path.py                      # every stage, defaults below
  python benchmarks/http_path.py --stages api --requests 256 --step-ms 12 --profile /tmp/api.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

from minisgl.message import codec  # noqa: E402
from minisgl.message.frontend import BatchReplyMsg, ReplyChunk  # noqa: E402
from minisgl.message.tokenizer import BatchTokenOutputMsg, TokenizedMsg  # noqa: E402
from minisgl.sampling_params import SamplingParams  # noqa: E402
from minisgl.scheduler.types import TokenOutput  # noqa: E402

WORDS = [" the", " of", " and", " token", " server", " stream", "ing", ",", ".", " a"]


def workload(n: int, in_range: tuple[int, int], out_range: tuple[int, int], vocab: int,
             seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(*in_range))], rng.randint(*out_range))
            for _ in range(n)]


def pcts(xs: list[float], scale: float = 1000.0) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {"p50": round(s[len(s) // 2] * scale, 1), "p90": round(s[int(0.9 * len(s))] * scale, 1),
            "max": round(s[-1] * scale, 1)}


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --- stage: detok + codec ----------------------------------------------------------------
def step_outputs(reqs: list[tuple[list[int], int]], steps: int, vocab: int) -> list[list[TokenOutput]]:
    rng = random.Random(1)
    return [[TokenOutput(uid=u, token_id=rng.randrange(vocab), logprob=None,
                         num_prompt_tokens=len(p), num_output_tokens=s + 1,
                         queue_time_s=0.01 if s == 0 else None)
             for u, (p, _) in enumerate(reqs)] for s in range(steps)]


def bench_detok(reqs, steps: int) -> tuple[dict, list[list[ReplyChunk]]]:
    from minisgl.tokenizer.detokenize import DetokenizeManager
    from minisgl.tokenizer.tokenize import load_tokenizer

    tok = load_tokenizer("demo")
    params = SamplingParams(max_tokens=1 << 20, ignore_eos=True, temperature=0.0)
    outs = step_outputs(reqs, steps, len(tok))
    results: dict = {}
    chunks: list[list[ReplyChunk]] = []
    oov = step_outputs(reqs, steps, 151936)  # Qwen3's vocabulary decoded by the demo tokenizer
    for name, stop, step_outs in (("plain", (), outs), ("stop_strings", ("\n\n", "User:"), outs),
                                  ("qwen_ids_demo_tokenizer", (), oov)):
        p = params.replace(stop=stop) if stop else params
        best = float("inf")
        for _ in range(3):  # best of 3: the cores may be shared
            manager = DetokenizeManager(tok, [tok.eos_token_id])
            for u, (prompt, _) in enumerate(reqs):
                manager.register(TokenizedMsg(u, prompt, p, time.time()))
            t = time.perf_counter()
            step_chunks = [manager.process(o)[0] for o in step_outs]
            best = min(best, time.perf_counter() - t)
        results[f"{name}_us_per_chunk"] = round(best / (steps * len(reqs)) * 1e6, 2)
        if not chunks:
            chunks = step_chunks
    results["steps_per_s_at_256"] = round(1e6 / (results["plain_us_per_chunk"] * 256), 1)
    return results, chunks


def bench_codec(outs: list[list[TokenOutput]], chunks: list[list[ReplyChunk]]) -> dict:
    n = sum(map(len, outs))
    res = {}
    for name, msgs in (("token_output", [BatchTokenOutputMsg(o) for o in outs]),
                       ("reply", [BatchReplyMsg(c) for c in chunks])):
        blobs = [codec.encode(m) for m in msgs]
        enc = best_of(lambda: [codec.encode(m) for m in msgs])
        dec = best_of(lambda: [codec.decode(b) for b in blobs])
        res[f"{name}_encode_us_per_chunk"] = round(enc / n * 1e6, 2)
        res[f"{name}_decode_us_per_chunk"] = round(dec / n * 1e6, 2)
        res[f"{name}_bytes_per_step"] = sum(map(len, blobs[1:])) // max(1, len(blobs) - 1)
    return res


def bench_intake(reqs) -> dict:
    from minisgl.server import openai_serving as oai
    from minisgl.server.errors import read_json  # noqa: F401  (the same json + pydantic path)
    from minisgl.server.protocol import CompletionRequest

    bodies = [json.dumps(request_body(p, o)) for p, o in reqs]

    def parse():
        for b in bodies:
            req = CompletionRequest.model_validate(json.loads(b))
            oai.build_completion(req, 1 << 20)

    return {"parse_us_per_request": round(best_of(parse) / len(bodies) * 1e6, 1)}


# --- stage: api ----------------------------------------------------------------------------
def request_body(prompt: list[int], max_tokens: int) -> dict:
    """What benchmarks/serving.py sends."""
    return {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True,
                                               "continuous_usage_stats": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_api(directory: str, port: int) -> None:
    import gc

    import uvicorn
    import uvloop

    from minisgl.server.api import create_app

    if os.environ.get("HTTP_PATH_GC") == "off":  # experiment: how much is the cyclic GC
        gc.disable()
    from minisgl.server.endpoints import Endpoints
    from minisgl.server.frontend import FrontendManager
    from minisgl.tokenizer.tokenize import load_tokenizer

    frontend = FrontendManager(Endpoints(directory, num_tokenizer=1), "bench", 1 << 20,
                               load_tokenizer("demo"))
    app = create_app(frontend, SimpleNamespace(api_key=None, max_request_bytes=None))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, loop="uvloop", http="httptools")
    uvloop.run(uvicorn.Server(config).serve())


def fake_backend(directory: str, step_s: float, total: int, report) -> None:
    """Tokenizer + detokenizer + scheduler in one: a ReplyChunk per live request per step."""
    from minisgl.message.tokenizer import TokenizeMsg
    from minisgl.server.endpoints import Endpoints
    from minisgl.utils.zmq import PullQueue, PushQueue

    ep = Endpoints(directory, num_tokenizer=1)
    inbox = PullQueue(ep.tokenizer(0), bind=True)
    out = PushQueue(ep.frontend, bind=False)
    live: dict[int, list] = {}  # uid -> [prompt ids, max_tokens, produced]
    arrivals: list[tuple[float, float]] = []  # (received here, frontend arrival_time)
    done = chunks_sent = 0
    next_step = time.perf_counter()
    while done < total:
        for msg in inbox.drain(timeout=0.0 if live else 0.05):
            if isinstance(msg, TokenizeMsg):
                arrivals.append((time.time(), msg.arrival_time))
                live[msg.uid] = [msg.prompt, msg.params.max_tokens, 0]
        if not live:
            continue
        now = time.perf_counter()
        if now < next_step:
            time.sleep(next_step - now)
        next_step = max(next_step + step_s, time.perf_counter() - step_s)
        batch = []
        for uid, st in list(live.items()):
            prompt, limit, k = st
            st[2] = k = k + 1
            fin = k >= limit
            batch.append(ReplyChunk(
                uid=uid, index=0, text=WORDS[(uid + k) % len(WORDS)], token_ids=[(uid * 7 + k) % 900],
                prompt_token_ids=list(prompt) if k == 1 else None, finished=fin,
                finish_reason="length" if fin else None, num_prompt_tokens=len(prompt),
                num_output_tokens=k, queue_time_s=0.01 if k == 1 else None))
            if fin:
                del live[uid]
                done += 1
        chunks_sent += len(batch)
        out.put(BatchReplyMsg(batch))
    report.put({"arrivals": arrivals, "chunks": chunks_sent, "cpu_s": time.process_time()})
    time.sleep(0.5)


async def _client(port: int, reqs, start_at: float) -> list[tuple[float, float, float, int]]:
    """Raw HTTP/1.1 streams (cheap, so the client processes leave the cores to the server)."""
    while time.time() < start_at:
        await asyncio.sleep(0.001)

    async def one(prompt, max_tokens):
        body = json.dumps(request_body(prompt, max_tokens)).encode()
        t0 = time.time()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body))
        first, events, tail, done = None, 0, b"", False
        while True:
            data = await r.read(65536)
            if not data:
                break
            if os.environ.get("HTTP_PATH_DUMP"):
                print(data[:400], file=sys.stderr)
            if first is None and b'"text":"' in data:
                first = time.time()
            events += data.count(b"data: ")
            done = done or b"[DONE]" in tail + data
            tail = (tail + data)[-16:]
            if done and tail.endswith(b"0\r\n\r\n"):
                break
        w.close()
        return t0, (first or time.time()) - t0, time.time() - t0, events

    return await asyncio.gather(*(one(p, o) for p, o in reqs))


def client_proc(port: int, reqs, start_at: float, report) -> None:
    import uvloop

    streams = uvloop.run(_client(port, reqs, start_at))
    report.put([*streams, time.process_time()])


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_api(reqs, step_ms: float, clients: int, profile: str | None = None) -> dict:
    import httpx

    ctx = multiprocessing.get_context("spawn")
    directory, port = tempfile.mkdtemp(prefix="minisgl-bench-"), free_port()
    report = ctx.Queue()
    server = ctx.Process(target=serve_api, args=(directory, port), daemon=True)
    backend = ctx.Process(target=fake_backend, args=(directory, step_ms / 1000, len(reqs), report),
                          daemon=True)
    server.start()
    backend.start()
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise RuntimeError("the API process did not start")
        time.sleep(0.1)
    start_at = time.time() + 1.5  # clients are up and waiting when the burst starts
    cl = [ctx.Process(target=client_proc, args=(port, reqs[i::clients], start_at, report),
                      daemon=True) for i in range(clients)]
    for c in cl:
        c.start()
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0, wall0 = proc_cpu_s(server.pid), time.time()
    spy = None
    if profile:  # py-spy (pip install py-spy) on the API process for the burst
        import subprocess
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--rate", "250",
                                "--format", "raw" if profile.endswith(".txt") else "flamegraph",
                                "-o", profile], stdout=subprocess.DEVNULL)
    parts = [report.get(timeout=600) for _ in range(clients + 1)]
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)
    wall, cpu = time.time() - wall0, proc_cpu_s(server.pid) - cpu0
    back = next(p for p in parts if isinstance(p, dict))
    streams = [r for p in parts if isinstance(p, list) for r in p[:-1]]
    client_cpu = sum(p[-1] for p in parts if isinstance(p, list))
    for p in (server, backend, *cl):
        p.terminate()
    tokens = sum(o for _, o in reqs)
    end = max(t0 + e2e for t0, _, e2e, _ in streams)
    parsed = sorted(a for _, a in back["arrivals"])
    return {
        "requests": len(reqs), "step_ms": step_ms, "chunks": back["chunks"],
        "api_cpu_us_per_chunk": round(cpu / back["chunks"] * 1e6, 1),
        "api_cpu_us_per_sse_event": round(cpu / max(1, sum(e for *_, e in streams)) * 1e6, 1),
        "api_cpu_utilisation": round(cpu / wall, 2),
        "backend_cpu_s": round(back["cpu_s"], 2), "client_cpu_s": round(client_cpu, 2),
        "wall_s": round(wall, 2),
        "client_tokens_per_s": round(tokens / (end - start_at), 0),
        "backend_tokens_per_s_cap": round(len(reqs) * 1000 / step_ms, 0) if step_ms else None,
        "sse_events": sum(e for *_, e in streams),
        "ttft_ms": pcts([t for _, t, _, _ in streams]),
        "intake_parsed_ms": pcts([a - start_at for a in parsed]),
        "e2e_ms": pcts([e for _, _, e, _ in streams]),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stages", default="codec,detok,intake,api")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, nargs=2, default=(100, 1024))
    ap.add_argument("--output-len", type=int, nargs=2, default=(64, 192))
    ap.add_argument("--steps", type=int, default=30, help="steps for the detok/codec stages")
    ap.add_argument("--step-ms", type=float, default=40.0,
                    help="fake scheduler step; at the default the API keeps up (an SSE event per "
                         "chunk), so api_cpu_us_per_chunk is the true per-chunk cost. 12 ms x 256 "
                         "streams = 21k tok/s (saturation: chunks coalesce when it falls behind)")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--profile", help="py-spy the API process into this file (.txt: collapsed stacks)")
    args = ap.parse_args(argv)
    stages = set(args.stages.split(","))
    reqs = workload(args.requests, tuple(args.input_len), tuple(args.output_len), vocab=900)
    result: dict = {"bench": "http_path", "cpus": os.cpu_count()}
    chunks = None
    if "detok" in stages or "codec" in stages:
        result["detok"], chunks = bench_detok(reqs, args.steps)
    if "codec" in stages:
        result["codec"] = bench_codec(step_outputs(reqs, args.steps, 900), chunks)
    if "intake" in stages:
        result["intake"] = bench_intake(reqs)
    if "api" in stages:
        result["api"] = bench_api(reqs, args.step_ms, args.clients, args.profile)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
