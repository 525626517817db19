"""One line per result JSON in a folder (what gpu_suite.sh prints at the end).

  python benchmarks/summarize.py /tmp/out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def line(r: dict) -> str:
    name, a, q = r.get("benchmark", "?"), r.get("anchors") or {}, r.get("ratios") or {}
    head = f"{name:<22} {r.get('model', ''):<24}"
    if name.startswith("ablations"):
        rows = ", ".join(f"{x['variant']} {x.get('output_tokens_per_s', 'ERR')}"
                         + (f" ({x['vs_base']}x)" if "vs_base" in x else "") for x in r["rows"])
        return f"{head} tok/s: {rows}"
    if name == "profile":
        ph = r.get("phases", {})
        got = [f"{k}: " + ", ".join(f"{m} {ph[k][m]}" for m in
                                   ("ms_per_token", "ms_per_step", "graph_replay_us", "tokens_per_s")
                                   if m in ph[k]) for k in ph]
        return f"{head} " + ("; ".join(got) or "microbenchmarks only")
    parts = [f"{r.get('output_tokens_per_s')} tok/s"]
    if name == "latency-b1":
        parts = [f"{r['ms_per_output_token']} ms/token", f"floor {a.get('floor_ms_per_token')} ms",
                 f"{q.get('ms_over_floor')}x floor", f"read {a.get('read_bandwidth_gbs')} GB/s"]
    if "prefix_cache" in r:
        parts.append(f"cache hits {r['prefix_cache']['vs_ideal']} of ideal")
    if "itl_ms" in r and name != "latency-b1":
        parts.append(f"TTFT p50/p99 {r['ttft_ms']['p50']}/{r['ttft_ms']['p99']} ms, "
                     f"ITL p50/p99 {r['itl_ms']['p50']}/{r['itl_ms']['p99']} ms")
    if "cold_start" in r:
        c = r["cold_start"]
        parts.append(f"cold TTFT p50 {c['ttft_p50_ms_cold']} ms vs warm {c['ttft_p50_ms_warm']} ms")
    if "hf_transformers_tokens_per_s" in a:
        parts.append(f"HF {a['hf_transformers_tokens_per_s']} tok/s")
    parts += [f"{k} {v}" for k, v in q.items() if k not in ("ms_over_floor",)]
    failed = sum(x.get("failed", 0) for x in r.get("runs", []) if isinstance(x, dict))
    if failed:
        parts.append(f"{failed} FAILED requests")
    return head + " " + "; ".join(parts)


def main(folder: str) -> None:
    for path in sorted(Path(folder).glob("*.json")):
        try:
            print(line(json.loads(path.read_text())))
        except (KeyError, TypeError, ValueError) as e:
            print(f"{path.name}: unreadable ({e!r})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
