"""Attention backend contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from minisgl.engine.batch import Batch
    from minisgl.kvcache.storage import KVStorage


class AttentionBackend(ABC):
    """Computes causal attention for a batch over the paged KV cache.

    prepare(batch) is called once per step before the forward pass and may stash
    layer-independent metadata in batch.attn_meta. forward(q, k, v, layer, batch) first
    writes k/v ([T, Hkv, D]) to the KV storage at batch.out_slots, then returns the
    attention output [T, H, D] for q ([T, H, D]), where token t of row b attends to
    positions 0 .. prefix_lens[b] + (t's offset within the row). The KV slots of row b's
    positions are batch.slot_table[batch.state_slots[b], :seq_lens[b]].

    Backends that can run inside a CUDA graph set supports_cuda_graph and implement
    graph_wrapper(bs, max_pages) (decode state with fixed buffers for batch size bs) and
    use_graph_wrapper(wrapper, batch) (plan that state for this batch before capture/replay).
    """

    supports_cuda_graph = False

    def __init__(self, kv: KVStorage, num_heads: int, num_kv_heads: int, head_dim: int,
                 page_size: int = 1) -> None:
        self.kv = kv
        self.page_size = page_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5

    @abstractmethod
    def prepare(self, batch: Batch) -> None: ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: Batch) -> torch.Tensor:
        self.kv.store(layer, batch.out_slots, k, v)
        return self.attend(q, layer, batch)

    @abstractmethod
    def attend(self, q: torch.Tensor, layer: int, batch: Batch) -> torch.Tensor:
        """forward() after the step's K/V are already in the cache (a fused kernel wrote them).

        The result may be a buffer the backend reuses on its next call (the split-KV decode
        kernel's fixed output for CUDA graphs): consume it before the next layer, or clone it."""

    def graph_wrapper(self, bs: int, max_pages: int):
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def use_graph_wrapper(self, wrapper, batch: Batch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")
