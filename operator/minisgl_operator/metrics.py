"""The operator's own Prometheus metrics (scraped through the chart's optional ServiceMonitor)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from minisgl_operator.pod import startup_budget
from minisgl_operator.spec import parse_spec
from minisgl_operator.store import Store

# Label names of the per-resource series: not `namespace`/`pod`, which the scrape of the operator's
# own pod sets (and a Prometheus would rename ours to exported_*).
RESOURCE_LABELS = ["resource_namespace", "resource_name"]


def _seconds_since(stamp: str, now: float) -> float | None:
    try:
        then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, now - then)


def not_ready_since(pod: dict) -> str | None:
    """When a worker pod last stopped being Ready (or was created), or None while it is Ready."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    ready = next((c for c in (pod.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") == "True":
        return None
    return (ready or {}).get("lastTransitionTime") or pod["metadata"].get("creationTimestamp")


class StartupCollector:
    """At scrape time, from the cache (no API call): each resource's startup budget (model size
    based) and how long each of its worker pods has not been ready. MiniSGLPodNotReady compares
    the two, so a 30-minute load of a big model is not an alert and a stuck small one is."""

    def __init__(self, store: Store, default_image: str | None = None, clock=time.time) -> None:
        self.store = store
        self.default_image = default_image
        self.clock = clock

    def collect(self):
        budget = GaugeMetricFamily("minisgl_operator_startup_budget_seconds",
                                   "Seconds a worker of this MiniSGLDeployment may take to start (model size based)",
                                   labels=RESOURCE_LABELS)
        waiting = GaugeMetricFamily("minisgl_operator_worker_not_ready_seconds",
                                    "Seconds since a worker pod was created or last became not ready",
                                    labels=[*RESOURCE_LABELS, "worker_pod"])
        now = self.clock()
        for namespace, name in self.store.keys("MiniSGLDeployment"):
            body = self.store.get("MiniSGLDeployment", namespace, name)
            if body is None:
                continue
            try:
                spec = parse_spec(body.get("spec") or {}, self.default_image or "unset")
            except ValueError:
                continue
            model_bytes = (body.get("status") or {}).get("modelBytes")
            budget.add_metric([namespace, name], startup_budget(spec, int(model_bytes) if model_bytes else None))
            for pod in self.store.belonging_to("Pod", namespace, name):
                if (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "worker":
                    continue
                since = not_ready_since(pod)
                seconds = _seconds_since(since, now) if since else None
                if seconds is not None:
                    waiting.add_metric([namespace, name, pod["metadata"]["name"]], seconds)
        yield budget
        yield waiting


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "minisgl_operator_reconciles_total", "Reconciliations of MiniSGLDeployments by result",
            ["result"], registry=self.registry)
        self.duration = Histogram(
            "minisgl_operator_reconcile_duration_seconds", "Time of one reconciliation",
            registry=self.registry)

    def watch_startups(self, store: Store, default_image: str | None = None) -> None:
        self.registry.register(StartupCollector(store, default_image))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    @contextmanager
    def reconciling(self) -> Iterator[None]:
        """Count one reconciliation: ok, or the kind of error that ended it."""
        start = time.monotonic()
        result = "ok"
        try:
            yield
        except Exception as e:  # re-raised: kopf's retry semantics stay untouched
            result = {"PermanentError": "permanent_error",
                      "TemporaryError": "temporary_error"}.get(type(e).__name__, "error")
            raise
        finally:
            self.reconciles.labels(result).inc()
            self.duration.observe(time.monotonic() - start)
