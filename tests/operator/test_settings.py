from __future__ import annotations

import pytest

from minisgl_operator.settings import parse_args


def test_default_is_cluster_wide_with_liveness():
    c = parse_args([], env={})
    assert c.clusterwide and c.namespaces == ()
    assert c.liveness == "http://0.0.0.0:8080/healthz"


def test_namespaces_from_flags_or_env():
    assert parse_args(["-n", "a", "--namespace", "b"], env={}).namespaces == ("a", "b")
    c = parse_args([], env={"MINISGL_OPERATOR_NAMESPACES": "x, y", "MINISGL_OPERATOR_RESYNC_SECONDS": "2"})
    assert c.namespaces == ("x", "y") and not c.clusterwide and c.resync_seconds == 2.0


def test_all_namespaces_overrides_env_and_conflicts_with_namespace():
    assert parse_args(["-A"], env={"MINISGL_OPERATOR_NAMESPACES": "x"}).clusterwide
    with pytest.raises(ValueError, match="exclusive"):
        parse_args(["-A", "-n", "a"], env={})


def test_empty_liveness_disables_it_and_bad_resync_is_rejected():
    assert parse_args(["--liveness", ""], env={}).liveness is None
    with pytest.raises(ValueError, match="resync"):
        parse_args(["--resync-seconds", "0"], env={})
