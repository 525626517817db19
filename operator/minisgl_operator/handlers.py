"""kopf wiring: one reconcile for create/update/resume plus a resync timer.

Handlers are registered into an explicit registry by `register`, so the resync interval and
everything else come from the command line, not from import-time globals.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import kopf
from kubernetes.client.rest import ApiException

from minisgl_operator import GROUP, PLURAL, VERSION
from minisgl_operator.builders import Owner
from minisgl_operator.kube import Kube, load_api_client
from minisgl_operator.reconcile import Reconciler, utc_now
from minisgl_operator.metrics import OperatorMetrics
from minisgl_operator.settings import OperatorConfig
from minisgl_operator.spec import parse_spec
from minisgl_operator.status import StatusUpdate, failed_status

logger = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 10
# Rejections of a well-formed request that retrying cannot fix (invalid object, immutable field).
PERMANENT_HTTP = (400, 422)


def _api_message(e: ApiException) -> str:
    """The API server's own sentence (Status.message), not the whole response."""
    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(e.body or e.reason)


def _publish(body: Mapping, patch: kopf.Patch, current: Mapping, update: StatusUpdate) -> None:
    """Patch the status only where it changed, and post an Event per transition."""
    for key, value in update.status.items():
        if current.get(key) != value:
            patch.status[key] = value
    for event in update.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def reconcile_resource(body: Mapping, patch: kopf.Patch, reconciler: Reconciler) -> None:
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    generation = int(meta.get("generation") or 0)
    try:
        spec = parse_spec(body.get("spec") or {})
    except ValueError as e:
        _publish(body, patch, status, failed_status(generation, "InvalidSpec", str(e), status, utc_now()))
        raise kopf.PermanentError(f"invalid spec: {e}") from e
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    try:
        plan = reconciler.apply(owner, spec)
        update = reconciler.observe(owner, spec, generation, plan, status)
    except ApiException as e:
        if e.status in PERMANENT_HTTP:
            message = f"the API server rejected a generated object: {_api_message(e)}"
            _publish(body, patch, status, failed_status(generation, "ApplyRejected", message, status, utc_now()))
            raise kopf.PermanentError(message) from e
        raise kopf.TemporaryError(f"API error {e.status} {e.reason}; retrying", delay=RETRY_DELAY_SECONDS) from e
    _publish(body, patch, status, update)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the operator's handlers into `registry`."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # An explicit registry has none of kopf's default login handlers: use the kubernetes
        # client's view (in-cluster service account, else KUBECONFIG), as kopf would.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Keep kopf's bookkeeping in annotations: the CRD's status schema is strict.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.posting.level = logging.WARNING  # our own transition events are the story
        settings.watching.server_timeout = 300
        memo.reconciler = Reconciler(Kube(load_api_client()))
        memo.metrics = OperatorMetrics()
        if config.metrics_port:
            memo.metrics.serve(config.metrics_port)
        scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
        logger.info("minisgl operator watching %s, resync every %ss", scope, config.resync_seconds)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        with memo.metrics.reconciling():
            reconcile_resource(body, patch, memo.reconciler)

    @kopf.timer(GROUP, VERSION, PLURAL, id="resync", interval=config.resync_seconds,
                initial_delay=config.resync_seconds, registry=registry)
    def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        try:
            with memo.metrics.reconciling():
                reconcile_resource(body, patch, memo.reconciler)
        except kopf.PermanentError:
            pass  # already reported in the status; the next spec change reconciles again
