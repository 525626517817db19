from __future__ import annotations

import pytest
import torch

from minisgl.kvcache import OutOfPages, PagePool


def test_fresh_pool_hands_out_pages_in_order_and_counts_them() -> None:
    pool = PagePool(num_pages=8, page_size=4)
    assert (pool.num_total, pool.num_free, pool.num_used) == (8, 8, 0)
    pages = pool.alloc_pages(3)
    assert pages.dtype == torch.int64 and pages.tolist() == [0, 1, 2]
    assert (pool.num_free, pool.num_used) == (5, 3)
    pool.free_pages(pages)
    assert pool.num_free == 8


def test_alloc_slots_are_page_major_runs() -> None:
    pool = PagePool(num_pages=6, page_size=4)
    pool.alloc_pages(1)
    slots = pool.alloc_slots(2)
    assert slots.tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert pool.slots_of(torch.tensor([5, 0])).tolist() == [20, 21, 22, 23, 0, 1, 2, 3]
    assert pool.pages_of(slots).tolist() == [1, 2]


def test_out_of_pages_allocates_nothing() -> None:
    pool = PagePool(num_pages=4, page_size=2)
    pool.alloc_pages(3)
    with pytest.raises(OutOfPages, match="need 2 KV pages, only 1"):
        pool.alloc_pages(2)
    assert pool.num_free == 1
    assert isinstance(OutOfPages("x"), ValueError)
    assert pool.alloc_pages(1).tolist() == [3]
    assert pool.alloc_pages(0).numel() == 0


def test_double_free_raises_and_frees_nothing() -> None:
    pool = PagePool(num_pages=4, page_size=1)
    pages = pool.alloc_pages(2)
    pool.free_pages(pages[:1])
    with pytest.raises(ValueError, match="double free"):
        pool.free_pages(pages)
    assert pool.num_free == 3  # the still-allocated page in that call was not freed either
    pool.free_pages(pages[1:])
    assert pool.num_free == 4


def test_freeing_never_allocated_or_out_of_range_pages_raises() -> None:
    pool = PagePool(num_pages=4, page_size=2)
    with pytest.raises(ValueError, match="never-allocated"):
        pool.free_pages([2])
    with pytest.raises(ValueError, match="range"):
        pool.free_pages([4])
    with pytest.raises(ValueError, match="range"):
        pool.free_pages([-1])
    pool.alloc_pages(4)
    with pytest.raises(ValueError, match="twice"):
        pool.free_pages([1, 1])
    assert pool.num_free == 0


def test_free_slots_checks_page_alignment() -> None:
    pool = PagePool(num_pages=4, page_size=4)
    slots = pool.alloc_slots(2)  # 0..7
    with pytest.raises(ValueError, match="whole pages"):
        pool.free_slots(slots[:3])
    with pytest.raises(ValueError, match="page-aligned"):
        pool.free_slots(slots[1:5])
    with pytest.raises(ValueError, match="page-aligned"):
        pool.free_slots(torch.tensor([0, 1, 3, 2]))
    assert pool.num_free == 2
    pool.free_slots(torch.cat([slots[4:], slots[:4]]))  # pages in any order
    assert pool.num_free == 4


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        PagePool(num_pages=0, page_size=1)
    with pytest.raises(ValueError):
        PagePool(num_pages=1, page_size=0)
    pool = PagePool(num_pages=2, page_size=1)
    with pytest.raises(ValueError):
        pool.alloc_pages(-1)
    with pytest.raises(ValueError, match="integers"):
        pool.free_pages(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="1-D"):
        pool.free_pages(torch.zeros(1, 1, dtype=torch.int64))


def test_freed_pages_are_reused_and_never_handed_out_twice() -> None:
    pool = PagePool(num_pages=16, page_size=2)
    held: list[torch.Tensor] = []
    for round_ in range(20):
        if pool.num_free >= 3:
            held.append(pool.alloc_pages(3))
        if len(held) > 2 or round_ % 3 == 2:
            pool.free_pages(held.pop(0))
        owned = torch.cat(held) if held else torch.empty(0, dtype=torch.int64)
        assert torch.unique(owned).numel() == owned.numel()
        assert pool.num_used == owned.numel()
    for pages in held:
        pool.free_pages(pages)
    assert pool.num_free == pool.num_total
