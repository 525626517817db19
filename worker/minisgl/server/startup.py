"""The HTTP port during start-up: open from the first second, honest about the phase.

One uvicorn server serves a `SwitchingApp` for the whole life of the process. Until the
children have acked it answers by itself — `GET /health` 200 with the phase (liveness must
pass while a 30-minute load runs), `GET /ready` 503, anything else 503 in the OpenAI error
shape with Retry-After. `switch_to(app)` then runs the real app's lifespan start-up and
routes every later request to it, so the port never refuses a connection in between; the
real app's lifespan shutdown runs when uvicorn shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.responses import JSONResponse

from minisgl import __version__
from minisgl.server.errors import error_body

logger = logging.getLogger(__name__)

PHASES = ("loading", "warming")
RETRY_AFTER_S = 5


class StartupState:
    """What /health shows while starting: the phase rank 0 reported and the time so far."""

    def __init__(self, model_name: str, started: float | None = None) -> None:
        self.model_name = model_name
        self.started = time.monotonic() if started is None else started
        self.phase = "loading"

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}")
        if phase != self.phase:
            logger.info("start-up phase: %s (%.1f s after start)", phase, self.seconds)
            self.phase = phase

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def health(self) -> dict:
        return {"status": "ok", "phase": self.phase, "startup_seconds_so_far": round(self.seconds, 3),
                "timestamp": time.time(), "version": __version__, "model": self.model_name}


class _Lifespan:
    """Drives another ASGI app's lifespan protocol (start-up now, shutdown later)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._started: asyncio.Future = asyncio.get_running_loop().create_future()
        self._stopped: asyncio.Future = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None

    async def startup(self, state: dict) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state},
                      self._to_app.get, self._from_app))
        await self._to_app.put({"type": "lifespan.startup"})
        await asyncio.wait([self._started, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self._started.done():
            self._task.result()  # the app raised: re-raise here
            raise RuntimeError("the app's lifespan ended before start-up completed")
        self._started.result()

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        await asyncio.wait([self._stopped, self._task], return_when=asyncio.FIRST_COMPLETED)

    async def _from_app(self, message: dict) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._started.set_exception(RuntimeError(message.get("message") or "start-up failed"))
        elif kind == "lifespan.shutdown.complete" and not self._stopped.done():
            self._stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            text = message.get("message") or ""
            # A forced exit (a second Ctrl+C) cancels the lifespan: expected, not an error.
            log = logger.debug if "CancelledError" in text else logger.error
            log("app shutdown failed: %s", text)
            if not self._stopped.done():
                self._stopped.set_result(None)


class SwitchingApp:
    """ASGI app: the start-up responses until `switch_to(app)`, then `app`."""

    def __init__(self, state: StartupState) -> None:
        self.state = state
        self.app: Any = None
        self._lifespan: _Lifespan | None = None
        self._lifespan_state: dict = {}

    async def switch_to(self, app: Any) -> None:
        """Start `app` (its lifespan start-up) and send it every request from now on."""
        lifespan = _Lifespan(app)
        await lifespan.startup(self._lifespan_state)
        self._lifespan = lifespan
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(scope, receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self._starting_response(scope)(scope, receive, send)
        # websockets: none served; closing the scope refuses it

    def _starting_response(self, scope: dict) -> JSONResponse:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/health" and method in ("GET", "HEAD"):
            return JSONResponse(self.state.health())
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if path == "/ready" and method in ("GET", "HEAD"):
            return JSONResponse({"status": "starting", "phase": self.state.phase,
                                 "model": self.state.model_name}, 503, headers)
        message = (f"the server is starting ({self.state.phase}, "
                   f"{self.state.seconds:.0f} s so far); retry later")
        return JSONResponse(error_body(message, "service_unavailable", code=503), 503, headers)

    async def _serve_lifespan(self, scope: dict, receive: Any, send: Any) -> None:
        """uvicorn's lifespan: start-up is immediate (the port must open now); shutdown
        runs the real app's shutdown if it was started."""
        self._lifespan_state = scope.setdefault("state", {})
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._lifespan is not None:
                    await self._lifespan.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
