"""Tensor-parallel communication: a tiny wrapper over torch.distributed.

The TP group is passed explicitly (TPGroup), never read from a global: layers receive
it at construction. With tp_size 1 every op is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] per rank -> [..., d * size], rank-major along the last dim."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)


def init_tp_group(rank: int, size: int, init_method: str | None, device: str) -> TPGroup:
    if size == 1:
        return TPGroup()
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    return TPGroup(rank=rank, size=size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
