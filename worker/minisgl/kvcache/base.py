"""Prefix-cache contract. Implementations: radix.py (sharing) and naive.py (none).

KV storage is addressed by *slots*: slot s holds the K/V of one token. Slots are
grouped into pages of `page_size` consecutive slots (page p owns slots
[p * page_size, (p + 1) * page_size)); the PagePool hands out whole pages.
A prefix cache maps token-id sequences to the slots that hold their KV, always in
whole pages: every matched / inserted length is a multiple of `page_size`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Sequence

import torch


class MatchResult(NamedTuple):
    handle: Any  # opaque node reference: pass to lock / unlock
    slots: torch.Tensor  # int64 [matched_len] cpu; matched_len % page_size == 0


class PrefixCache(ABC):
    """Contract (the scheduler relies on every line):

    - match(ids): longest cached prefix of `ids`, truncated to whole pages; refreshes LRU
      time of the matched path. Never matches *all* of ids when the caller passes
      `ids[:-1]` — callers do that so one token is always left to compute.
    - lock(handle) / unlock(handle): reference counts on the path root..handle. Locked
      nodes are never evicted. Every lock is paired with exactly one unlock.
    - insert(ids, slots) -> n: store a finished (or prefilled) sequence. len(ids) ==
      len(slots), a multiple of page_size. Returns n = number of leading tokens the cache
      already held before this call (or, for a cache that keeps nothing, len(ids)).
      The cache now owns slots[n:] (radix) and the caller must free its own slots in
      [matched_len, n) — duplicates of what the cache already had — where matched_len
      is what the caller's earlier match() returned.
    - evict(num_tokens) -> slots: free at least num_tokens tokens' worth of unlocked
      leaves, least recently used first (whole nodes; may return more, or fewer when
      not enough is evictable). The caller returns these slots' pages to the pool.
    - evictable_size / protected_size: tokens held in unlocked / locked nodes.
    """

    def __init__(self, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size

    @abstractmethod
    def match(self, token_ids: Sequence[int]) -> MatchResult: ...

    @abstractmethod
    def lock(self, handle: Any) -> None: ...

    @abstractmethod
    def unlock(self, handle: Any) -> None: ...

    @abstractmethod
    def insert(self, token_ids: Sequence[int], slots: torch.Tensor) -> int: ...

    @abstractmethod
    def evict(self, num_tokens: int) -> torch.Tensor: ...

    @property
    @abstractmethod
    def evictable_size(self) -> int: ...

    @property
    @abstractmethod
    def protected_size(self) -> int: ...

    @abstractmethod
    def reset(self) -> torch.Tensor:
        """Drop everything unlocked; return the freed slots. Raises if anything is locked."""
