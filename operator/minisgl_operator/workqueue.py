"""A work queue in the manner of client-go's: a key is queued at most once, and never handed to
two workers at once. A key added while it is being processed is processed again afterwards, with
the state read then, so a reconcile never runs on a spec older than one already reconciled."""
from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # waiting to be processed (queued, or re-queued after processing)
        self._processing: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []  # (due, tie-breaker, key)
        self._due: dict[K, float] = {}  # the earliest pending delayed add of each key
        self._seq = 0
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        with self._cond:
            if self._closed:
                return
            if delay > 0:
                due = time.monotonic() + delay
                if self._due.get(key, float("inf")) <= due:
                    return  # an earlier delayed add is pending: that reconcile re-queues if need be
                self._due[key] = due
                self._seq += 1
                heapq.heappush(self._delayed, (due, self._seq, key))
                self._cond.notify()
                return
            self._add_now(key)

    def _add_now(self, key: K) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def _promote_due(self) -> float | None:
        """Move due delayed keys into the queue; return seconds until the next one, or None."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:  # else superseded by an earlier add
                del self._due[key]
                self._add_now(key)
        return self._delayed[0][0] - now if self._delayed else None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process (the caller must call done(key)), or None on timeout/shutdown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                wait = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._closed:
                    return None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
