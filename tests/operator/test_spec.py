from __future__ import annotations

import pytest

from minisgl_operator.spec import parse_spec

BASE = {"image": "ghcr.io/x/minisgl-worker:1", "model": {"path": "Qwen/Qwen3-8B"}}


def spec(**overrides):
    return {**BASE, **overrides}


def test_defaults_give_one_gpu_per_rank_and_a_long_startup():
    s = parse_spec(BASE)
    assert (s.replicas, s.tp_size, s.gpu, s.device) == (1, 1, 1, "cuda")
    assert s.startup_timeout_seconds is None  # unset: pod.startup_budget decides (1800 s without a size)
    assert s.rollout_strategy == "Auto"
    assert s.served_name == "Qwen/Qwen3-8B"


def test_gpu_defaults_to_tensor_parallel_size():
    assert parse_spec(spec(engine={"tensorParallelSize": 4})).gpu == 4


def test_cpu_device_needs_no_gpu():
    s = parse_spec(spec(engine={"device": "cpu", "tensorParallelSize": 2}))
    assert s.gpus_per_pod == 0


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"engine": {"tensorParallelSize": 3}}, "tensorParallelSize"),
        ({"engine": {"tensorParallelSize": 4, "nodes": 2}, "resources": {"gpu": 1}}, "resources.gpu must be >="),
        ({"engine": {"tensorParallelSize": 4}, "resources": {"gpu": 3}}, "must be a multiple of resources.gpu 3"),
        ({"engine": {"tensorParallelSize": 4, "nodes": 3}}, "divisible by engine.nodes 3"),
        ({"engine": {"nodes": 0}}, "engine.nodes must be >= 1"),
        ({"engine": {"memoryRatio": 0}}, "memoryRatio"),
        ({"engine": {"memoryRatio": 1.5}}, "memoryRatio"),
        ({"replicas": -1}, "spec.replicas"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be <="),
        ({"engine": {"extraArgs": ["--port=9"]}}, "--port"),
        ({"engine": {"extraArgs": ["--tensor-parallel-size", "4"]}}, "--tensor-parallel-size"),
        ({"engine": {"dtype": "int3"}}, "engine.dtype"),
        ({"rollout": {"strategy": "Blue"}}, "rollout.strategy"),
        ({"model": {}}, "model.path"),
        ({"image": ""}, "spec.image"),
        ({"model": {"path": "m", "cache": {}}}, None),  # empty cache block is just absent
    ],
)
def test_specs_that_cannot_work_raise_value_error_with_the_reason(bad, words):
    if words is None:
        assert parse_spec(spec(**bad)).cache is None
        return
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        parse_spec(spec(**bad))


def test_autoscaling_target_defaults_per_metric():
    a = parse_spec(spec(autoscaling={"maxReplicas": 3})).autoscaling
    assert (a.min_replicas, a.max_replicas, a.metric, a.target) == (1, 3, "waiting-requests", 4.0)
    assert parse_spec(spec(autoscaling={"maxReplicas": 3, "metric": "kv-usage"})).autoscaling.target == 0.8
