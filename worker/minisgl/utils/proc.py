"""Start-up plumbing shared by every child process of the server.

A child runs `run_child(...)`: it dies with its parent (Linux PR_SET_PDEATHSIG, so a
SIGKILLed launcher leaves no orphans), leaves Ctrl+C to the launcher, and reports on the
ack queue exactly once — `Ack(ok=True, info)` when ready, or `Ack(ok=False, error)` with
the traceback if start-up failed — and before that, optionally, `Phase`s (`ack.phase("warming")`)
that the launcher shows on /health while it waits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ack:
    name: str
    ok: bool
    info: dict = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Phase:
    """A start-up phase a child entered (scheduler rank 0: loading, then warming)."""

    name: str
    phase: str


class Reporter:
    """What `run_child` hands its body: `ack(info)` once ready; `ack.phase(name)` before that."""

    def __init__(self, name: str, queue: Any) -> None:
        self.name, self._queue, self.acked = name, queue, False

    def __call__(self, info: dict) -> None:
        self._queue.put(Ack(name=self.name, ok=True, info=info))
        self.acked = True

    def phase(self, phase: str) -> None:
        self._queue.put(Phase(name=self.name, phase=phase))


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def run_child(
    name: str,
    ack_queue: Any,
    log_level: str,
    body: Callable[[Reporter], None],
) -> None:
    """Run `body(ack)` in a child process; `body` calls `ack(info)` once ready, then serves."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl+C for everyone
    setup_logging(log_level, name)
    ack = Reporter(name, ack_queue)
    try:
        body(ack)
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit non-zero
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        logger.error("%s failed: %s", name, text)
        if not ack.acked:
            ack_queue.put(Ack(name=name, ok=False, error=text))
            ack_queue.close()
            ack_queue.join_thread()  # flush the report before _exit skips the feeder thread
        sys.stderr.flush()
        os._exit(1)
