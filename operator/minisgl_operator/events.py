"""core/v1 Events about a MiniSGLDeployment, posted by the operator's own client (reconciles run
in the controller's worker threads, outside kopf's handler context)."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Mapping

from kubernetes.client.rest import ApiException

from minisgl_operator import FIELD_MANAGER
from minisgl_operator.kube import Kube, object_path
from minisgl_operator.status import Event

logger = logging.getLogger(__name__)
MAX_MESSAGE = 1024


def build_event(body: Mapping, event: Event, now: datetime | None = None) -> dict:
    meta = body["metadata"]
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion")},
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post_event(kube: Kube, body: Mapping, event: Event) -> None:
    """Best effort: an event that cannot be posted must not fail the reconcile."""
    try:
        kube.request("POST", object_path("v1", "Event", body["metadata"]["namespace"]), body=build_event(body, event))
    except ApiException as e:
        logger.warning("cannot post event %s for %s: %s", event.reason, body["metadata"]["name"], e.reason)
