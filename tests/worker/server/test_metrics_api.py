"""/metrics parses with prometheus_client's parser, carries the contract's names, and moves;
a client that disconnects mid-stream frees its KV pages (visible in the metrics); the
vLLM-compatible aliases the endpoint picker scrapes mirror the minisgl series."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.worker.server.conftest import SERVED_NAME

NAMES = {
    "minisgl_requests": "counter", "minisgl_prompt_tokens": "counter",
    "minisgl_generation_tokens": "counter",
    "minisgl_time_to_first_token_seconds": "histogram",
    "minisgl_inter_token_latency_seconds": "histogram",
    "minisgl_e2e_request_latency_seconds": "histogram",
    "minisgl_queue_time_seconds": "histogram",
    "minisgl_num_running_requests": "gauge", "minisgl_num_waiting_requests": "gauge",
    "minisgl_kv_cache_usage_ratio": "gauge", "minisgl_prefix_cache_hit_tokens": "counter",
    "minisgl_prefix_cache_query_tokens": "counter",
    "minisgl_last_step_timestamp_seconds": "gauge", "minisgl_server_ready": "gauge",
    "minisgl_preemptions": "counter", "minisgl_startup_seconds": "gauge",
    "minisgl_finished_choices": "counter", "minisgl_rate_limited_requests": "counter",
    "minisgl_shed_requests": "counter",
}


VLLM_ALIASES = {  # vLLM name -> the minisgl sample it mirrors
    "vllm:num_requests_running": "minisgl_num_running_requests",
    "vllm:num_requests_waiting": "minisgl_num_waiting_requests",
    "vllm:kv_cache_usage_perc": "minisgl_kv_cache_usage_ratio",
    "vllm:gpu_cache_usage_perc": "minisgl_kv_cache_usage_ratio",
    "vllm:prefix_cache_queries_total": "minisgl_prefix_cache_query_tokens_total",
    "vllm:prefix_cache_hits_total": "minisgl_prefix_cache_hit_tokens_total",
}


def scrape(server) -> dict[str, float]:
    """sample name + sorted labels (model / model_name label dropped) -> value."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = "model_name" if s.name.startswith("vllm:") else "model"
            assert s.labels.get(key) == SERVED_NAME, s
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != key)
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def wait_for(server, cond, timeout: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(server)
        if cond(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics condition not met in {timeout}s: {m}")
        time.sleep(0.2)  # polling interval


def test_every_contract_metric_is_exported_with_model_label(server):
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in NAMES.items():
        assert families.get(name) == kind, (name, families.get(name))
    m = scrape(server)
    assert m["minisgl_server_ready{}"] == 1.0
    startup = httpx.get(f"{server.base_url}/health", timeout=10).json()["startup_seconds"]
    assert 0 < m["minisgl_startup_seconds{}"] == startup  # what the operator sizes probes by


def test_counters_and_histograms_move_with_requests(server):
    before = scrape(server)
    r = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                   json={"prompt": "hello world", "max_tokens": 5, "ignore_eos": True,
                         "stream": True, "temperature": 0})
    assert r.status_code == 200
    bad = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": ""}, timeout=10)
    assert bad.status_code == 400
    after = scrape(server)

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    assert delta("minisgl_requests_total{status=success}") == 1
    assert delta("minisgl_requests_total{status=error}") == 1
    assert delta("minisgl_finished_choices_total{reason=length}") == 1
    assert delta("minisgl_finished_choices_total{reason=stop}") == 0
    assert delta("minisgl_generation_tokens_total{}") == 5
    assert delta("minisgl_prompt_tokens_total{}") >= 2
    assert delta("minisgl_time_to_first_token_seconds_count{}") == 1
    assert 1 <= delta("minisgl_inter_token_latency_seconds_count{}") <= 4  # chunks may batch tokens
    assert delta("minisgl_e2e_request_latency_seconds_count{}") == 1
    assert delta("minisgl_queue_time_seconds_count{}") == 1
    assert delta("minisgl_prefix_cache_query_tokens_total{}") >= 2
    m = wait_for(server, lambda m: m["minisgl_last_step_timestamp_seconds{}"] > 0)
    assert abs(m["minisgl_last_step_timestamp_seconds{}"] - time.time()) < 600


def test_disconnect_mid_stream_aborts_and_frees_kv(server):
    before = scrape(server)
    body = {"prompt": "the cache", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            got += bool(line)
            if got >= 3:
                break
        running = wait_for(server, lambda m: m["minisgl_kv_cache_usage_ratio{}"] > 0)
        assert running["minisgl_num_running_requests{}"] >= 1
    # leaving the block closed the connection mid-stream
    after = wait_for(server, lambda m: m["minisgl_num_running_requests{}"] == 0
                     and m["minisgl_kv_cache_usage_ratio{}"] == 0
                     and m["minisgl_requests_total{status=abort}"]
                     > before["minisgl_requests_total{status=abort}"])
    assert after["minisgl_generation_tokens_total{}"] - before["minisgl_generation_tokens_total{}"] < 400


def test_non_streaming_disconnect_also_aborts(server):
    """The client closes the connection while the request is running (seen in the metrics),
    so the outcome never depends on how fast this machine generates."""
    import socket
    import json as _json

    before = scrape(server)
    body = _json.dumps({"prompt": "the page", "max_tokens": 480, "n": 16, "ignore_eos": True})
    host, port = server.base_url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port.split("/")[0])), timeout=10)
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\n"
                  f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                  f"{body}").encode())
    try:
        wait_for(server, lambda m: m["minisgl_num_running_requests{}"] >= 1, timeout=30)
    finally:
        sock.close()  # disconnect mid-generation
    wait_for(server, lambda m: m["minisgl_num_running_requests{}"] == 0
             and m["minisgl_kv_cache_usage_ratio{}"] == 0
             and m["minisgl_requests_total{status=abort}"]
             > before["minisgl_requests_total{status=abort}"])


def test_vllm_aliases_mirror_the_scheduler_series(server):
    """The names the endpoint picker v1.2 scrapes by default, equal to minisgl's own series
    (read from one stats snapshot per scrape), and moving with a request."""
    r = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                   json={"prompt": "the cache the cache the cache", "max_tokens": 2})
    assert r.status_code == 200
    m = wait_for(server, lambda m: m["vllm:prefix_cache_queries_total{}"] > 0)
    for alias, name in VLLM_ALIASES.items():
        assert m[f"{alias}{{}}"] == m[f"{name}{{}}"], alias
    assert "vllm:cache_config_info{}" not in m  # no page size given to this app's metrics


def test_cache_config_info_carries_page_size_and_pages():
    from minisgl.scheduler.types import SchedulerStats
    from minisgl.server.metrics import ServerMetrics

    stats = SchedulerStats(num_waiting=3, kv_used_pages=5, kv_total_pages=20)
    text = ServerMetrics("m", lambda: stats, lambda: True, page_size=16).render().decode()
    [info] = [s for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "vllm:cache_config_info"]
    assert info.labels == {"model_name": "m", "block_size": "16", "num_gpu_blocks": "20"}
    assert 'vllm:num_requests_waiting{model_name="m"} 3.0' in text
    assert 'vllm:gpu_cache_usage_perc{model_name="m"} 0.25' in text
