"""The operator's cache: objects as the watch streams last delivered them, indexed by kind,
namespace, name and by the MiniSGLDeployment they belong to (label app.kubernetes.io/instance).

kopf's watchers (list, then watch, with server-side label selectors) feed it through
`@kopf.on.event` handlers; reconciles read it instead of calling the API server.
"""
from __future__ import annotations

import copy
import threading
from collections import defaultdict
from typing import Mapping

INSTANCE_LABEL = "app.kubernetes.io/instance"
MAX_EVENTS_PER_POD = 8

Key = tuple[str, str]  # (namespace, name)


def _slim(body: Mapping) -> dict:
    """A copy without managedFields (the biggest part of most objects, never read here)."""
    obj = copy.deepcopy(dict(body))
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    return obj


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, dict]] = defaultdict(dict)
        self._by_owner: dict[str, dict[Key, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._pod_events: dict[Key, list[dict]] = {}

    def upsert(self, kind: str, body: Mapping) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        obj = _slim(body)
        with self._lock:
            self._unindex(kind, key)
            self._objects[kind][key] = obj
            owner = (meta.get("labels") or {}).get(INSTANCE_LABEL)
            if owner:
                self._by_owner[kind][(key[0], owner)].add(key[1])

    def remove(self, kind: str, body: Mapping) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        with self._lock:
            self._unindex(kind, key)
            self._objects[kind].pop(key, None)
            if kind == "Pod":
                self._pod_events.pop(key, None)

    def _unindex(self, kind: str, key: Key) -> None:
        old = self._objects[kind].get(key)
        if old is None:
            return
        owner = (old["metadata"].get("labels") or {}).get(INSTANCE_LABEL)
        names = self._by_owner[kind].get((key[0], owner))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_owner[kind][(key[0], owner)]

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            return self._objects[kind].get((namespace, name))

    def keys(self, kind: str) -> list[Key]:
        with self._lock:
            return list(self._objects[kind])

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._objects[kind])

    def belonging_to(self, kind: str, namespace: str, instance: str) -> list[dict]:
        """Objects of `kind` labelled as part of the MiniSGLDeployment `instance`."""
        with self._lock:
            names = self._by_owner[kind].get((namespace, instance), ())
            return [self._objects[kind][(namespace, n)] for n in sorted(names)]

    def add_pod_event(self, event: Mapping) -> str | None:
        """Remember a Warning event of a pod we cache; return the pod's instance label (to
        reconcile its owner), or None when the pod is not one of ours."""
        ref = event.get("involvedObject") or {}
        key = (ref.get("namespace") or "", ref.get("name") or "")
        with self._lock:
            pod = self._objects["Pod"].get(key)
            if pod is None:
                return None
            slim = {"reason": event.get("reason"), "message": event.get("message"),
                    "lastTimestamp": event.get("lastTimestamp") or event.get("eventTime")}
            events = [e for e in self._pod_events.get(key, []) if e["reason"] != slim["reason"]] + [slim]
            self._pod_events[key] = events[-MAX_EVENTS_PER_POD:]
            return (pod["metadata"].get("labels") or {}).get(INSTANCE_LABEL)

    def pod_events(self, namespace: str, pod_names: list[str]) -> dict[str, list[dict]]:
        with self._lock:
            return {n: list(self._pod_events.get((namespace, n), ())) for n in pod_names}
