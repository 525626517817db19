"""KV cache: page pool, prefix caches (radix / naive) and the KV tensor storage.

`create_prefix_cache(kind, page_size)` is the registry behind `--cache-type`; the
implementations are imported only when asked for.
"""

from __future__ import annotations

from typing import Callable

from minisgl.kvcache.base import MatchResult, PrefixCache
from minisgl.kvcache.pages import OutOfPages, PagePool


def _radix(page_size: int) -> PrefixCache:
    from minisgl.kvcache.radix import RadixCache

    return RadixCache(page_size)


def _naive(page_size: int) -> PrefixCache:
    from minisgl.kvcache.naive import NaiveCache

    return NaiveCache(page_size)


_PREFIX_CACHES: dict[str, Callable[[int], PrefixCache]] = {"radix": _radix, "naive": _naive}
PREFIX_CACHE_KINDS: tuple[str, ...] = tuple(_PREFIX_CACHES)


def create_prefix_cache(kind: str, page_size: int) -> PrefixCache:
    """Build the prefix cache named `kind` ("radix" or "naive")."""
    factory = _PREFIX_CACHES.get(kind)
    if factory is None:
        valid = ", ".join(sorted(_PREFIX_CACHES))
        raise ValueError(f"unknown cache type {kind!r}; valid: {valid}")
    return factory(page_size)


__all__ = [
    "PREFIX_CACHE_KINDS",
    "MatchResult",
    "OutOfPages",
    "PagePool",
    "PrefixCache",
    "create_prefix_cache",
]
