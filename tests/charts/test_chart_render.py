"""The chart lints and renders for every documented value combination, and every rendered object
is valid against the real Kubernetes OpenAPI schemas (kubernetes-validate)."""
from __future__ import annotations

import json

import jsonschema
import kubernetes_validate
import pytest

from tests.charts.helm import CHART, KUBE_VERSIONS, by_kind, helm_binary, render, run_helm, set_args

pytestmark = pytest.mark.e2e

# One scenario per documented switch of values.yaml, plus everything on at once.
SCENARIOS: dict[str, dict] = {
    "default": {},
    "everything-on": {
        "fullnameOverride": "msgl-op",
        "commonLabels": {"team": "inference"},
        "operator.image.digest": "sha256:" + "a" * 64,
        "operator.imagePullSecrets": [{"name": "regcred"}],
        "operator.logLevel": "DEBUG",
        "operator.extraArgs": ["--resync-seconds=60"],
        "operator.extraEnv": [{"name": "FOO", "value": "bar"}],
        "operator.podLabels": {"sidecar.istio.io/inject": "false"},
        "operator.podAnnotations": {"example.com/owner": "ml"},
        "operator.nodeSelector": {"kubernetes.io/os": "linux"},
        "operator.tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "operator.affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "operator.priorityClassName": "system-cluster-critical",
        "serviceAccount.annotations": {"iam.example.com/role": "minisgl"},
        "serviceMonitor.enabled": True,
        "serviceMonitor.labels": {"release": "kube-prometheus-stack"},
        "dashboards.namespace": "monitoring",
        "dashboards.annotations": {"example.com/note": "x"},
        "prometheusRule.enabled": True,
        "prometheusRule.labels": {"release": "kube-prometheus-stack"},
        "routing.endpointPickerImage": "registry.example.com/epp:v1.2.0",
        "prometheusRule.alertLabels": {"team": "inference"},
        "prometheusRule.thresholds.ttftP99Seconds": 2.5,
        "workers.image.repository": "registry.example.com/minisgl-worker",
        "workers.image.tag": "0.2.0",
        "workers.resyncSeconds": 600,
        "workers.serviceMonitor.labels": {"release": "kube-prometheus-stack"},
        "autoscaling.prometheusAdapter.enabled": True,
        "autoscaling.prometheusAdapter.labels": {"team": "inference"},
    },
    "prometheus-adapter-rules": {"autoscaling.prometheusAdapter.enabled": True},
    "watch-release-namespace": {"watch.scope": "namespaces"},
    "watch-two-namespaces": {"watch.scope": "namespaces", "watch.namespaces": ["team-a", "team-b"]},
    "namespaced-with-cluster-pod-read": {"watch.scope": "namespaces", "watch.namespaces": ["team-a"],
                                         "rbac.readPodsClusterWide": True},
    "no-rbac-existing-service-account": {"rbac.create": False, "serviceAccount.create": False,
                                         "serviceAccount.name": "ops-sa"},
    "no-dashboards": {"dashboards.enabled": False},
    "dashboards-no-folder": {"dashboards.folder": ""},
    "alerts-only": {"prometheusRule.enabled": True, "dashboards.enabled": False},
}

# Minimal schemas for the Prometheus Operator kinds (no OpenAPI schema ships for them here);
# PrometheusRule contents are checked by promtool in test_alert_rules.py.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"]},
            "namespaceSelector": {"type": "object"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                               "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}},
        }}},
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["groups"], "properties": {"groups": {
        "type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "rules"]}}}}},
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_binary()


def test_chart_lints_strict_for_every_scenario(helm: str) -> None:
    for name, values in SCENARIOS.items():
        proc = run_helm(helm, "lint", str(CHART), "--strict", *set_args(values), check=False)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_is_valid(helm: str, scenario: str) -> None:
    objects = render(helm, SCENARIOS[scenario])
    assert by_kind(objects, "Deployment") and by_kind(objects, "CustomResourceDefinition")
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        labels = obj["metadata"].get("labels", {})
        if kind != "CustomResourceDefinition":
            assert labels.get("app.kubernetes.io/instance") == "minisgl", (kind, name)
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", (kind, name)
            assert (kind in CLUSTER_SCOPED) != bool(obj["metadata"].get("namespace")), (kind, name)
        if kind == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR)
        elif kind == "PrometheusRule":
            jsonschema.validate(obj, PROMETHEUS_RULE)
        else:
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{scenario}: {kind}/{name} invalid for Kubernetes {version}: {exc.message}")


def test_default_install_has_operator_rbac_and_dashboards_only(helm: str) -> None:
    kinds = sorted({o["kind"] for o in render(helm)})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
                     "Deployment", "ServiceAccount"]


def test_optional_objects_follow_their_toggles(helm: str) -> None:
    on = render(helm, SCENARIOS["everything-on"])
    assert len(by_kind(on, "ServiceMonitor")) == 1 and len(by_kind(on, "Service")) == 1
    assert len(by_kind(on, "PrometheusRule")) == 1
    assert {c["metadata"]["namespace"] for c in by_kind(on, "ConfigMap")
            if not c["metadata"]["name"].endswith("-prometheus-adapter")} == {"monitoring"}
    assert not by_kind(render(helm, SCENARIOS["no-dashboards"]), "ConfigMap")
    bare = render(helm, SCENARIOS["no-rbac-existing-service-account"])
    assert not [o for o in bare if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                 "Role", "RoleBinding"}]
    pod = by_kind(bare, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops-sa"


def test_dashboard_configmaps_carry_the_sidecar_label_and_json(helm: str) -> None:
    maps = by_kind(render(helm), "ConfigMap")
    assert sorted(k for m in maps for k in m["data"]) == ["deployment-detail.json", "fleet-overview.json"]
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"]["grafana_folder"] == "minisgl"
        for text in m["data"].values():
            assert json.loads(text)["uid"].startswith("minisgl-")
    assert "annotations" not in by_kind(render(helm, SCENARIOS["dashboards-no-folder"]), "ConfigMap")[0]["metadata"]


def test_operator_watches_what_the_values_say(helm: str) -> None:
    def args(values: dict) -> list[str]:
        return by_kind(render(helm, values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--all-namespaces" in args({})
    assert [a for a in args(SCENARIOS["watch-release-namespace"]) if a.startswith("--namespace")] == [
        "--namespace=minisgl-system"]
    two = args(SCENARIOS["watch-two-namespaces"])
    assert "--namespace=team-a" in two and "--namespace=team-b" in two and "--all-namespaces" not in two


def test_operator_pod_runs_non_root_read_only(helm: str) -> None:
    pod = by_kind(render(helm), "Deployment")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"].endswith(":0.1.0")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_operator_gets_the_worker_image_resync_and_service_monitor_labels(helm: str) -> None:
    args = by_kind(render(helm, SCENARIOS["everything-on"]), "Deployment")[0]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--worker-image=registry.example.com/minisgl-worker:0.2.0" in args
    assert "--resync-seconds=600" in args
    assert "--service-monitor-label=release=kube-prometheus-stack" in args
    default = by_kind(render(helm, {}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--worker-image=ghcr.io/minisgl/minisgl-worker:0.1.0" in default
    assert not [a for a in default if a.startswith("--service-monitor-label")]


def test_prometheus_adapter_rules_serve_the_metrics_the_hpas_ask_for(helm: str) -> None:
    import yaml

    from minisgl_operator.builders import HPA_METRICS

    assert not [c for c in by_kind(render(helm, {}), "ConfigMap") if c["metadata"]["name"].endswith("-adapter")]
    maps = [c for c in by_kind(render(helm, SCENARIOS["prometheus-adapter-rules"]), "ConfigMap")
            if c["metadata"]["name"].endswith("-prometheus-adapter")]
    rules = yaml.safe_load(maps[0]["data"]["config.yaml"])["rules"]
    assert {r["name"]["as"] for r in rules} == set(HPA_METRICS.values())
    for rule in rules:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_endpoint_picker_image_reaches_the_operator_only_when_set():
    helm = helm_binary()

    def args(values: dict) -> list[str]:
        [dep] = by_kind(render(helm, values), "Deployment")
        return dep["spec"]["template"]["spec"]["containers"][0]["args"]

    assert not [a for a in args({}) if a.startswith("--endpoint-picker-image")]
    assert "--endpoint-picker-image=registry.example.com/epp:v1.2.0" in args(
        {"routing.endpointPickerImage": "registry.example.com/epp:v1.2.0"})
