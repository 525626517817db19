"""A worker node (--node-rank > 0): only its scheduler ranks, tied to node 0.

It joins node 0's control channel first (so an unreachable leader fails within
--dist-timeout with a clear message, before any model loads), spawns its ranks (they meet
rank 0 through torch.distributed at --dist-init-addr's port + 1), and then lives exactly as
long as the group: a local rank's death, the leader's loss or a signal ends it. Exit codes:
0 when the leader stopped in order (it said bye) or on SIGTERM/SIGINT, 1 on any failure.
"""

from __future__ import annotations

import logging
import signal
import threading
from multiprocessing.connection import wait
from typing import Any

from minisgl.distributed.control import ControlError, Hello, join
from minisgl.server.args import ServerArgs
from minisgl.server.endpoints import Endpoints

logger = logging.getLogger(__name__)

_POLL_S = 0.5


class _Outcome:
    """The first reason to stop wins; it aborts a start-up wait in progress."""

    def __init__(self, children: Any) -> None:
        self.children = children
        self.code: int | None = None
        self.reason = ""
        self.done = threading.Event()

    def finish(self, code: int, reason: str) -> None:
        if self.code is not None:
            return
        self.code, self.reason = code, reason
        self.children.abort(reason)
        self.done.set()


def run_worker_node(args: ServerArgs, endpoints: Endpoints, children: Any) -> int:
    from minisgl.server.children import StartupError, spawn_schedulers

    outcome = _Outcome(children)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: outcome.finish(0, f"{signal.Signals(signum).name}"))
    if endpoints.dist_addr is None:
        raise ValueError("a worker node needs --dist-init-addr")
    host, port = endpoints.dist_addr
    hello = Hello(args.node_rank, args.nnodes, args.tp_size, args.model_path, args.dtype,
                  args.kv_cache_dtype)
    try:
        link = join(host, port, hello, args.dist_timeout,
                    on_lost=lambda reason: outcome.finish(1, reason),
                    on_bye=lambda: outcome.finish(0, "the leader (node 0) stopped"))
    except ControlError as exc:
        logger.error("%s", exc)
        return 1
    try:
        names = spawn_schedulers(args, endpoints, children)
        try:
            children.wait_acks(names)
            logger.info("node %d of %d ready: ranks %s", args.node_rank, args.nnodes,
                        list(args.local_ranks))
        except StartupError as exc:
            if outcome.code is None:
                outcome.finish(1, f"start-up failed: {exc}")
        by_sentinel = {proc.sentinel: name for name, proc in children.procs.items()}
        while not outcome.done.is_set():
            for sentinel in wait(list(by_sentinel), timeout=_POLL_S):
                proc = children.procs[by_sentinel[sentinel]]
                proc.join(1.0)
                outcome.finish(1, f"{proc.name} (pid {proc.pid}) exited with code {proc.exitcode}")
    finally:
        link.close(bye=False)  # the leader sees the connection end: the group goes down
    log = logger.error if outcome.code else logger.info
    log("node %d stopping: %s", args.node_rank, outcome.reason)
    return outcome.code or 0
