"""The LeaderWorkerSet controller (sigs.k8s.io/lws, built by .ci/build_lws.sh) against the e2e
control plane: its CRD from the same Go module, its webhooks served on 127.0.0.1 with a
certificate of the test CA (the apiserver calls them by URL), no leader election, no cert rotation."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.kube import REPO, Cluster, free_port, required, wait_for

VERSION = os.environ.get("MINISGL_LWS_VERSION", "v0.7.0")
MODULE = "sigs.k8s.io/lws"


def module_dir(module: str, version: str) -> Path:
    """The Go module's source (go mod download: the module proxy, cached in GOMODCACHE)."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed: the CRDs come from Go modules")
    out = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        if required():
            raise RuntimeError(f"go mod download {module}@{version}: {out.stdout}{out.stderr}")
        pytest.skip(f"go mod download {module}@{version} failed: {out.stderr[-500:]}")
    return Path(json.loads(out.stdout)["Dir"])


def crd_path() -> Path:
    return module_dir(MODULE, VERSION) / "config" / "crd" / "bases" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"


def manager_binary() -> Path:
    cached = Path.home() / ".cache" / "minisgl" / "lws" / VERSION / "bin" / "lws-manager"
    if cached.exists():
        return cached
    if not required():
        pytest.skip(f"{cached} missing: run .ci/build_lws.sh (or set MINISGL_REQUIRE_E2E=1)")
    out = subprocess.run(["bash", str(REPO / ".ci" / "build_lws.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _webhooks(port: int, ca: bytes) -> str:
    """config/webhook/manifests.yaml with URLs instead of the in-cluster Service, pods selected
    by the LWS name label (as the module's kustomize patches do)."""
    docs = list(yaml.safe_load_all((module_dir(MODULE, VERSION) / "config/webhook/manifests.yaml").read_text()))
    for doc in docs:
        if not doc:
            continue
        doc["metadata"]["name"] = f"lws-{doc['metadata']['name']}"
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()}
            if any("pods" in r["resources"] for r in hook["rules"]):
                hook["objectSelector"] = {"matchExpressions": [
                    {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
    return yaml.safe_dump_all([d for d in docs if d])


class LwsController:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.dir = cluster.dir / "lws"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LwsController":
        binary = manager_binary()
        self.dir.mkdir(exist_ok=True)
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        # The apiserver's serving certificate names 127.0.0.1 and chains to the test CA.
        shutil.copy(self.cluster.dir / "apiserver.crt", certs / "tls.crt")
        shutil.copy(self.cluster.dir / "apiserver.key", certs / "tls.key")
        port, health = free_port(), free_port()
        config = {"apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
                  "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
                  "webhook": {"port": port, "host": "127.0.0.1", "certDir": str(certs)},
                  "metrics": {"bindAddress": "0"}, "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"}}
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config))
        log = open(self.dir / "lws.log", "wb")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "NAMESPACE": "default"}
        self.proc = subprocess.Popen([str(binary), f"--config={self.dir / 'config.yaml'}"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lws-manager exited {self.proc.returncode}: {self.log()[-3000:]}")
            return httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=1).status_code == 200

        wait_for(healthy, 60, "lws-manager /readyz")
        self.cluster.kubectl("apply", "-f", "-", stdin=_webhooks(port, (self.cluster.dir / "ca.crt").read_bytes()))
        return self

    def log(self) -> str:
        path = self.dir / "lws.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
