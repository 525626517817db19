"""One forward step's inputs, built once on the CPU by the scheduler and moved once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class Batch:
    """Rows are requests; tokens are the concatenation of each row's new tokens.

    For row b: positions prefix_lens[b] .. prefix_lens[b] + extend_lens[b] - 1 are computed;
    slot_lists[b][:seq_lens[b]] are the slots of every position (cached + new); each backend
    turns them into its own page table in prepare().
    """

    phase: str  # "prefill" | "decode"
    rows: Sequence[Any]  # scheduler requests (SampleRow protocol for the sampler)
    input_ids: torch.Tensor  # [T] int64 device
    positions: torch.Tensor  # [T] int64 device
    out_slots: torch.Tensor  # [T] int64 device: where each new token's K/V is written
    slot_lists: list[torch.Tensor]  # per row: int64 cpu slots covering at least seq_len positions
    prefix_lens: list[int]
    extend_lens: list[int]
    sample_rows: list[int]  # rows that sample a token this step (not mid-chunk prefill rows)
    prompt_logprob_rows: list[int] = field(default_factory=list)
    attn_meta: Any = None  # built by the attention backend's prepare()

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]

    def last_token_index(self) -> list[int]:
        """Index into the token dim of each row's last new token."""
        out, acc = [], 0
        for e in self.extend_lens:
            acc += e
            out.append(acc - 1)
        return out

    @classmethod
    def build(cls, phase: str, rows: Sequence[Any], token_chunks: list[list[int]],
              prefix_lens: list[int], slot_lists: list[torch.Tensor], sample_rows: list[int],
              device: torch.device, prompt_logprob_rows: list[int] | None = None) -> "Batch":
        """token_chunks[b]: the new tokens of row b; slot_lists[b]: int64 slots covering at least
        prefix + extend positions of row b."""
        extend = [len(c) for c in token_chunks]
        if all(e == 1 for e in extend):  # decode: one token per row, no per-row tensor ops
            ids = torch.tensor([c[0] for c in token_chunks], dtype=torch.int64)
            pos = torch.tensor(prefix_lens, dtype=torch.int64)
            out_slots = torch.stack([s[p] for s, p in zip(slot_lists, prefix_lens)])
        else:
            ids = torch.tensor([t for c in token_chunks for t in c], dtype=torch.int64)
            pos = torch.tensor([i for p, e in zip(prefix_lens, extend) for i in range(p, p + e)],
                               dtype=torch.int64)
            out_slots = torch.cat([s[p : p + e] for p, e, s in zip(prefix_lens, extend, slot_lists)])
        pin = device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

        return cls(phase=phase, rows=rows, input_ids=move(ids), positions=move(pos),
                   out_slots=move(out_slots), slot_lists=list(slot_lists), prefix_lens=list(prefix_lens),
                   extend_lens=extend, sample_rows=sample_rows,
                   prompt_logprob_rows=prompt_logprob_rows or [])
