"""The chart ships the one CRD and the one RBAC rule list, byte for byte, and grants nothing more."""
from __future__ import annotations

import pytest
import yaml

from tests.charts.helm import CHART, REPO, by_kind, helm_binary, render

CRD_SOURCE = REPO / "crds" / "minisgl.io_minisgldeployments.yaml"
RBAC_SOURCE = REPO / "operator" / "minisgl_operator" / "rbac.yaml"


def test_chart_crd_is_a_verbatim_copy_of_crds() -> None:
    copy = CHART / "crds" / CRD_SOURCE.name
    assert copy.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{copy} differs from {CRD_SOURCE}: cp {CRD_SOURCE.relative_to(REPO)} {copy.relative_to(REPO)}")
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_SOURCE.name]


def test_chart_rbac_rules_are_a_verbatim_copy_of_the_operators() -> None:
    copy = CHART / "files" / "rbac.yaml"
    assert copy.read_bytes() == RBAC_SOURCE.read_bytes(), (
        f"{copy} differs from {RBAC_SOURCE}: cp {RBAC_SOURCE.relative_to(REPO)} {copy.relative_to(REPO)}")


def _rules() -> list[dict]:
    rules = yaml.safe_load(RBAC_SOURCE.read_text())
    assert isinstance(rules, list) and rules, "rbac.yaml must be a non-empty list of PolicyRules"
    return rules


def test_operator_rules_grant_no_wildcards() -> None:
    for rule in _rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard {field} in {rule}"


def _grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule["verbs"]}


@pytest.mark.e2e
def test_cluster_watch_binds_exactly_the_operator_rules() -> None:
    objects = render(helm_binary())
    [role] = by_kind(objects, "ClusterRole")
    assert _grants(role["rules"]) == _grants(_rules())
    assert not by_kind(objects, "Role")


@pytest.mark.e2e
def test_namespaced_watch_splits_rules_without_widening_them() -> None:
    objects = render(helm_binary(), {"watch.scope": "namespaces", "watch.namespaces": ["team-a", "team-b"]})
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objects, "RoleBinding")) == ["team-a", "team-b"]
    cluster = [g for role in by_kind(objects, "ClusterRole") for g in _grants(role["rules"])]
    namespaced = _grants(roles[0]["rules"])
    assert namespaced and _grants(roles[1]["rules"]) == namespaced
    # Every grant lands somewhere, and the cluster-wide part holds only cluster-scoped resources.
    assert set(cluster) | namespaced == _grants(_rules())
    assert not set(cluster) & namespaced
    assert all(r.split("/")[0] in {"customresourcedefinitions", "namespaces", "nodes", "clusterkopfpeerings"}
               for _, r, _ in cluster), cluster


@pytest.mark.e2e
def test_cluster_wide_pod_read_is_opt_in_for_namespaced_watch() -> None:
    helm = helm_binary()

    def cluster_grants(values: dict) -> set:
        return {g for role in by_kind(render(helm, values), "ClusterRole") for g in _grants(role["rules"])}

    base = {"watch.scope": "namespaces"}
    assert not {g for g in cluster_grants(base) if g[1] == "pods"}
    opted = {g for g in cluster_grants({**base, "rbac.readPodsClusterWide": True}) if g[1] == "pods"}
    assert opted == {("", "pods", v) for v in ("get", "list", "watch")}
