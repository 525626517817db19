"""Page pool: which KV pages are free. Lives on the CPU; the KV tensors live in storage.py.

Page p owns slots [p * page_size, (p + 1) * page_size). Every operation is a handful of
tensor ops on the batch of pages, never a Python loop over tokens.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)


class OutOfPages(ValueError):
    """More pages were asked for than are free. Nothing was allocated."""


def _as_index(x: torch.Tensor | Sequence[int], what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor, got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.int64)


class PagePool:
    """Free list of page ids (a stack in a preallocated tensor) plus a bitmap of allocated pages.

    The bitmap makes double frees and frees of never-allocated pages a ValueError instead of
    silent corruption (two requests writing the same KV slots).
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self._num_pages = num_pages
        # free ids occupy _free[:_num_free]; the top of the stack is the end. Stored in
        # descending order so a fresh pool hands out pages 0, 1, 2, ...
        self._free = torch.arange(num_pages - 1, -1, -1, dtype=torch.int64)  # [num_pages] cpu
        self._num_free = num_pages
        self._allocated = torch.zeros(num_pages, dtype=torch.bool)  # [num_pages] cpu
        self._offsets = torch.arange(page_size, dtype=torch.int64)  # [page_size] cpu

    @property
    def num_total(self) -> int:
        return self._num_pages

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self._num_pages - self._num_free

    @property
    def num_slots(self) -> int:
        return self._num_pages * self.page_size

    def alloc_pages(self, n: int) -> torch.Tensor:
        """Take n pages: int64 [n] cpu. All or nothing: raises OutOfPages if n > num_free."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > self._num_free:
            raise OutOfPages(f"need {n} KV pages, only {self._num_free} of {self._num_pages} free")
        start = self._num_free - n
        pages = self._free[start : self._num_free].flip(0)  # flip copies
        self._num_free = start
        self._allocated[pages] = True
        return pages

    def free_pages(self, pages: torch.Tensor | Sequence[int]) -> None:
        """Return pages to the pool. Raises ValueError (and frees nothing) on an out-of-range
        id, a page that is not allocated (double free) or a page listed twice."""
        pages = _as_index(pages, "pages")
        k = pages.numel()
        if k == 0:
            return
        lo, hi = int(pages.min()), int(pages.max())
        if lo < 0 or hi >= self._num_pages:
            raise ValueError(f"page ids must be in [0, {self._num_pages}), got range [{lo}, {hi}]")
        if not bool(self._allocated[pages].all()):
            bad = pages[~self._allocated[pages]][:8].tolist()
            raise ValueError(f"double free or never-allocated pages: {bad}")
        if k > 1 and torch.unique(pages).numel() != k:
            raise ValueError("the same page is freed twice in one call")
        self._allocated[pages] = False
        self._free[self._num_free : self._num_free + k] = pages.flip(0)
        self._num_free += k

    def slots_of(self, pages: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Slots of the given pages, page-major: int64 [len(pages) * page_size] cpu."""
        pages = _as_index(pages, "pages")
        return (pages[:, None] * self.page_size + self._offsets).reshape(-1)

    def alloc_slots(self, num_pages: int) -> torch.Tensor:
        """Allocate num_pages pages and return their slots: int64 [num_pages * page_size] cpu."""
        return self.slots_of(self.alloc_pages(num_pages))

    def pages_of(self, slots: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Page ids of a slot tensor that covers whole pages, page-major: int64 [len // page_size].

        Raises ValueError unless every page_size-chunk is exactly one page's slots in order.
        """
        slots = _as_index(slots, "slots")
        if slots.numel() % self.page_size != 0:
            raise ValueError(
                f"{slots.numel()} slots do not cover whole pages of {self.page_size} slots"
            )
        rows = slots.view(-1, self.page_size)  # [num_pages, page_size]
        first = rows[:, :1]
        if not bool(((first % self.page_size == 0) & (rows - first == self._offsets)).all()):
            raise ValueError("slots are not page-aligned runs of consecutive slots")
        return first.reshape(-1) // self.page_size

    def free_slots(self, slots: torch.Tensor | Sequence[int]) -> None:
        """Return the pages that `slots` covers (whole pages, as alloc_slots returned them)."""
        self.free_pages(self.pages_of(slots))

    def __repr__(self) -> str:
        return f"PagePool(free={self._num_free}/{self._num_pages}, page_size={self.page_size})"
