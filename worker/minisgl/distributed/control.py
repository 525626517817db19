"""The node group's control channel: one TCP connection from each worker node to node 0.

Node 0's launcher listens on --dist-init-addr's port; each worker node's launcher connects
(retrying until --dist-timeout), says who it is, and is accepted or refused with a reason.
Afterwards both ends send a heartbeat every HEARTBEAT_S. The connection is how the group
dies together: a launcher that exits (or is SIGKILLed: the kernel closes its socket) or goes
silent for HEARTBEAT_TIMEOUT_S is "lost" at the other end, which then exits non-zero and
takes its local ranks with it. An orderly stop of node 0 says "bye" first.

Wire format: one JSON object per line, `{"t": "hello" | "welcome" | "refused" | "hb" | "bye"}`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 10.0
_RETRY_S = 0.5


class ControlError(RuntimeError):
    """A node could not join the group (unreachable leader, mismatched flags)."""


@dataclass(frozen=True)
class Hello:
    """What a worker node tells the leader; every field must agree with the leader's flags."""

    node_rank: int
    nnodes: int
    tp_size: int
    model_path: str
    dtype: str = "auto"  # weights and activations: every rank's must agree for the all-reduces
    kv_cache_dtype: str = "auto"

    def mismatch(self, leader: Hello) -> str | None:
        for name in ("nnodes", "tp_size", "model_path", "dtype", "kv_cache_dtype"):
            mine, theirs = getattr(self, name), getattr(leader, name)
            if mine != theirs:
                return f"--{name.replace('_', '-')} is {mine!r} on node {self.node_rank} " \
                       f"but {theirs!r} on node 0"
        if not 1 <= self.node_rank < leader.nnodes:
            return f"--node-rank {self.node_rank} is not a worker node of {leader.nnodes}"
        return None


class Link:
    """One established connection: heartbeats out, a reader that reports the peer's end."""

    def __init__(self, sock: socket.socket, peer: str, on_lost: Callable[[str], None],
                 on_bye: Callable[[], None] | None = None) -> None:
        self.sock, self.peer = sock, peer
        self._on_lost, self._on_bye = on_lost, on_bye
        self._closed = threading.Event()
        self._send_lock = threading.Lock()
        self._reader = _Lines(sock)

    def start(self) -> None:
        self.sock.settimeout(HEARTBEAT_TIMEOUT_S)
        threading.Thread(target=self._beat, name=f"hb-{self.peer}", daemon=True).start()
        threading.Thread(target=self._read, name=f"read-{self.peer}", daemon=True).start()

    def send(self, msg: dict) -> bool:
        with self._send_lock:
            try:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
                return True
            except OSError:
                return False

    def close(self, bye: bool = True) -> None:
        if self._closed.is_set():
            return
        if bye:
            self.send({"t": "bye"})
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _beat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            self.send({"t": "hb"})

    def _read(self) -> None:
        reason = None
        try:
            while reason is None:
                msg = self._reader.read()
                if msg is None:
                    reason = f"{self.peer} closed the connection"
                elif msg.get("t") == "bye":
                    if self._closed.is_set():
                        return
                    self._closed.set()
                    if self._on_bye is not None:
                        self._on_bye()
                        return
                    reason = f"{self.peer} left the group"
        except socket.timeout:
            reason = f"no heartbeat from {self.peer} for {HEARTBEAT_TIMEOUT_S:.0f} s"
        except (OSError, ValueError) as exc:
            reason = f"lost the connection to {self.peer}: {exc}"
        if not self._closed.is_set():
            self._closed.set()
            self._on_lost(reason)


class _Lines:
    """Newline-delimited JSON from a socket (None at EOF)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self._buf = sock, b""

    def read(self) -> dict | None:
        while b"\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ValueError("malformed control message")
        return msg


class Leader:
    """Node 0: accept the worker nodes (until `timeout`), then watch them.

    `on_lost(reason)` is called (from a background thread) at most once: when a node fails
    to join in time, or a joined node is lost.
    """

    def __init__(self, port: int, hello: Hello, timeout: float,
                 on_lost: Callable[[str], None]) -> None:
        self.hello, self.timeout = hello, timeout
        self._on_lost_cb = on_lost
        self._lost = threading.Event()
        self.links: dict[int, Link] = {}
        self._closing = False
        self._server = socket.create_server(("", port), backlog=hello.nnodes)
        self.port = self._server.getsockname()[1]

    def start(self) -> None:
        threading.Thread(target=self._accept, name="control-accept", daemon=True).start()
        logger.info("waiting up to %.0f s for %d worker node(s) on port %d",
                    self.timeout, self.hello.nnodes - 1, self.port)

    def _lose(self, reason: str) -> None:
        if self._closing or self._lost.is_set():
            return
        self._lost.set()
        self._on_lost_cb(reason)

    def _accept(self) -> None:
        deadline = time.monotonic() + self.timeout
        want = set(range(1, self.hello.nnodes))
        while want - set(self.links) and not self._closing:
            self._server.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                sock, addr = self._server.accept()
            except socket.timeout:
                missing = sorted(want - set(self.links))
                self._lose(f"node(s) {missing} did not join within {self.timeout:g} s "
                           f"(--dist-timeout); are they started with --dist-init-addr "
                           f"pointing here (port {self.port})?")
                return
            except OSError:
                return  # closed
            self._handshake(sock, f"{addr[0]}:{addr[1]}")
        if not self._closing:
            logger.info("all %d nodes joined", self.hello.nnodes)
        self._server.close()

    def _handshake(self, sock: socket.socket, addr: str) -> None:
        sock.settimeout(HEARTBEAT_TIMEOUT_S)
        try:
            msg = _Lines(sock).read()
            if msg is None or msg.get("t") != "hello":
                raise ValueError("no hello")
            hello = Hello(**{k: msg[k] for k in Hello.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("control connection from %s dropped: %r", addr, exc)
            sock.close()
            return
        problem = hello.mismatch(self.hello)
        if problem is None and hello.node_rank in self.links:
            problem = f"node {hello.node_rank} joined twice"
        if problem is not None:
            logger.error("refused node %d from %s: %s", hello.node_rank, addr, problem)
            sock.sendall(json.dumps({"t": "refused", "reason": problem}).encode() + b"\n")
            sock.close()
            return
        sock.sendall(json.dumps({"t": "welcome"}).encode() + b"\n")
        link = Link(sock, f"node {hello.node_rank} ({addr})", self._lose)
        self.links[hello.node_rank] = link
        link.start()
        logger.info("node %d joined from %s", hello.node_rank, addr)

    def close(self, bye: bool = True) -> None:
        """Stop; with `bye` the worker nodes exit 0, without it they fail (exit 1)."""
        self._closing = True
        self._server.close()
        for link in list(self.links.values()):
            link.close(bye=bye)


def join(host: str, port: int, hello: Hello, timeout: float, on_lost: Callable[[str], None],
         on_bye: Callable[[], None]) -> Link:
    """Worker node: connect to the leader (retrying until `timeout`) and be accepted."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControlError(f"cannot reach the leader (node 0) at {host}:{port} within "
                               f"{timeout:g} s (--dist-timeout): {last}")
        try:
            sock = socket.create_connection((host, port), timeout=min(left, HEARTBEAT_TIMEOUT_S))
            break
        except OSError as exc:
            last = exc
            time.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))
    sock.settimeout(HEARTBEAT_TIMEOUT_S)
    try:
        sock.sendall(json.dumps({"t": "hello", **hello.__dict__}).encode() + b"\n")
        reply = _Lines(sock).read()
    except (OSError, ValueError) as exc:
        sock.close()
        raise ControlError(f"the leader at {host}:{port} dropped the handshake: {exc!r}") from exc
    if reply is None or reply.get("t") != "welcome":
        sock.close()
        reason = reply.get("reason") if reply else "connection closed"
        raise ControlError(f"the leader at {host}:{port} refused node {hello.node_rank}: {reason}")
    link = Link(sock, f"the leader (node 0, {host}:{port})", on_lost, on_bye)
    link.start()
    logger.info("joined the leader at %s:%d as node %d", host, port, hello.node_rank)
    return link
