"""CUDA graphs for decode: capture the whole forward (embedding -> logits) per batch size.

Captured largest batch first into one memory pool. A replay pads the batch to the next
captured size; padding rows read/write a scratch KV page that no request owns.
"""

from __future__ import annotations

import logging

import torch

from minisgl.engine.batch import Batch

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_bs] + list(range(16, max_bs + 1, 16))
    return sorted(set(sizes + [max_bs]))


class GraphRunner:
    def __init__(self, model, attn, max_bs: int, scratch_slot: int, max_pages: int,
                 device: torch.device) -> None:
        self.model, self.attn = model, attn
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.scratch_slot = scratch_slot
        self.device = device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.out_slots = torch.full((self.max_bs,), scratch_slot, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.wrappers: dict[int, object] = {}
        self.logits: dict[int, torch.Tensor] = {}
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its pool
            self._capture(bs, max_pages, pool)
        logger.info("captured %d CUDA graphs for decode batch sizes up to %d", len(self.sizes),
                    self.max_bs)

    def _static_batch(self, bs: int, slot_lists: list[torch.Tensor], prefix: list[int]) -> Batch:
        return Batch(phase="decode", rows=[None] * bs, input_ids=self.input_ids[:bs],
                     positions=self.positions[:bs], out_slots=self.out_slots[:bs],
                     slot_lists=slot_lists, prefix_lens=prefix, extend_lens=[1] * bs,
                     sample_rows=list(range(bs)))

    def _padding(self, n: int) -> tuple[list[torch.Tensor], list[int]]:
        return [torch.tensor([self.scratch_slot])] * n, [0] * n

    def _capture(self, bs: int, max_pages: int, pool) -> None:
        wrapper = self.attn.graph_wrapper(bs, max_pages)
        batch = self._static_batch(bs, *self._padding(bs))
        self.attn.use_graph_wrapper(wrapper, batch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (lazy inits, autotuning)
            for _ in range(2):
                self.model.logits(self.model(batch.input_ids, batch.positions, batch, self.attn))
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = self.model(batch.input_ids, batch.positions, batch, self.attn)
            self.logits[bs] = self.model.logits(hidden)  # [bs, padded_vocab] f32
        self.graphs[bs], self.wrappers[bs] = graph, wrapper
        logger.debug("captured bs=%d, torch allocated %.2f GiB", bs,
                     torch.cuda.memory_allocated(self.device) / 2**30)

    def can_run(self, batch: Batch) -> bool:
        return batch.phase == "decode" and batch.size <= self.max_bs and not batch.prompt_logprob_rows

    def run(self, batch: Batch) -> torch.Tensor:
        """Replay the graph for this decode batch; returns logits [B, padded_vocab] f32."""
        n = batch.size
        bs = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.out_slots[:n].copy_(batch.out_slots)
        if bs > n:
            self.input_ids[n:bs].zero_()
            self.positions[n:bs].zero_()
            self.out_slots[n:bs].fill_(self.scratch_slot)
        slots, prefix = self._padding(bs - n)
        padded = self._static_batch(bs, list(batch.slot_lists) + slots, list(batch.prefix_lens) + prefix)
        self.attn.use_graph_wrapper(self.wrappers[bs], padded)
        self.graphs[bs].replay()
        return self.logits[bs][:n]
