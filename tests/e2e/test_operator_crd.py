"""The CRD against a real kube-apiserver: structural schema, defaults, CEL rules rejecting bad
specs at `kubectl apply` with readable messages, immutability, scale subresource, printer columns."""
from __future__ import annotations

import json

import pytest

from tests.e2e.kube import Cluster, cluster  # noqa: F401 - module-scoped fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
NS = "default"


def manifest(name: str, **spec) -> str:
    body = {"apiVersion": "minisgl.io/v1alpha1", "kind": "MiniSGLDeployment", "metadata": {"name": name},
            "spec": {"image": "ghcr.io/x/minisgl-worker:0.1.0", "model": {"path": "Qwen/Qwen3-8B"}, **spec}}
    return json.dumps(body)


def apply(cluster: Cluster, name: str, dry_run: bool = True, **spec):
    args = ["apply", "-n", NS, "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cluster.kubectl(*args, stdin=manifest(name, **spec), check=False)


@pytest.mark.parametrize("spec, message", [
    ({"engine": {"tensorParallelSize": 3}}, 'spec.engine.tensorParallelSize: Unsupported value: 3'),
    ({"engine": {"tensorParallelSize": 4, "nodes": 2}, "resources": {"gpu": 1}},
     "resources.gpu must be >= engine.tensorParallelSize / engine.nodes"),
    ({"engine": {"tensorParallelSize": 4}, "resources": {"gpu": 3}}, "a smaller resources.gpu must divide"),
    ({"engine": {"tensorParallelSize": 4, "nodes": 3}}, "engine.tensorParallelSize must be divisible by engine.nodes"),
    ({"engine": {"nodes": 0}}, "spec.engine.nodes: Invalid value"),
    ({"engine": {"nodes": 65}}, "spec.engine.nodes: Invalid value"),
    ({"engine": {"memoryRatio": 0}}, "spec.engine.memoryRatio: Invalid value"),
    ({"engine": {"memoryRatio": 1.5}}, "spec.engine.memoryRatio: Invalid value"),
    ({"replicas": -1}, "spec.replicas: Invalid value"),
    ({"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}, "autoscaling.minReplicas must be <= autoscaling.maxReplicas"),
    ({"engine": {"extraArgs": ["--port", "9"]}}, "engine.extraArgs must not set --model-path"),
    ({"engine": {"extraArgs": ["--tensor-parallel-size=4"]}}, "engine.extraArgs must not set"),
    ({"engine": {"dtype": "int4"}}, "spec.engine.dtype: Unsupported value"),
    ({"rollout": {"strategy": "BlueGreen"}}, "spec.rollout.strategy: Unsupported value"),
])
def test_bad_specs_are_rejected_at_apply_with_a_readable_message(cluster, spec, message):
    out = apply(cluster, "bad", **spec)
    assert out.returncode != 0, out.stdout
    assert message in out.stderr, out.stderr


def test_multi_node_names_leave_room_for_the_group_pods_names(cluster):
    out = apply(cluster, "q" * 49, engine={"tensorParallelSize": 16, "nodes": 2})
    assert out.returncode != 0 and "at most 48 characters with engine.nodes > 1" in out.stderr, out.stderr
    assert apply(cluster, "q" * 48, engine={"tensorParallelSize": 16, "nodes": 2}).returncode == 0
    assert apply(cluster, "q" * 63, engine={"tensorParallelSize": 16}).returncode == 0  # nodes unset


@pytest.mark.parametrize("name", ["qwen.v2", "9qwen", "q" * 64, "qwen-"])
def test_names_that_cannot_name_a_service_are_rejected_at_admission(cluster, name):
    out = apply(cluster, name)
    assert out.returncode != 0, out.stdout
    assert "metadata.name must be a DNS-1035 label" in out.stderr, out.stderr


def test_a_minimal_resource_names_only_its_model(cluster):
    body = {"apiVersion": "minisgl.io/v1alpha1", "kind": "MiniSGLDeployment", "metadata": {"name": "minimal"},
            "spec": {"model": {"path": "Qwen/Qwen3-0.6B"}}}
    out = cluster.kubectl("apply", "--dry-run=server", "-n", NS, "-f", "-", stdin=json.dumps(body), check=False)
    assert out.returncode == 0, out.stderr


def test_cpu_workers_may_have_no_gpu_and_tp_gpus_may_exceed(cluster):
    assert apply(cluster, "cpu", engine={"device": "cpu", "tensorParallelSize": 2}, resources={"gpu": 0}).returncode == 0
    assert apply(cluster, "big", engine={"tensorParallelSize": 2}, resources={"gpu": 4}).returncode == 0


def test_defaults_are_filled_in(cluster):
    out = apply(cluster, "defaults", dry_run=False)
    assert out.returncode == 0, out.stderr
    spec = json.loads(cluster.kubectl("get", "msgl", "defaults", "-n", NS, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 1
    assert spec["engine"]["tensorParallelSize"] == 1 and spec["engine"]["device"] == "cuda"
    assert "startupTimeoutSeconds" not in spec["probes"]  # unset: derived from the model's size
    assert spec["rollout"]["strategy"] == "Auto"
    assert spec["service"] == {"type": "ClusterIP", "port": 8000}


def test_cluster_ip_is_immutable(cluster):
    assert apply(cluster, "headless", dry_run=False, service={"clusterIP": "None"}).returncode == 0
    for change in ({"clusterIP": "10.0.0.9"}, {}):
        out = apply(cluster, "headless", service=change)
        assert out.returncode != 0 and "service.clusterIP is immutable" in out.stderr, out.stderr
    assert apply(cluster, "headless", service={"clusterIP": "None", "port": 9000}).returncode == 0


def test_kubectl_scale_and_printer_columns(cluster):
    assert apply(cluster, "scaled", dry_run=False, engine={"tensorParallelSize": 4}).returncode == 0
    cluster.kubectl("scale", "-n", NS, "msgl/scaled", "--replicas=3")
    spec = json.loads(cluster.kubectl("get", "msgl", "scaled", "-n", NS, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 3
    table = cluster.kubectl("get", "msgl", "scaled", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "READY", "REPLICAS", "MODEL", "TP", "AGE"]
    assert table[1].split()[1:4] == ["3", "Qwen/Qwen3-8B", "4"]
