"""The server's child processes: spawned, awaited (acks and start-up phases), terminated.

Start-up is two waves: the scheduler ranks first (rank 0's ack carries the context length
the tokenizers validate against), then the (de)tokenizers. While waiting, children's
`Phase` reports reach `on_phase`, and `abort(reason)` (from another thread: a signal, a
lost node) ends the wait with StartupError.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from typing import Any, Callable

from minisgl.server.args import ServerArgs
from minisgl.server.endpoints import Endpoints
from minisgl.utils.proc import Ack, Phase

logger = logging.getLogger(__name__)

_TERMINATE_GRACE_S = 5.0


class StartupError(RuntimeError):
    pass


class Children:
    """The spawned child processes, by name."""

    def __init__(self, on_phase: Callable[[str, str], None] | None = None) -> None:
        self.ctx = mp.get_context("spawn")
        self.acks: Any = self.ctx.Queue()
        self.procs: dict[str, mp.process.BaseProcess] = {}
        self.on_phase = on_phase  # (child name, phase), called on the waiting thread
        self._abort = threading.Event()
        self._abort_reason = ""

    def abort(self, reason: str) -> None:
        """Make a `wait_acks` in progress (on another thread) raise StartupError(reason)."""
        self._abort_reason = reason
        self._abort.set()

    def spawn(self, name: str, target: Callable, spec: Any, settings: Any = None) -> None:
        args = (spec, self.acks) if settings is None else (spec, self.acks, settings)
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        self.procs[name] = proc
        logger.info("started %s (pid %d)", name, proc.pid)

    def wait_acks(self, names: list[str]) -> dict[str, dict]:
        """Block until every named child acks; raise StartupError with the child's error."""
        pending, infos = set(names), {}
        while pending:
            if self._abort.is_set():
                raise StartupError(self._abort_reason)
            try:
                ack: Ack | Phase = self.acks.get(timeout=0.2)
            except queue.Empty:
                dead = [n for n in pending if not self.procs[n].is_alive()]
                if dead:
                    ack = self._late_error()  # its error report may still be in the pipe
                    if ack is None:
                        code = self.procs[dead[0]].exitcode
                        raise StartupError(f"{dead[0]} exited with code {code} during start-up")
                else:
                    continue
            if isinstance(ack, Phase):
                logger.info("%s: %s", ack.name, ack.phase)
                if self.on_phase is not None:
                    self.on_phase(ack.name, ack.phase)
                continue
            if not ack.ok:
                raise StartupError(f"{ack.name} failed to start:\n{ack.error}")
            infos[ack.name] = ack.info
            pending.discard(ack.name)
            logger.info("%s is ready", ack.name)
        return infos

    def _late_error(self) -> Ack | None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                ack = self.acks.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(ack, Ack) and not ack.ok:
                return ack
        return None

    def terminate_all(self) -> None:
        alive = [p for p in self.procs.values() if p.is_alive()]
        for p in alive:
            p.terminate()
        deadline = time.monotonic() + _TERMINATE_GRACE_S
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.is_alive():
                logger.warning("%s (pid %d) ignored SIGTERM: killing it", p.name, p.pid)
                p.kill()
                p.join()
        self.acks.close()
        self.acks.join_thread()


def spawn_schedulers(args: ServerArgs, endpoints: Endpoints, children: Children) -> list[str]:
    """This node's scheduler ranks (all of them on one node); returns their names."""
    from minisgl.scheduler.process import SchedulerSpec, scheduler_main

    names = []
    for rank in args.local_ranks:
        config = args.to_scheduler_config(rank, endpoints.dist_init_method)
        names.append(f"scheduler{rank}")
        children.spawn(names[-1], scheduler_main, SchedulerSpec(config, endpoints, args.log_level))
    return names


def start_children(args: ServerArgs, endpoints: Endpoints, children: Children) -> dict:
    """Spawn everyone at once; returns rank 0's ack info (max_model_len, eos_token_ids).

    The (de)tokenizers load their tokenizer while the model loads, then wait for rank 0's
    ack info on their `settings` queue before they ack themselves.
    """
    from minisgl.tokenizer.process import DetokenizerSpec, detokenizer_main
    from minisgl.tokenizer.process import TokenizerSpec, tokenizer_main

    schedulers = spawn_schedulers(args, endpoints, children)
    settings = {"detokenizer": children.ctx.SimpleQueue()}
    children.spawn("detokenizer", detokenizer_main, DetokenizerSpec(
        args.model_path, endpoints.detokenizer, endpoints.scheduler, endpoints.frontend,
        args.log_level, args.tokenizer_path), settings["detokenizer"])
    for i in range(args.num_tokenizer):
        name = f"tokenizer{i}"
        settings[name] = children.ctx.SimpleQueue()
        children.spawn(name, tokenizer_main, TokenizerSpec(
            i, args.model_path, endpoints.tokenizer(i), endpoints.detokenizer,
            endpoints.frontend, args.log_level, args.tokenizer_path), settings[name])
    info = children.wait_acks(schedulers)["scheduler0"]
    for q in settings.values():
        q.put(info)
    children.wait_acks(list(settings))
    return info
