"""Operator configuration from command-line flags and MINISGL_OPERATOR_* environment variables."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

ENV_PREFIX = "MINISGL_OPERATOR_"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: watch every namespace (cluster-wide)
    liveness: str | None = "http://0.0.0.0:8080/healthz"
    resync_seconds: float = 300.0  # a safety net: watches trigger every reconcile that matters
    log_level: str = "INFO"
    peering: str | None = None  # kopf peering name for several replicas; None = standalone
    metrics_port: int = 8081  # Prometheus /metrics; 0 disables
    worker_image: str | None = None  # spec.image when a resource names none
    service_monitor_labels: tuple[tuple[str, str], ...] = ()  # on every workers' ServiceMonitor
    workers: int = 4  # reconcile threads (one object is never reconciled by two at once)
    endpoint_picker_image: str | None = None  # spec.routing's picker when it names no image

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m minisgl_operator",
        description="Run the minisgl operator (reconciles MiniSGLDeployment resources).",
    )
    parser.add_argument(
        "-n", "--namespace", action="append", dest="namespaces",
        help="watch only this namespace (repeatable; env MINISGL_OPERATOR_NAMESPACES, comma-separated). "
        "Default: every namespace.",
    )
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--liveness", default=env.get(ENV_PREFIX + "LIVENESS", OperatorConfig.liveness),
        help="liveness endpoint URL served by kopf ('' disables; env MINISGL_OPERATOR_LIVENESS)",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=float(env.get(ENV_PREFIX + "RESYNC_SECONDS", OperatorConfig.resync_seconds)),
        help="how often every resource is reconciled and its status refreshed (env MINISGL_OPERATOR_RESYNC_SECONDS)",
    )
    parser.add_argument("--log-level", default=env.get(ENV_PREFIX + "LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--peering", default=env.get(ENV_PREFIX + "PEERING") or None,
                        help="kopf peering name (needs the kopf peering CRD); default: standalone")
    parser.add_argument("--metrics-port", type=int,
                        default=int(env.get(ENV_PREFIX + "METRICS_PORT", OperatorConfig.metrics_port)),
                        help="port of the operator's Prometheus /metrics (0 disables; "
                             "env MINISGL_OPERATOR_METRICS_PORT)")
    parser.add_argument("--worker-image", default=env.get(ENV_PREFIX + "WORKER_IMAGE") or None,
                        help="worker image for resources without spec.image (env MINISGL_OPERATOR_WORKER_IMAGE)")
    parser.add_argument("--service-monitor-label", action="append", dest="monitor_labels", metavar="KEY=VALUE",
                        help="label on every workers' ServiceMonitor, e.g. release=kube-prometheus-stack "
                             "(repeatable; env MINISGL_OPERATOR_SERVICE_MONITOR_LABELS, comma-separated)")
    parser.add_argument("--workers", type=int, default=int(env.get(ENV_PREFIX + "WORKERS", OperatorConfig.workers)),
                        help="reconcile threads (env MINISGL_OPERATOR_WORKERS)")
    parser.add_argument("--endpoint-picker-image", default=env.get(ENV_PREFIX + "ENDPOINT_PICKER_IMAGE") or None,
                        help="endpoint picker (EPP) image for spec.routing without endpointPicker.image "
                             "(env MINISGL_OPERATOR_ENDPOINT_PICKER_IMAGE; default the upstream v1.2.0 image)")
    args = parser.parse_args(argv)
    labels = []
    raw_labels = args.monitor_labels or [x for x in env.get(ENV_PREFIX + "SERVICE_MONITOR_LABELS", "").split(",") if x.strip()]
    for item in raw_labels:
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"--service-monitor-label must be KEY=VALUE, got {item!r}")
        labels.append((key, value))
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    namespaces = args.namespaces or [n for n in env.get(ENV_PREFIX + "NAMESPACES", "").split(",") if n.strip()]
    if args.all_namespaces and args.namespaces:
        raise ValueError("--all-namespaces and --namespace are exclusive")
    if args.all_namespaces:
        namespaces = []
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be in [0, 65535], got {args.metrics_port}")
    if args.resync_seconds <= 0:
        raise ValueError(f"--resync-seconds must be > 0, got {args.resync_seconds}")
    return OperatorConfig(
        namespaces=tuple(n.strip() for n in namespaces),
        liveness=args.liveness or None,
        resync_seconds=args.resync_seconds,
        log_level=args.log_level,
        peering=args.peering,
        metrics_port=args.metrics_port,
        worker_image=args.worker_image,
        service_monitor_labels=tuple(labels),
        workers=args.workers,
        endpoint_picker_image=args.endpoint_picker_image,
    )
