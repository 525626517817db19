"""The KV tensors: one K and one V buffer per layer, indexed by slot."""

from __future__ import annotations

import torch


FP8_MAX = 448.0  # float8 e4m3fn's largest finite value; stores clamp to it (no scale)


def kv_storage_dtype(name: str, compute_dtype: torch.dtype) -> torch.dtype:
    """--kv-cache-dtype (config.KV_CACHE_DTYPES) -> the cache's torch dtype."""
    return torch.float8_e4m3fn if name == "fp8_e4m3" else compute_dtype


def store_rows(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """cache[slots] = x in the cache's dtype. An FP8 cache saturates explicitly (whatever this
    torch's cast does past 448) and is written as bytes: the CPU has no fp8 index_copy_."""
    if cache.dtype == torch.float8_e4m3fn:
        x = x.clamp(-FP8_MAX, FP8_MAX).to(cache.dtype)
        cache.view(torch.uint8).index_copy_(0, slots, x.view(torch.uint8))
    else:
        cache.index_copy_(0, slots, x.to(cache.dtype))


class KVStorage:
    """dtype: what the cache holds; compute_dtype: what attention reads it as and returns
    (the model dtype; differs for an FP8 cache, which every reader upcasts)."""

    def __init__(self, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device,
                 compute_dtype: torch.dtype | None = None) -> None:
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, slots, Hkv, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        if dtype == torch.float8_e4m3fn and compute_dtype is None:
            raise ValueError("an FP8 KV cache needs compute_dtype (the dtype attention reads it as)")
        self.compute_dtype = compute_dtype or dtype

    def store(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slots [T] int64; k, v [T, Hkv, D]."""
        store_rows(self.k[layer], slots, k)
        store_rows(self.v[layer], slots, v)

    @staticmethod
    def bytes_per_slot(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
