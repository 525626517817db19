"""CUDA graphs for decode: capture the whole forward (embedding -> logits) per batch size.

Captured largest batch first into one memory pool. A replay pads the batch to the next
captured size; padding rows read/write a scratch KV page that no request owns.
"""

from __future__ import annotations

import logging

import torch

from minisgl.engine.batch import Batch
from minisgl.engine.state import RequestState

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, then steps of 8: a batch pads by at most 7 rows."""
    sizes = [b for b in (1, 2, 4) if b <= max_bs] + list(range(8, max_bs + 1, 8))
    return sorted(set(sizes + [max_bs]))


class GraphRunner:
    def __init__(self, model, attn, state: RequestState, max_bs: int, scratch_slot: int,
                 max_pages: int, device: torch.device) -> None:
        self.model, self.attn, self.state = model, attn, state
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.scratch_slot = scratch_slot
        self.device = device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.out_slots = torch.full((self.max_bs,), scratch_slot, dtype=torch.int64, device=device)
        self.pad_state = torch.full((self.max_bs,), state.pad_slot, dtype=torch.int64, device=device)
        self.ones = torch.ones(self.max_bs, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.wrappers: dict[int, object] = {}
        # One logits buffer for every size: the largest graph allocates it and smaller
        # graphs write its leading rows (they share the pool and never replay at once).
        self.logits: torch.Tensor | None = None
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its pool
            self._capture(bs, max_pages, pool)
        logger.info("captured %d CUDA graphs for decode batch sizes up to %d", len(self.sizes),
                    self.max_bs)

    def _static_batch(self, bs: int, state_slots: torch.Tensor, seq_lens: torch.Tensor,
                      prefix: list[int]) -> Batch:
        return Batch(phase="decode", rows=[None] * bs, prefix_lens=prefix, extend_lens=[1] * bs,
                     sample_rows=list(range(bs)), input_ids=self.input_ids[:bs],
                     positions=self.positions[:bs], out_slots=self.out_slots[:bs],
                     state_slots=state_slots, seq_lens_dev=seq_lens,
                     slot_table=self.state.slot_table)

    def _capture(self, bs: int, max_pages: int, pool) -> None:
        wrapper = self.attn.graph_wrapper(bs, max_pages)
        batch = self._static_batch(bs, self.pad_state[:bs], self.ones[:bs], [0] * bs)
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
            if self.logits is None:
                self.logits = self.model.logits(hidden)  # [max_bs, padded_vocab] f32
            else:
                self.model.logits(hidden, out=self.logits[:bs])
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
        padded = self._static_batch(
            bs, torch.cat([batch.state_slots, self.pad_state[: bs - n]]),
            torch.cat([batch.seq_lens_dev, self.ones[: bs - n]]),
            list(batch.prefix_lens) + [0] * (bs - n))
        self.attn.use_graph_wrapper(self.wrappers[bs], padded)
        self.graphs[bs].replay()
        return self.logits[:n]
