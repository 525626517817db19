from __future__ import annotations

import random

import pytest
import torch

from minisgl.kvcache import PagePool, create_prefix_cache
from minisgl.kvcache.radix import RadixCache


def _slots(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.int64)


def test_match_returns_longest_page_aligned_prefix() -> None:
    cache = RadixCache(page_size=2)
    assert cache.insert([1, 2, 3, 4, 5, 6], _slots(10, 6)) == 0
    m = cache.match([1, 2, 3, 4, 5, 9])
    assert m.slots.tolist() == [10, 11, 12, 13]
    m = cache.match([1, 2, 3, 9])  # mismatch inside the second page: only page one counts
    assert m.slots.tolist() == [10, 11]
    assert cache.match([1, 2, 3, 4, 5, 6, 7]).slots.tolist() == list(range(10, 16))
    assert cache.match([1, 2, 3, 4, 5]).slots.tolist() == [10, 11, 12, 13]  # tail page partial
    assert cache.match([2, 1]).slots.numel() == 0
    assert cache.match([]).slots.numel() == 0
    assert cache.evictable_size == 6 and cache.protected_size == 0


def test_match_leaves_at_least_one_token_when_given_ids_minus_one() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([5, 6, 7], _slots(0, 3))
    ids = [5, 6, 7]
    assert cache.match(ids[:-1]).slots.numel() == 2


def test_match_accepts_tensor_ids() -> None:
    cache = RadixCache(page_size=1)
    cache.insert(torch.tensor([1, 2, 3]), _slots(0, 3))
    assert cache.match(torch.tensor([1, 2, 4])).slots.tolist() == [0, 1]


def test_insert_returns_length_already_cached() -> None:
    cache = RadixCache(page_size=2)
    assert cache.insert([1, 2, 3, 4], _slots(0, 4)) == 0
    assert cache.insert([1, 2, 3, 4], _slots(100, 4)) == 4
    assert cache.insert([1, 2, 3, 4, 5, 6], _slots(100, 6)) == 4
    assert cache.insert([1, 2, 7, 7], _slots(200, 4)) == 2
    assert cache.insert([1, 2], _slots(300, 2)) == 2
    # the cache keeps its own slots for shared pages and takes the new ones beyond them
    assert cache.match([1, 2, 3, 4, 5, 6]).slots.tolist() == [0, 1, 2, 3, 104, 105]
    assert cache.match([1, 2, 7, 7]).slots.tolist() == [0, 1, 202, 203]
    assert cache.evictable_size == 8
    assert cache.num_nodes == 4  # [1,2] -> {[3,4] -> [5,6], [7,7]}


def test_insert_rejects_bad_lengths() -> None:
    cache = RadixCache(page_size=2)
    with pytest.raises(ValueError, match="slots"):
        cache.insert([1, 2], _slots(0, 4))
    with pytest.raises(ValueError, match="multiple"):
        cache.insert([1, 2, 3], _slots(0, 3))


def test_split_keeps_lock_counts_and_sizes() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2, 3, 4], _slots(0, 4))
    m = cache.match([1, 2, 3, 4])
    cache.lock(m.handle)
    assert (cache.evictable_size, cache.protected_size) == (0, 4)
    m2 = cache.match([1, 2, 9])  # splits the locked node
    assert m2.slots.tolist() == [0, 1]
    assert (cache.evictable_size, cache.protected_size) == (0, 4)
    cache.unlock(m.handle)
    assert (cache.evictable_size, cache.protected_size) == (4, 0)


def test_evict_never_drops_locked_nodes() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2, 3], _slots(0, 3))
    cache.insert([1, 2, 4], _slots(10, 3))
    m = cache.match([1, 2, 3])
    cache.lock(m.handle)
    freed = cache.evict(100)
    assert freed.tolist() == [12]  # only the unlocked branch [4]
    assert cache.match([1, 2, 3]).slots.tolist() == [0, 1, 2]
    assert (cache.evictable_size, cache.protected_size) == (0, 3)
    cache.unlock(m.handle)
    assert sorted(cache.evict(100).tolist()) == [0, 1, 2]
    assert cache.num_nodes == 0


def test_evict_least_recently_used_leaf_first() -> None:
    cache = RadixCache(page_size=2)
    cache.insert([1, 1, 1, 1], _slots(0, 4))
    cache.insert([2, 2, 2, 2], _slots(4, 4))
    cache.insert([3, 3, 3, 3], _slots(8, 4))
    cache.match([1, 1, 1, 1])  # refresh: now [2,2,..] is the oldest
    assert cache.evict(1).tolist() == [4, 5, 6, 7]  # whole node, more than asked
    assert cache.evict(4).tolist() == [8, 9, 10, 11]
    assert cache.evictable_size == 4


def test_parent_becomes_evictable_after_its_children_go() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2, 3], _slots(0, 3))
    cache.insert([1, 2, 4], _slots(10, 3))
    freed = cache.evict(3)  # both leaves (1 token each), then the shared parent [1, 2]
    assert sorted(freed.tolist()) == [0, 1, 2, 12]
    assert cache.evictable_size == 0 and cache.num_nodes == 0


def test_evict_returns_less_when_not_enough_is_evictable() -> None:
    cache = RadixCache(page_size=1)
    assert cache.evict(5).numel() == 0
    cache.insert([1, 2], _slots(0, 2))
    assert cache.evict(0).numel() == 0
    assert sorted(cache.evict(5).tolist()) == [0, 1]


def test_lock_and_unlock_misuse_raise() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2], _slots(0, 2))
    m = cache.match([1, 2])
    with pytest.raises(ValueError, match="without a matching lock"):
        cache.unlock(m.handle)
    cache.evict(2)
    with pytest.raises(ValueError, match="evicted"):
        cache.lock(m.handle)
    root = cache.match([9]).handle  # empty match: lock / unlock are no-ops
    cache.lock(root)
    cache.unlock(root)


def test_reset_frees_everything_unless_locked() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2, 3], _slots(0, 3))
    cache.insert([1, 5], _slots(20, 2))
    m = cache.match([1, 5])
    cache.lock(m.handle)
    with pytest.raises(ValueError, match="locked"):
        cache.reset()
    cache.unlock(m.handle)
    assert sorted(cache.reset().tolist()) == [0, 1, 2, 21]
    assert (cache.evictable_size, cache.num_nodes) == (0, 0)
    assert cache.match([1, 2]).slots.numel() == 0


def test_cache_owns_copies_of_inserted_slots() -> None:
    cache = RadixCache(page_size=1)
    slots = _slots(0, 3)
    cache.insert([1, 2, 3], slots)
    slots.fill_(-1)
    assert cache.match([1, 2, 3]).slots.tolist() == [0, 1, 2]


@pytest.mark.timeout(30)
def test_long_shared_prefixes_stay_fast() -> None:
    """Many long sequences on one long prefix: total work must stay ~linear in tokens."""
    page, prefix_len = 4, 4096
    pool = PagePool(num_pages=(prefix_len + 200 * 64) // page + 1, page_size=page)
    cache = create_prefix_cache("radix", page)
    prefix = list(range(prefix_len))
    cache.insert(prefix, pool.alloc_slots(prefix_len // page))
    rng = random.Random(0)
    for i in range(200):
        ids = prefix + [rng.randrange(10**6) for _ in range(64)]
        m = cache.match(ids[:-1])
        assert m.slots.numel() == prefix_len
        own = pool.alloc_slots(16)
        assert cache.insert(ids, torch.cat([m.slots, own])) == prefix_len
    assert cache.evictable_size == prefix_len + 200 * 64
    pool.free_slots(cache.evict(10**9))
    assert pool.num_free == pool.num_total


def test_matched_slots_are_a_copy() -> None:
    cache = RadixCache(page_size=1)
    cache.insert([1, 2], _slots(0, 2))
    cache.match([1, 2]).slots.fill_(-1)
    assert cache.match([1, 2]).slots.tolist() == [0, 1]
