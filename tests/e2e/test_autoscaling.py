"""Autoscaling end to end: the HPA the operator makes resolves its custom metric through a real
prometheus-adapter (built from its Go module by .ci/build_prometheus_adapter.sh, configured with
the chart's rules) registered as custom.metrics.k8s.io on the e2e API server, reading a real
Prometheus that scrapes the pod's metrics; the HPA controller then scales the MiniSGLDeployment
through its scale subresource and the operator follows.

Skipped when the adapter is not built (fails instead under MINISGL_REQUIRE_ADAPTER=1)."""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from minisgl_operator.kube import Kube, object_path
from tests.charts.helm import by_kind, find_helm, render, require_binary
from tests.e2e.kube import Cluster, cluster, free_port, operator, wait_for  # noqa: F401 - fixtures
from tests.e2e.resources import TIMEOUT, create, get, kube, mark_ready, msgl, ns, pods  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ADAPTER_VERSION = "v0.12.0"
METRIC = "minisgl_num_waiting_requests"
WAITING = 6  # per pod; target 2 -> 3 replicas
ADAPTER_NS = "custom-metrics"


def adapter_binary() -> str:
    found = os.environ.get("MINISGL_PROMETHEUS_ADAPTER") or str(
        Path.home() / ".cache/minisgl/prometheus-adapter" / ADAPTER_VERSION / "bin/adapter")
    if Path(found).is_file():
        return found
    reason = f"prometheus-adapter not found at {found}; build it with bash .ci/build_prometheus_adapter.sh"
    if os.environ.get("MINISGL_REQUIRE_ADAPTER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def host_ip() -> str:
    """A non-loopback address of this machine: the API server rejects loopback Endpoints."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("no non-loopback IPv4 address for the adapter's Endpoints")
    return ip


class Metrics(http.server.BaseHTTPRequestHandler):
    """A worker's /metrics as far as the HPA cares (the name is the worker's; see the dashboards test)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = (f"# TYPE {METRIC} gauge\n{METRIC}{{model=\"demo\"}} {WAITING}\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alive(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def metrics_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def register_adapter(kube: Kube, ip: str, port: int) -> None:
    """A selector-less Service whose endpoints are the adapter on this host, and the APIServices."""
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ADAPTER_NS}})
    kube.request("POST", object_path("v1", "Service", ADAPTER_NS), body={
        "metadata": {"name": "prometheus-adapter"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}})
    kube.request("POST", f"/api/v1/namespaces/{ADAPTER_NS}/endpoints", body={
        "metadata": {"name": "prometheus-adapter"},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port}]}]})
    kube.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{ADAPTER_NS}/endpointslices", body={
        "metadata": {"name": "prometheus-adapter-1", "labels": {"kubernetes.io/service-name": "prometheus-adapter"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
    for version, priority in (("v1beta1", 100), ("v1beta2", 200)):
        kube.request("POST", "/apis/apiregistration.k8s.io/v1/apiservices", body={
            "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
            "spec": {"group": "custom.metrics.k8s.io", "version": version, "insecureSkipTLSVerify": True,
                     "groupPriorityMinimum": 100, "versionPriority": priority,
                     "service": {"namespace": ADAPTER_NS, "name": "prometheus-adapter", "port": 443}}})


def available(kube: Kube, version: str) -> bool:
    svc = kube.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.custom.metrics.k8s.io") or {}
    return any(c["type"] == "Available" and c["status"] == "True" for c in svc.get("status", {}).get("conditions", []))


def test_hpa_custom_metric_resolves_through_prometheus_adapter_and_scales(kube, ns, operator, cluster: Cluster,
                                                                          metrics_port, tmp_path: Path):
    adapter = adapter_binary()
    prometheus = require_binary(shutil.which("prometheus"), "prometheus", "bash .ci/install_prometheus.sh")
    helm = require_binary(find_helm(), "helm", "bash .ci/build_helm.sh")
    ip = host_ip()
    [rules] = [c for c in by_kind(render(helm, {"autoscaling.prometheusAdapter.enabled": True}), "ConfigMap")
               if "config.yaml" in c.get("data", {})]
    (tmp_path / "adapter.yaml").write_text(rules["data"]["config.yaml"])

    create(kube, ns, "auto", replicas=1,
           autoscaling={"minReplicas": 1, "maxReplicas": 3, "metric": "waiting-requests", "target": 2})
    [pod] = wait_for(lambda: len(pods(kube, ns)) == 1 and pods(kube, ns), TIMEOUT, "the first worker pod")
    mark_ready(kube, pod)

    # Prometheus scrapes the pod's metrics, labelled as the operator's ServiceMonitor labels a target.
    labels = {"namespace": ns, "pod": pod["metadata"]["name"], "container": "worker",
              "app_kubernetes_io_name": "minisgl-worker", "app_kubernetes_io_instance": "auto"}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "auto", "static_configs": [
            {"targets": [f"127.0.0.1:{metrics_port}"], "labels": labels}]}]}))
    prom_port, adapter_port = free_port(), free_port()
    prom_log, adapter_log = tmp_path / "prometheus.log", tmp_path / "adapter.log"
    prom = spawn([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}"], prom_log)
    procs = [prom]
    try:
        prom_url = f"http://127.0.0.1:{prom_port}"

        def scraped() -> bool:
            alive(prom, prom_log)
            try:
                r = httpx.get(f"{prom_url}/api/v1/query", params={"query": METRIC}, timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and bool(r.json()["data"]["result"])

        wait_for(scraped, TIMEOUT, "Prometheus has the pod's series")
        proc = spawn([adapter, f"--secure-port={adapter_port}", f"--cert-dir={tmp_path / 'certs'}",
                      f"--lister-kubeconfig={cluster.kubeconfig}", f"--authentication-kubeconfig={cluster.kubeconfig}",
                      f"--authorization-kubeconfig={cluster.kubeconfig}", f"--prometheus-url={prom_url}",
                      f"--config={tmp_path / 'adapter.yaml'}", "--metrics-relist-interval=2s", "--v=2"], adapter_log)
        procs.append(proc)

        def healthy() -> bool:
            alive(proc, adapter_log)
            try:
                return httpx.get(f"https://127.0.0.1:{adapter_port}/healthz", verify=False, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, TIMEOUT, "prometheus-adapter /healthz")
        register_adapter(kube, ip, adapter_port)
        wait_for(lambda: available(kube, "v1beta2") and available(kube, "v1beta1"), TIMEOUT,
                 "custom.metrics.k8s.io APIServices Available")

        # The API the HPA controller reads: this pod's value, by the name the operator's HPA asks for.
        path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{METRIC}"

        def values() -> dict:
            alive(proc, adapter_log)
            return {i["describedObject"]["name"]: i["value"] for i in (kube.get(path) or {}).get("items", [])}

        assert wait_for(values, TIMEOUT, f"{METRIC} through the aggregated API") == {pod["metadata"]["name"]: str(WAITING)}

        # 6 waiting on 1 pod, target 2 per pod: the HPA controller scales the resource to 3.
        # (Until the metric resolves, the controller records an empty `{type: ""}` entry.)
        hpa = wait_for(lambda: (h := get(kube, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "auto"))
                       and any("pods" in m for m in h.get("status", {}).get("currentMetrics") or ()) and h,
                       TIMEOUT, "the HPA reads its metric")
        [current] = hpa["status"]["currentMetrics"]
        assert current["pods"]["metric"]["name"] == METRIC and current["pods"]["current"]["averageValue"] == str(WAITING)
        active = next(c for c in hpa["status"]["conditions"] if c["type"] == "ScalingActive")
        assert (active["status"], active["reason"]) == ("True", "ValidMetricFound"), active
        wait_for(lambda: msgl(kube, ns, "auto")["spec"]["replicas"] == 3, TIMEOUT, "HPA scales the resource to 3")
        wait_for(lambda: get(kube, "apps/v1", "Deployment", ns, "auto")["spec"]["replicas"] == 3, TIMEOUT,
                 "the operator scales the Deployment to 3")
    finally:
        for version in ("v1beta1", "v1beta2"):  # an unavailable aggregated API would fail discovery
            path = f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.custom.metrics.k8s.io"
            if kube.get(path) is not None:
                kube.request("DELETE", path)
        for p in reversed(procs):
            stop(p)
