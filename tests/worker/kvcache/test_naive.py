from __future__ import annotations

import pytest
import torch

from minisgl.kvcache import PREFIX_CACHE_KINDS, PagePool, PrefixCache, create_prefix_cache
from minisgl.kvcache.naive import NaiveCache
from minisgl.kvcache.radix import RadixCache


def test_naive_cache_keeps_nothing() -> None:
    pool = PagePool(num_pages=4, page_size=2)
    cache = create_prefix_cache("naive", page_size=2)
    assert isinstance(cache, NaiveCache)
    slots = pool.alloc_slots(2)
    m = cache.match([1, 2, 3, 4])
    assert m.slots.numel() == 0 and m.slots.dtype == torch.int64
    cache.lock(m.handle)
    n = cache.insert([1, 2, 3, 4], slots)
    assert n == 4  # the caller frees slots[matched_len:n], i.e. all of them
    pool.free_slots(slots[m.slots.numel() : n])
    cache.unlock(m.handle)
    assert cache.match([1, 2, 3, 4]).slots.numel() == 0
    assert cache.evict(100).numel() == 0 and cache.reset().numel() == 0
    assert (cache.evictable_size, cache.protected_size) == (0, 0)
    assert pool.num_free == pool.num_total


def test_naive_insert_validates_lengths() -> None:
    cache = NaiveCache(page_size=2)
    with pytest.raises(ValueError, match="slots"):
        cache.insert([1, 2], torch.arange(4))
    with pytest.raises(ValueError, match="multiple"):
        cache.insert([1, 2, 3], torch.arange(3))


def test_registry_builds_each_cache_type() -> None:
    assert set(PREFIX_CACHE_KINDS) == {"radix", "naive"}
    radix = create_prefix_cache("radix", page_size=4)
    assert isinstance(radix, RadixCache) and isinstance(radix, PrefixCache)
    assert radix.page_size == 4


def test_registry_rejects_unknown_type_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match="bogus.*naive, radix"):
        create_prefix_cache("bogus", page_size=1)
    with pytest.raises(ValueError, match="page_size"):
        create_prefix_cache("radix", page_size=0)
