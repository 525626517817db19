"""Tensor parallelism across "nodes": two real `python -m minisgl` processes on loopback
(--nnodes 2, gloo over TCP) behave as one server, live and die together, and fail clearly."""

from __future__ import annotations

import contextlib
import signal
import socket
import time

import httpx
import pytest

from minisgl.sampling_params import SamplingParams
from tests.worker.server.test_launch import Proc, assert_no_orphans, descendants

pytestmark = pytest.mark.slow  # real server processes: tens of seconds each

PROMPTS = [[5, 17, 42, 99, 3], [200, 201, 7], [11] * 9, [300, 12, 77, 150, 64, 8, 1]]


def free_port_pair() -> int:
    """A port p with p + 1 free too (the control channel and torch.distributed)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


def node(tmp_path, rank: int, addr: str, *args: str) -> Proc:
    return Proc(tmp_path / f"node{rank}.log", "--nnodes", "2", "--node-rank", str(rank),
                "--dist-init-addr", addr, *args)


def wait_log(proc: Proc, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.text():
        assert time.monotonic() < deadline and proc.popen.poll() is None, proc.text()[-3000:]
        time.sleep(0.1)  # poll interval


@contextlib.contextmanager
def two_nodes(tmp_path, model: str):
    """A TP=2 server over two "nodes", both up: yields (leader, worker, their descendants)."""
    addr = f"127.0.0.1:{free_port_pair()}"
    leader = node(tmp_path, 0, addr, "--model-path", model, "--tp-size", "2")
    worker = node(tmp_path, 1, addr, "--model-path", model, "--tp-size", "2")
    try:
        leader.wait_ready()
        wait_log(worker, "node 1 of 2 ready")
        yield leader, worker, {**descendants(leader.popen.pid), **descendants(worker.popen.pid)}
    finally:
        worker.close()
        leader.close()


def test_tp2_over_two_nodes_matches_tp1_and_killing_node1_takes_node0_down(tmp_path, tiny_llama):
    from minisgl import LLM

    want = [o.token_ids for o in LLM(tiny_llama, device="cpu").generate(
        PROMPTS, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))]
    with two_nodes(tmp_path, tiny_llama) as (leader, worker, kids):
        assert "started scheduler0" in leader.text() and "started scheduler1" not in leader.text()
        assert "started scheduler1" in worker.text() and "tokenizer" not in worker.text()
        got = []
        for prompt in PROMPTS:
            r = httpx.post(f"{leader.url}/generate", timeout=120, json={
                "prompt": prompt, "max_tokens": 12, "ignore_eos": True, "temperature": 0,
                "stream": False})
            assert r.status_code == 200, r.text
            got.append(r.json()["token_ids"])
        assert got == want
        worker.popen.kill()  # the whole node 1 launcher: its rank dies with it (PDEATHSIG)
        assert worker.wait_exit(30) == -signal.SIGKILL
        assert leader.wait_exit(60) == 1
        assert "node 1" in leader.text().split("shutting down")[0].rsplit("\n", 1)[-1]
        assert_no_orphans(kids)


def test_sigterm_on_node0_drains_and_stops_node1_cleanly(tmp_path, tiny_llama):
    with two_nodes(tmp_path, tiny_llama) as (leader, worker, kids):
        leader.popen.send_signal(signal.SIGTERM)
        assert leader.wait_exit(60) == 0
        assert worker.wait_exit(60) == 0
        assert "the leader (node 0) stopped" in worker.text()
        assert_no_orphans(kids)


def test_worker_node_without_a_leader_fails_clearly(tmp_path, tiny_llama):
    addr = f"127.0.0.1:{free_port_pair()}"  # nobody listens there
    worker = node(tmp_path, 1, addr, "--model-path", tiny_llama, "--tp-size", "2",
                  "--dist-timeout", "2")
    try:
        assert worker.wait_exit(120) == 1
        text = worker.text()
        assert f"cannot reach the leader (node 0) at {addr} within 2 s" in text
        assert "started scheduler" not in text  # nothing loads before the group exists
    finally:
        worker.close()


def test_leader_refuses_a_mismatched_node_and_fails_when_nodes_do_not_join(tmp_path, tiny_llama):
    addr = f"127.0.0.1:{free_port_pair()}"
    leader = node(tmp_path, 0, addr, "--model-path", tiny_llama, "--tp-size", "2",
                  "--dist-timeout", "90")
    bad = node(tmp_path, 1, addr, "--model-path", tiny_llama, "--tp-size", "4",
               "--dist-timeout", "120")
    try:
        assert bad.wait_exit(150) == 1
        assert "refused node 1: --tp-size is 4 on node 1 but 2 on node 0" in bad.text()
        kids = descendants(leader.popen.pid)
        assert leader.wait_exit(150) == 1
        text = leader.text()
        assert "node(s) [1] did not join within 90 s" in text and "start-up failed" in text
        assert_no_orphans(kids)
    finally:
        bad.close()
        leader.close()


def test_killing_rank0_on_node0_takes_node1_down_nonzero(tmp_path, tiny_llama):
    import os

    from tests.worker.server.test_launch import child_pid

    with two_nodes(tmp_path, tiny_llama) as (leader, worker, kids):
        os.kill(child_pid(leader, "scheduler0"), signal.SIGKILL)
        assert leader.wait_exit(60) == 1
        assert worker.wait_exit(60) == 1
        # whichever notices first: the control channel, or rank 1's collective with a dead rank 0
        assert "ERROR [server] minisgl.distributed.node: node 1 stopping: " in worker.text()
        assert_no_orphans(kids)
