"""`helm install` into a real kube-apiserver: the CRD gets established, the examples are admitted
(CEL rules included), bad specs are refused, and the operator's ServiceAccount may do what its
rules say and nothing more, for the cluster-wide and the namespaced watch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.charts.helm import CHART, REPO, helm_binary, run_helm, set_args
from tests.e2e.kube import Cluster, find_binaries, write_kubeconfig

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
              "spec": {"image": "w:1", "model": {"path": "m"}, "engine": {"tensorParallelSize": 4, "nodes": 2},
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


def sa_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    return write_kubeconfig(path, cluster.server, cluster.dir / "ca.crt", sa, f'token: "{token}"',
                            namespace)


def test_namespaced_operator_reconciles_with_only_the_charts_rbac(cluster: Cluster, cluster_wide: str,
                                                                  tmp_path: Path) -> None:
    """Run the operator as the namespaced release's ServiceAccount: the split rules are enough."""
    import os
    import signal
    import subprocess
    import sys

    from tests.e2e.kube import free_port, wait_for

    if cluster.kubectl("get", "namespace", "team-ops", check=False).returncode != 0:
        test_namespaced_operator_is_confined_to_its_namespaces(cluster, cluster_wide)
    kubeconfig = sa_kubeconfig(cluster, "team-ops", "scoped-minisgl-operator", tmp_path / "sa.kubeconfig")
    # A just-issued token can be refused (401) for a moment; kopf gives up on 401 for good.
    wait_for(lambda: cluster.kubectl("auth", "can-i", "watch", "minisgldeployments.minisgl.io", "-n", "team-a",
                                     kubeconfig=kubeconfig, check=False).stdout.strip() == "yes",
             30, "the ServiceAccount token to authenticate")
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MINISGL_OPERATOR_RESYNC_SECONDS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "minisgl_operator", "--namespace=team-a",
                                 f"--liveness=http://127.0.0.1:{port}/healthz", "--metrics-port=0"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cluster.kubectl("apply", "-n", "team-a", "-f", str(REPO / "examples" / "deployment.yaml"))

        def reconciled() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"operator exited {proc.returncode}: {log.read_text()[-3000:]}")
            got = cluster.kubectl("get", "deployment", "qwen3", "-n", "team-a", check=False)
            phase = cluster.kubectl("get", "msgl", "qwen3", "-n", "team-a", "-o",
                                    "jsonpath={.status.phase}", check=False).stdout
            return got.returncode == 0 and bool(phase)

        try:
            wait_for(reconciled, 60, "the operator to create Deployment team-a/qwen3 and set status")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{log.read_text(errors='replace')[-4000:]}") from None
        forbidden = [line for line in log.read_text(errors="replace").splitlines()
                     if "403" in line or "forbidden" in line.lower()]
        # The only refusal allowed is the documented one: no cluster-wide pod read for GPU counting.
        assert all("cannot list nodes/pods" in line for line in forbidden), forbidden
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_install_with_every_new_toggle_on(cluster: Cluster, cluster_wide: str) -> None:
    install(cluster, "toggles", "minisgl-toggles", {
        "workers.image.repository": "registry.example.com/minisgl-worker",
        "workers.serviceMonitor.labels": {"release": "kube-prometheus-stack"},
        "autoscaling.prometheusAdapter.enabled": True})
    deploy = json.loads(cluster.kubectl("get", "deployment", "toggles-minisgl-operator", "-n", "minisgl-toggles",
                                        "-o", "json").stdout)
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--service-monitor-label=release=kube-prometheus-stack" in args
    assert cluster.kubectl("get", "configmap", "toggles-minisgl-operator-prometheus-adapter",
                           "-n", "minisgl-toggles", check=False).returncode == 0
