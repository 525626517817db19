"""kopf wiring: kopf's watchers (list + watch, server-side label selectors) feed the Store and
the Controller's work queue; the Controller's threads reconcile.

No change-detecting kopf handlers (on.create/update/resume, timers) are used: they store their
progress in the object (one PATCH per event) and can run a timer concurrently with an update on
a stale body. Handlers are registered into an explicit registry by `register`, so settings come
from the command line, not from import-time globals.
"""
from __future__ import annotations

import logging
from typing import Any

import kopf

from minisgl_operator import FIELD_MANAGER, GROUP, PLURAL, VERSION
from minisgl_operator.controller import Controller
from minisgl_operator.kube import Kube, load_api_client
from minisgl_operator.metrics import OperatorMetrics
from minisgl_operator.reconcile import Options, Reconciler
from minisgl_operator.settings import OperatorConfig
from minisgl_operator.store import Store

logger = logging.getLogger(__name__)

MANAGED = f"app.kubernetes.io/managed-by={FIELD_MANAGER}"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
KEDA_CRD = "scaledobjects.keda.sh"
# (kopf resource selector, Store kind) of every child the operator watches, all label-selected.
CHILDREN = (
    (("apps", "v1", "deployments"), "Deployment"),
    (("v1", "services"), "Service"),
    (("v1", "pods"), "Pod"),
    (("policy", "v1", "poddisruptionbudgets"), "PodDisruptionBudget"),
    (("autoscaling", "v2", "horizontalpodautoscalers"), "HorizontalPodAutoscaler"),
    (("monitoring.coreos.com", "v1", "servicemonitors"), "ServiceMonitor"),
    (("batch", "v1", "jobs"), "Job"),
    (("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"), "LeaderWorkerSet"),
    # spec.routing: the InferencePool and the endpoint picker's own objects.
    (("inference.networking.k8s.io", "v1", "inferencepools"), "InferencePool"),
    (("keda.sh", "v1alpha1", "scaledobjects"), "ScaledObject"),
    (("v1", "configmaps"), "ConfigMap"),
    (("v1", "serviceaccounts"), "ServiceAccount"),
    (("rbac.authorization.k8s.io", "v1", "roles"), "Role"),
    (("rbac.authorization.k8s.io", "v1", "rolebindings"), "RoleBinding"),
)
POD_WARNINGS = "type=Warning,involvedObject.kind=Pod"


def _established(body: kopf.Body) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the operator's handlers into `registry`."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # An explicit registry has none of kopf's default login handlers: use the kubernetes
        # client's view (in-cluster service account, else KUBECONFIG), as kopf would.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own transition events are the story
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        for selector, _kind in CHILDREN:
            settings.watching.label_selectors[selector] = MANAGED
        settings.watching.field_selectors["v1", "events"] = POD_WARNINGS
        kube = Kube(load_api_client())
        memo.store = Store()
        memo.metrics = OperatorMetrics()
        memo.metrics.watch_startups(memo.store, config.worker_image)
        reconciler = Reconciler(kube, memo.store, Options(monitor_labels=dict(config.service_monitor_labels)))
        memo.controller = Controller(kube, reconciler, memo.store, memo.metrics,
                                     resync_seconds=config.resync_seconds, workers=config.workers,
                                     default_image=config.worker_image,
                                     default_epp_image=config.endpoint_picker_image)
        memo.controller.start()
        if config.metrics_port:
            memo.metrics.serve(config.metrics_port)
        scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
        logger.info("minisgl operator watching %s, resync every %ss", scope, config.resync_seconds)

    @kopf.on.cleanup(registry=registry)
    def stop(memo: kopf.Memo, **_: Any) -> None:
        memo.controller.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def resource(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:  # noqa: A002
        memo.controller.on_resource(type, body)

    for selector, kind in CHILDREN:
        def child(type: str | None, body: kopf.Body, memo: kopf.Memo, _kind: str = kind, **_: Any) -> None:  # noqa: A002
            memo.controller.on_child(_kind, type, body)
        kopf.on.event(*selector, id=f"cache-{kind}", registry=registry)(child)

    @kopf.on.event("v1", "events", id="pod-warnings", registry=registry)
    def pod_warning(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:  # noqa: A002
        if type != "DELETED":
            memo.controller.on_pod_event(body)

    @kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", registry=registry,
                   when=lambda name, **_: name == SERVICE_MONITOR_CRD)
    def service_monitor_crd(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:  # noqa: A002
        memo.controller.set_service_monitor_api(type != "DELETED" and _established(body))

    @kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", registry=registry, id="keda-crd",
                   when=lambda name, **_: name == KEDA_CRD)
    def keda_crd(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:  # noqa: A002
        memo.controller.set_keda_api(type != "DELETED" and _established(body))
