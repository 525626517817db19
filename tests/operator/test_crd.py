from __future__ import annotations

import os

import kubernetes_validate
import yaml

from minisgl_operator import GROUP, KIND, PLURAL, VERSION
from minisgl_operator import spec as spec_mod

CRD_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "crds", "minisgl.io_minisgldeployments.yaml")


def load() -> dict:
    with open(CRD_PATH) as f:
        return yaml.safe_load(f)


def schema() -> dict:
    return load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_crd_is_a_valid_custom_resource_definition():
    crd = load()
    kubernetes_validate.validate(crd, "1.37.0", strict=True)
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["names"]["kind"] == KIND and "msgl" in crd["spec"]["names"]["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == VERSION and version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Replicas", "Model", "TP", "Age"} <= columns


def test_schema_enums_match_what_the_operator_accepts():
    s = schema()
    engine = s["engine"]["properties"]
    assert tuple(engine["tensorParallelSize"]["enum"]) == spec_mod.TP_SIZES
    assert tuple(engine["dtype"]["enum"]) == spec_mod.DTYPES
    assert tuple(engine["attentionBackend"]["enum"]) == spec_mod.ATTENTION_BACKENDS
    assert tuple(engine["cacheType"]["enum"]) == spec_mod.CACHE_TYPES
    assert tuple(engine["kvCacheDtype"]["enum"]) == spec_mod.KV_CACHE_DTYPES
    assert tuple(engine["device"]["enum"]) == spec_mod.DEVICES
    assert tuple(s["rollout"]["properties"]["strategy"]["enum"]) == spec_mod.STRATEGIES
    assert tuple(s["autoscaling"]["properties"]["metric"]["enum"]) == spec_mod.METRICS
    assert tuple(s["service"]["properties"]["type"]["enum"]) == spec_mod.SERVICE_TYPES


def test_schema_defaults_match_the_parsed_defaults():
    s = schema()
    parsed = spec_mod.parse_spec({"image": "i", "model": {"path": "m"}})
    assert s["replicas"]["default"] == parsed.replicas
    # No default: an unset budget is derived from the model's size (pod.startup_budget).
    assert "default" not in s["probes"]["properties"]["startupTimeoutSeconds"] and parsed.startup_timeout_seconds is None
    assert s["shutdown"]["properties"]["drainTimeoutSeconds"]["default"] == parsed.drain_timeout_seconds
    assert s["service"]["properties"]["port"]["default"] == parsed.service_port
    # No default either: unset, the deadline follows the startup budget (pod.progress_deadline).
    assert "default" not in s["rollout"]["properties"]["progressDeadlineSeconds"]
    assert parsed.progress_deadline_seconds is None


def test_worker_enums_match_the_worker_cli():
    import pytest

    config = pytest.importorskip("minisgl.config")
    assert set(spec_mod.DTYPES) == set(config.DTYPES)
    assert set(spec_mod.ATTENTION_BACKENDS) == set(config.ATTENTION_BACKENDS)
    assert set(spec_mod.CACHE_TYPES) == set(config.CACHE_TYPES)
