"""`python -m minisgl`: spawn the children, wait for their acks, serve, supervise, drain.

Processes: this one (API server + launcher), scheduler ranks 0..TP-1, one detokenizer,
`--num-tokenizer` tokenizer workers (server/children.py spawns and awaits them). The HTTP port
opens at once on a start-up app (server/startup.py: /health 200 with the phase scheduler rank 0
reports, everything else 503) that switches to the real app when every child has acked. If
any child dies, we exit non-zero; on SIGTERM we drain; on every exit path every child is
terminated (children also die with us via PR_SET_PDEATHSIG, see utils/proc.py). With
--nnodes > 1 this is node 0 and also watches the other nodes (distributed/control.py); a
worker node runs distributed/node.py instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import uvicorn

from minisgl.server.args import ServerArgs
from minisgl.server.children import Children, StartupError, start_children
from minisgl.server.endpoints import Endpoints
from minisgl.utils.proc import setup_logging

logger = logging.getLogger(__name__)


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
    """Turns child death, a lost peer node and signals into an exit code.

    Before the frontend is attached (start-up), a failure aborts the start-up wait and a
    signal stops at once; afterwards a failure fails every live request and stops serving,
    and SIGTERM drains first.
    """

    def __init__(self, args: ServerArgs, children: Children) -> None:
        self.args, self.children = args, children
        self.frontend: Any = None
        self.exit_code = 0
        self._stop: Callable[[bool], None] = lambda force: None
        self._draining: asyncio.Task | None = None
        self._stopping = False
        self._watching = False
        self._failure: str | None = None

    @property
    def stopping(self) -> bool:
        """A signal asked us to stop (so a start-up cut short is no failure)."""
        return self._stopping

    def install(self, loop: asyncio.AbstractEventLoop, stop: Callable[[bool], None]) -> None:
        """`stop(force)` ends serving; force=True skips any grace period."""
        self._stop = stop
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)

    def attach(self, loop: asyncio.AbstractEventLoop, frontend: Any) -> None:
        """Every child acked: watch them and serve through `frontend`."""
        self.frontend = frontend
        self._watching = True
        for name, proc in self.children.procs.items():
            loop.add_reader(proc.sentinel, self._on_child_exit, name)
        if self._failure is not None:  # failed while the app was switching over
            frontend.mark_failed(self._failure)
            self._stop(False)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watching:
            for proc in self.children.procs.values():
                loop.remove_reader(proc.sentinel)
            self._watching = False
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)

    def fail(self, reason: str) -> None:
        """Something the server needs is gone (a child, a peer node): exit non-zero."""
        if self.exit_code:
            return
        logger.error("%s: shutting down", reason)
        self.exit_code = 1
        self._failure = reason
        if self.frontend is None:
            self.children.abort(reason)
            return
        self.frontend.mark_failed(reason)
        self._stop(False)  # live requests were just failed, so the graceful stop is quick

    def _on_child_exit(self, name: str) -> None:
        proc = self.children.procs[name]
        proc.join(1.0)  # the sentinel fires as the process exits; reap it for its exit code
        self.fail(f"{name} (pid {proc.pid}) exited with code {proc.exitcode}")

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.frontend is None:
            logger.info("%s during start-up: stopping", sig.name)
            self._stopping = True
            self.children.abort(f"interrupted by {sig.name}")
            self._stop(False)
            return
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


class Startup:
    """Everything start-up needs, run on a worker thread: the children's acks and the
    API process's own tokenizer (loaded meanwhile); `frontend()` builds the FrontendManager."""

    def __init__(self, args: ServerArgs, endpoints: Endpoints, children: Children,
                 started: float) -> None:
        self.args, self.endpoints, self.children, self.started = args, endpoints, children, started
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="tokenizer-load")

    def run(self) -> tuple[dict, Any]:
        from minisgl.tokenizer.tokenize import load_tokenizer

        args = self.args
        tokenizer = self._loader.submit(load_tokenizer, args.tokenizer_path or args.model_path)
        info = start_children(args, self.endpoints, self.children)
        tok = tokenizer.result()
        if args.chat_template is not None:  # only the API process applies chat templates
            from minisgl.server.args import load_chat_template

            tok.chat_template = load_chat_template(args.chat_template)
        return info, tok

    def frontend(self, info: dict, tok: Any) -> Any:
        from minisgl.server.frontend import FrontendManager

        frontend = FrontendManager(self.endpoints, self.args.model_name, int(info["max_model_len"]), tok)
        frontend.startup_seconds = time.monotonic() - self.started
        logger.info("ready to serve %.1f s after start", frontend.startup_seconds)
        return frontend

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


async def _serve_http(startup: Startup, supervisor: Supervisor) -> None:
    """The port opens now, on the start-up app; it switches to the real app once ready."""
    from minisgl.server.api import create_app
    from minisgl.server.startup import StartupState, SwitchingApp

    args = startup.args
    state = StartupState(args.model_name, startup.started)
    switching = SwitchingApp(state)
    config = uvicorn.Config(
        switching, host=args.host, port=args.port, log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5,  # we drained already; this only bounds writing responses
    )
    server = _Server(config)

    def stop(force: bool) -> None:
        server.should_exit = True
        server.force_exit = force

    loop = asyncio.get_running_loop()

    def on_phase(name: str, phase: str) -> None:
        if name == "scheduler0":
            loop.call_soon_threadsafe(state.set_phase, phase)

    startup.children.on_phase = on_phase

    async def run_server() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; server.started tells
            pass

    supervisor.install(loop, stop)
    leader = None
    if args.nnodes > 1:
        leader = _start_leader(args, lambda reason: loop.call_soon_threadsafe(supervisor.fail, reason))
        if leader is None:
            supervisor.exit_code = 1
            supervisor.uninstall(loop)
            return
    serving = loop.create_task(run_server())
    starting = loop.run_in_executor(None, startup.run)
    try:
        await asyncio.wait([serving, starting], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # the server stopped first: a signal, or the port was taken
            if not server.started and not supervisor.stopping:
                supervisor.exit_code = 1
            return
        try:
            info, tok = starting.result()
        except StartupError as exc:
            if not supervisor.stopping:
                logger.error("start-up failed: %s", exc)
                supervisor.exit_code = 1
            return
        frontend = startup.frontend(info, tok)
        await switching.switch_to(create_app(frontend, args))
        supervisor.attach(loop, frontend)
        await serving
        if not server.started and not supervisor.exit_code:
            supervisor.exit_code = 1  # e.g. the port was taken
    finally:
        startup.children.abort("the server is stopping")
        await asyncio.gather(starting, return_exceptions=True)  # the start-up thread ends
        stop(False)
        await serving
        supervisor.uninstall(loop)
        if leader is not None:  # an orderly stop says bye (worker nodes exit 0); else they fail
            leader.close(bye=supervisor.exit_code == 0)


def _start_leader(args: ServerArgs, on_lost: Callable[[str], None]) -> Any:
    """Node 0 of several: listen for the worker nodes (None, logged, if the port is taken)."""
    from minisgl.distributed.control import Hello, Leader
    from minisgl.server.args import parse_host_port

    _, port = parse_host_port(args.dist_init_addr or "")
    try:
        leader = Leader(port, Hello(0, args.nnodes, args.tp_size, args.model_path, args.dtype,
                                    args.kv_cache_dtype),
                        args.dist_timeout, on_lost)
    except OSError as exc:
        logger.error("cannot listen for the other nodes on port %d (--dist-init-addr): %s", port, exc)
        return None
    leader.start()
    return leader


async def _serve_shell(startup: Startup, supervisor: Supervisor) -> None:
    from minisgl.server.shell import run_shell

    loop = asyncio.get_running_loop()
    shell: asyncio.Future | None = None

    def stop(force: bool) -> None:
        if shell is not None:
            shell.cancel()

    supervisor.install(loop, stop)
    try:
        info, tok = await loop.run_in_executor(None, startup.run)
        frontend = startup.frontend(info, tok)
        await frontend.start()
        shell = asyncio.ensure_future(run_shell(frontend, startup.args))
        supervisor.attach(loop, frontend)
        try:
            await asyncio.gather(shell, return_exceptions=True)
        finally:
            await frontend.stop()
    except StartupError as exc:
        if not supervisor.stopping:
            logger.error("start-up failed: %s", exc)
            supervisor.exit_code = 1
    finally:
        supervisor.uninstall(loop)


def make_endpoints(args: ServerArgs, directory: str) -> Endpoints:
    dist_addr = None
    if args.nnodes > 1:
        from minisgl.server.args import parse_host_port

        dist_addr = parse_host_port(args.dist_init_addr or "")
    return Endpoints(directory, args.num_tokenizer, args.tp_size, dist_addr)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def launch(args: ServerArgs) -> int:
    """Run the whole server; return the process exit code."""
    started = time.monotonic()
    setup_logging(args.log_level, "server")
    signal.signal(signal.SIGTERM, _interrupt)  # until the serving loop takes over: clean up
    directory = tempfile.mkdtemp(prefix="minisgl-")
    endpoints = make_endpoints(args, directory)
    children = Children()
    startup = Startup(args, endpoints, children, started)
    if args.node_rank > 0:
        from minisgl.distributed.node import run_worker_node

        try:
            return run_worker_node(args, endpoints, children)
        finally:
            children.terminate_all()
            shutil.rmtree(directory, ignore_errors=True)
    try:
        supervisor = Supervisor(args, children)
        serve = _serve_shell if args.shell_mode else _serve_http
        _use_uvloop()
        asyncio.run(serve(startup, supervisor))
        return supervisor.exit_code
    except KeyboardInterrupt:
        logger.info("interrupted")
        return 0
    finally:
        children.abort("the server is exiting")
        startup.close()
        children.terminate_all()
        shutil.rmtree(directory, ignore_errors=True)
