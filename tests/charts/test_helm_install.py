"""`helm install` into a real kube-apiserver: the CRD gets established, the examples are admitted
(CEL rules included), bad specs are refused, and the operator's ServiceAccount may do what its
rules say and nothing more, for the cluster-wide and the namespaced watch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.charts.helm import CHART, REPO, helm_binary, run_helm, set_args
from tests.e2e.kube import Cluster, find_binaries

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    helm_binary()  # skip before starting a control plane when Helm is missing
    c = Cluster(find_binaries(), tmp_path_factory.mktemp("kube")).start()
    try:
        yield c
    finally:
        c.stop()


def install(cluster: Cluster, release: str, namespace: str, values: dict | None = None) -> str:
    proc = run_helm(helm_binary(), "install", release, str(CHART), "--kubeconfig", str(cluster.kubeconfig),
                    "--namespace", namespace, "--create-namespace", *set_args(values or {}))
    return proc.stdout


def can(cluster: Cluster, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    out = cluster.kubectl("auth", "can-i", verb, resource, f"--as={sa}", *scope, check=False)
    return out.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def cluster_wide(cluster: Cluster) -> str:
    notes = install(cluster, "minisgl", "minisgl-system")
    assert "kubectl get msgl" in notes and "all namespaces" in notes
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/minisgldeployments.minisgl.io")
    return "system:serviceaccount:minisgl-system:minisgl-minisgl-operator"


def test_install_creates_operator_and_admits_the_examples(cluster: Cluster, cluster_wide: str) -> None:
    deploy = json.loads(cluster.kubectl("get", "deployment", "minisgl-minisgl-operator", "-n", "minisgl-system",
                                        "-o", "json").stdout)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "minisgl-minisgl-operator"
    for example in sorted((REPO / "examples").glob("*.yaml")):
        out = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(example), check=False)
        assert out.returncode == 0, f"{example.name}: {out.stderr}"
    cluster.kubectl("apply", "-n", "default", "-f", str(REPO / "examples" / "deployment.yaml"))
    listed = cluster.kubectl("get", "msgl", "-n", "default").stdout
    assert "qwen3" in listed and "Qwen/Qwen3-8B" in listed


def test_api_server_refuses_a_spec_with_fewer_gpus_than_tp_ranks(cluster: Cluster, cluster_wide: str) -> None:
    bad = """{"apiVersion": "minisgl.io/v1alpha1", "kind": "MiniSGLDeployment", "metadata": {"name": "bad"},
              "spec": {"image": "w:1", "model": {"path": "m"}, "engine": {"tensorParallelSize": 2},
                       "resources": {"gpu": 1}}}"""
    out = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", stdin=bad, check=False)
    assert out.returncode != 0 and "resources.gpu must be >= engine.tensorParallelSize" in out.stderr


def test_cluster_wide_operator_has_exactly_its_rules(cluster: Cluster, cluster_wide: str) -> None:
    sa = cluster_wide
    for verb, resource in (("watch", "minisgldeployments.minisgl.io"), ("patch", "minisgldeployments/status"),
                           ("create", "deployments.apps"), ("delete", "services"), ("list", "nodes"),
                           ("create", "events"), ("list", "customresourcedefinitions")):
        assert can(cluster, sa, verb, resource, None), (verb, resource)
    for verb, resource in (("get", "secrets"), ("delete", "nodes"), ("create", "pods"),
                           ("delete", "minisgldeployments.minisgl.io"), ("create", "clusterroles")):
        assert not can(cluster, sa, verb, resource, None), (verb, resource)


def test_namespaced_operator_is_confined_to_its_namespaces(cluster: Cluster, cluster_wide: str) -> None:
    cluster.kubectl("create", "namespace", "team-a")
    notes = install(cluster, "scoped", "team-ops", {"watch.scope": "namespaces", "watch.namespaces": ["team-a"]})
    assert "namespace(s): team-a" in notes
    sa = "system:serviceaccount:team-ops:scoped-minisgl-operator"
    assert can(cluster, sa, "watch", "minisgldeployments.minisgl.io", "team-a")
    assert can(cluster, sa, "create", "deployments.apps", "team-a")
    assert not can(cluster, sa, "watch", "minisgldeployments.minisgl.io", "default")
    assert not can(cluster, sa, "create", "deployments.apps", "default")
    assert not can(cluster, sa, "list", "pods", None)  # opt-in: rbac.readPodsClusterWide
    assert can(cluster, sa, "list", "nodes", None) and can(cluster, sa, "watch", "customresourcedefinitions", None)


def test_helm_refuses_bad_values_before_touching_the_cluster(cluster: Cluster, cluster_wide: str) -> None:
    proc = run_helm(helm_binary(), "install", "broken", str(CHART), "--kubeconfig", str(cluster.kubeconfig),
                    "--namespace", "broken", "--create-namespace", *set_args({"watch.scope": "galaxy"}), check=False)
    assert proc.returncode != 0 and "/watch/scope" in proc.stderr
    assert cluster.kubectl("get", "namespace", "broken", check=False).returncode != 0
