"""Page accounting checks shared by the scheduler and engine tests."""

from __future__ import annotations


def assert_no_leak(scheduler) -> None:
    """Everything not held by the prefix cache is free; evicting the cache frees all pages."""
    cm = scheduler.cache
    assert not scheduler.has_work
    assert cm.outstanding == 0
    assert cm.cache.protected_size == 0
    assert cm.pool.num_free + cm.cache.evictable_size // cm.page_size == cm.pool.num_total
    freed = cm.cache.evict(cm.pool.num_total * cm.page_size)
    if freed.numel():
        cm.pool.free_slots(freed)
    assert cm.pool.num_free == cm.pool.num_total
