"""Ablations: offline throughput with one feature changed at a time, one JSON with all rows.

Each variant runs benchmarks/offline.py in its own subprocess (so every row starts with
the whole GPU free) on the same seeded requests: the base options (--base-args) plus the
variant's flags, which override them. Variants: base (as given: fa3,fi, CUDA graphs,
overlap on), no-overlap, no-graphs (cuda_graph_max_bs 0), fa3, fi. A variant that fails
or times out becomes a row with its error; the others still run. --base-result takes the
base row from an offline.py JSON of this run instead (same requests, checked).

  python benchmarks/ablations.py --base-args "--model qwen3-0.6b --device cuda \\
      --dtype bfloat16 --attention-backend fa3,fi --memory-ratio 0.85" --device cuda
  python benchmarks/ablations.py --base-args "--model demo --device cpu" --device cpu \\
      --variants base,no-graphs --num-requests 4 --input-len 8 16 --output-len 4 8 --no-record
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, emit  # noqa: E402

OFFLINE = Path(__file__).resolve().parent / "offline.py"
VARIANTS = {
    "base": [],
    "no-overlap": ["--disable-overlap"],
    "no-graphs": ["--cuda-graph-max-bs", "0"],
    "fa3": ["--attention-backend", "fa3"],
    "fi": ["--attention-backend", "fi"],
}


def run_variant(name: str, base: list[str], workload: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(OFFLINE), *base, *VARIANTS[name], *workload, "--no-record"]
    row = {"variant": name, "flags": VARIANTS[name],
           "command": "python " + shlex.join(["benchmarks/offline.py", *cmd[2:]])}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {timeout:.0f}s"}
    row["wall_s"] = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        return {**row, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**row, "output_tokens_per_s": res["output_tokens_per_s"], "elapsed_s": res["elapsed_s"],
            "ms_per_output_token": res["ms_per_output_token"], "engine": res.get("engine"),
            "model": res.get("model")}


def base_from(path: str, workload: dict) -> dict:
    res = json.loads(Path(path).read_text())
    got = {k: res.get("workload", {}).get(k) for k in workload if k != "ignore_eos"}
    if got != {k: v for k, v in workload.items() if k != "ignore_eos"}:
        raise SystemExit(f"{path} measured other requests: {got}")
    return {"variant": "base", "flags": [], "from": path, "command": res.get("command"),
            "output_tokens_per_s": res["output_tokens_per_s"], "elapsed_s": res["elapsed_s"],
            "ms_per_output_token": res["ms_per_output_token"], "engine": res.get("engine"),
            "model": res.get("model")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-args", required=True, help="offline.py options every variant shares")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="names the device in the record")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--input-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--output-len", type=int, nargs=2, default=[100, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-result", metavar="JSON", help="the base row from this offline.py result")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per variant")
    ap.add_argument("--out-dir", default=None, help="where the result JSON goes (default benchmarks/results)")
    ap.add_argument("--no-record", action="store_true", help="print the result, write no JSON")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    base = shlex.split(args.base_args)
    workload = ["--num-requests", str(args.num_requests), "--input-len", *map(str, args.input_len),
                "--output-len", *map(str, args.output_len), "--seed", str(args.seed)]
    spec = {"requests": args.num_requests, "input_len": args.input_len,
            "output_len": args.output_len, "seed": args.seed, "ignore_eos": True}
    rows = []
    for name in names:
        rows.append(base_from(args.base_result, spec) if name == "base" and args.base_result
                    else run_variant(name, base, workload, args.timeout))
        print(f"ablation {name}: {rows[-1].get('output_tokens_per_s', rows[-1].get('error'))}", flush=True)
    ref = next((r for r in rows if r["variant"] == "base" and "output_tokens_per_s" in r), None)
    for r in rows:
        if ref and "output_tokens_per_s" in r:
            r["vs_base"] = round(r["output_tokens_per_s"] / ref["output_tokens_per_s"], 3)
    result = {
        "benchmark": f"ablations-offline-{args.num_requests}",
        "model": next((r["model"] for r in rows if r.get("model")), ""),
        "device": device_name(args.device), "tp": 1,
        "workload": spec, "base_args": args.base_args, "rows": rows,
    }
    emit(result, result["benchmark"], args)
    return result


if __name__ == "__main__":
    main()
