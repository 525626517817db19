"""Per-request state that lives on the device, so batches are built without host round trips.

- slot_table [num_state_slots, width] int32: the KV slot of every position of each live
  request (row = the request's state slot, given by the scheduler at admission). Rows are
  written only where pages were added or replaced (Batch.table_dest / table_vals).
- last_tokens [num_state_slots] int64: each request's last sampled token, written by the
  sampler's output on the device; a decode step launched before the previous step's tokens
  reached the host reads its inputs from here.

The last state slot is scratch: its table row points every position at the scratch KV slot,
for the padding rows of CUDA-graph replays.
"""

from __future__ import annotations

import torch

from minisgl.engine.batch import Batch


class RequestState:
    def __init__(self, max_requests: int, width: int, scratch_slot: int,
                 device: torch.device) -> None:
        self.num_slots = max_requests + 1
        self.pad_slot = max_requests  # scratch row for graph padding
        self.width = width
        self.slot_table = torch.zeros(self.num_slots, width, dtype=torch.int32, device=device)
        self.slot_table[self.pad_slot].fill_(scratch_slot)
        self.last_tokens = torch.zeros(self.num_slots, dtype=torch.int64, device=device)

    def apply(self, batch: Batch) -> None:
        """Write the batch's slot-table updates; fill input_ids, out_slots and slot_table."""
        flat = self.slot_table.view(-1)
        if batch.table_dest is not None:
            flat[batch.table_dest] = batch.table_vals.to(torch.int32)
        batch.slot_table = self.slot_table
        batch.out_slots = flat[batch.token_state * self.width + batch.positions].long()
        if batch.from_gpu is not None:  # decode rows whose last token is still on the device
            batch.input_ids = torch.where(batch.from_gpu, self.last_tokens[batch.state_slots],
                                          batch.host_ids)
        else:
            batch.input_ids = batch.host_ids

    def store_tokens(self, batch: Batch, token_ids: torch.Tensor) -> None:
        """token_ids [S] int64: the sampled rows' new tokens (inputs of their next decode)."""
        if token_ids.numel():
            self.last_tokens[batch.sample_state] = token_ids


def kv_indices(batch: Batch, page_size: int, total_pages: int,
               kv_indptr: torch.Tensor) -> torch.Tensor:
    """The batch's page indices, row after row, gathered from the slot table on the device.

    kv_indptr [B + 1] int32 device (page offsets), total_pages its last value (host int):
    -> [total_pages] int32 device.
    """
    device = batch.state_slots.device
    pages = (batch.seq_lens_dev + page_size - 1) // page_size  # [B]
    row_of = torch.repeat_interleave(torch.arange(batch.size, device=device), pages,
                                     output_size=total_pages)
    col = torch.arange(total_pages, device=device) - kv_indptr[:-1].long()[row_of]
    slots = batch.slot_table[batch.state_slots[row_of], col * page_size]
    return slots if page_size == 1 else slots // page_size
