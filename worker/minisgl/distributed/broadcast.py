"""Rank 0's per-iteration bytes to every rank through torch.distributed, across nodes.

On one node the scheduler ranks talk over ipc:// ZeroMQ sockets (scheduler/io.py); ranks on
another node cannot reach those, so with --nnodes > 1 rank 0 broadcasts each iteration's
encoded message list over a gloo group (CPU tensors, TCP; beside NCCL's group on GPU). The
payload is our codec's bytes, never pickle: a length, then the bytes.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks > 0 wait here while rank 0 is idle; rank 0 sends an empty list at least every
# STATS_INTERVAL_S then (scheduler/process.py), so this only bounds a hung, not an idle, peer.
BROADCAST_TIMEOUT = timedelta(minutes=30)


class ByteBroadcast:
    """`send(payload)` on rank 0, `recv()` on every other rank, in the same order."""

    def __init__(self, rank: int) -> None:
        if not dist.is_initialized():
            raise RuntimeError("ByteBroadcast needs torch.distributed initialised (tp_size > 1)")
        self.rank = rank
        # Collective: every rank creates it, in the same order.
        self.group = dist.new_group(backend="gloo", timeout=BROADCAST_TIMEOUT)
        self._size = torch.zeros(1, dtype=torch.int64)

    def send(self, payload: bytes) -> None:
        self._size[0] = len(payload)
        dist.broadcast(self._size, src=0, group=self.group)
        if payload:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            dist.broadcast(data, src=0, group=self.group)

    def recv(self) -> bytes:
        dist.broadcast(self._size, src=0, group=self.group)
        n = int(self._size[0])
        if n == 0:
            return b""
        data = torch.empty(n, dtype=torch.uint8)
        dist.broadcast(data, src=0, group=self.group)
        return data.numpy().tobytes()
