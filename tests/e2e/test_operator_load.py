"""Load: 200 MiniSGLDeployments across 10 namespaces and 2,000 worker pods (written by the test:
this control plane has no controller manager, so the operator is the API server's only client
besides the test). At steady state the operator must cost at most 3 API requests per resource
per minute, counted by the API server itself (apiserver_request_total, cross-checked with its
audit log of the operator's user), stay within its memory budget, and leave no duplicate
children after a restart. Numbers are written to $MINISGL_LOAD_REPORT (default: the test's dir)."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minisgl_operator.kube import Kube, object_path
from minisgl_operator.pod import common_labels
from tests.e2e.kube import (REPO, Cluster, OperatorProcess, bind_operator_rbac, find_binaries, install_crd,
                            wait_for)
from tests.e2e.resources import GROUP_VERSION

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
NAMESPACES, PER_NAMESPACE, PODS_PER_RESOURCE = 10, 20, 10
RESOURCES = NAMESPACES * PER_NAMESPACE
WINDOW_SECONDS = 90
RESYNC_SECONDS = 60  # a resync falls inside the window: it must cost nothing either
MAX_REQUESTS_PER_RESOURCE_MINUTE = 3.0
MAX_RSS_MIB = 400  # the chart's limit is 512Mi
OPERATOR_USER = "minisgl-operator"
# What the operator reads and writes; the API server's own loopback traffic (leases, ...) is not here.
OPERATOR_RESOURCES = {"minisgldeployments", "deployments", "services", "pods", "poddisruptionbudgets",
                      "horizontalpodautoscalers", "servicemonitors", "jobs", "events", "nodes"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(find_binaries(), tmp_path_factory.mktemp("kube"), audit_user=OPERATOR_USER).start()
    try:
        install_crd(c, REPO / "crds" / "minisgl.io_minisgldeployments.yaml")
        bind_operator_rbac(c)
        yield c
    finally:
        c.stop()


def request_counts(kube: Kube) -> dict[str, float]:
    """Non-watch requests by resource, from the API server's apiserver_request_total."""
    from prometheus_client.parser import text_string_to_metric_families

    text = kube.api_client.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False) \
        if not hasattr(kube.api_client, "param_serialize") else None
    if text is None:
        method, url, headers, body, post = kube.api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
        text = kube.api_client.call_api(method, url, headers, body, post).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "apiserver_request_total" and s.labels.get("verb") not in ("WATCH", "CONNECT") \
                    and s.labels.get("resource") in OPERATOR_RESOURCES:
                counts[s.labels["resource"]] = counts.get(s.labels["resource"], 0) + s.value
    return counts


def audited(cluster: Cluster, since: float, until: float) -> list[dict]:
    """The operator's non-watch requests in [since, until) from the audit log."""
    out = []
    for line in cluster.audit_log.read_text().splitlines():
        e = json.loads(line)
        if e.get("user", {}).get("username") != OPERATOR_USER or e.get("verb") == "watch":
            continue
        t = time.mktime(time.strptime(e["requestReceivedTimestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if since <= t < until:
            out.append(e)
    return out


def reconciles(op: OperatorProcess) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=2).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "minisgl_operator_reconciles_total")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _create(kube: Kube, ns: str, i: int) -> None:
    name = f"m{i}"
    kube.request("POST", object_path(GROUP_VERSION, "MiniSGLDeployment", ns), body={
        "apiVersion": GROUP_VERSION, "kind": "MiniSGLDeployment", "metadata": {"name": name},
        "spec": {"image": "ghcr.io/x/minisgl-worker:0.1.0", "model": {"path": "Qwen/Qwen3-8B"},
                 "replicas": PODS_PER_RESOURCE}})
    for p in range(PODS_PER_RESOURCE):  # what the ReplicaSet controller would create
        kube.request("POST", object_path("v1", "Pod", ns), body={
            "metadata": {"name": f"{name}-{p}", "labels": common_labels(name)},
            "spec": {"containers": [{"name": "worker", "image": "ghcr.io/x/minisgl-worker:0.1.0"}]}})


def counts_of(kube: Kube, api_version: str, kind: str) -> int:
    return sum(len(kube.list(object_path(api_version, kind, f"load{n}"))) for n in range(NAMESPACES))


def test_200_resources_cost_at_most_3_requests_per_minute_each_and_restart_makes_no_duplicates(cluster, tmp_path):
    kube = Kube(cluster.api_client())
    op = OperatorProcess(cluster.operator_kubeconfig, cluster.dir / "operator.log", resync_seconds=RESYNC_SECONDS)
    op.start()
    try:
        started = time.monotonic()
        for n in range(NAMESPACES):
            kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": f"load{n}"}})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _create(kube, f"load{i % NAMESPACES}", i), range(RESOURCES)))
        wait_for(lambda: counts_of(kube, "apps/v1", "Deployment") == RESOURCES, 240, "200 Deployments")

        def all_observed() -> bool:
            items = sum((kube.list(object_path(GROUP_VERSION, "MiniSGLDeployment", f"load{n}"))
                         for n in range(NAMESPACES)), [])
            return len(items) == RESOURCES and all((i.get("status") or {}).get("phase") for i in items)

        wait_for(all_observed, 240, "a status on every resource", interval=2)
        setup_seconds = time.monotonic() - started
        time.sleep(10)  # let the last events of the set-up drain out of the queue (measurement, not sync)

        t0, before = time.time(), request_counts(kube)
        assert before.get("pods", 0) >= RESOURCES * PODS_PER_RESOURCE, before  # the counter sees the set-up
        assert len(audited(cluster, 0, t0)) >= 3 * RESOURCES  # and the audit log the operator's set-up work
        time.sleep(WINDOW_SECONDS)
        t1, after = time.time(), request_counts(kube)
        by_resource = {r: after.get(r, 0) - before.get(r, 0) for r in after}
        total = sum(by_resource.values())  # the test itself made no resource request meanwhile
        rate = total / RESOURCES / (WINDOW_SECONDS / 60)
        time.sleep(2)  # the audit log is written in 1 s batches
        audit = audited(cluster, t0 + 1, t1 - 1)
        audit_rate = len(audit) / RESOURCES / ((t1 - t0 - 2) / 60)
        memory = rss_mib(op.proc.pid)

        # Restart under load: the operator must find its children again, not make new ones.
        op.stop()
        op.start()
        wait_for(lambda: reconciles(op) >= RESOURCES, 120, "every resource reconciled after the restart", interval=1)
        restart_counts = {kind: counts_of(kube, v, kind) for v, kind in
                          (("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"))}
        report = {
            "resources": RESOURCES, "pods": RESOURCES * PODS_PER_RESOURCE, "window_s": WINDOW_SECONDS,
            "resync_s": RESYNC_SECONDS, "setup_s": round(setup_seconds, 1),
            "requests_per_resource_minute": round(rate, 3),
            "requests_in_window_by_resource": {k: v for k, v in by_resource.items() if v},
            "audit_requests_per_resource_minute": round(audit_rate, 3),
            "audit_verbs": sorted({f"{e['verb']} {e.get('objectRef', {}).get('resource')}" for e in audit}),
            "operator_rss_mib": round(memory, 1),
            "children_after_restart": restart_counts,
        }
        out = Path(os.environ.get("MINISGL_LOAD_REPORT") or tmp_path / "load.json")
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        assert rate <= MAX_REQUESTS_PER_RESOURCE_MINUTE, report
        assert audit_rate <= MAX_REQUESTS_PER_RESOURCE_MINUTE, report
        assert memory <= MAX_RSS_MIB, report
        assert restart_counts == {"Deployment": RESOURCES, "Service": RESOURCES, "PodDisruptionBudget": RESOURCES}
    finally:
        op.stop()
