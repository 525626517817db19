"""Scheduler process main: one per tensor-parallel rank, wrapping the in-process Scheduler."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from minisgl.config import SchedulerConfig
from minisgl.errors import MiniSGLError
from minisgl.message.backend import AbortBackendMsg, UserMsg
from minisgl.server.endpoints import Endpoints

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5  # the API process expects fresh stats at least every second
# After a request finishes, stats follow within this long, so a client that scrapes /metrics
# right after its response sees its request counted (bounded: one send per 20 ms at most).
STATS_AFTER_FINISH_S = 0.02


@dataclass(frozen=True)
class SchedulerSpec:
    config: SchedulerConfig
    endpoints: Endpoints
    log_level: str = "info"


def scheduler_main(spec: SchedulerSpec, ack_queue: Any) -> None:
    """Process entry point (spawn target)."""
    from minisgl.utils.proc import run_child

    name = f"scheduler{spec.config.tp_rank}"
    run_child(name, ack_queue, spec.log_level, lambda ack: _serve(spec, ack))


def _serve(spec: SchedulerSpec, ack: Callable[[dict], None]) -> None:
    from minisgl.scheduler.io import SchedulerIO
    from minisgl.scheduler.scheduler import Scheduler

    sched = Scheduler(spec.config)
    io = SchedulerIO(spec.endpoints, spec.config.tp_rank)
    ack({"max_model_len": int(sched.max_model_len), "eos_token_ids": list(sched.eos_token_ids)})
    logger.info("ready (rank %d of %d)", spec.config.tp_rank, spec.config.tp_size)
    try:
        run_loop(sched, io)
    finally:
        io.close()
        sched.shutdown()


def _apply(sched: Any, io: Any, msgs: list[UserMsg | AbortBackendMsg]) -> None:
    for msg in msgs:
        if isinstance(msg, UserMsg):
            try:
                sched.add_request(msg.uid, msg.input_ids, msg.params, msg.arrival_time)
            except Exception as exc:  # one bad request must not take the server down
                if isinstance(exc, (MiniSGLError, ValueError)):
                    logger.info("request %d rejected: %s", msg.uid, exc)
                else:
                    logger.exception("request %d: add_request failed", msg.uid)
                if io.is_driver:
                    io.send_error(msg.uid, exc)
        else:
            try:
                sched.abort(msg.uid, msg.index)
            except (KeyError, ValueError) as exc:  # finished meanwhile: nothing left to free
                logger.debug("abort of request %d ignored: %r", msg.uid, exc)


def run_loop(sched: Any, io: Any) -> None:
    """Receive, (broadcast,) apply, step, send — until the process is terminated."""
    last_stats = 0.0
    stats_due = 0.0
    while True:
        if io.is_driver:
            now = time.monotonic()
            wait = 0.0 if sched.has_work else max(0.0, min(STATS_INTERVAL_S, stats_due - now))
            msgs = io.receive(wait=wait)
            if msgs or sched.has_work:
                io.broadcast(msgs)
                _apply(sched, io, msgs)
                outputs = sched.step()
                if outputs:
                    io.send_outputs(outputs)
                    if any(o.finished for o in outputs):
                        stats_due = min(stats_due, last_stats + STATS_AFTER_FINISH_S)
            now = time.monotonic()
            if now >= stats_due:
                io.send_stats(sched.stats())
                last_stats, stats_due = now, now + STATS_INTERVAL_S
        else:
            _apply(sched, io, io.receive_broadcast())
            sched.step()
