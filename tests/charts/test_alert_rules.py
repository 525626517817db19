"""The chart's PrometheusRule passes `promtool check rules`, and each alert fires (and stays quiet)
when it should, checked with `promtool test rules` on synthetic series."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.helm import by_kind, helm_binary, render, require_binary

pytestmark = pytest.mark.e2e

# A worker target as the operator's ServiceMonitor labels it, and one scraped by pod annotations
# (one job for every pod, no container/endpoint; the pod labels through the usual labelmap).
POD_LABELS = 'app_kubernetes_io_name="minisgl-worker", app_kubernetes_io_instance="q"'
W = f'namespace="ns", job="q", pod="q-0", container="worker", endpoint="http", {POD_LABELS}'
A = ('namespace="ns", job="kubernetes-pods", pod="a-0", app_kubernetes_io_name="minisgl-worker", '
     'app_kubernetes_io_instance="a"')
M = f'namespace="ns", job="q", pod="q-0", model="m", {POD_LABELS}'
I = "app_kubernetes_io_instance"
LABELS = {"namespace": "ns", I: "q", "pod": "q-0", "model": "m"}  # what the per-pod aggregations keep
SERIES = {"namespace": "ns", "job": "q", "pod": "q-0", "model": "m", "app_kubernetes_io_name": "minisgl-worker", I: "q"}
W_LABELS = {"namespace": "ns", "job": "q", "pod": "q-0", "container": "worker", "endpoint": "http",
            "app_kubernetes_io_name": "minisgl-worker", I: "q"}
A_LABELS = {"namespace": "ns", "job": "kubernetes-pods", "pod": "a-0", "app_kubernetes_io_name": "minisgl-worker",
            I: "a"}
DESC = {
    "MiniSGLKVCacheNearFull": "KV cache usage has stayed above 0.95 for 15 minutes; requests queue for pages. "
                              "Scale out or raise memoryRatio.",
    "MiniSGLServerDown": "The worker served requests within the last hour but its /metrics endpoint has not "
                         "answered for 2 minutes (crashed, hung or OOM-killed).",
    "MiniSGLSchedulerStalled": "No scheduler step for more than 120s while requests are queued or running; "
                               "/health turns 503 and the liveness probe restarts the pod.",
    "MiniSGLErrorRatioHigh": "More than 0.05 of finished requests ended with status=error over 10 minutes.",
}
NOT_READY = ("Not ready for {}, longer than the startup budget of {} plus 300s: check `kubectl describe msgl` "
             "conditions and the pod's logs (model download, GPU memory, image pull).")
# The operator's own series, scraped from its pod (namespace/pod/job are the operator's).
OP = 'namespace="minisgl-system", job="minisgl-operator", pod="op-0"'



def alert(name: str, labels: dict, summary: str, description: str | None = None) -> dict:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description or DESC[name]}}


def case(series: dict[str, str], checks: list[tuple[str, str, list[dict]]]) -> dict:
    return {"interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{"eval_time": t, "alertname": n, "exp_alerts": e} for t, n, e in checks]}


CASES = [
    case({f"minisgl_kv_cache_usage_ratio{{{M}}}": "0.97x30",
          'minisgl_kv_cache_usage_ratio{namespace="ns", job="q", pod="q-1", model="m"}': "0.5x30"}, [
        ("10m", "MiniSGLKVCacheNearFull", []),
        ("20m", "MiniSGLKVCacheNearFull", [alert("MiniSGLKVCacheNearFull", {**LABELS, "severity": "warning"},
                                                 "KV cache of ns/q-0 is 97% full")]),
    ]),
    case({f"up{{{W}}}": "1x10 0x10", f"minisgl_server_ready{{{M}}}": "1x10 _x10",
          'up{namespace="ns", job="other", pod="o-0"}': "0x20"}, [
        ("12m", "MiniSGLServerDown", []),
        ("15m", "MiniSGLServerDown", [alert("MiniSGLServerDown", {**W_LABELS, "severity": "critical"},
                                            "minisgl worker ns/q-0 is down")]),
    ]),
    case({f"minisgl_last_step_timestamp_seconds{{{M}}}": "60x20", f"minisgl_num_waiting_requests{{{M}}}": "3x20",
          f"minisgl_num_running_requests{{{M}}}": "0x20",
          'minisgl_last_step_timestamp_seconds{namespace="ns", job="q", pod="idle", model="m"}': "60x20",
          'minisgl_num_waiting_requests{namespace="ns", job="q", pod="idle", model="m"}': "0x20",
          'minisgl_num_running_requests{namespace="ns", job="q", pod="idle", model="m"}': "0x20"}, [
        ("3m", "MiniSGLSchedulerStalled", []),
        ("6m", "MiniSGLSchedulerStalled", [alert("MiniSGLSchedulerStalled", {**SERIES, "severity": "critical"},
                                                 "minisgl scheduler stalled on ns/q-0")]),
    ]),
    case({f'minisgl_time_to_first_token_seconds_bucket{{{M}, le="1"}}': "0x30",
          f'minisgl_time_to_first_token_seconds_bucket{{{M}, le="20"}}': "0+10x30",
          f'minisgl_time_to_first_token_seconds_bucket{{{M}, le="+Inf"}}': "0+10x30"}, [
        ("8m", "MiniSGLTTFTHigh", []),
        ("20m", "MiniSGLTTFTHigh", [alert("MiniSGLTTFTHigh", {"namespace": "ns", I: "q", "model": "m",
                                                              "severity": "warning"},
                                          "TTFT p99 of ns/q above 10s",
                                          "p99 time to first token is 19.81s; add replicas or lower max running "
                                          "requests.")]),
    ]),
    case({f'minisgl_requests_total{{{M}, status="error"}}': "0+1x30",
          f'minisgl_requests_total{{{M}, status="success"}}': "0+9x30",
          # Another deployment in the same scrape job (annotation scraping) does not dilute the ratio.
          f'minisgl_requests_total{{namespace="ns", job="q", pod="ok-0", model="m", {I}="ok", status="error"}}': "0x30",
          f'minisgl_requests_total{{namespace="ns", job="q", pod="ok-0", model="m", {I}="ok", status="success"}}':
              "0+9x30"}, [
        ("8m", "MiniSGLErrorRatioHigh", []),
        ("20m", "MiniSGLErrorRatioHigh", [alert("MiniSGLErrorRatioHigh", {"namespace": "ns", I: "q", "model": "m",
                                                                          "severity": "critical"},
                                                "10% of requests to ns/q fail")]),
    ]),
    # Each pod against its own resource's budget: a big model's 40-minute load (budget 3600 s) is
    # quiet while a small model (budget 900 s) stuck for 25 minutes fires.
    case({f'minisgl_operator_startup_budget_seconds{{{OP}, resource_namespace="ns", resource_name="big"}}': "3600x40",
          f'minisgl_operator_startup_budget_seconds{{{OP}, resource_namespace="ns", resource_name="small"}}': "900x40",
          f'minisgl_operator_worker_not_ready_seconds{{{OP}, resource_namespace="ns", resource_name="big", '
          'worker_pod="big-0"}': "0+60x40",
          f'minisgl_operator_worker_not_ready_seconds{{{OP}, resource_namespace="ns", resource_name="small", '
          'worker_pod="small-0"}': "0+60x40"}, [
        ("19m", "MiniSGLPodNotReady", []),  # 1140 s < 900 + 300, and for: 1m
        ("25m", "MiniSGLPodNotReady", [
            alert("MiniSGLPodNotReady", {"resource_namespace": "ns", "resource_name": "small", "worker_pod": "small-0",
                                         "severity": "warning"}, "minisgl worker ns/small-0 not ready past its startup budget",
                  NOT_READY.format("25m 0s", "small"))]),
    ]),
    # Annotation scraping puts two deployments in one job: TTFT is judged per deployment.
    case({f'minisgl_time_to_first_token_seconds_bucket{{{A}, model="m", le="1"}}': "0x30",
          f'minisgl_time_to_first_token_seconds_bucket{{{A}, model="m", le="20"}}': "0+10x30",
          f'minisgl_time_to_first_token_seconds_bucket{{{A}, model="m", le="+Inf"}}': "0+10x30",
          'minisgl_time_to_first_token_seconds_bucket{namespace="ns", job="kubernetes-pods", pod="b-0", '
          f'{I}="b", model="m", le="1"}}': "0+1000x30",
          'minisgl_time_to_first_token_seconds_bucket{namespace="ns", job="kubernetes-pods", pod="b-0", '
          f'{I}="b", model="m", le="+Inf"}}': "0+1000x30"}, [
        ("20m", "MiniSGLTTFTHigh", [alert("MiniSGLTTFTHigh", {"namespace": "ns", I: "a", "model": "m",
                                                              "severity": "warning"},
                                          "TTFT p99 of ns/a above 10s",
                                          "p99 time to first token is 19.81s; add replicas or lower max running "
                                          "requests.")]),
    ]),
]


def promtool() -> str:
    return require_binary(shutil.which("promtool"), "promtool", "bash .ci/install_prometheus.sh")


def write_rules(tmp_path: Path, values: dict | None = None) -> Path:
    [rule] = by_kind(render(helm_binary(), {"prometheusRule.enabled": True, **(values or {})}), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    tool = promtool()
    proc = subprocess.run([tool, "check", "rules", str(write_rules(tmp_path))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_each_alert_fires_only_when_its_condition_holds(tmp_path: Path) -> None:
    tool = promtool()
    rules = write_rules(tmp_path)
    spec = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": CASES}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run([tool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_thresholds_come_from_values(tmp_path: Path) -> None:
    text = write_rules(tmp_path, {"prometheusRule.thresholds.kvCacheUsageRatio": 0.8,
                                  "prometheusRule.thresholds.startupGraceSeconds": 600}).read_text()
    assert "> 0.8" in text and "+ 600)" in text
