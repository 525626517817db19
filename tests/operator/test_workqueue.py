"""The work queue hands a key to one worker at a time, and re-runs it once for any number of
adds that arrived while it was being processed (real threads, no sleeps for synchronisation)."""
from __future__ import annotations

import threading
import time

from minisgl_operator.workqueue import WorkQueue


def test_adds_of_a_queued_key_collapse_into_one():
    q: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(timeout=1) == "a"


def test_a_key_is_never_processed_by_two_workers_and_the_last_add_is_seen():
    q: WorkQueue[str] = WorkQueue()
    state = {"version": 0, "running": 0, "max_running": 0, "seen": []}
    lock = threading.Lock()
    release = threading.Event()

    def worker() -> None:
        while True:
            key = q.get(timeout=2)
            if key is None:
                return
            with lock:
                state["running"] += 1
                state["max_running"] = max(state["max_running"], state["running"])
                version = state["version"]  # the reconcile reads the latest spec when it starts
            release.wait(2)
            with lock:
                state["seen"].append(version)
                state["running"] -= 1
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    q.add("cr")
    deadline = time.monotonic() + 5
    while state["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    for v in range(1, 20):  # spec updates while the first reconcile is still running
        with lock:
            state["version"] = v
        q.add("cr")
    release.set()
    deadline = time.monotonic() + 5
    while len(state["seen"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    for t in threads:
        t.join()
    assert state["max_running"] == 1
    assert state["seen"] == [0, 19]  # exactly one more reconcile, on the newest spec


def test_delayed_adds_come_due():
    q: WorkQueue[str] = WorkQueue()
    q.add("later", delay=0.2)
    assert q.get(timeout=0.05) is None
    assert q.get(timeout=2) == "later"
