from __future__ import annotations

from minisgl_operator import GPU_RESOURCE
from minisgl_operator.rollout import IN_PLACE, RECREATE, SURGE, free_gpus_per_node, plan_rollout
from minisgl_operator.spec import parse_spec


def node(name: str, gpus: int, labels: dict | None = None, unschedulable: bool = False) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {GPU_RESOURCE: str(gpus), "cpu": "64"}}}


def pod(node_name: str, gpus: int, phase: str = "Running") -> dict:
    return {"spec": {"nodeName": node_name, "containers": [
        {"name": "w", "resources": {"limits": {GPU_RESOURCE: str(gpus)}}}, {"name": "side"}]},
        "status": {"phase": phase}}


def spec(tp: int, strategy: str = "Auto") -> object:
    return parse_spec({"image": "i", "model": {"path": "m"}, "engine": {"tensorParallelSize": tp},
                       "rollout": {"strategy": strategy}})


def test_free_gpus_subtract_running_pods_and_ignore_finished_ones():
    free = free_gpus_per_node([node("a", 8), node("b", 8)],
                              [pod("a", 4), pod("a", 2), pod("b", 8, phase="Succeeded"), pod("c", 1)])
    assert free == {"a": 2, "b": 8}


def test_nodes_outside_the_selector_or_cordoned_do_not_count():
    nodes = [node("a", 8, {"gpu": "h100"}), node("b", 8, {"gpu": "a10"}), node("c", 8, {"gpu": "h100"}, True)]
    assert free_gpus_per_node(nodes, [], {"gpu": "h100"}) == {"a": 8}


def test_auto_surges_when_one_node_fits_a_whole_pod():
    assert plan_rollout(spec(4), {"a": 2, "b": 4}).strategy == SURGE


def test_auto_replaces_in_place_when_free_gpus_are_scattered():
    # 6 free GPUs in total, but no single node can host a 4-GPU pod: surging would deadlock.
    plan = plan_rollout(spec(4), {"a": 3, "b": 3})
    assert plan.strategy == IN_PLACE and "in place" in plan.description


def test_auto_on_a_full_or_empty_cluster_is_in_place():
    assert plan_rollout(spec(1), {"a": 0}).strategy == IN_PLACE
    assert plan_rollout(spec(1), {}).strategy == IN_PLACE


def test_forced_strategies_ignore_capacity():
    assert plan_rollout(spec(8, "RollingUpdate"), {}).strategy == SURGE
    assert plan_rollout(spec(8, "Recreate"), {"a": 8}).strategy == RECREATE


def test_cpu_workers_always_surge():
    cpu = parse_spec({"image": "i", "model": {"path": "m"}, "engine": {"device": "cpu"}})
    assert plan_rollout(cpu, {}).strategy == SURGE
