"""A small dict-in, dict-out Kubernetes API client over the kubernetes package's ApiClient.

Objects stay plain JSON dicts end to end (what the builders make, what server-side apply
takes), so no typed-model conversion sits between the builders and the API server.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from minisgl_operator import FIELD_MANAGER

logger = logging.getLogger(__name__)

PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "Pod": "pods",
    "Node": "nodes",
    "Event": "events",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ServiceMonitor": "servicemonitors",
    "Job": "jobs",
    "ResourceQuota": "resourcequotas",
    "Namespace": "namespaces",
    "MiniSGLDeployment": "minisgldeployments",
    "LeaderWorkerSet": "leaderworkersets",
    "InferencePool": "inferencepools",
    "ScaledObject": "scaledobjects",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


def api_base(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    if kind not in PLURALS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(PLURALS)}")
    path = api_base(api_version)
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def load_api_client() -> client.ApiClient:
    """In-cluster service account if there is one, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api_client = api_client
        self.field_manager = field_manager

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if not hasattr(self.api_client, "param_serialize"):  # kubernetes < 34: swagger-codegen client
            return self.api_client.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True,
            )
        method, url, headers, payload, post = self.api_client.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.api_client.call_api(method, url, headers, payload, post)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        return json.loads(data) if data else None

    def get(self, path: str) -> dict | None:
        try:
            return self.request("GET", path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None, field_selector: str | None = None) -> list[dict]:
        query = [(k, v) for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v]
        return list((self.request("GET", path, query=query) or {}).get("items") or [])

    def delete(self, path: str) -> bool:
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"})
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    def apply(self, obj: Mapping) -> dict:
        """Server-side apply as this operator's field manager, taking over conflicting fields
        (that is how an existing object of the same name is adopted)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = [("fieldManager", self.field_manager), ("force", "true")]
        return self.request("PATCH", path, body=dict(obj), query=query, content_type="application/apply-patch+yaml")

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves this resource (e.g. monitoring.coreos.com/v1 servicemonitors)."""
        resources = (self.get(api_base(api_version)) or {}).get("resources") or []
        return any(r.get("name") == plural for r in resources)
