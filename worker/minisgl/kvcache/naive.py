"""Naive prefix cache: shares nothing. Every request computes its whole prompt and frees
all of its pages when it finishes; the baseline that the radix cache is measured against."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from minisgl.kvcache.base import MatchResult, PrefixCache


class NaiveCache(PrefixCache):
    def match(self, token_ids: Sequence[int] | torch.Tensor) -> MatchResult:
        return MatchResult(None, torch.empty(0, dtype=torch.int64))

    def lock(self, handle: Any) -> None:
        pass

    def unlock(self, handle: Any) -> None:
        pass

    def insert(self, token_ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        n = len(token_ids)
        if n != slots.numel():
            raise ValueError(f"insert: {n} token ids but {slots.numel()} slots")
        if n % self.page_size != 0:
            raise ValueError(f"insert: length {n} is not a multiple of {self.page_size}")
        return n  # "already held" everything: the caller frees all of its slots

    def evict(self, num_tokens: int) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    def reset(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)
