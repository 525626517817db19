"""The worker pod's root filesystem is read-only: every path the worker writes must be on a mounted
volume. Checked without a GPU in two ways: statically (every cache/home/temp variable the template
sets points into a writable mount, for each kind of pod the operator makes), and by running a real
CPU worker with the template's environment, mount paths mapped to temp dirs, under a Python audit
hook (in every process it spawns) that records each file opened for writing and each directory made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from minisgl_operator.builders import Owner, build_job
from minisgl_operator.pod import build_pod_template
from minisgl_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
PATH_VARS = ("HF_HOME", "FLASHINFER_WORKSPACE_BASE", "XDG_CACHE_HOME", "TRITON_CACHE_DIR",
             "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH", "HOME")
SPECS = {
    "no-cache": {},
    "pvc": {"model": {"path": "Qwen/Qwen3-8B", "cache": {"pvcName": "models"}}},
    "read-only-pvc": {"model": {"path": "Qwen/Qwen3-8B", "cache": {"pvcName": "models", "readOnly": True}}},
    "multi-node": {"engine": {"tensorParallelSize": 16}},
}


def spec(extra: dict):
    return parse_spec({"image": "i", "model": {"path": "Qwen/Qwen3-8B"}, **extra})


def pod_specs():
    for label, extra in SPECS.items():
        s = spec(extra)
        roles = ("server", "node") if s.multi_node else ("server",)
        for role in roles:
            yield f"{label}/{role}", build_pod_template("q", s, role=role)["spec"]
    yield "download-job", build_job(Owner("q", "ns", "u"), spec(SPECS["pvc"]))["spec"]["template"]["spec"]


def writable_mounts(container: dict, pod: dict) -> list[str]:
    read_only_volumes = {v["name"] for v in pod["volumes"]
                         if (v.get("persistentVolumeClaim") or {}).get("readOnly") or "secret" in v}
    return [m["mountPath"] for m in container["volumeMounts"]
            if not m.get("readOnly") and m["name"] not in read_only_volumes]


def under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@pytest.mark.parametrize("label, pod", list(pod_specs()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_path_variable_points_into_a_writable_mount(label, pod):
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = writable_mounts(container, pod)
    assert "/tmp" in mounts  # tempfile, ipc sockets, anything without its own variable
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    read_only_cache = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "model-cache" and m.get("readOnly")]
    for var in PATH_VARS:
        assert var in env, f"{label}: {var} unset: it would default under the read-only image"
        if var == "HF_HOME" and under(env[var], read_only_cache):
            continue  # weights only read from a cache someone else filled (offline); JIT goes to scratch
        assert under(env[var], mounts), f"{label}: {var}={env[var]} is on no writable mount {mounts}"


HOOK = textwrap.dedent("""
    import os, sys
    _log = os.environ["MINISGL_WRITE_LOG"]
    def _hook(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "", args[2] or 0
            if not any(c in mode for c in "wax+") and not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                return
            path = args[0]
        elif event in ("os.mkdir", "os.rename", "os.symlink", "shutil.copyfile") and args:
            path = args[0] if event != "os.rename" else args[1]
        else:
            return
        try:
            path = os.fsdecode(path)
            if path.startswith("/"):
                with open(_log, "a") as f:  # the hook's own open is audited too: the log is excluded below
                    f.write(path + "\\n")
        except Exception:
            pass
    sys.addaudithook(_hook)
""")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_real_cpu_worker_writes_only_under_the_templates_mounts(tmp_path):
    from tests.helpers.tiny_model import build_tiny_model
    from tests.e2e.kube import free_port

    model = build_tiny_model(tmp_path / "model", "llama")
    template = build_pod_template("q", spec({}))["spec"]
    container = template["containers"][0]
    mounts = writable_mounts(container, template)
    mapped = {m: tmp_path / "mounts" / m.strip("/").replace("/", "_") for m in mounts}
    for d in mapped.values():
        d.mkdir(parents=True)

    def remap(value: str) -> str:
        for mount, local in mapped.items():
            if under(value, [mount]):
                return str(local) + value[len(mount):]
        return value

    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "writes.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_", "TRITON", "TORCHINDUCTOR"))}
    env.update({e["name"]: remap(e["value"]) for e in container["env"] if "value" in e})
    env.pop("MINISGL_MODEL_REVISION", None)  # a local directory, not a Hub repo
    env.update(TMPDIR=str(mapped["/tmp"]), MINISGL_WRITE_LOG=str(log), PYTHONPATH=os.pathsep.join(
        [str(hook_dir), str(REPO / "worker"), env.get("PYTHONPATH", "")]))
    port = free_port()
    out = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "minisgl", "--model-path", str(model), "--device", "cpu",
                             "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "worker not ready"
            time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"model": str(model), "prompt": "hello", "max_tokens": 4})
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        out.close()
    allowed = [str(d) for d in mapped.values()] + [str(tmp_path / "worker.log"), "/dev/shm", "/dev/null"]
    written = sorted({p for p in log.read_text().splitlines() if p != str(log)})
    assert written, "the audit hook saw no write at all: it is not installed"
    stray = [p for p in written if not under(p, allowed)]
    assert not stray, f"writes outside the pod's mounts (read-only root in the pod): {json.dumps(stray, indent=1)}"
