"""Prometheus metrics of one API server (names: /work/helpers/METRICS.md, DESIGN.md "Metrics").

One CollectorRegistry per app, never prometheus-client's process-wide default, so two apps in
one process (tests) do not share counters. Per-request series are recorded by the serving layer;
scheduler state (running / waiting / KV / prefix cache / last step) is read from
`frontend.stats()` at scrape time by a custom collector, so it is never stale by more than the
stats refresh interval and needs no background task.

vLLM-compatible aliases (always on, label `model_name` as vLLM's): the same scheduler state under
the names the Gateway API Inference Extension's endpoint picker (EPP) scrapes by default, so an
InferencePool of minisgl pods needs no `--*-metric` flags on the EPP (v1.2 defaults:
`vllm:num_requests_waiting`, `vllm:gpu_cache_usage_perc`, `vllm:cache_config_info`), plus the
newer vLLM names (`vllm:kv_cache_usage_perc`, `vllm:num_requests_running`,
`vllm:prefix_cache_{queries,hits}_total`) that vLLM dashboards and other pickers read. A handful
of series, read from the same stats snapshot: cheaper than a flag and its documentation.
`vllm:cache_config_info{block_size,num_gpu_blocks}` only when given a page size: the picker's
prefix index auto-tunes from it (blocks of block_size x 4 characters, at most 256 of them), so a
page size of 1 would make it look at a prompt's first 1,024 characters only; without it the
picker keeps its 64-character blocks.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minisgl.scheduler.types import SchedulerStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
               0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0,
               1920.0)


class _SchedulerCollector(Collector):
    def __init__(self, model: str, stats: Callable[[], SchedulerStats],
                 ready: Callable[[], bool], startup_seconds: float | None = None,
                 page_size: int | None = None) -> None:
        self._model, self._stats, self._ready = model, stats, ready
        self._startup, self._page_size = startup_seconds, page_size

    def collect(self) -> Iterable[Metric]:
        s, labels = self._stats(), [self._model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model"])
            c.add_metric(labels, value)
            return c

        yield gauge("minisgl_num_running_requests", "Requests in the running batch.", s.num_running)
        yield gauge("minisgl_num_waiting_requests", "Requests queued in the scheduler.",
                    s.num_waiting)
        yield gauge("minisgl_kv_cache_usage_ratio", "Used KV pages / total pages (0..1).",
                    s.kv_usage)
        yield counter("minisgl_prefix_cache_hit_tokens", "Prompt tokens served from the prefix "
                      "cache.", s.prefix_hit_tokens_total)
        yield counter("minisgl_prefix_cache_query_tokens", "Prompt tokens looked up in the prefix "
                      "cache.", s.prefix_query_tokens_total)
        yield gauge("minisgl_last_step_timestamp_seconds", "Unix time of the scheduler's last "
                    "step.", s.last_step_time)
        yield gauge("minisgl_server_ready", "1 when /ready answers 200, else 0.",
                    1.0 if self._ready() else 0.0)
        yield counter("minisgl_preemptions", "Requests preempted under KV-cache pressure "
                      "(recomputed later).", s.extra.get("preemptions_total", 0))
        yield counter("minisgl_grammar_compile_seconds", "Time compiling structured-output "
                      "grammars (xgrammar), cache misses only.",
                      s.extra.get("grammar_compile_seconds_total", 0.0))
        yield counter("minisgl_grammar_compiles", "Structured-output grammars compiled (cache "
                      "misses).", s.extra.get("grammar_compiles_total", 0))
        yield counter("minisgl_grammar_cache_hits", "Structured-output requests whose grammar "
                      "was already compiled.", s.extra.get("grammar_cache_hits_total", 0))
        if self._startup is not None:
            yield gauge("minisgl_startup_seconds", "Process start to serving: model loaded, "
                        "CUDA graphs captured, kernels warmed up (sizes probes and autoscaling).",
                        self._startup)
        yield from self._vllm_aliases(s)

    def _vllm_aliases(self, s: SchedulerStats) -> Iterable[Metric]:
        labels = [self._model]

        def family(kind: type, name: str, doc: str, value: float) -> Metric:
            m = kind(name, doc + " (vLLM-compatible alias)", labels=["model_name"])
            m.add_metric(labels, value)
            return m

        yield family(GaugeMetricFamily, "vllm:num_requests_running", "Requests in the running "
                     "batch.", s.num_running)
        yield family(GaugeMetricFamily, "vllm:num_requests_waiting", "Requests queued in the "
                     "scheduler.", s.num_waiting)
        yield family(GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage (0..1).",
                     s.kv_usage)
        yield family(GaugeMetricFamily, "vllm:gpu_cache_usage_perc", "KV-cache usage (0..1); "
                     "the name the endpoint picker v1.2 reads by default.", s.kv_usage)
        yield family(CounterMetricFamily, "vllm:prefix_cache_queries", "Prompt tokens looked up "
                     "in the prefix cache.", s.prefix_query_tokens_total)
        yield family(CounterMetricFamily, "vllm:prefix_cache_hits", "Prompt tokens served from "
                     "the prefix cache.", s.prefix_hit_tokens_total)
        if self._page_size and s.kv_total_pages:
            # The picker sizes its prefix index from these labels (block_size in tokens).
            info = GaugeMetricFamily("vllm:cache_config_info", "KV-cache configuration "
                                     "(vLLM-compatible alias).",
                                     labels=["model_name", "block_size", "num_gpu_blocks"])
            info.add_metric([self._model, str(self._page_size), str(s.kv_total_pages)], 1.0)
            yield info


FINISH_REASONS = ("stop", "length", "abort")


class ServerMetrics:
    """The metrics of one served model; `observe_*` are called by the serving layer."""

    def __init__(self, model: str, stats: Callable[[], SchedulerStats],
                 ready: Callable[[], bool], startup_seconds: float | None = None,
                 page_size: int | None = None) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        r, lbl = self.registry, ["model"]
        self.requests = Counter("minisgl_requests", "Finished HTTP generation requests.",
                                ["model", "status"], registry=r)
        self.prompt_tokens = Counter("minisgl_prompt_tokens", "Prompt tokens processed.", lbl,
                                     registry=r).labels(model)
        self.generation_tokens = Counter("minisgl_generation_tokens", "Output tokens generated.",
                                         lbl, registry=r).labels(model)
        self.ttft = Histogram("minisgl_time_to_first_token_seconds", "Arrival to first token.",
                              lbl, buckets=TTFT_BUCKETS, registry=r).labels(model)
        self.itl = Histogram("minisgl_inter_token_latency_seconds", "Gap between consecutive "
                             "tokens of one request.", lbl, buckets=ITL_BUCKETS,
                             registry=r).labels(model)
        self.e2e = Histogram("minisgl_e2e_request_latency_seconds", "Arrival to finish.", lbl,
                             buckets=E2E_BUCKETS, registry=r).labels(model)
        self.queue_time = Histogram("minisgl_queue_time_seconds", "Arrival at the scheduler to "
                                    "first scheduled.", lbl, buckets=TTFT_BUCKETS,
                                    registry=r).labels(model)
        self.rate_limited = Counter("minisgl_rate_limited_requests", "Requests refused with 429: "
                                    "an API key over its rpm / tpm limit.", lbl,
                                    registry=r).labels(model)
        self.shed = Counter("minisgl_shed_requests", "Requests refused with 503 because the "
                            "queue was full (--max-queued-requests).", lbl, registry=r).labels(model)
        self.finish_reasons = Counter("minisgl_finished_choices", "Finished choices (one per n) by "
                                      "finish reason.", ["model", "reason"], registry=r)
        for reason in FINISH_REASONS:
            self.finish_reasons.labels(model, reason)
        for status in ("success", "error", "abort"):
            self.requests.labels(model, status)  # export zeros so rate() works from the start
        r.register(_SchedulerCollector(model, stats, ready, startup_seconds, page_size))

    def request_finished(self, status: str) -> None:
        if status not in ("success", "error", "abort"):
            raise ValueError(f"unknown request status {status!r}")
        self.requests.labels(self.model, status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
