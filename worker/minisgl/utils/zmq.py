"""Typed ZeroMQ queues: PUSH/PULL over ipc://, sync and asyncio, one socket base, one codec.

A queue is parametrised by the message type it carries (`PullQueue[BatchReplyMsg]`).
Receivers bind, senders connect: ZeroMQ queues messages for a peer that has not bound
yet, so processes may start in any order.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import zmq
import zmq.asyncio

from minisgl.message import codec

T = TypeVar("T")

# Sends to a dead peer must not block process exit forever; a live one gets 1 s to drain.
_LINGER_MS = 1000


class _QueueBase(Generic[T]):
    """Owns one socket and the codec; subclasses add the direction and sync/async flavour."""

    _socket_type: int

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool,
        context: zmq.Context | None = None,
        encode: Callable[[Any], bytes] = codec.encode,
        decode: Callable[[bytes], Any] = codec.decode,
    ) -> None:
        self.endpoint = endpoint
        self._encode = encode
        self._decode = decode
        self._context = context if context is not None else self._default_context()
        self.socket = self._context.socket(self._socket_type)
        self.socket.setsockopt(zmq.LINGER, _LINGER_MS)
        # No high-water mark: back pressure comes from the scheduler, not from dropped sockets.
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        if bind:
            self.socket.bind(endpoint)
        else:
            self.socket.connect(endpoint)

    def _default_context(self) -> zmq.Context:
        return zmq.Context.instance()

    def close(self) -> None:
        self.socket.close()


class PushQueue(_QueueBase[T]):
    _socket_type = zmq.PUSH

    def put(self, msg: T) -> None:
        """Send without blocking (no high-water mark, so this never waits for the peer)."""
        self.socket.send(self._encode(msg), copy=False)


class PullQueue(_QueueBase[T]):
    _socket_type = zmq.PULL

    def get(self, timeout: float | None = None) -> T | None:
        """Next message; None if `timeout` seconds pass first (None: wait forever)."""
        if timeout is not None and not self.socket.poll(int(timeout * 1000)):
            return None
        return self._decode(self.socket.recv(copy=False).buffer)

    def get_nowait(self) -> T | None:
        try:
            return self._decode(self.socket.recv(zmq.NOBLOCK, copy=False).buffer)
        except zmq.Again:
            return None

    def drain(self, timeout: float | None = 0.0) -> list[T]:
        """Every queued message, waiting up to `timeout` seconds for the first (None: forever)."""
        first = self.get(timeout)
        if first is None:
            return []
        msgs = [first]
        while (msg := self.get_nowait()) is not None:
            msgs.append(msg)
        return msgs


class _AsyncQueueBase(_QueueBase[T]):
    def _default_context(self) -> zmq.Context:
        return zmq.asyncio.Context.instance()


class AsyncPushQueue(_AsyncQueueBase[T]):
    _socket_type = zmq.PUSH

    async def put(self, msg: T) -> None:
        await self.socket.send(self._encode(msg), copy=False)


class AsyncPullQueue(_AsyncQueueBase[T]):
    _socket_type = zmq.PULL

    async def get(self) -> T:
        frame = await self.socket.recv(copy=False)
        return self._decode(frame.buffer)


def ipc_endpoint(directory: str, name: str) -> str:
    """`ipc://<directory>/<name>.sock` (directory is the per-server temp dir)."""
    return f"ipc://{directory}/{name}.sock"
