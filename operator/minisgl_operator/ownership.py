"""Who owns an object, and the refusal to take over one we did not create (pure functions)."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

HASH_ANNOTATION = "minisgl.io/applied-hash"
TEMPLATE_HASH_ANNOTATION = "minisgl.io/template-hash"


class ObjectInTheWay(Exception):
    """An object with the name we need exists and is not ours: never adopt it by force."""

    def __init__(self, kind: str, namespace: str, name: str, owner: str) -> None:
        self.kind, self.namespace, self.name, self.owner = kind, namespace, name, owner
        super().__init__(
            f"{kind} {namespace}/{name} already exists and is not owned by this MiniSGLDeployment "
            f"({owner}); delete or rename it, or rename the MiniSGLDeployment")


def owned_by(obj: Mapping, uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def describe_owner(obj: Mapping) -> str:
    """'owned by Kind/name', else who last wrote it (managedFields), for the condition message."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    if refs:
        return "owned by " + ", ".join(f"{r.get('kind')}/{r.get('name')} (uid {r.get('uid')})" for r in refs)
    managers = sorted({m.get("manager", "?") for m in meta.get("managedFields") or []})
    return "no owner; managed by " + (", ".join(managers) if managers else "unknown")


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def stamp(obj: dict) -> dict:
    """The object with the hash of its own content in an annotation: a cached copy carrying the
    same hash needs no apply (nothing the operator wants has changed)."""
    annotations = dict(obj["metadata"].get("annotations") or {})
    annotations.pop(HASH_ANNOTATION, None)
    stamped = {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}
    annotations[HASH_ANNOTATION] = digest(stamped)
    return stamped


def applied_hash(obj: Mapping | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
