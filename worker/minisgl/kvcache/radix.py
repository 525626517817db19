"""Radix prefix cache: a token-level radix tree whose edges split only at page boundaries.

Each node holds a run of tokens (`key`, a multiple of page_size long) and the KV slots of
those tokens (`value`). Children are keyed by their first page of tokens, so two children
of one node never share a first page and every match / insert / split is page-aligned.
Reference counts run from a locked node up to the root; only unlocked leaves are evicted,
least recently used first (a logical clock, not wall time).
"""

from __future__ import annotations

import heapq
import logging
from typing import Sequence

import torch

from minisgl.kvcache.base import MatchResult, PrefixCache

logger = logging.getLogger(__name__)


def _empty() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


class _Node:
    __slots__ = ("id", "key", "value", "parent", "children", "ref", "last_access", "evicted")

    def __init__(self, node_id: int, key: list[int], value: torch.Tensor, parent: _Node | None):
        self.id = node_id  # heap tie-break: stable order among equal access times
        self.key = key  # token ids, len % page_size == 0
        self.value = value  # int64 [len(key)] cpu: slot of each token
        self.parent = parent
        self.children: dict[tuple[int, ...], _Node] = {}
        self.ref = 0
        self.last_access = 0
        self.evicted = False

    def __repr__(self) -> str:
        return f"_Node(id={self.id}, len={len(self.key)}, ref={self.ref}, t={self.last_access})"


def _to_list(token_ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        return token_ids.reshape(-1).tolist()
    return list(token_ids)


class RadixCache(PrefixCache):
    def __init__(self, page_size: int) -> None:
        super().__init__(page_size)
        self._clock = 0
        self._next_id = 1
        self._root = _Node(0, [], _empty(), None)
        self._root.ref = 1  # never evicted, never counted in the sizes
        self._leaves: set[_Node] = set()  # every non-root node without children
        self._evictable = 0
        self._protected = 0

    # ---- helpers ---------------------------------------------------------------------
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _new_node(self, key: list[int], value: torch.Tensor, parent: _Node) -> _Node:
        node = _Node(self._next_id, key, value, parent)
        self._next_id += 1
        return node

    def _common_len(self, key: list[int], ids: list[int], start: int) -> int:
        """Length of the page-aligned common prefix of key and ids[start:]."""
        n = min(len(key), len(ids) - start)
        n -= n % self.page_size
        if key[:n] == ids[start : start + n]:  # C-speed fast path: the whole edge matches
            return n
        for i, (a, b) in enumerate(zip(key, ids[start : start + n])):
            if a != b:
                return i - i % self.page_size
        return n  # unreachable: the slices differed

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut node's edge at `at` tokens (page-aligned, 0 < at < len); return the new upper half."""
        p = self.page_size
        parent = node.parent
        upper = self._new_node(node.key[:at], node.value[:at], parent)
        upper.ref = node.ref  # both halves carry the same locks, so the sizes do not change
        upper.last_access = node.last_access
        upper.children[tuple(node.key[at : at + p])] = node
        parent.children[tuple(node.key[:p])] = upper
        node.key = node.key[at:]
        node.value = node.value[at:]
        node.parent = upper
        return upper

    def _walk(self, ids: list[int]) -> tuple[_Node, int, list[torch.Tensor]]:
        """Follow ids down the tree, splitting the last edge at the mismatch.

        Returns the deepest node fully matched, the matched length and the slots on the path.
        """
        p = self.page_size
        n = len(ids) - len(ids) % p
        node, pos, values = self._root, 0, []
        while pos < n:
            child = node.children.get(tuple(ids[pos : pos + p]))
            if child is None:
                break
            m = self._common_len(child.key, ids, pos)  # >= p: the first page matched
            if m < len(child.key):
                child = self._split(child, m)
            node = child
            values.append(node.value)
            pos += m
        return node, pos, values

    def _touch(self, node: _Node) -> None:
        now = self._tick()
        while node is not self._root:
            node.last_access = now
            node = node.parent

    # ---- PrefixCache -----------------------------------------------------------------
    def match(self, token_ids: Sequence[int] | torch.Tensor) -> MatchResult:
        node, pos, values = self._walk(_to_list(token_ids))
        self._touch(node)
        if not values:
            return MatchResult(self._root, _empty())
        # a copy, so a caller writing into its page table can never corrupt the tree
        slots = values[0].clone() if len(values) == 1 else torch.cat(values)
        return MatchResult(node, slots)

    def lock(self, handle: _Node) -> None:
        if handle.evicted:
            raise ValueError("cannot lock an evicted node: lock right after match()")
        node = handle
        while node is not self._root:
            if node.ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.ref += 1
            node = node.parent

    def unlock(self, handle: _Node) -> None:
        node = handle
        while node is not self._root:
            if node.ref <= 0:
                raise ValueError("unlock without a matching lock")
            node.ref -= 1
            if node.ref == 0:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node = node.parent

    def insert(self, token_ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        ids = _to_list(token_ids)
        if len(ids) != slots.numel():
            raise ValueError(f"insert: {len(ids)} token ids but {slots.numel()} slots")
        if len(ids) % self.page_size != 0:
            raise ValueError(f"insert: length {len(ids)} is not a multiple of {self.page_size}")
        node, pos, _ = self._walk(ids)
        if pos < len(ids):
            # Clone: the cache must not pin (or alias) the caller's whole slot tensor.
            leaf = self._new_node(ids[pos:], slots[pos:].to("cpu", torch.int64).clone(), node)
            node.children[tuple(ids[pos : pos + self.page_size])] = leaf
            self._leaves.discard(node)
            self._leaves.add(leaf)
            self._evictable += len(leaf.key)
            node = leaf
        self._touch(node)
        return pos

    def evict(self, num_tokens: int) -> torch.Tensor:
        if num_tokens <= 0:
            return _empty()
        heap = [(n.last_access, n.id, n) for n in self._leaves if n.ref == 0]
        heapq.heapify(heap)
        freed: list[torch.Tensor] = []
        count = 0
        while count < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            del parent.children[tuple(node.key[: self.page_size])]
            self._leaves.remove(node)
            node.evicted = True
            self._evictable -= len(node.key)
            count += len(node.key)
            freed.append(node.value)
            if parent is not self._root and not parent.children:
                self._leaves.add(parent)
                if parent.ref == 0:
                    heapq.heappush(heap, (parent.last_access, parent.id, parent))
        if not freed:
            return _empty()
        return torch.cat(freed)

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    @property
    def num_nodes(self) -> int:
        """Nodes other than the root (for tests and metrics)."""
        count, stack = 0, list(self._root.children.values())
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count

    def reset(self) -> torch.Tensor:
        if self._protected:
            raise ValueError(f"reset: {self._protected} tokens are still locked")
        freed, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            node.evicted = True
            freed.append(node.value)
            stack.extend(node.children.values())
        self._root.children.clear()
        self._leaves.clear()
        self._evictable = 0
        return torch.cat(freed) if freed else _empty()
