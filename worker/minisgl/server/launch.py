"""`python -m minisgl`: spawn the children, wait for their acks, serve, supervise, drain.

Processes: this one (API server + launcher), scheduler ranks 0..TP-1, one detokenizer,
`--num-tokenizer` tokenizer workers. Start-up is two waves — schedulers first (their ack
carries the context length the tokenizers validate against), then the (de)tokenizers —
and the HTTP port opens only after every ack. If any child dies, we exit non-zero; on
SIGTERM we drain; on every exit path every child is terminated (children also die with us
via PR_SET_PDEATHSIG, see utils/proc.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import queue
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import uvicorn

from minisgl.server.args import ServerArgs
from minisgl.server.endpoints import Endpoints
from minisgl.utils.proc import Ack, setup_logging

logger = logging.getLogger(__name__)

_TERMINATE_GRACE_S = 5.0


class StartupError(RuntimeError):
    pass


class Children:
    """The spawned child processes, by name."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.acks: Any = self.ctx.Queue()
        self.procs: dict[str, mp.process.BaseProcess] = {}

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
            try:
                ack: Ack = self.acks.get(timeout=0.2)
            except queue.Empty:
                dead = [n for n in pending if not self.procs[n].is_alive()]
                if dead:
                    ack = self._late_error()  # its error report may still be in the pipe
                    if ack is None:
                        code = self.procs[dead[0]].exitcode
                        raise StartupError(f"{dead[0]} exited with code {code} during start-up")
                else:
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
            if not ack.ok:
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


def start_children(args: ServerArgs, endpoints: Endpoints, children: Children) -> dict:
    """Spawn everyone at once; returns rank 0's ack info (max_model_len, eos_token_ids).

    The (de)tokenizers load their tokenizer while the model loads, then wait for rank 0's
    ack info on their `settings` queue before they ack themselves.
    """
    from minisgl.scheduler.process import SchedulerSpec, scheduler_main
    from minisgl.tokenizer.detokenizer import DetokenizerSpec, detokenizer_main
    from minisgl.tokenizer.worker import TokenizerSpec, tokenizer_main

    schedulers = [f"scheduler{rank}" for rank in range(args.tp_size)]
    for rank, name in enumerate(schedulers):
        config = args.to_scheduler_config(rank, endpoints.dist_init_method)
        children.spawn(name, scheduler_main, SchedulerSpec(config, endpoints, args.log_level))
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


def _use_uvloop() -> None:
    """uvloop's event loop where installed: the API process's per-chunk overhead is its loop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _Server(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the launcher (we drain before exiting)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


class Supervisor:
    """Runs the serving coroutine; turns child death and signals into an exit code."""

    def __init__(self, args: ServerArgs, children: Children, frontend: Any) -> None:
        self.args, self.children, self.frontend = args, children, frontend
        self.exit_code = 0
        self._stop: Callable[[bool], None] = lambda force: None
        self._draining: asyncio.Task | None = None
        self._stopping = False

    def install(self, loop: asyncio.AbstractEventLoop, stop: Callable[[bool], None]) -> None:
        """`stop(force)` ends serving; force=True skips any grace period."""
        self._stop = stop
        for name, proc in self.children.procs.items():
            loop.add_reader(proc.sentinel, self._on_child_exit, name)
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for proc in self.children.procs.values():
            loop.remove_reader(proc.sentinel)
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)

    def _on_child_exit(self, name: str) -> None:
        if self.exit_code:
            return
        proc = self.children.procs[name]
        proc.join(1.0)  # the sentinel fires as the process exits; reap it for its exit code
        reason = f"{name} (pid {proc.pid}) exited with code {proc.exitcode}"
        logger.error("%s: shutting down", reason)
        self.exit_code = 1
        self.frontend.mark_failed(reason)
        self._stop(False)  # live requests were just failed, so the graceful stop is quick

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            logger.info("%s again: exiting now", sig.name)
            self._stop(True)
            return
        if sig == signal.SIGINT or self._draining is not None:
            logger.info("%s: stopping", sig.name)
            self._stopping = True
            self.frontend.cut_off(f"the server is stopping ({sig.name})")
            self._stop(False)
            return
        logger.info("SIGTERM: draining %d in-flight requests (up to %.0fs)",
                    self.frontend.in_flight, self.args.shutdown_timeout)
        self.frontend.draining = True
        self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.args.shutdown_timeout
        while self.frontend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.frontend.in_flight:
            logger.warning("shutdown timeout: %d requests cut off", self.frontend.in_flight)
            self.frontend.cut_off("the server is stopping (shutdown timeout)")
        else:
            logger.info("drained")
        self._stopping = True
        self._stop(False)


async def _serve_http(args: ServerArgs, frontend: Any, supervisor: Supervisor) -> None:
    from minisgl.server.api import create_app

    config = uvicorn.Config(
        create_app(frontend, args), host=args.host, port=args.port, log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5,  # we drained already; this only bounds writing responses
    )
    server = _Server(config)

    def stop(force: bool) -> None:
        server.should_exit = True
        server.force_exit = force

    loop = asyncio.get_running_loop()
    supervisor.install(loop, stop)
    try:
        await server.serve()
        if not server.started and not supervisor.exit_code:
            supervisor.exit_code = 1  # e.g. the port was taken
    finally:
        supervisor.uninstall(loop)


async def _serve_shell(args: ServerArgs, frontend: Any, supervisor: Supervisor) -> None:
    from minisgl.server.shell import run_shell

    await frontend.start()
    loop = asyncio.get_running_loop()
    shell = asyncio.ensure_future(run_shell(frontend, args))
    supervisor.install(loop, lambda force: shell.cancel())
    try:
        await asyncio.gather(shell, return_exceptions=True)
    finally:
        supervisor.uninstall(loop)
        await frontend.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def launch(args: ServerArgs) -> int:
    """Run the whole server; return the process exit code."""
    started = time.monotonic()
    setup_logging(args.log_level, "server")
    signal.signal(signal.SIGTERM, _interrupt)  # until the serving loop takes over: clean up
    directory = tempfile.mkdtemp(prefix="minisgl-")
    endpoints = Endpoints(directory, args.num_tokenizer, args.tp_size)
    children = Children()
    loader = ThreadPoolExecutor(1, thread_name_prefix="tokenizer-load")
    try:
        from minisgl.server.frontend import FrontendManager
        from minisgl.tokenizer.worker import load_tokenizer

        tokenizer = loader.submit(load_tokenizer, args.tokenizer_path or args.model_path)  # while the children start
        info = start_children(args, endpoints, children)
        tok = tokenizer.result()
        if args.chat_template is not None:  # only the API process applies chat templates
            from minisgl.server.args import load_chat_template

            tok.chat_template = load_chat_template(args.chat_template)
        frontend = FrontendManager(endpoints, args.model_name, int(info["max_model_len"]), tok)
        frontend.startup_seconds = time.monotonic() - started
        logger.info("ready to serve %.1f s after start", frontend.startup_seconds)
        supervisor = Supervisor(args, children, frontend)
        serve = _serve_shell if args.shell_mode else _serve_http
        _use_uvloop()
        asyncio.run(serve(args, frontend, supervisor))
        return supervisor.exit_code
    except StartupError as exc:
        logger.error("start-up failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        logger.info("interrupted")
        return 0
    finally:
        loader.shutdown(wait=False, cancel_futures=True)
        children.terminate_all()
        shutil.rmtree(directory, ignore_errors=True)
