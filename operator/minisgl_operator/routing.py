"""spec.routing: prefix- and load-aware routing across replicas with the Gateway API Inference
Extension (sigs.k8s.io/gateway-api-inference-extension, v1 API). Pure builders.

The operator creates an `InferencePool` selecting the resource's serving pods, and, unless the
spec points at an existing endpoint picker (routing.endpointPicker.serviceRef), the picker (EPP)
itself: a ConfigMap with its scoring profile (queue length, KV-cache usage, prefix cache — the
metrics the workers export under vLLM's names), a ServiceAccount with a namespaced Role to watch
the pool and its pods, a Deployment and a Service. A Gateway (Envoy Gateway, Istio, GKE...) with
an HTTPRoute whose backendRef is the InferencePool sends requests through the picker.
"""
from __future__ import annotations

from dataclasses import dataclass

from minisgl_operator import CONTAINER_PORT
from minisgl_operator.multinode import leader_selector
from minisgl_operator.pod import CONTAINER_SECURITY_CONTEXT, common_labels, selector_labels

API_VERSION = "inference.networking.k8s.io/v1"
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
FAILURE_MODES = ("FailClose", "FailOpen")
CONFIG_FILE = "default-plugins.yaml"


def epp_config(max_endpoints: int = 1) -> str:
    """The picker's EndpointPickerConfig: the scorers and weights of the upstream chart's default
    profile; max-score-picker returns the best `max_endpoints` endpoints, best first (more than
    one gives a Gateway that honours the fallback list, e.g. Envoy's override_host, a retry
    target)."""
    if max_endpoints < 1:
        raise ValueError(f"max_endpoints must be >= 1, got {max_endpoints}")
    picker = "- type: max-score-picker\n"
    if max_endpoints > 1:
        picker += f"  parameters:\n    maxNumOfEndpoints: {max_endpoints}\n"
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
{picker}schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""


# What the picker reads: the pool, its pods, the objectives (x-k8s.io) that may refer to the pool.
EPP_RULES = [
    {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["inference.networking.x-k8s.io"], "resources": ["inferenceobjectives"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]


@dataclass(frozen=True)
class Routing:
    failure_mode: str = "FailClose"
    image: str | None = None  # the picker's image; None with service_ref
    replicas: int = 1
    service_ref: str | None = None  # an existing picker's Service: no picker is created
    service_port: int = EPP_GRPC_PORT

    @property
    def creates_picker(self) -> bool:
        return self.service_ref is None


def epp_name(name: str) -> str:
    return f"{name}-epp"


def epp_labels(name: str) -> dict[str, str]:
    return {**common_labels(name), "app.kubernetes.io/name": "minisgl-endpoint-picker",
            "app.kubernetes.io/component": "endpoint-picker"}


def build_inference_pool(name: str, routing: Routing, metadata: dict, multi_node: bool) -> dict:
    selector = {**selector_labels(name), **(leader_selector() if multi_node else {})}
    return {
        "apiVersion": API_VERSION,
        "kind": "InferencePool",
        "metadata": {**metadata, "name": name},
        "spec": {
            "selector": {"matchLabels": selector},
            "targetPorts": [{"number": CONTAINER_PORT}],
            "endpointPickerRef": {"name": routing.service_ref or epp_name(name),
                                  "port": {"number": routing.service_port}, "failureMode": routing.failure_mode},
        },
    }


def _meta(name: str, metadata: dict) -> dict:
    return {**metadata, "name": epp_name(name), "labels": epp_labels(name)}


def build_picker(name: str, namespace: str, routing: Routing, metadata: dict) -> list[dict]:
    """The endpoint picker's objects, in apply order (config and RBAC before the Deployment)."""
    if not routing.creates_picker or not routing.image:
        raise ValueError("build_picker needs routing.endpointPicker.image and no serviceRef")
    meta = _meta(name, metadata)
    selector = {"app.kubernetes.io/name": "minisgl-endpoint-picker", "app.kubernetes.io/instance": name}
    container = {
        "name": "epp",
        "image": routing.image,
        "args": ["--pool-name", name, "--pool-namespace", namespace,
                 "--grpc-port", str(EPP_GRPC_PORT), "--grpc-health-port", str(EPP_HEALTH_PORT),
                 "--metrics-port", str(EPP_METRICS_PORT), "--metrics-endpoint-auth=false", "--tracing=false",
                 "--config-file", f"/config/{CONFIG_FILE}",
                 *(["--ha-enable-leader-election"] if routing.replicas > 1 else [])],
        "ports": [{"name": "grpc", "containerPort": EPP_GRPC_PORT},
                  {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT},
                  {"name": "metrics", "containerPort": EPP_METRICS_PORT}],
        "livenessProbe": {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"},
                          "initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"},
                           "periodSeconds": 2},
        "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True}],
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {CONFIG_FILE: epp_config()}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": EPP_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": epp_name(name)},
         "subjects": [{"kind": "ServiceAccount", "name": epp_name(name), "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": routing.replicas,
            # One active picker: its prefix index lives in memory (the upstream chart does the same).
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": epp_labels(name)}, "spec": {
                "serviceAccountName": epp_name(name),
                "terminationGracePeriodSeconds": 130,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": epp_name(name)}}],
            }},
        }},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "selector": selector,
            "ports": [{"name": "grpc", "port": EPP_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "http2"},
                      {"name": "metrics", "port": EPP_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        }},
    ]
