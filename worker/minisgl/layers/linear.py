"""Tensor-parallel linear layers. Each owns how a full HF tensor is sliced for its rank.

Column-parallel layers split the output dim (no communication); row-parallel layers
split the input dim and all-reduce. Weights are [out, in] as in nn.Linear.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minisgl.distributed import TPGroup


def _shard(t: torch.Tensor, dim: int, tp: TPGroup) -> torch.Tensor:
    size = t.shape[dim] // tp.size
    return t.narrow(dim, tp.rank * size, size)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows split over ranks; `out_sizes` lists fused sub-matrices
    (e.g. gate and up) that are each split, so rank r holds [gate_r; up_r]."""

    def __init__(self, in_size: int, out_sizes: Sequence[int], bias: bool, tp: TPGroup) -> None:
        super().__init__()
        for s in out_sizes:
            if s % tp.size:
                raise ValueError(f"output size {s} not divisible by tp size {tp.size}")
        self.tp = tp
        self.local_sizes = [s // tp.size for s in out_sizes]
        out_local = sum(self.local_sizes)
        self.weight = nn.Parameter(torch.empty(out_local, in_size), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_local), requires_grad=False) if bias else None

    def load(self, name: str, full: torch.Tensor, part: int = 0) -> None:
        param = self.weight if name == "weight" else self.bias
        start = sum(self.local_sizes[:part])
        param.data.narrow(0, start, self.local_sizes[part]).copy_(_shard(full, 0, self.tp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection. KV heads are replicated when there are fewer than ranks."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool,
                 tp: TPGroup) -> None:
        if heads % tp.size:
            raise ValueError(f"{heads} attention heads not divisible by tp size {tp.size}")
        if kv_heads % tp.size and tp.size % kv_heads:
            raise ValueError(f"{kv_heads} kv heads incompatible with tp size {tp.size}")
        self.kv_replicas = max(1, tp.size // kv_heads)
        local_kv = max(1, kv_heads // tp.size)
        # Pretend the kv matrices hold kv_heads * replicas heads so the generic split works.
        super().__init__(
            hidden,
            [heads * head_dim, local_kv * head_dim * tp.size, local_kv * head_dim * tp.size],
            bias,
            tp,
        )
        self.head_dim = head_dim

    def load(self, name: str, full: torch.Tensor, part: int = 0) -> None:
        if part > 0 and self.kv_replicas > 1:
            full = full.view(-1, self.head_dim, *full.shape[1:])
            full = full.repeat_interleave(self.kv_replicas, dim=0).flatten(0, 1)
        super().load(name, full, part)


class RowParallelLinear(nn.Module):
    def __init__(self, in_size: int, out_size: int, bias: bool, tp: TPGroup) -> None:
        super().__init__()
        if in_size % tp.size:
            raise ValueError(f"input size {in_size} not divisible by tp size {tp.size}")
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_size, in_size // tp.size), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_size), requires_grad=False) if bias else None

    def load(self, name: str, full: torch.Tensor, part: int = 0) -> None:
        if name == "weight":
            self.weight.data.copy_(_shard(full, 1, self.tp))
        else:
            self.bias.data.copy_(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split over ranks; ids outside a rank's range contribute zeros."""

    def __init__(self, vocab: int, dim: int, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.vocab = vocab
        self.padded_vocab = -(-vocab // (64 * tp.size)) * 64 * tp.size
        self.local = self.padded_vocab // tp.size
        self.start = tp.rank * self.local
        self.weight = nn.Parameter(torch.zeros(self.local, dim), requires_grad=False)

    def load(self, name: str, full: torch.Tensor, part: int = 0) -> None:
        rows = full[self.start : min(self.start + self.local, self.vocab)]
        self.weight.data[: rows.shape[0]].copy_(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local < 0) | (local >= self.local)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    def logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, dim] -> [N, padded_vocab] float32 (columns >= vocab are -inf), into out if given.

        On CUDA with one rank the GEMM writes float32 directly (no half-precision logits
        tensor and no full-vocab conversion copy)."""
        if hidden.is_cuda and hidden.dtype != torch.float32 and self.tp.size == 1:
            full = torch.mm(hidden, self.weight.t(), out_dtype=torch.float32,
                            **({"out": out} if out is not None else {}))
        else:
            full = self.tp.all_gather_last_dim(F.linear(hidden, self.weight).float())
            if out is not None:
                full = out.copy_(full)
        if self.padded_vocab > self.vocab:
            full[:, self.vocab :] = float("-inf")
        return full
