"""benchmarks/offline.py runs end to end on the CPU and records a well-formed result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "offline.py"), "--model", "demo", "--device", "cpu",
         "--num-requests", "4", "--input-len", "8", "16", "--output-len", "4", "8", "--no-record"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("minisgl:"))
    tokens = int(line.split()[1])
    assert 16 <= tokens <= 32  # 4 requests x 4..8 output tokens, all generated (ignore_eos)
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # --no-record prints the JSON
    assert result["output_tokens"] == tokens and result["output_tokens_per_s"] > 0
