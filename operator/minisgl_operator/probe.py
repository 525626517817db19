"""Start-up phases of worker pods from their own /health (the worker's HTTP port opens at once and
answers 200 with `"phase": "loading" | "warming" | "ready"` while /ready is still 503).

Only pods that are Running, have an IP and are not Ready are asked, at most MAX_PODS per resource,
each at most once per CACHE_SECONDS, with a short timeout: a fleet of starting pods costs a few
small HTTP requests to the pods themselves and none to the API server. The controller re-checks
a resource every RECHECK_SECONDS while any of its pods is still starting (no watch event says
"now warming").
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Callable, Mapping, Sequence

from minisgl_operator import CONTAINER_NAME, CONTAINER_PORT

logger = logging.getLogger(__name__)

STARTUP_PHASES = ("loading", "warming")
MAX_PODS = 4
TIMEOUT_SECONDS = 1.0
CACHE_SECONDS = 10.0
RECHECK_SECONDS = 15.0

Fetch = Callable[[str, int], "str | None"]  # (ip, port) -> phase, or None when unknown


def _ready(pod: Mapping) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def starting(pod: Mapping) -> bool:
    """Running with an IP but not Ready: its /health can say how far it got."""
    status = pod.get("status") or {}
    return (status.get("phase") == "Running" and bool(status.get("podIP")) and not _ready(pod)
            and not pod.get("metadata", {}).get("deletionTimestamp"))


def http_port(pod: Mapping) -> int:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") != CONTAINER_NAME:
            continue
        for port in container.get("ports") or ():
            if port.get("name") == "http" and port.get("containerPort"):
                return int(port["containerPort"])
    return CONTAINER_PORT


def fetch_phase(ip: str, port: int, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """GET http://ip:port/health -> its "phase" ("ready" when a 200 names none), or None (no
    answer, an error status, not JSON)."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(65536)
        if response.status != 200:
            return None
        # The start-up app always names its phase; a 200 without one is the serving app: past start-up.
        phase = json.loads(body).get("phase", "ready")
        return phase if isinstance(phase, str) else None
    except (OSError, ValueError, http.client.HTTPException, AttributeError):
        return None
    finally:
        conn.close()


class PhaseProber:
    def __init__(self, fetch: Fetch = fetch_phase, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}  # pod uid -> (when, phase)
        self._lock = threading.Lock()

    def phases(self, pods: Sequence[Mapping]) -> dict[str, str]:
        """Pod name -> "loading" | "warming" for starting pods that report one (the first
        MAX_PODS starting pods by name; a phase is the same for every replica of a rollout)."""
        result: dict[str, str] = {}
        candidates = sorted((p for p in pods if starting(p)), key=lambda p: p["metadata"]["name"])[:MAX_PODS]
        for pod in candidates:
            phase = self._phase(pod)
            if phase in STARTUP_PHASES:
                result[pod["metadata"]["name"]] = phase
        self._forget(pods)
        return result

    def _phase(self, pod: Mapping) -> str | None:
        uid = pod["metadata"].get("uid") or pod["metadata"]["name"]
        now = self._clock()
        with self._lock:
            cached = self._cache.get(uid)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        phase = self._fetch(pod["status"]["podIP"], http_port(pod))
        if phase is None and cached is not None and cached[1] in STARTUP_PHASES:
            phase = cached[1]  # one lost answer (a busy worker, a timeout) does not undo a phase
        with self._lock:
            self._cache[uid] = (now, phase)
        return phase

    def _forget(self, pods: Sequence[Mapping]) -> None:
        """Drop entries of pods that stopped starting here, and any entry long unused (pods
        deleted elsewhere): memory stays bounded by the starting pods."""
        names = {p["metadata"].get("uid") or p["metadata"]["name"] for p in pods}
        keep = {p["metadata"].get("uid") or p["metadata"]["name"] for p in pods if starting(p)}
        horizon = self._clock() - 6 * max(self._cache_seconds, RECHECK_SECONDS)
        with self._lock:
            for uid in [u for u, (when, _) in self._cache.items()
                        if (u in names and u not in keep) or when < horizon]:
                del self._cache[uid]
