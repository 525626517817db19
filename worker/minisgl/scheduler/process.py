"""Scheduler process main: one per tensor-parallel rank, wrapping the in-process Scheduler."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minisgl.config import SchedulerConfig
from minisgl.errors import MiniSGLError
from minisgl.message import codec
from minisgl.message.backend import (BackendMsg, BatchBackendMsg, FlushCacheMsg, GrammarReadyMsg,
                                     UserMsg)
from minisgl.server.endpoints import Endpoints

if TYPE_CHECKING:
    from minisgl.utils.proc import Reporter

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5  # the API process expects fresh stats at least every second
# After a request finishes, stats follow within this long, so a client that scrapes /metrics
# right after its response sees its request counted (bounded: one send per 20 ms at most).
STATS_AFTER_FINISH_S = 0.02
COMPILE_POLL_S = 0.002  # how often an idle rank 0 checks on grammars compiling aside


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


def _serve(spec: SchedulerSpec, ack: Reporter) -> None:
    from minisgl.engine import warmup
    from minisgl.scheduler.io import SchedulerIO
    from minisgl.scheduler.scheduler import Scheduler

    ack.phase("loading")
    warmup.hold("loading")
    warming: list[bool] = []

    def on_warm_up() -> None:
        if not warming:
            warming.append(True)
            ack.phase("warming")

    with warmup.announcing(on_warm_up):
        sched = Scheduler(spec.config, async_grammar=True)  # warms up on cuda, announcing it
        if not warming:  # nothing to compile (cpu): the phase is still reported, and gated in tests
            warmup.begin()
    io: Any = SchedulerIO(spec.endpoints, spec.config.tp_rank)
    if spec.config.nnodes > 1:
        from minisgl.distributed.broadcast import ByteBroadcast

        io = NodeSpanningIO(io, ByteBroadcast(spec.config.tp_rank))
    ack({"max_model_len": int(sched.max_model_len), "eos_token_ids": list(sched.eos_token_ids)})
    logger.info("ready (rank %d of %d)", spec.config.tp_rank, spec.config.tp_size)
    try:
        run_loop(sched, io)
    finally:
        io.close()
        sched.shutdown()


class NodeSpanningIO:
    """SchedulerIO whose rank-0 broadcast reaches other nodes (torch.distributed, gloo)
    instead of ipc sockets; rank 0 also broadcasts while idle (`heartbeat`), so a rank > 0
    never waits long enough in a collective to time out."""

    heartbeat = True

    def __init__(self, io: Any, channel: Any) -> None:
        self._io, self._channel = io, channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._io, name)

    def broadcast(self, msgs: list[BackendMsg]) -> None:
        self._channel.send(codec.encode(BatchBackendMsg(msgs)))

    def receive_broadcast(self) -> list[BackendMsg]:
        return codec.decode(self._channel.recv()).msgs


def _reject(io: Any, uid: int, exc: Exception) -> None:
    if isinstance(exc, (MiniSGLError, ValueError)):
        logger.info("request %d rejected: %s", uid, exc)
    else:
        logger.error("request %d failed", uid, exc_info=exc)
    if io.is_driver:
        io.send_error(uid, exc)


def _apply(sched: Any, io: Any, msgs: list[BackendMsg]) -> None:
    for msg in msgs:
        if isinstance(msg, UserMsg):
            try:
                sched.add_request(msg.uid, msg.input_ids, msg.params, msg.arrival_time)
            except Exception as exc:  # one bad request must not take the server down
                _reject(io, msg.uid, exc)
        elif isinstance(msg, GrammarReadyMsg):
            sched.admit_compiled(msg.uids)
            for uid, exc in sched.take_errors():  # a grammar that cannot compile
                _reject(io, uid, exc)
        elif isinstance(msg, FlushCacheMsg):  # every rank alike: the same work, the same answer
            dropped = sched.flush_cache()
            logger.info("prefix cache %s", "busy: not flushed" if dropped is None
                        else f"flushed ({dropped} tokens)")
            if io.is_driver:
                io.send_flushed(msg.seq, dropped)
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
            if sched.compiling:  # look again soon: a grammar compiling aside may be ready
                wait = min(wait, COMPILE_POLL_S)
            msgs = io.receive(wait=wait)
            ready = sched.poll_compiled() if sched.compiling else []
            if ready:  # admitted after this iteration's new requests, on every rank alike
                msgs = msgs + [GrammarReadyMsg(ready)]
            if msgs or sched.has_work:
                io.broadcast(msgs)
                _apply(sched, io, msgs)
                outputs = sched.step()
                if outputs:
                    io.send_outputs(outputs)
                    if any(o.finished for o in outputs):
                        stats_due = min(stats_due, last_stats + STATS_AFTER_FINISH_S)
            elif getattr(io, "heartbeat", False):
                io.broadcast([])  # nothing to do: tell the other nodes' ranks we are alive
            now = time.monotonic()
            if now >= stats_due:
                io.send_stats(sched.stats())
                last_stats, stats_due = now, now + STATS_INTERVAL_S
        else:
            msgs = io.receive_broadcast()
            _apply(sched, io, msgs)
            if msgs or sched.has_work:  # rank 0 stepped too (an empty list: a heartbeat, or work)
                sched.step()
