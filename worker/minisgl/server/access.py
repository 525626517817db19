"""Access control and admission limits: API keys (one, or a file of many, reloaded when it
changes), per-key requests- and tokens-per-minute, and server-wide queue backpressure.

Key file (e.g. a Kubernetes Secret mounted as a file): one key per line, optionally with
limits, `#` starts a comment:

    sk-team-a rpm=60 tpm=200000
    sk-batch  tpm=2000000
    sk-admin

Limits count over a sliding 60 s window: rpm the requests admitted, tpm the prompt and
completion tokens of requests that finished. A key over a limit gets 429 with Retry-After
(when the window frees up) and OpenAI's `rate_limit_exceeded`; a server whose queue is full
(--max-queued-requests) answers 503 with Retry-After instead of queueing without bound.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from minisgl.errors import MiniSGLError, ServiceUnavailable
from minisgl.server.errors import Unauthorized

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
RELOAD_CHECK_S = 1.0


class RateLimited(MiniSGLError):
    http_status = 429
    error_type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(ServiceUnavailable):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None


def parse_key_file(text: str) -> dict[str, KeyLimits]:
    """Key file text -> {key: limits}; ValueError naming the line for anything malformed."""
    keys: dict[str, KeyLimits] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *opts = line.split()
        limits: dict[str, int] = {}
        for opt in opts:
            name, _, value = opt.partition("=")
            if name not in ("rpm", "tpm") or not value.isdigit() or int(value) < 1:
                raise ValueError(f"line {n}: expected rpm=N or tpm=N (N >= 1), got {opt!r}")
            limits[name] = int(value)
        keys[key] = KeyLimits(**limits)
    return keys


@dataclass
class _Usage:
    requests: deque = field(default_factory=deque)  # admission times
    tokens: deque = field(default_factory=deque)  # (finish time, tokens)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class AccessControl:
    """Who may call the API, and how much. Thread-safe; cheap when nothing is configured."""

    def __init__(self, api_key: str | None = None, key_file: str | None = None,
                 max_waiting: int | None = None, clock=time.monotonic) -> None:
        self._single = api_key or None
        self._file = Path(key_file) if key_file else None
        self._keys: dict[str, KeyLimits] = {}
        self._mtime: float | None = None
        self._checked = -math.inf
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.max_waiting = max_waiting
        if self._file is not None:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return self._single is not None or self._file is not None

    def _reload(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self._file).st_mtime_ns
        except OSError as e:
            if force:
                raise ValueError(f"--api-key-file {self._file}: {e.strerror}") from e
            return  # a Secret update swaps the file: keep the last good keys meanwhile
        if mtime == self._mtime:
            return
        try:
            keys = parse_key_file(self._file.read_text())
        except (OSError, ValueError) as e:
            if force:
                raise ValueError(f"--api-key-file {self._file}: {e}") from e
            logger.error("keeping the previous API keys: %s: %s", self._file, e)
            return
        self._keys, self._mtime = keys, mtime
        if not force:
            logger.info("reloaded %d API keys from %s", len(keys), self._file)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key (None when no key is configured); Unauthorized otherwise."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if self._single is not None and hmac.compare_digest(token.encode(), self._single.encode()):
                return token
            if self._file is not None:
                with self._lock:
                    self._reload()
                    keys = self._keys
                if any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
                    return token
        raise Unauthorized("Incorrect or missing API key: send 'Authorization: Bearer <key>'")

    def admit(self, key: str | None, waiting: int) -> None:
        """Before a generation request: the key's limits, then the server's queue."""
        if key is not None:
            limits = self._keys.get(key, KeyLimits())
            if limits.rpm is not None or limits.tpm is not None:
                now = self._clock()
                with self._lock:
                    usage = self._usage.setdefault(key, _Usage())
                    usage.expire(now)
                    if limits.rpm is not None and len(usage.requests) >= limits.rpm:
                        raise RateLimited(
                            f"rate limit of {limits.rpm} requests per minute reached for this key",
                            usage.requests[0] + WINDOW_S - now)
                    if limits.tpm is not None and usage.token_sum >= limits.tpm:
                        raise RateLimited(
                            f"rate limit of {limits.tpm} tokens per minute reached for this key",
                            usage.tokens[0][0] + WINDOW_S - now)
                    usage.requests.append(now)
        if self.max_waiting is not None and waiting >= self.max_waiting:
            raise QueueFull(f"the server's queue is full ({waiting} requests waiting); retry later")

    def record_tokens(self, key: str | None, tokens: int) -> None:
        """After a request: its prompt + completion tokens count against the key's tpm."""
        if key is None or tokens <= 0 or self._keys.get(key, KeyLimits()).tpm is None:
            return
        with self._lock:
            usage = self._usage.setdefault(key, _Usage())
            usage.tokens.append((self._clock(), tokens))
            usage.token_sum += tokens
