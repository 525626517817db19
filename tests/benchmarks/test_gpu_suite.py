"""benchmarks/gpu_suite.sh's control flow, with a stub interpreter (no GPU, no benchmarks run):
steps in priority order, reuse of the offline-0.6b result, at most 8 files in $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.sh"

STUB = """#!/usr/bin/env bash
# Record the call; write a fake offline.py result so later steps can reuse it.
echo "$*" >>"$CALLS"
case "$1" in
  benchmarks/summarize.py) exec "$REAL_PY" "$@" ;;
  -m) exit 0 ;;
esac
out=$(echo "$*" | sed -n 's/.*--out-dir \\([^ ]*\\).*/\\1/p')
if [ "$1" = benchmarks/offline.py ] && [[ "$*" == *qwen3-0.6b* ]]; then
  echo '{"benchmark": "offline-256", "model": "qwen3-0.6b (dummy)", "output_tokens_per_s": 1.0}' \\
    >"$out/offline-256-qwen3-0.6b-stub.json"
fi
[[ "$*" == *shared_prefix.py* ]] && exit 3   # one failing step must not stop the others
exit 0
"""


def run_suite(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """Run the suite with the stub interpreter: (process, the interpreter calls, $OUT)."""
    stub = tmp_path / "py"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out, calls = tmp_path / "out", tmp_path / "calls"
    env = dict(os.environ, OUT=str(out), PYTHON=str(stub), CALLS=str(calls), REAL_PY=sys.executable)
    proc = subprocess.run(["bash", str(SUITE), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in calls.read_text().splitlines()
             if not l.startswith(("-m pip", "benchmarks/make_tokenizer.py", "-c "))]  # installs,
    # the tokenizer, the pytest-xdist probe
    return proc, lines, out


def test_without_tests_the_jit_modules_are_built_first_under_their_own_timeout(tmp_path):
    proc, lines, _ = run_suite(tmp_path, "--no-tests")
    assert not any(l.startswith("-m pytest") for l in lines)
    assert lines[0].startswith("benchmarks/latency.py") and "--no-record" in lines[0]
    assert "jit-warm-up" in proc.stdout and "timeout 330s" in (tmp_path / "out" / "suite.log").read_text()
    assert [l.split()[0] for l in lines[1:3]] == ["benchmarks/latency.py", "benchmarks/latency.py"]


def test_suite_runs_every_step_in_order(tmp_path):
    proc, lines, out = run_suite(tmp_path)
    scripts = [l.split()[0] if not l.startswith("-m") else " ".join(l.split()[:2]) for l in lines]
    assert lines[0].endswith("-n 4")  # the probe for pytest-xdist succeeds with the stub
    assert scripts == ["-m pytest", "benchmarks/latency.py", "benchmarks/latency.py",
                       "benchmarks/offline.py", "benchmarks/offline.py", "benchmarks/serving.py",
                       "benchmarks/shared_prefix.py", "benchmarks/ablations.py",
                       "benchmarks/summarize.py"]
    serving = next(l for l in lines if l.startswith("benchmarks/serving.py"))
    assert "--cold-start" in serving and "--offline-result" in serving and "--tokenizer-path" in serving
    assert "--base-result" in next(l for l in lines if l.startswith("benchmarks/ablations.py"))
    assert all("--dummy-weight" in l or "configs" in l or "qwen3-0.6b" in l or "llama" in l
               for l in lines if l.startswith("benchmarks/") and "summarize" not in l)
    assert "shared-prefix" in proc.stdout and "rc=3" in proc.stdout
    assert "offline-256" in proc.stdout  # the summary read the JSON
    assert len(list(out.iterdir())) <= 8  # what the device returns from $OUT
    json.loads((out / "offline-256-qwen3-0.6b-stub.json").read_text())
