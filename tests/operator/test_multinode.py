"""spec.engine.nodes > 1: a LeaderWorkerSet instead of a Deployment (pure builders)."""
from __future__ import annotations

import pytest

from minisgl_operator.builders import Owner, build_service, desired_objects
from minisgl_operator.multinode import WORKER_INDEX_LABEL, lws_as_deployment, validate_name
from minisgl_operator.rollout import IN_PLACE, RolloutPlan
from minisgl_operator.spec import parse_spec

OWNER = Owner("big", "ns", "uid-1")


def spec(**engine):
    return parse_spec({"image": "img", "model": {"path": "meta-llama/Llama-3.1-405B"}, "replicas": 2,
                       "engine": {"tensorParallelSize": 16, **engine}})


def kinds(s):
    return {o["kind"]: o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False)}


def test_tp_larger_than_a_node_makes_a_leader_worker_set_not_a_deployment():
    objects = kinds(spec())
    assert "Deployment" not in objects
    lws = objects["LeaderWorkerSet"]
    assert lws["metadata"]["name"] == "big-lws" and lws["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert lws["spec"]["replicas"] == 2 and tmpl["size"] == 2
    assert tmpl["restartPolicy"] == "RecreateGroupOnPodRestart"  # a torch.distributed group restarts whole
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]
    worker = tmpl["workerTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == 8 == worker["resources"]["limits"]["nvidia.com/gpu"]
    # Probes and the HTTP port on the leader only; the same flags everywhere, rank from the LWS index.
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(leader) and not {"startupProbe", "readinessProbe", "livenessProbe"} & set(worker)
    assert [p["name"] for p in leader["ports"]] == ["http", "dist", "dist-control"]
    assert [p["name"] for p in worker["ports"]] == ["dist", "dist-control"]
    assert leader["args"] == worker["args"]
    args = " ".join(leader["args"])
    assert "--tp-size 16 " in args and "--nnodes 2 --node-rank $(LWS_WORKER_INDEX)" in args
    assert "--dist-init-addr $(LWS_LEADER_ADDRESS):5000" in args
    # The client Service sends requests to leaders only.
    assert objects["Service"]["spec"]["selector"][WORKER_INDEX_LABEL] == "0"


def test_gpus_per_pod_split_the_tensor_parallel_ranks():
    assert spec(nodes=4).gpu == 4 and spec(nodes=4).nodes == 4
    assert parse_spec({"image": "i", "model": {"path": "m"}, "engine": {"tensorParallelSize": 8},
                       "resources": {"gpu": 4}}).nodes == 2


def test_single_node_specs_keep_a_deployment_and_the_plain_selector():
    s = parse_spec({"image": "i", "model": {"path": "m"}, "engine": {"tensorParallelSize": 8}})
    objects = kinds(s)
    assert "LeaderWorkerSet" not in objects and "Deployment" in objects
    assert WORKER_INDEX_LABEL not in build_service(OWNER, s)["spec"]["selector"]
    assert "--nnodes" not in objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_name_too_long_for_the_group_pods_is_refused():
    validate_name("q" * 48, spec())
    with pytest.raises(ValueError, match="at most 48 characters"):
        validate_name("q" * 49, spec())
    validate_name("q" * 63, parse_spec({"image": "i", "model": {"path": "m"}}))


def test_lws_status_reads_like_a_deployments():
    lws = {"metadata": {"generation": 3}, "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2,
                                                      "conditions": [{"type": "Available", "status": "False"}]}}
    dep = lws_as_deployment(lws)
    assert dep["status"]["readyReplicas"] == 1 and dep["status"]["observedGeneration"] == 3
    assert lws_as_deployment(None) is None
