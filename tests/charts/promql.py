"""Metric names in a PromQL expression, and the dashboards' queries with Grafana variables filled in."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tests.charts.helm import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Series Prometheus itself adds to every scrape target.
SYNTHETIC = {"up"}

_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor",
    "group", "histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time",
    "ln", "max", "max_over_time", "min", "min_over_time", "predict_linear", "quantile", "quantile_over_time",
    "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "stddev", "sum", "sum_over_time", "time",
    "timestamp", "topk", "vector",
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (label matchers, groupings and strings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                      # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)                     # ranges, subqueries
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", text))
    return {w for w in words if w not in _FUNCTIONS and w.lower() not in _KEYWORDS}


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target, rows' nested panels included."""
    dash = json.loads(path.read_text())
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))

    walk(dash["panels"])
    return out


def substitute(expr: str, variables: dict[str, str], rate_interval: str = "30s", range_: str = "5m") -> str:
    """Fill Grafana's variables the way Grafana would for one selected value each."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    expr = expr.replace("$__interval", "1s")
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return expr
