"""One forward step's inputs: built on the CPU by the scheduler, uploaded in one pinned copy.

The engine keeps per-request state on the device (engine/state.py): the slot table (the
KV slot of every position of every live request) and the last sampled token of each
request. A batch therefore carries only small per-row numbers plus the slot-table rows
that changed since the last step; positions' KV slots, page tables and decode input ids
are gathered on the device, so step N+1 can be built while step N still runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from minisgl.sampling_params import SamplingParams


class SampleRow(Protocol):
    """What the sampler reads from a scheduler request."""

    params: SamplingParams
    output_ids: list[int]  # tokens generated so far (excludes the prompt)
    prompt_ids: list[int]
    generator: torch.Generator | None  # make_generator(seed, device) when params.seed is set


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host list -> device tensor without blocking the host (pinned + non_blocking on CUDA)."""
    return upload(torch.tensor(values, dtype=dtype), device)


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU tensor -> device. On CUDA through pinned memory and non_blocking: the caching host
    allocator keeps the pinned block alive until the copy has run, so nothing is overwritten."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@dataclass
class Batch:
    """Rows are requests; tokens are the concatenation of each row's new tokens.

    For row b: positions prefix_lens[b] .. prefix_lens[b] + extend_lens[b] - 1 are computed,
    reading KV of positions 0 .. seq_lens[b] - 1 through the slot table row state_slots[b].
    The engine fills input_ids (decode rows may take theirs from the device's last-token
    buffer), out_slots and slot_table before the attention backend's prepare().
    """

    phase: str  # "prefill" | "decode"
    rows: Sequence[Any]  # scheduler requests (SampleRow protocol for the sampler)
    prefix_lens: list[int]
    extend_lens: list[int]
    sample_rows: list[int]  # rows that sample a token this step (not mid-chunk prefill rows)
    prompt_logprob_rows: list[int] = field(default_factory=list)
    # device tensors (one pinned upload, split)
    host_ids: torch.Tensor | None = None  # [T] int64: ids known on the host (0 where from_gpu)
    positions: torch.Tensor | None = None  # [T] int64
    token_state: torch.Tensor | None = None  # [T] int64: state slot of each token's row
    state_slots: torch.Tensor | None = None  # [B] int64: each row's slot-table row
    seq_lens_dev: torch.Tensor | None = None  # [B] int64
    from_gpu: torch.Tensor | None = None  # [B] bool (decode only) or None: all ids on the host
    sample_index: torch.Tensor | None = None  # [S] int64: token index of each sampled row's last token
    sample_state: torch.Tensor | None = None  # [S] int64: state slot of each sampled row
    table_dest: torch.Tensor | None = None  # [U] int64 flat slot-table index to overwrite
    table_vals: torch.Tensor | None = None  # [U] int64 KV slot written there
    # filled by the engine
    input_ids: torch.Tensor | None = None  # [T] int64
    out_slots: torch.Tensor | None = None  # [T] int64: where each new token's K/V is written
    slot_table: torch.Tensor | None = None  # [num_state_slots, width] int32 (engine state)
    attn_meta: Any = None  # built by the attention backend's prepare()

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]

    @classmethod
    def build(cls, *, phase: str, rows: Sequence[Any], token_chunks: list[list[int]],
              prefix_lens: list[int], state_slots: list[int], sample_rows: list[int],
              device: torch.device, from_gpu: list[bool] | None = None,
              table_updates: tuple[torch.Tensor, torch.Tensor] | None = None,
              prompt_logprob_rows: Sequence[int] = ()) -> "Batch":
        """token_chunks[b]: the new tokens of row b (a placeholder where from_gpu[b]: the
        engine reads the request's last sampled token on the device); table_updates: int64
        CPU tensors (flat slot-table index, KV slot) of the slot-table entries that changed."""
        extend = [len(c) for c in token_chunks]
        B = len(rows)
        if table_updates is None:
            table_updates = (torch.empty(0, dtype=torch.int64),) * 2
        if all(e == 1 for e in extend):  # decode: one token per row, no per-token work
            ids = [c[0] for c in token_chunks]
            pos, tok_state = prefix_lens, state_slots
            last = list(range(B))
        else:
            ext = torch.tensor(extend, dtype=torch.int64)
            row_of = torch.repeat_interleave(torch.arange(B), ext)
            ends = ext.cumsum(0)
            offsets = torch.arange(int(ends[-1])) - (ends - ext)[row_of]
            ids = list(itertools.chain.from_iterable(token_chunks))
            pos = torch.tensor(prefix_lens, dtype=torch.int64)[row_of] + offsets
            tok_state = torch.tensor(state_slots, dtype=torch.int64)[row_of]
            last = (ends - 1).tolist()
        seq = [p + e for p, e in zip(prefix_lens, extend)]
        gpu_mask = [int(g) for g in from_gpu] if from_gpu is not None and any(from_gpu) else []
        dest, vals = table_updates
        lists = [ids, pos, tok_state, state_slots, seq, gpu_mask,
                 [last[r] for r in sample_rows], [state_slots[r] for r in sample_rows]]
        parts = [p if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=torch.int64)
                 for p in lists] + [dest, vals]
        flat = upload(torch.cat(parts), device)
        (host_ids, positions, token_state, slots, seq_dev, mask, s_index, s_state, t_dest,
         t_vals) = flat.split([len(p) for p in parts])
        return cls(phase=phase, rows=rows, prefix_lens=list(prefix_lens), extend_lens=extend,
                   sample_rows=list(sample_rows), prompt_logprob_rows=list(prompt_logprob_rows),
                   host_ids=host_ids, positions=positions, token_state=token_state,
                   state_slots=slots, seq_lens_dev=seq_dev,
                   from_gpu=mask.bool() if gpu_mask else None, sample_index=s_index,
                   sample_state=s_state, table_dest=t_dest if len(t_dest) else None,
                   table_vals=t_vals if len(t_dest) else None)

    def last_token_index(self) -> list[int]:
        """Index into the token dim of each row's last new token."""
        return list(itertools.accumulate(self.extend_lens, initial=-1))[1:]
