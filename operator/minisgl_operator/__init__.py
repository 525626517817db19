"""Kubernetes operator for minisgl: turns a MiniSGLDeployment into worker pods, a Service,
a PodDisruptionBudget, an HPA and a ServiceMonitor (python -m minisgl_operator)."""
from __future__ import annotations

GROUP = "minisgl.io"
VERSION = "v1alpha1"
KIND = "MiniSGLDeployment"
PLURAL = "minisgldeployments"
FIELD_MANAGER = "minisgl-operator"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_NAME = "worker"
CONTAINER_PORT = 8000

__all__ = [
    "GROUP", "VERSION", "KIND", "PLURAL", "FIELD_MANAGER", "GPU_RESOURCE",
    "CONTAINER_NAME", "CONTAINER_PORT",
]
