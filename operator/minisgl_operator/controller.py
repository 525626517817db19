"""The controller: watch events -> a work queue of MiniSGLDeployment keys -> worker threads
that reconcile one key at a time from the cache, plus a slow resync of every key.

The work queue guarantees that one object is never reconciled by two workers at once, and that
an event arriving during a reconcile causes one more reconcile afterwards, on the then-cached
spec: a resync can no longer re-apply an old template after a new one.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Callable, Mapping

import kopf
from kubernetes.client.rest import ApiException

from minisgl_operator.builders import Owner
from minisgl_operator.events import post_event
from minisgl_operator.kube import Kube, object_path
from minisgl_operator.metrics import OperatorMetrics
from minisgl_operator.multinode import validate_name
from minisgl_operator.ownership import ObjectInTheWay
from minisgl_operator.reconcile import Reconciler, utc_now
from minisgl_operator.spec import parse_spec
from minisgl_operator.status import StatusUpdate, failed_status
from minisgl_operator.store import INSTANCE_LABEL, Key, Store
from minisgl_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 10
IN_THE_WAY_RETRY_SECONDS = 30  # the stranger's object is not watched: look again now and then
PERMANENT_HTTP = (400, 422)  # rejections of a well-formed request that retrying cannot fix
CR_KIND = "MiniSGLDeployment"
# Versions up to 0.1 used kopf change handlers with this finalizer; nothing needs it now, and with
# nobody left to remove it a deletion would hang forever.
LEGACY_FINALIZER = "minisgl.io/operator"


def _api_message(e: ApiException) -> str:
    """The API server's own sentence (Status.message), not the whole response."""
    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(e.body or e.reason)


def reconcile_resource(body: Mapping, reconciler: Reconciler, publish: Callable[[StatusUpdate], None],
                       default_image: str | None = None, default_epp_image: str | None = None) -> StatusUpdate:
    """Reconcile one MiniSGLDeployment and publish its status (returned too). Raises
    kopf.TemporaryError (retry after its delay) or kopf.PermanentError (wait for the next
    change) after publishing why."""
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    generation = int(meta.get("generation") or 0)

    def fail(reason: str, message: str) -> None:
        publish(failed_status(generation, reason, message, status, utc_now()))

    try:
        spec = parse_spec(body.get("spec") or {}, default_image, default_epp_image)
        validate_name(meta["name"], spec)
    except ValueError as e:
        fail("InvalidSpec", str(e))
        raise kopf.PermanentError(f"invalid spec: {e}") from e
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    try:
        applied = reconciler.apply(owner, spec, status)
        update = reconciler.observe(owner, spec, generation, applied, status)
    except ObjectInTheWay as e:
        fail("ObjectInTheWay", str(e))
        raise kopf.TemporaryError(str(e), delay=IN_THE_WAY_RETRY_SECONDS) from e
    except ApiException as e:
        if e.status in PERMANENT_HTTP:
            message = f"the API server rejected a generated object: {_api_message(e)}"
            fail("ApplyRejected", message)
            raise kopf.PermanentError(message) from e
        if e.status == 403:
            fail("Forbidden", f"the operator may not do this: {_api_message(e)}")
        raise kopf.TemporaryError(f"API error {e.status} {e.reason}; retrying", delay=RETRY_DELAY_SECONDS) from e
    publish(update)
    return update


class Controller:
    def __init__(self, kube: Kube, reconciler: Reconciler, store: Store, metrics: OperatorMetrics, *,
                 resync_seconds: float, workers: int = 4, default_image: str | None = None,
                 settle_seconds: float = 2.0, default_epp_image: str | None = None) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.store = store
        self.metrics = metrics
        self.resync_seconds = resync_seconds
        self.default_image = default_image
        self.default_epp_image = default_epp_image
        self.queue: WorkQueue[Key] = WorkQueue()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        # The watches list everything first; reconciling before that would see empty caches.
        self._settled_at = time.monotonic() + settle_seconds
        self._written: dict[Key, dict] = {}  # status this operator wrote last, newer than a lagging cache
        self._lock = threading.Lock()

    # -- inputs (called from kopf's event handlers) ---------------------------------------------
    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self.queue.add(key, max(delay, self._settled_at - time.monotonic()))

    def on_resource(self, event_type: str | None, body: Mapping) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.store.remove(CR_KIND, body)
            with self._lock:
                self._written.pop(key, None)
            return
        self.store.upsert(CR_KIND, body)
        self.enqueue(key)

    def on_child(self, kind: str, event_type: str | None, body: Mapping) -> None:
        if event_type == "DELETED":
            self.store.remove(kind, body)
        else:
            self.store.upsert(kind, body)
        owner = (body["metadata"].get("labels") or {}).get(INSTANCE_LABEL)
        if owner and self.store.get(CR_KIND, body["metadata"].get("namespace") or "", owner) is not None:
            self.enqueue((body["metadata"]["namespace"], owner))

    def on_pod_event(self, body: Mapping) -> None:
        owner = self.store.add_pod_event(body)
        if owner:
            self.enqueue((body["involvedObject"]["namespace"], owner))

    def set_keda_api(self, served: bool) -> None:
        if served != self.reconciler.options.keda_api:
            logger.info("KEDA ScaledObject API %s", "appeared" if served else "went away")
            self.reconciler.options.keda_api = served
            for key in self.store.keys(CR_KIND):
                self.enqueue(key)

    def set_service_monitor_api(self, served: bool) -> None:
        if served != self.reconciler.options.service_monitor_api:
            logger.info("ServiceMonitor API %s", "appeared" if served else "went away")
            self.reconciler.options.service_monitor_api = served
            for key in self.store.keys(CR_KIND):
                self.enqueue(key)

    # -- processing -----------------------------------------------------------------------------
    def _drop_legacy_finalizer(self, key: Key, body: Mapping) -> None:
        meta = body["metadata"]
        rest = [f for f in meta.get("finalizers") or [] if f != LEGACY_FINALIZER]
        path = object_path("minisgl.io/v1alpha1", CR_KIND, key[0], key[1])
        # resourceVersion makes it a compare-and-swap: another controller's finalizer is never lost.
        self.kube.request("PATCH", path, content_type="application/merge-patch+json", body={
            "metadata": {"finalizers": rest or None, "resourceVersion": meta.get("resourceVersion")}})

    def process(self, key: Key) -> None:
        body = self.store.get(CR_KIND, *key)
        if body is not None and LEGACY_FINALIZER in (body["metadata"].get("finalizers") or []):
            try:
                self._drop_legacy_finalizer(key, body)
            except ApiException as e:
                logger.warning("%s/%s: cannot remove finalizer %s (%s); retrying", *key, LEGACY_FINALIZER, e.reason)
                self.queue.add(key, RETRY_DELAY_SECONDS if e.status != 409 else 0.5)
            return  # the watch brings the updated object back
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        with self._lock:
            written = self._written.get(key)
        if written is not None and written.get("generation") == body["metadata"].get("generation"):
            body = {**body, "status": written["status"]}

        def publish(update: StatusUpdate) -> None:
            self._publish(key, body, update)

        try:
            with self.metrics.reconciling():
                update = reconcile_resource(body, self.reconciler, publish, self.default_image,
                                            self.default_epp_image)
            if update.recheck_seconds:
                self.queue.add(key, update.recheck_seconds)
        except kopf.TemporaryError as e:
            logger.warning("%s/%s: %s", *key, e)
            self.queue.add(key, e.delay or RETRY_DELAY_SECONDS)
        except kopf.PermanentError as e:
            logger.error("%s/%s: %s", *key, e)
        except Exception:  # noqa: BLE001 - a bug must not kill the worker thread
            logger.exception("%s/%s: reconcile failed", *key)
            self.queue.add(key, RETRY_DELAY_SECONDS)

    def _publish(self, key: Key, body: Mapping, update: StatusUpdate) -> None:
        current = body.get("status") or {}
        changed = {k: v for k, v in update.status.items() if current.get(k) != v}
        if changed:
            path = object_path("minisgl.io/v1alpha1", CR_KIND, key[0], key[1]) + "/status"
            self.kube.request("PATCH", path, body={"status": changed}, content_type="application/merge-patch+json")
            with self._lock:
                self._written[key] = {"generation": body["metadata"].get("generation"),
                                      "status": {**current, **update.status}}
        for event in update.events:
            post_event(self.kube, {"apiVersion": "minisgl.io/v1alpha1", "kind": CR_KIND, **body}, event)

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self.process(key)
            finally:
                self.queue.done(key)

    def _resync(self) -> None:
        # Spread the keys over the period: 200 resources do not all reconcile in the same second.
        while not self._stop.wait(self.resync_seconds):
            for key in self.store.keys(CR_KIND):
                self.queue.add(key, random.uniform(0, self.resync_seconds / 2))

    def start(self) -> None:
        for i in range(self._workers):
            self._threads.append(threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._resync, name="resync", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()
        for t in self._threads:
            t.join(timeout=5)
