"""reconcile_resource maps failures to kopf's retry semantics and a Failed status."""

from __future__ import annotations

import kopf
import pytest
from kubernetes.client.rest import ApiException

from minisgl_operator.controller import reconcile_resource
from minisgl_operator.ownership import ObjectInTheWay


class FailingReconciler:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def apply(self, owner, spec, status=None):
        raise self.exc


def body(spec: dict) -> dict:
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u-1", "generation": 3},
            "spec": spec, "status": {}}


VALID = {"model": {"path": "Qwen/Qwen3-8B"}, "image": "ghcr.io/minisgl/minisgl-worker:0.1.0"}


def run(spec: dict, exc: Exception, default_image: str | None = None) -> list:
    published = []
    try:
        reconcile_resource(body(spec), FailingReconciler(exc), published.append, default_image)
    finally:
        run.published = published  # type: ignore[attr-defined]
    return published


def reasons() -> list[str]:
    return [c["reason"] for u in run.published for c in u.status["conditions"]]  # type: ignore[attr-defined]


def test_api_server_errors_are_retried():
    with pytest.raises(kopf.TemporaryError, match="API error 500"):
        run(VALID, ApiException(status=500, reason="boom"))


def test_rejected_objects_fail_permanently_with_a_status():
    with pytest.raises(kopf.PermanentError, match="rejected"):
        run(VALID, ApiException(status=422, reason="Invalid"))
    status = run.published[0].status  # type: ignore[attr-defined]
    assert status["phase"] == "Failed" and status["observedGeneration"] == 3


def test_forbidden_is_retried_and_says_so_in_the_status():
    with pytest.raises(kopf.TemporaryError):
        run(VALID, ApiException(status=403, reason="Forbidden"))
    assert "Forbidden" in reasons()


def test_an_object_in_the_way_is_reported_and_retried_later():
    exc = ObjectInTheWay("Service", "ns", "m", "no owner; managed by kubectl-create")
    with pytest.raises(kopf.TemporaryError) as info:
        run(VALID, exc)
    assert info.value.delay >= 10
    degraded = next(c for c in run.published[0].status["conditions"] if c["type"] == "Degraded")  # type: ignore[attr-defined]
    assert degraded["reason"] == "ObjectInTheWay"
    assert "Service ns/m" in degraded["message"] and "kubectl-create" in degraded["message"]


def test_invalid_spec_fails_permanently_without_touching_the_cluster():
    bad = {**VALID, "engine": {"tensorParallelSize": 3}}
    with pytest.raises(kopf.PermanentError, match="invalid spec"):
        run(bad, AssertionError("must not be called"))
    assert "InvalidSpec" in reasons()


def test_image_defaults_to_the_operators_worker_image():
    minimal = {"model": {"path": "Qwen/Qwen3-8B"}}
    with pytest.raises(kopf.PermanentError, match="spec.image is required"):
        run(minimal, AssertionError("must not be called"))
    with pytest.raises(kopf.TemporaryError):  # got past parsing: the reconciler was called
        run(minimal, ApiException(status=500), default_image="ghcr.io/minisgl/minisgl-worker:0.2.0")
