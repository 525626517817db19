"""examples/*.yaml are ready to apply: each MiniSGLDeployment passes the CRD's schema and the
operator's own spec checks, and every other object the Kubernetes OpenAPI schema."""
from __future__ import annotations

import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.charts.helm import KUBE_VERSIONS, REPO

sys.path.insert(0, str(REPO / "operator"))

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CRD = yaml.safe_load((REPO / "crds" / "minisgl.io_minisgldeployments.yaml").read_text())


def crd_schema() -> dict:
    [version] = [v for v in CRD["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def test_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == ["cached-download.yaml", "deployment.yaml", "minimal.yaml",
                                          "multi-node-405b.yaml", "routing.yaml", "tp4-autoscaling.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_objects_are_valid(path) -> None:
    from minisgl_operator.spec import parse_spec

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    resources = [d for d in docs if d["kind"] == "MiniSGLDeployment"]
    assert len(resources) == 1
    for doc in docs:
        if doc["kind"] == "MiniSGLDeployment":
            assert doc["apiVersion"] == f"{CRD['spec']['group']}/v1alpha1"
            # OpenAPI v3 as Kubernetes uses it: draft-4 style exclusiveMinimum: true.
            jsonschema.Draft4Validator(crd_schema()).validate(doc)
            # The operator's checks (CEL rules included) accept it, with the chart's default image.
            parse_spec(doc["spec"], default_image="ghcr.io/minisgl/minisgl-worker:0.1.0")
        else:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


def test_first_example_is_qwen3_on_one_gpu_with_monitoring() -> None:
    spec = yaml.safe_load((REPO / "examples" / "deployment.yaml").read_text())["spec"]
    assert spec["model"]["path"].startswith("Qwen/Qwen3-")
    assert spec["engine"]["tensorParallelSize"] == 1 and spec["resources"]["gpu"] == 1
    assert spec["monitoring"]["serviceMonitor"] is True


def test_tp4_example_autoscales_on_four_gpus_per_pod() -> None:
    from minisgl_operator.spec import parse_spec

    doc = next(d for d in yaml.safe_load_all((REPO / "examples" / "tp4-autoscaling.yaml").read_text())
               if d["kind"] == "MiniSGLDeployment")
    spec = parse_spec(doc["spec"])
    assert spec.tp_size == 4 and spec.gpu == 4
    assert spec.autoscaling is not None and spec.autoscaling.max_replicas > spec.autoscaling.min_replicas


def test_multi_node_example_spreads_tp16_over_two_eight_gpu_pods() -> None:
    from minisgl_operator.spec import parse_spec

    doc = yaml.safe_load((REPO / "examples" / "multi-node-405b.yaml").read_text())
    spec = parse_spec(doc["spec"], default_image="w:1")
    assert spec.multi_node and spec.nodes == 2 and spec.gpu == 8 and spec.tp_size == 16


def test_routing_example_creates_a_pool_and_its_picker() -> None:
    from minisgl_operator.spec import parse_spec

    doc = yaml.safe_load((REPO / "examples" / "routing.yaml").read_text())
    spec = parse_spec(doc["spec"], default_image="w:1")
    assert spec.routing is not None and spec.routing.creates_picker and spec.routing.failure_mode == "FailOpen"
