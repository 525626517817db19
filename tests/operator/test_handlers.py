"""reconcile_resource maps failures to kopf's retry semantics and a Failed status."""

from __future__ import annotations

import kopf
import pytest
from kubernetes.client.rest import ApiException

from minisgl_operator.handlers import reconcile_resource


@pytest.fixture(autouse=True)
def kopf_context():
    """kopf.event() reads the operator settings from a context variable that kopf sets for
    handlers; outside kopf, provide settings with event posting off (events are e2e-tested)."""
    from kopf._core.engines.posting import settings_var

    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    token = settings_var.set(settings)
    yield
    settings_var.reset(token)


class FailingReconciler:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def apply(self, owner, spec):
        raise self.exc


def body(spec: dict) -> dict:
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u-1", "generation": 3},
            "spec": spec, "status": {}}


VALID = {"model": {"path": "Qwen/Qwen3-8B"}, "image": "ghcr.io/minisgl/minisgl-worker:0.1.0"}


def test_api_server_errors_are_retried():
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError, match="API error 500"):
        reconcile_resource(body(VALID), patch, FailingReconciler(ApiException(status=500, reason="boom")))


def test_rejected_objects_fail_permanently_with_a_status():
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="rejected"):
        reconcile_resource(body(VALID), patch, FailingReconciler(ApiException(status=422, reason="Invalid")))
    assert patch["status"]["phase"] == "Failed"
    assert patch["status"]["observedGeneration"] == 3


def test_invalid_spec_fails_permanently_without_touching_the_cluster():
    patch = kopf.Patch()
    bad = {**VALID, "engine": {"tensorParallelSize": 3}}
    with pytest.raises(kopf.PermanentError, match="invalid spec"):
        reconcile_resource(body(bad), patch, FailingReconciler(AssertionError("must not be called")))
    reasons = [c.get("reason") for c in patch["status"]["conditions"]]
    assert "InvalidSpec" in reasons
