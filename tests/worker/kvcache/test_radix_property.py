"""Random insert / match / lock / unlock / evict sequences against a reference model.

The harness plays the scheduler: requests match their prompt, lock it, allocate pages for
the rest, then either finish (insert + free duplicates + unlock) or abort (free + unlock);
memory pressure evicts. The reference model is a dict of cached *page prefixes* (the
tokens up to the end of a page -> that page's slots), which is what the tree must equal.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from minisgl.kvcache import PagePool
from minisgl.kvcache.radix import RadixCache

Key = tuple[int, ...]


@dataclass(eq=False)
class _Request:
    seq: list[int]
    handle: object
    matched: int  # tokens matched (and locked) in the cache
    slots: torch.Tensor  # [matched + own pages * page_size]: cache slots then its own


class _Harness:
    def __init__(self, page_size: int, seed: int, vocab: int = 3, max_len: int = 40) -> None:
        self.p = page_size
        self.rng = random.Random(seed)
        self.vocab, self.max_len = vocab, max_len
        self.pool = PagePool(num_pages=96 // page_size, page_size=page_size)
        self.cache = RadixCache(page_size)
        self.ref: dict[Key, Key] = {}  # page prefix -> slots of its last page
        self.owner: dict[int, Key] = {}  # first slot of a cached page -> its prefix
        self.time: dict[Key, int] = {}
        self.locks: Counter[Key] = Counter()
        self.clock = 0
        self.requests: list[_Request] = []
        self.seqs: list[list[int]] = []

    # ---- reference model ----------------------------------------------------------
    def _prefixes(self, seq: list[int], length: int) -> list[Key]:
        return [tuple(seq[:end]) for end in range(self.p, length + 1, self.p)]

    def ref_match(self, ids: list[int]) -> tuple[int, list[int]]:
        length, slots = 0, []
        while length + self.p <= len(ids) and tuple(ids[: length + self.p]) in self.ref:
            length += self.p
            slots.extend(self.ref[tuple(ids[:length])])
        return length, slots

    def ref_touch(self, seq: list[int], length: int) -> None:
        self.clock += 1
        for key in self._prefixes(seq, length):
            self.time[key] = self.clock

    def ref_add(self, seq: list[int], start: int, end: int, slots: torch.Tensor) -> None:
        for key in self._prefixes(seq, end)[start // self.p :]:
            page = tuple(slots[len(key) - self.p : len(key)].tolist())
            self.ref[key] = page
            self.owner[page[0]] = key

    def new_seq(self) -> list[int]:
        rng = self.rng
        seq: list[int] = []
        if self.seqs and rng.random() < 0.7:
            base = rng.choice(self.seqs)
            seq = base[: rng.randint(0, len(base))]
        seq += [rng.randrange(self.vocab) for _ in range(rng.randint(0 if seq else 1, 12))]
        seq = seq[: self.max_len]
        self.seqs = (self.seqs + [seq])[-50:]
        return seq

    # ---- operations -----------------------------------------------------------------
    def check_match(self, ids: list[int]):
        m = self.cache.match(ids)
        length, slots = self.ref_match(ids)
        assert m.slots.tolist() == slots, (ids, m.slots.tolist(), slots)
        self.ref_touch(ids, length)
        return m, length

    def lock(self, seq: list[int], handle: object, length: int, delta: int) -> None:
        (self.cache.lock if delta > 0 else self.cache.unlock)(handle)
        for key in self._prefixes(seq, length):
            self.locks[key] += delta

    def alloc(self, num_pages: int) -> torch.Tensor | None:
        if self.pool.num_free < num_pages:
            self.evict((num_pages - self.pool.num_free) * self.p)
        if self.pool.num_free < num_pages:
            return None
        return self.pool.alloc_slots(num_pages)

    def start_request(self) -> None:
        seq = self.new_seq()
        m, length = self.check_match(seq[:-1])
        assert length < len(seq)
        self.lock(seq, m.handle, length, +1)
        own = self.alloc(-(-(len(seq) - length) // self.p))
        if own is None:  # even eviction cannot make room: the request waits (here: drops)
            self.lock(seq, m.handle, length, -1)
            return
        self.requests.append(_Request(seq, m.handle, length, torch.cat([m.slots, own])))

    def finish_request(self, req: _Request) -> None:
        self.requests.remove(req)
        aligned = len(req.seq) - len(req.seq) % self.p
        expected, _ = self.ref_match(req.seq[:aligned])
        n = self.cache.insert(req.seq[:aligned], req.slots[:aligned])
        assert n == expected and n >= req.matched
        self.ref_add(req.seq, n, aligned, req.slots)
        self.ref_touch(req.seq, aligned)
        self.pool.free_slots(req.slots[req.matched : n])  # duplicates of cached pages
        self.pool.free_slots(req.slots[aligned:])  # the partial last page
        self.lock(req.seq, req.handle, req.matched, -1)

    def abort_request(self, req: _Request) -> None:
        self.requests.remove(req)
        self.pool.free_slots(req.slots[req.matched :])
        self.lock(req.seq, req.handle, req.matched, -1)

    def insert_fresh(self) -> None:
        seq = self.new_seq()
        seq = seq[: len(seq) - len(seq) % self.p]
        slots = self.alloc(len(seq) // self.p)
        if slots is None:
            return
        expected, _ = self.ref_match(seq)
        n = self.cache.insert(seq, slots)
        assert n == expected
        self.ref_add(seq, n, len(seq), slots)
        self.ref_touch(seq, len(seq))
        self.pool.free_slots(slots[:n])

    def evict(self, num_tokens: int) -> None:
        freed = self.cache.evict(num_tokens)
        assert freed.numel() % self.p == 0
        gone = []
        for page in freed.view(-1, self.p).tolist():
            key = self.owner.pop(page[0])
            assert self.ref.pop(key) == tuple(page)
            assert self.locks[key] == 0, "evicted a locked page"
            gone.append(key)
        assert freed.numel() >= num_tokens or self.cache.evictable_size == 0
        for key in self.ref:  # whole leaves only: what stays is still a tree
            assert len(key) == self.p or key[: -self.p] in self.ref
        if gone:  # least recently used first
            parents = {key[: -self.p] for key in self.ref}
            leaves = [k for k in self.ref if k not in parents and self.locks[k] == 0]
            newest_gone = max(self.time[k] for k in gone)
            assert all(newest_gone <= self.time[k] for k in leaves)
        self.pool.free_slots(freed)

    def step(self) -> None:
        rng = self.rng
        ops = ["start"] * 3 + ["match"] * 2 + ["fresh", "evict"]
        if self.requests:
            ops += ["finish"] * 3 + ["abort"]
        op = rng.choice(ops)
        if op == "start" and len(self.requests) < 4:
            self.start_request()
        elif op == "match":
            self.check_match(self.new_seq())
        elif op == "fresh":
            self.insert_fresh()
        elif op == "evict":
            self.evict(rng.randint(0, 24))
        elif op == "finish":
            self.finish_request(rng.choice(self.requests))
        elif op == "abort":
            self.abort_request(rng.choice(self.requests))

    # ---- invariants -------------------------------------------------------------------
    def check_invariants(self) -> None:
        p, cache = self.p, self.cache
        seen: dict[Key, Key] = {}
        leaves = set()
        stack = [(cache._root, ())]
        while stack:
            node, path = stack.pop()
            if node is not cache._root:
                assert len(node.key) > 0 and len(node.key) % p == 0
                assert node.value.tolist() != [] and node.value.numel() == len(node.key)
                for end in range(p, len(node.key) + 1, p):
                    key = path + tuple(node.key[:end])
                    seen[key] = tuple(node.value[end - p : end].tolist())
                    assert node.ref == self.locks[key], "node lock count != reference"
                path = path + tuple(node.key)
                if not node.children:
                    leaves.add(node)
            for first, child in node.children.items():
                assert child.parent is node and first == tuple(child.key[:p])
                stack.append((child, path))
        assert seen == self.ref
        assert leaves == cache._leaves
        locked = sum(1 for k in self.ref if self.locks[k] > 0)
        assert cache.protected_size == locked * p
        assert cache.evictable_size == (len(self.ref) - locked) * p
        own = [r.slots[r.matched :] for r in self.requests]
        owned = [s for page in self.ref.values() for s in page]
        owned += torch.cat(own).tolist() if own else []
        assert len(set(owned)) == len(owned), "a slot is owned twice"
        assert self.pool.num_used * p == len(owned), "pages leaked or double-owned"

    def teardown(self, use_reset: bool) -> None:
        while self.requests:
            req = self.rng.choice(self.requests)
            if self.rng.random() < 0.5:
                self.finish_request(req)
            else:
                self.abort_request(req)
        self.check_invariants()
        assert self.cache.protected_size == 0
        if use_reset:
            freed = self.cache.reset()
            for page in freed.view(-1, self.p).tolist():
                assert self.ref.pop(self.owner.pop(page[0])) == tuple(page)
            self.pool.free_slots(freed)
        else:
            self.evict(10**9)
        assert not self.ref and self.cache.evictable_size == 0 and self.cache.num_nodes == 0
        assert self.pool.num_free == self.pool.num_total


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_radix_matches_reference_under_random_workload(page_size: int, seed: int) -> None:
    h = _Harness(page_size, seed)
    for _ in range(300):
        h.step()
        h.check_invariants()
    h.teardown(use_reset=seed % 2 == 1)


@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_radix_under_heavy_sharing_and_pressure(page_size: int) -> None:
    """Tiny vocabulary and long sequences: nearly everything shares a prefix and the pool
    is always full, so every request start evicts."""
    h = _Harness(page_size, seed=100 + page_size, vocab=2, max_len=64)
    for _ in range(400):
        h.step()
        h.check_invariants()
    h.teardown(use_reset=False)
