"""Run a script under Triton's interpreter (CPU): TRITON_INTERPRET=1 must be set before triton
is imported, hence a subprocess. The script prints its results as JSON on its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_interpreted(script: str, timeout: float = 600):
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
