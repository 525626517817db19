"""KV page accounting for the scheduler: page pool + prefix cache + reservations.

Admission reserves every page a request can ever need (prompt + max_tokens, minus the
pages it shares from the prefix cache) when that fits, so such a request always finishes.
When it does not fit (long max_tokens, e.g. a chat request that defaults to the whole
context) the request is admitted with a window of RESERVE_WINDOW output tokens; growing
past it takes free pages, and when none are left the scheduler preempts the most recently
admitted request (its KV goes to the prefix cache; it is recomputed later, mostly from
cache hits). Pages are allocated lazily, evicting unused prefix-cache leaves when the pool
runs dry. Memory pressure therefore queues or preempts, never crashes or deadlocks.
"""

from __future__ import annotations

import logging

import torch

from minisgl.errors import ContextTooLong
from minisgl.kvcache import PagePool, create_prefix_cache
from minisgl.scheduler.request import Req

logger = logging.getLogger(__name__)


GROW_TOKENS = 128
RESERVE_WINDOW = 256  # output tokens reserved at admission when the full max_tokens does not fit


def _pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


class CacheManager:
    def __init__(self, num_pages: int, page_size: int, cache_type: str, max_requests: int,
                 table_width: int) -> None:
        self.page_size = page_size
        self.table_width = table_width
        self._free_states = list(range(max_requests - 1, -1, -1))  # engine state rows
        self.pool = PagePool(num_pages, page_size)
        self.cache = create_prefix_cache(cache_type, page_size)
        self.shares = cache_type != "naive"
        self.outstanding = 0  # sum of live requests' reserved_pages

    @property
    def available_pages(self) -> int:
        return self.pool.num_free + self.cache.evictable_size // self.page_size - self.outstanding

    @property
    def active_pages(self) -> int:
        """Pages held by live requests (cached-but-unused prefix pages excluded)."""
        return self.pool.num_used - self.cache.evictable_size // self.page_size

    def check_fits(self, total_tokens: int) -> None:
        if _pages(total_tokens, self.page_size) > self.pool.num_total:
            raise ContextTooLong(
                f"request needs {total_tokens} tokens of KV cache but this server holds "
                f"{self.pool.num_total * self.page_size}; shorten the prompt or max_tokens"
            )

    def try_admit(self, req: Req) -> bool:
        """Match the cached prefix and reserve the rest; False if memory is short."""
        if not self.shares or (req.params.prompt_logprobs and not req.output_ids):
            lookup = []  # nothing shared, or prompt logprobs need every position computed
        else:
            # A fresh request leaves at least one prompt token to compute.
            lookup = req.tokens(0, req.fill_target - (0 if req.output_ids else 1))
        if not self._free_states:
            return False
        match = self.cache.match(lookup)
        self.cache.lock(match.handle)
        matched = int(match.slots.shape[0])
        full = _pages(req.max_total_len, self.page_size) - matched // self.page_size
        window = min(req.max_total_len, req.fill_target + 1 + RESERVE_WINDOW)
        need = full if full <= self.available_pages else (
            _pages(window, self.page_size) - matched // self.page_size)
        if need > self.available_pages:
            self.cache.unlock(match.handle)
            return False
        req.slots, req.handle = match.slots.clone(), match.handle
        req.kv_len = req.kv_committed = req.matched_len = matched
        req.state_slot, req.table_synced = self._free_states.pop(), 0
        if req.num_preemptions == 0:
            req.num_cached = matched
        req.reserved_pages = need
        self.outstanding += need
        req.admitted = True
        return True

    def ensure_slots(self, req: Req, length: int) -> bool:
        """Grow req.slots to cover positions [0, length).

        Grows by at least GROW_TOKENS at a time (within the reservation), so a decoding
        request allocates once every few hundred steps instead of every step."""
        have = int(req.slots.shape[0]) // self.page_size
        n = _pages(length, self.page_size) - have
        if n <= 0:
            return True
        if n > req.reserved_pages:  # past the admission window: unreserved pages only
            if n - req.reserved_pages > self.available_pages:
                return False  # the scheduler preempts someone and retries
        else:
            n = max(n, min(req.reserved_pages, _pages(GROW_TOKENS, self.page_size)))
        if self.pool.num_free < n:
            freed = self.cache.evict((n - self.pool.num_free) * self.page_size)
            if freed.numel():
                self.pool.free_slots(freed)
        req.slots = torch.cat([req.slots, self.pool.alloc_slots(n)])
        used = min(n, req.reserved_pages)
        req.reserved_pages -= used
        self.outstanding -= used
        return True

    def _store(self, req: Req, ids: list[int]) -> int:
        """Insert ids' whole pages into the prefix cache; free our duplicates. Returns aligned len."""
        aligned = len(ids) // self.page_size * self.page_size
        existing = self.cache.insert(ids[:aligned], req.slots[:aligned])
        if existing > req.matched_len:
            self.pool.free_slots(req.slots[req.matched_len : existing])
        return aligned

    def cache_prompt(self, req: Req) -> None:
        """After prefill: share the prompt's pages with later requests (and n > 1 siblings)."""
        if not self.shares:
            return
        aligned = self._store(req, req.prompt_ids)
        if aligned <= req.matched_len:
            return
        match = self.cache.match(req.prompt_ids[:aligned])
        self.cache.lock(match.handle)
        self.cache.unlock(req.handle)
        n = int(match.slots.shape[0])
        req.slots[:n] = match.slots
        req.handle, req.matched_len = match.handle, n
        req.table_synced = 0  # the leading slots changed

    def release(self, req: Req) -> None:
        """Request finished or aborted: keep its KV as a cached prefix, free the rest."""
        if not req.admitted:
            return
        # Leading slots that stay with the prefix cache (committed KV only: a launched step
        # may still be writing later positions); every slot after them is freed. A slot
        # freed while a launched step writes it is safe: its next owner's writes come in a
        # later step on the same stream.
        kept = self._store(req, req.tokens(0, req.kv_committed)) if self.shares else 0
        kept = max(kept, req.matched_len)
        if req.slots.shape[0] > kept:
            self.pool.free_slots(req.slots[kept:])
        self.cache.unlock(req.handle)
        self.outstanding -= req.reserved_pages
        req.reserved_pages = 0
        req.admitted = False
        req.slots = req.slots[:0]
        req.handle = None
        req.kv_len = req.kv_committed = req.matched_len = req.inflight = 0
        self._free_states.append(req.state_slot)
        req.state_slot = -1

    def flush(self) -> int:
        """Drop every cached prefix (nothing may be running: their prefixes are locked) and
        return its pages to the pool; the number of cached tokens dropped."""
        freed = self.cache.reset()
        if freed.numel():
            self.pool.free_slots(freed)
        return int(freed.numel())

    def table_updates(self, reqs: list[Req]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Slot-table entries the engine lacks for reqs: (flat index, slot) int64 CPU tensors."""
        dest: list[torch.Tensor] = []
        vals: list[torch.Tensor] = []
        for req in reqs:
            n = int(req.slots.shape[0])
            if req.table_synced < n:
                base = req.state_slot * self.table_width
                dest.append(torch.arange(base + req.table_synced, base + n))
                vals.append(req.slots[req.table_synced :])
                req.table_synced = n
        return (torch.cat(dest), torch.cat(vals)) if dest else None

    def stats(self) -> tuple[int, int]:
        return self.active_pages, self.pool.num_total
