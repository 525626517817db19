from __future__ import annotations

from importlib import resources

import kubernetes_validate
import yaml

from minisgl_operator import GROUP, PLURAL
from minisgl_operator.builders import Owner, desired_objects
from minisgl_operator.kube import PLURALS
from minisgl_operator.rollout import plan_rollout
from minisgl_operator.spec import parse_spec


def rules() -> list[dict]:
    return yaml.safe_load(resources.files("minisgl_operator").joinpath("rbac.yaml").read_text())


def allowed(group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules())


def test_rules_form_a_valid_cluster_role():
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "minisgl-operator"}, "rules": rules()}
    kubernetes_validate.validate(role, "1.37.0", strict=True)


def test_every_object_the_operator_builds_can_be_applied_and_pruned():
    spec = parse_spec({"image": "i", "model": {"path": "m"}, "replicas": 2, "autoscaling": {"maxReplicas": 3}})
    for obj in desired_objects(Owner("n", "ns", "u"), spec, plan_rollout(spec, {}), True):
        group = obj["apiVersion"].rpartition("/")[0]
        for verb in ("get", "patch", "delete"):
            assert allowed(group, PLURALS[obj["kind"]], verb), (obj["kind"], verb)


def test_custom_resource_status_pods_nodes_and_events():
    assert allowed(GROUP, PLURAL, "watch") and allowed(GROUP, PLURAL, "patch")
    assert allowed(GROUP, f"{PLURAL}/status", "patch")
    for resource in ("pods", "nodes"):
        assert allowed("", resource, "list")
        assert not allowed("", resource, "delete")
    assert allowed("", "events", "create")
    assert not allowed("", "secrets", "get")  # least privilege: secrets are referenced, never read
