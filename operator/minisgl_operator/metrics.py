"""The operator's own Prometheus metrics (scraped through the chart's optional ServiceMonitor)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "minisgl_operator_reconciles_total", "Reconciliations of MiniSGLDeployments by result",
            ["result"], registry=self.registry)
        self.duration = Histogram(
            "minisgl_operator_reconcile_duration_seconds", "Time of one reconciliation",
            registry=self.registry)

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
