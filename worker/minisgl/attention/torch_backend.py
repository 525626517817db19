"""Pure-PyTorch attention over the paged cache: gather each row's K/V by slot, pad, SDPA.

Runs anywhere (CI uses it on CPU). All rows of a step go through one SDPA call with a
[B, Qmax, Lmax] mask; no Python loop over rows inside the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minisgl.attention.base import AttentionBackend


@dataclass
class TorchMeta:
    q_index: torch.Tensor  # [T] int64: flat position of each token in the [B * Qmax] padded layout
    mask: torch.Tensor  # [B, 1, Qmax, Lmax] bool: True = may attend
    q_max: int
    slot_table: torch.Tensor  # [B, Lmax] int64: slot of every position of each row (0-padded)


class TorchBackend(AttentionBackend):
    def prepare(self, batch) -> None:
        device = batch.input_ids.device
        b = batch.size
        q_max = max(batch.extend_lens)
        seq_lens = batch.seq_lens
        l_max = max(seq_lens)
        # Entries past a row's seq_len are stale but valid slots: the mask hides them.
        table = batch.slot_table[batch.state_slots, :l_max].long()  # [B, Lmax]
        prefix = torch.tensor(batch.prefix_lens, dtype=torch.int64)
        extend = torch.tensor(batch.extend_lens, dtype=torch.int64)
        row_of_token = torch.repeat_interleave(torch.arange(b), extend)
        starts = torch.cumsum(extend, 0) - extend
        offset = torch.arange(int(extend.sum())) - starts[row_of_token]
        q_index = row_of_token * q_max + offset
        j = torch.arange(q_max).view(1, q_max, 1)
        t = torch.arange(l_max).view(1, 1, l_max)
        seq = (prefix + extend).view(b, 1, 1)
        mask = (t <= prefix.view(b, 1, 1) + j) & (t < seq)
        batch.attn_meta = TorchMeta(q_index=q_index.to(device), mask=mask.unsqueeze(1).to(device),
                                    q_max=q_max, slot_table=table)

    def attend(self, q, layer, batch):
        meta: TorchMeta = batch.attn_meta
        b, h, d = batch.size, self.num_heads, self.head_dim
        q_pad = q.new_zeros(b * meta.q_max, h, d)
        q_pad[meta.q_index] = q
        q_pad = q_pad.view(b, meta.q_max, h, d).transpose(1, 2)  # [B, H, Qmax, D]
        keys = self.kv.k[layer][meta.slot_table].transpose(1, 2)  # [B, Hkv, Lmax, D]
        values = self.kv.v[layer][meta.slot_table].transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q_pad, keys.to(q.dtype), values.to(q.dtype), attn_mask=meta.mask, scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [B, H, Qmax, D]
        out = out.transpose(1, 2).reshape(b * meta.q_max, h, d)
        return out[meta.q_index]
