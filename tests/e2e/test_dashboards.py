"""Every dashboard query and every alert expression works against a real worker scraped by a real
Prometheus: a CPU `python -m minisgl --model-path demo`, Debian's prometheus at a 1 s scrape
interval, some traffic, then each panel query must return data through Prometheus' HTTP API."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import yaml

from tests.charts.helm import REPO, by_kind, find_helm, render, require_binary
from tests.charts.promql import DASHBOARDS, dashboard_queries, metric_names, substitute
from tests.helpers.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# The labels a Prometheus Operator ServiceMonitor gives a worker pod of MiniSGLDeployment "qwen3".
# As the operator's ServiceMonitor labels a target (and an annotation-based Prometheus, through
# its labelmap of pod labels): app_kubernetes_io_instance is the MiniSGLDeployment.
TARGET = {"namespace": "default", "service": "qwen3", "pod": "qwen3-0", "container": "worker", "endpoint": "http",
          "app_kubernetes_io_name": "minisgl-worker", "app_kubernetes_io_instance": "qwen3"}
JOB = "qwen3"
MODEL = "demo"
VARIABLES = {"datasource": "prometheus", "namespace": "default", "deployment": JOB, "model": MODEL, "pod": "qwen3-0"}


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout}s\n{tail}")


@dataclass
class Process:
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started
                self.proc.wait()


def start(cmd: list[str], url: str, log: Path, ready_path: str, timeout: float, env: dict | None = None) -> Process:
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out.close()
    p = Process(proc, url, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        return httpx.get(url + ready_path, timeout=1.0).status_code == 200

    try:
        wait_for(ready, timeout, f"{' '.join(cmd[:3])} ready", log)
    except BaseException:
        p.stop()
        raise
    return p


@pytest.fixture(scope="module")
def alert_rules() -> dict:
    helm = require_binary(find_helm(), "helm", "bash .ci/build_helm.sh")
    [rule] = by_kind(render(helm, {"prometheusRule.enabled": True}), "PrometheusRule")
    return rule["spec"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[Process]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "worker"), env.get("PYTHONPATH", "")) if p)
    env.pop("MINISGL_API_KEY", None)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    cmd = [sys.executable, "-m", "minisgl", "--model-path", MODEL, "--device", "cpu", "--port", str(port)]
    p = start(cmd, f"http://127.0.0.1:{port}", log, "/ready", 120, env)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def operator_metrics() -> Iterator[str]:
    """The operator's real /metrics (its StartupCollector over a Store as the watches fill it): one
    MiniSGLDeployment with one worker pod created just now and not ready yet."""
    from datetime import datetime, timezone

    from prometheus_client import start_http_server

    from minisgl_operator.metrics import StartupCollector
    from minisgl_operator.pod import common_labels
    from minisgl_operator.store import Store

    store = Store()
    store.upsert("MiniSGLDeployment", {"metadata": {"name": "qwen3", "namespace": "default"},
                                       "spec": {"image": "i", "model": {"path": "Qwen/Qwen3-0.6B"}}})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    store.upsert("Pod", {"metadata": {"name": "qwen3-0", "namespace": "default", "labels": common_labels("qwen3"),
                                      "creationTimestamp": now}, "status": {"phase": "Pending"}})
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(StartupCollector(store))
    port = free_port()
    server = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    if isinstance(server, tuple):  # prometheus-client >= 0.17 returns (server, thread)
        server[0].shutdown()
        server[0].server_close()


@pytest.fixture(scope="module")
def prometheus(worker: Process, alert_rules: dict, operator_metrics: str, tmp_path_factory) -> Iterator[Process]:
    binary = require_binary(shutil.which("prometheus"), "prometheus", "bash .ci/install_prometheus.sh")
    d = tmp_path_factory.mktemp("prometheus")
    (d / "rules.yaml").write_text(yaml.safe_dump(alert_rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(d / "rules.yaml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [worker.url.removeprefix("http://")], "labels": TARGET}]},
            {"job_name": "minisgl-operator", "static_configs": [
                {"targets": [operator_metrics], "labels": {"namespace": "minisgl-system", "pod": "operator-0"}}]}],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]
    p = start(cmd, f"http://127.0.0.1:{port}", d / "prometheus.log", "/-/ready", 60)
    yield p
    p.stop()


def query(prom: Process, expr: str) -> list[dict]:
    r = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error', body)}"
    return body["data"]["result"]


def scalar(prom: Process, expr: str) -> float:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def traffic(worker: Process, prometheus: Process) -> None:
    """Requests of every kind while Prometheus scrapes, so rates and quantiles have data."""
    wait_for(lambda: scalar(prometheus, f'up{{job="{JOB}"}}') == 1, 30, "first scrape of the worker")
    before = scalar(prometheus, f'sum(minisgl_requests_total{{job="{JOB}"}})')
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    with httpx.Client(base_url=worker.url, timeout=60) as c:
        for i in range(3):  # the same prompt again and again: prefix cache hits
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "ignore_eos": True})
            assert r.status_code == 200, r.text
            r = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 6, "stream": i == 0,
                                                      "messages": [{"role": "user", "content": f"hello {i}"}]})
            assert r.status_code == 200, r.text
    sent = 6
    wait_for(lambda: scalar(prometheus, f'sum(minisgl_requests_total{{job="{JOB}"}})') >= before + sent, 30,
             "the traffic in Prometheus", prometheus.log)
    # Two more scrapes after the last request, so every rate() window holds the traffic's increase.
    done = time.time()
    wait_for(lambda: scalar(prometheus, f'timestamp(up{{job="{JOB}"}})') > done + 1.5, 15, "two more scrapes")


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(dashboard: Path, prometheus: Process, traffic: None) -> None:
    empty = []
    for title, expr in dashboard_queries(dashboard):
        result = query(prometheus, substitute(expr, VARIABLES))
        if not has_data(result):
            empty.append(f"'{title}': {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.stem)
def test_every_template_variable_lists_the_target(dashboard: Path, prometheus: Process, traffic: None) -> None:
    for var in json.loads(dashboard.read_text())["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        selector = substitute(m.group(1), VARIABLES)
        r = httpx.get(f"{prometheus.url}/api/v1/label/{m.group(2)}/values", params={"match[]": selector}, timeout=10)
        assert VARIABLES[var["name"]] in r.json()["data"], (var["name"], r.json())


def test_every_alert_expression_parses_and_names_live_series(alert_rules: dict, prometheus: Process,
                                                             traffic: None) -> None:
    rules = [r for g in alert_rules["groups"] for r in g["rules"]]
    assert len(rules) == 6
    for rule in rules:
        query(prometheus, rule["expr"])  # evaluates without error
        for name in metric_names(rule["expr"]):
            assert query(prometheus, f"count({name})"), f"{rule['alert']}: no series {name}"
    # Prometheus loaded the same rules from the file and evaluates them without errors.
    wait_for(lambda: all(r.get("health") == "ok" for g in httpx.get(f"{prometheus.url}/api/v1/rules").json()
                         ["data"]["groups"] for r in g["rules"]), 10, "every rule evaluated with health ok")


def test_not_ready_pods_are_joined_with_their_resources_startup_budget(prometheus: Process, traffic: None) -> None:
    """MiniSGLPodNotReady compares the operator's two series per resource; the scrape's own
    namespace/pod labels (the operator's) do not collide with the resource's."""
    result = query(prometheus, "minisgl_operator_worker_not_ready_seconds - on (resource_namespace, resource_name) "
                               "group_left () minisgl_operator_startup_budget_seconds")
    assert [(r["metric"]["resource_name"], r["metric"]["worker_pod"]) for r in result] == [("qwen3", "qwen3-0")]
    assert float(result[0]["value"][1]) < 0  # created just now: well inside its 1800 s budget


def test_a_healthy_worker_fires_no_alert(prometheus: Process, traffic: None) -> None:
    alerts = httpx.get(f"{prometheus.url}/api/v1/alerts").json()["data"]["alerts"]
    assert alerts == [], alerts
