"""The Grafana dashboards are well-formed and query only series the worker really exports."""
from __future__ import annotations

import json
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.charts.helm import REPO
from tests.charts.promql import DASHBOARDS, SYNTHETIC, dashboard_queries, metric_names

sys.path.insert(0, str(REPO / "worker"))


def exported_series() -> set[str]:
    """Sample names of a real ServerMetrics registry (buckets, _total, _count, _sum included)."""
    from minisgl.scheduler.types import SchedulerStats
    from minisgl.server.metrics import ServerMetrics

    metrics = ServerMetrics("m", lambda: SchedulerStats(), lambda: True)
    text = metrics.render().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (namespace, le) (rate(minisgl_x_bucket{job=~"a|b", le!="1"}[5m]))) '
            '/ on (pod) group_left max_over_time(up{pod="p"}[$__range:]) > bool 0.5 unless time()')
    assert metric_names(expr) == {"minisgl_x_bucket", "up"}


def test_dashboards_query_only_exported_series() -> None:
    known = exported_series() | SYNTHETIC
    assert {"minisgl_requests_total", "minisgl_time_to_first_token_seconds_bucket"} <= known
    for path in DASHBOARDS:
        for title, expr in dashboard_queries(path):
            unknown = metric_names(expr) - known
            assert not unknown, f"{path.name} '{title}': {sorted(unknown)} not exported by the worker"


def test_dashboards_cover_the_issue_panels() -> None:
    exprs = " ".join(e for path in DASHBOARDS for _, e in dashboard_queries(path))
    for name in ("minisgl_requests_total", "minisgl_generation_tokens_total", "minisgl_num_running_requests",
                 "minisgl_num_waiting_requests", "minisgl_kv_cache_usage_ratio",
                 "minisgl_prefix_cache_hit_tokens_total", "minisgl_time_to_first_token_seconds_bucket",
                 "minisgl_inter_token_latency_seconds_bucket", "minisgl_e2e_request_latency_seconds_bucket"):
        assert name in exprs, name
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}," in exprs


def test_dashboards_are_importable_grafana_json() -> None:
    assert [p.name for p in DASHBOARDS] == ["deployment-detail.json", "fleet-overview.json"]
    uids = set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] not in uids and len(dash["uid"]) <= 40
        uids.add(dash["uid"])
        variables = {v["name"] for v in dash["templating"]["list"]}
        assert "datasource" in variables
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dash["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (path.name, panel["title"])
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}"
        used = set(re.findall(r"\$(\w+)", json.dumps([e for _, e in dashboard_queries(path)])))
        assert used - {"__rate_interval", "__range", "__interval"} <= variables, (path.name, used)


def test_dashboards_select_deployments_by_a_label_both_scrape_paths_set() -> None:
    """`job` is the Service with a ServiceMonitor but the scrape config's name with annotations;
    app_kubernetes_io_instance is the MiniSGLDeployment either way."""
    import re

    from tests.charts.promql import DASHBOARDS, dashboard_queries

    for path in DASHBOARDS:
        for _, expr in dashboard_queries(path):
            assert not re.search(r"\bjob\b", expr), (path.name, expr)
