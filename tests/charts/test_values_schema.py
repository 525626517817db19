"""values.schema.json rejects bad values with a clear message; values.yaml documents every key."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.charts.helm import CHART, helm_binary, run_helm, set_args

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()

BAD_VALUES = [
    ({"watch.scope": "everywhere"}, "watch.scope"),
    ({"watch.namespaces": ["Not_A_Namespace"]}, "watch.namespaces"),
    ({"operatr": {"logLevel": "info"}}, "operatr"),
    ({"operator.port": "8080"}, "operator.port"),
    ({"operator.port": 80}, "operator.port"),
    ({"operator.image.pullPolicy": "Sometimes"}, "operator.image.pullPolicy"),
    ({"operator.image.digest": "latest"}, "operator.image.digest"),
    ({"prometheusRule.thresholds.kvCacheUsageRatio": 1.5}, "kvCacheUsageRatio"),
    ({"prometheusRule.thresholds.startupGraceSeconds": "five minutes"}, "startupGraceSeconds"),
    ({"serviceMonitor.interval": "often"}, "serviceMonitor.interval"),
    ({"dashboards.enabled": "yes"}, "dashboards.enabled"),
]


def test_default_values_match_the_schema() -> None:
    jsonschema.validate(yaml.safe_load(VALUES_TEXT), SCHEMA)


@pytest.mark.e2e
@pytest.mark.parametrize("values,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_helm_refuses_bad_values_naming_the_field(values: dict, field: str) -> None:
    proc = run_helm(helm_binary(), "template", "minisgl", str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert field.split(".")[-1] in proc.stderr, proc.stderr


def _leaf_keys_without_doc(text: str) -> list[str]:
    """Dotted paths of keys given a value on their line (leaves) without a `# --` comment above.
    Keys inside free-form Kubernetes objects (resources, securityContext, ...) are skipped."""
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if any(path.startswith(f + ".") for f in FREE_FORM):
            continue
        j, block = i - 1, []
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j].strip())
            j -= 1
        if rest == "" and path not in FREE_FORM:
            continue  # a parent mapping: its children carry the docs
        if not any(c.startswith("# --") for c in block):
            missing.append(path)
    return missing


def test_every_value_is_documented() -> None:
    assert _leaf_keys_without_doc(VALUES_TEXT) == []


def _paths(schema: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, sub in schema.get("properties", {}).items():
        out.add(prefix + key)
        out |= _paths(sub, prefix + key + ".")
    return out


def _value_paths(values: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        out.add(prefix + key)
        if isinstance(value, dict) and value and prefix + key not in FREE_FORM:
            out |= _value_paths(value, prefix + key + ".")
    return out


# Kubernetes objects passed through as they are; the schema does not describe their insides.
FREE_FORM = {"operator.resources", "operator.podSecurityContext", "operator.securityContext",
             "operator.affinity"}


def test_schema_describes_every_value_and_requires_descriptions() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    assert _value_paths(values) <= _paths(SCHEMA)

    def walk(schema: dict, path: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            if sub.get("type") != "object" or "properties" not in sub:
                assert sub.get("description"), f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")

    walk(SCHEMA, "")
