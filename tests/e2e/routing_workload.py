"""The shared-prefix workload of the routing comparison: seeded prompt groups with long shared
prefixes, sent as non-streaming /v1/completions; the hit ratio comes from the replicas' own
prefix-cache counters (routing_stack.RoutingStack.prefix_counters)."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.e2e.routing_stack import SERVED_NAME, RoutingStack


def shared_prefix_prompts(seed: int, groups: int, per_group: int, prefix_words: int,
                          question_words: int) -> list[str]:
    """`groups` long system prompts x `per_group` short questions, shuffled (seeded)."""
    from tests.helpers.tiny_model import _WORDS

    rng = random.Random(seed)
    words = [w for w in _WORDS if w.isascii() and w.isalnum()]
    prefixes = [f"[system {seed}-{g}] " + " ".join(rng.choice(words) for _ in range(prefix_words))
                for g in range(groups)]
    prompts = [f"{prefixes[g]}\nQ{i}: " + " ".join(rng.choice(words) for _ in range(question_words))
               for g in range(groups) for i in range(per_group)]
    rng.shuffle(prompts)
    return prompts


@dataclass
class RunResult:
    ok: int
    failed: list[str]
    output_tokens: int
    seconds: float
    hit_tokens: float
    query_tokens: float
    latencies: list[float]  # seconds, successful requests

    @property
    def hit_ratio(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"requests_ok": self.ok, "requests_failed": len(self.failed),
                "prefix_hit_ratio": round(self.hit_ratio, 4), "prompt_tokens": int(self.query_tokens),
                "cached_prompt_tokens": int(self.hit_tokens), "output_tokens": self.output_tokens,
                "seconds": round(self.seconds, 2), "output_tokens_per_s": round(self.tokens_per_s, 2),
                "latency_ms": {"p50": _percentile(self.latencies, 50), "p99": _percentile(self.latencies, 99)}}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 1)


def run_workload(stack: RoutingStack, url: str, prompts: list[str], max_tokens: int, concurrency: int,
                 during=None) -> RunResult:
    """Send every prompt as a non-streaming /v1/completions through `url`, `concurrency` at a
    time; `during(done)` runs in the sending thread after each completed request, while the
    others stay in flight (the test kills a replica from there)."""
    before = stack.prefix_counters()
    lock = threading.Lock()
    failed: list[str] = []
    counts = {"ok": 0, "tokens": 0, "done": 0}
    latencies: list[float] = []

    def one(prompt: str) -> None:
        start = time.perf_counter()
        try:
            r = httpx.post(f"{url}/v1/completions", timeout=300, json={
                "model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True})
            err = "" if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as e:
            r, err = None, f"{type(e).__name__}: {e}"
        with lock:
            counts["done"] += 1
            done = counts["done"]
            if err:
                failed.append(err)
            else:
                counts["ok"] += 1
                counts["tokens"] += r.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - start)
        if during is not None:
            during(done)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, prompts))
    seconds = time.perf_counter() - t0
    after = stack.prefix_counters()  # a replica killed mid-run drops out of both sums
    hit = sum(after[i][0] - before[i][0] for i in after if i in before)
    query = sum(after[i][1] - before[i][1] for i in after if i in before)
    return RunResult(counts["ok"], failed, counts["tokens"], seconds, hit, query, latencies)
