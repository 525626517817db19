"""--model-path: built-in name, local directory, or a Hugging Face repo id from the Hub cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from minisgl.models import resolve_model_path

RESOLVE = "from minisgl.models import resolve_model_path as r; import sys; print(r(sys.argv[1]))"


def test_builtin_and_local_directory(tiny_llama):
    assert (resolve_model_path("demo") / "config.json").is_file()
    assert str(resolve_model_path(tiny_llama)) == tiny_llama


def test_unknown_paths_fail_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="neither a directory"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither a directory"):
        resolve_model_path("not-a-repo-id")


def test_repo_id_resolves_from_the_hub_cache_without_network(tiny_llama, tmp_path):
    """A repo already in $HF_HOME (what the operator's PVC holds) is used offline."""
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama, snapshot)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0"}
    out = subprocess.run([sys.executable, "-c", RESOLVE, "acme/tiny"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == str(snapshot)


def test_uncached_repo_id_without_network_fails_clearly(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", RESOLVE, "acme/absent"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "fetching it from the Hugging Face Hub failed" in out.stderr
