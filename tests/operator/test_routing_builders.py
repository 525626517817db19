"""spec.routing: an InferencePool and its endpoint picker (pure builders)."""
from __future__ import annotations

import pytest
import yaml

from minisgl_operator.builders import Owner, desired_objects
from minisgl_operator.rollout import IN_PLACE, RolloutPlan
from minisgl_operator.routing import epp_config
from minisgl_operator.spec import DEFAULT_EPP_IMAGE, parse_spec

OWNER = Owner("qwen", "ns", "uid-1")


def objects(routing, **extra):
    s = parse_spec({"image": "i", "model": {"path": "m"}, "routing": routing, **extra})
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False)}


def test_routing_makes_a_pool_of_the_serving_pods_and_its_picker():
    objs = objects({})
    pool = objs[("InferencePool", "qwen")]["spec"]
    assert pool["selector"]["matchLabels"] == {"app.kubernetes.io/name": "minisgl-worker",
                                               "app.kubernetes.io/instance": "qwen"}
    assert pool["targetPorts"] == [{"number": 8000}]
    assert pool["endpointPickerRef"] == {"name": "qwen-epp", "port": {"number": 9002}, "failureMode": "FailClose"}
    for kind in ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"):
        assert objs[(kind, "qwen-epp")]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    epp = objs[("Deployment", "qwen-epp")]["spec"]["template"]["spec"]
    assert epp["containers"][0]["image"] == DEFAULT_EPP_IMAGE and epp["serviceAccountName"] == "qwen-epp"
    args = epp["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == "qwen" and args[args.index("--pool-namespace") + 1] == "ns"
    # The picker's pods are not workers: the workers' Service must not select them.
    worker_selector = objs[("Service", "qwen")]["spec"]["selector"]
    labels = objs[("Deployment", "qwen-epp")]["spec"]["template"]["metadata"]["labels"]
    assert not worker_selector.items() <= labels.items()
    # The picker's config: the upstream default profile, one endpoint a request.
    config = yaml.safe_load(objs[("ConfigMap", "qwen-epp")]["data"]["default-plugins.yaml"])
    assert config["kind"] == "EndpointPickerConfig"
    assert [p["type"] for p in config["plugins"]] == [
        "queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "max-score-picker"]
    assert "parameters" not in config["plugins"][3]


def test_picker_config_can_return_a_fallback_list():
    config = yaml.safe_load(epp_config(max_endpoints=3))
    assert config["plugins"][3] == {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 3}}
    weights = {p["pluginRef"]: p.get("weight") for p in config["schedulingProfiles"][0]["plugins"]}
    assert weights == {"queue-scorer": 2, "kv-cache-utilization-scorer": 2, "prefix-cache-scorer": 3,
                       "max-score-picker": None}


def test_an_existing_picker_is_referenced_and_none_created():
    objs = objects({"failureMode": "FailOpen", "endpointPicker": {"serviceRef": {"name": "shared-epp", "port": 9100}}})
    assert objs[("InferencePool", "qwen")]["spec"]["endpointPickerRef"] == {
        "name": "shared-epp", "port": {"number": 9100}, "failureMode": "FailOpen"}
    assert not [k for k in objs if k[1] == "qwen-epp"]


def test_multi_node_pools_select_leaders_only():
    objs = objects({}, engine={"tensorParallelSize": 16})
    assert objs[("InferencePool", "qwen")]["spec"]["selector"]["matchLabels"][
        "leaderworkerset.sigs.k8s.io/worker-index"] == "0"


@pytest.mark.parametrize("routing, message", [
    ({"endpointPicker": {"image": "x", "serviceRef": {"name": "y"}}}, "not both"),
    ({"failureMode": "Maybe"}, "routing.failureMode"),
    ({"endpointPicker": {"replicas": 0}}, "routing.endpointPicker.replicas"),
])
def test_bad_routing_is_refused(routing, message):
    with pytest.raises(ValueError, match=message):
        parse_spec({"image": "i", "model": {"path": "m"}, "routing": routing})
