"""HPA behaviour from the measured time to ready: a replica that takes ten minutes to load must
not be removed after the HPA's default 300 s of calm, nor re-added a minute later (pure)."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Iterable, Mapping

MIN_SCALE_DOWN_WINDOW = 300  # the HPA's own default
MAX_SCALE_DOWN_WINDOW = 3600  # the HPA API's limit for stabilizationWindowSeconds
ROUND_TO = 30  # coarse steps: the HPA is not re-applied for every second of jitter


def _time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def measured_time_to_ready(pods: Iterable[Mapping]) -> int | None:
    """Seconds from creation to Ready of the slowest ready worker pod, rounded up, or None."""
    best = None
    for pod in pods:
        created = pod.get("metadata", {}).get("creationTimestamp")
        ready = next((c for c in (pod.get("status") or {}).get("conditions") or []
                      if c.get("type") == "Ready" and c.get("status") == "True"), None)
        if not created or not ready or not ready.get("lastTransitionTime"):
            continue
        seconds = (_time(ready["lastTransitionTime"]) - _time(created)).total_seconds()
        if seconds >= 0:
            best = max(best or 0, seconds)
    return None if best is None else int(math.ceil(best / ROUND_TO) * ROUND_TO) or ROUND_TO


def hpa_behavior(time_to_ready: int) -> dict:
    """Scale up two pods a minute (not-ready pods count as empty, so no runaway); scale down only
    after twice the time a new replica needs, one pod per time-to-ready."""
    window = min(MAX_SCALE_DOWN_WINDOW, max(MIN_SCALE_DOWN_WINDOW, 2 * time_to_ready))
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
        "scaleDown": {"stabilizationWindowSeconds": window, "selectPolicy": "Min",
                      "policies": [{"type": "Pods", "value": 1,
                                    "periodSeconds": min(1800, max(60, time_to_ready))}]},
    }
