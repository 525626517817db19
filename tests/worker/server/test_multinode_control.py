"""The node group's control channel over real loopback TCP: joining, refusing, and noticing
a peer that leaves, dies or goes silent (no models, no processes: fast)."""

from __future__ import annotations

import json
import queue
import socket

import pytest

from minisgl.distributed import control
from minisgl.distributed.control import ControlError, Hello, Leader, join

LEADER = Hello(node_rank=0, nnodes=2, tp_size=2, model_path="m")
WAIT_S = 30.0  # a deadline for events that come in well under a second


def worker_hello(**changes) -> Hello:
    return Hello(**{**LEADER.__dict__, "node_rank": 1, **changes})


@pytest.fixture
def leader():
    lost: queue.Queue = queue.Queue()
    made = Leader(0, LEADER, timeout=WAIT_S, on_lost=lost.put)
    made.start()
    yield made, lost
    made.close(bye=False)


def test_a_joined_worker_that_closes_its_end_is_lost_at_the_leader(leader):
    made, lost = leader
    link = join("127.0.0.1", made.port, worker_hello(), WAIT_S, on_lost=print, on_bye=lambda: None)
    link.close(bye=False)
    reason = lost.get(timeout=WAIT_S)
    assert reason.startswith("node 1 (127.0.0.1:") and reason.endswith("closed the connection")


def test_the_leaders_bye_reaches_the_worker_and_is_no_failure(leader):
    made, lost = leader
    byes: queue.Queue = queue.Queue()
    failures: queue.Queue = queue.Queue()
    link = join("127.0.0.1", made.port, worker_hello(), WAIT_S, on_lost=failures.put,
                on_bye=lambda: byes.put(True))
    made.close(bye=True)
    assert byes.get(timeout=WAIT_S) is True
    assert failures.empty() and lost.empty()
    link.close(bye=False)


def test_a_leader_that_dies_without_bye_is_lost_at_the_worker(leader):
    made, _ = leader
    failures: queue.Queue = queue.Queue()
    join("127.0.0.1", made.port, worker_hello(), WAIT_S, on_lost=failures.put, on_bye=lambda: None)
    made.close(bye=False)
    reason = failures.get(timeout=WAIT_S)
    assert "the leader (node 0" in reason


@pytest.mark.parametrize("changes, message", [
    ({"tp_size": 4}, "--tp-size is 4 on node 1 but 2 on node 0"),
    ({"model_path": "other"}, "--model-path is 'other' on node 1 but 'm' on node 0"),
    ({"dtype": "float16"}, "--dtype is 'float16' on node 1 but 'auto' on node 0"),
    ({"kv_cache_dtype": "fp8_e4m3"}, "--kv-cache-dtype is 'fp8_e4m3' on node 1 but 'auto' on node 0"),
    ({"node_rank": 2}, "--node-rank 2 is not a worker node of 2"),
])
def test_a_mismatched_worker_is_refused_with_the_reason(leader, changes, message):
    made, lost = leader
    with pytest.raises(ControlError) as info:
        join("127.0.0.1", made.port, worker_hello(**changes), WAIT_S, on_lost=print, on_bye=print)
    assert message in str(info.value)
    link = join("127.0.0.1", made.port, worker_hello(), WAIT_S, on_lost=print, on_bye=print)
    assert 1 in made.links  # the leader kept waiting for the right node
    link.close(bye=False)


def test_a_silent_peer_is_lost_after_the_heartbeat_timeout(leader, monkeypatch):
    monkeypatch.setattr(control, "HEARTBEAT_TIMEOUT_S", 0.5)
    made, lost = leader
    silent = socket.create_connection(("127.0.0.1", made.port))  # says hello, then nothing
    silent.sendall(json.dumps({"t": "hello", **worker_hello().__dict__}).encode() + b"\n")
    try:
        assert "no heartbeat from node 1" in lost.get(timeout=WAIT_S)
    finally:
        silent.close()


def test_nodes_that_never_join_fail_the_leader_with_a_reason():
    lost: queue.Queue = queue.Queue()
    made = Leader(0, Hello(0, 3, 3, "m"), timeout=0.3, on_lost=lost.put)
    made.start()
    try:
        reason = lost.get(timeout=WAIT_S)
        assert "node(s) [1, 2] did not join within 0.3 s" in reason and "--dist-timeout" in reason
    finally:
        made.close(bye=False)


def test_a_worker_with_no_leader_fails_naming_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(ControlError) as info:
        join("127.0.0.1", port, worker_hello(), 0.3, on_lost=print, on_bye=print)
    assert f"cannot reach the leader (node 0) at 127.0.0.1:{port} within 0.3 s" in str(info.value)
