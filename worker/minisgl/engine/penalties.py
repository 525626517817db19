"""Logit penalties applied before sampling: repetition, frequency/presence, min_tokens.

Every function takes a [B, V] float32 logits tensor and the batch's rows, touches only
the rows listed in `row_ids`, and returns a new tensor (the caller's logits stay raw so
that logprobs can be taken from them). Token lists go to the device in one copy per
call; the [B, V] count/seen tensors are built with index_put, so nothing syncs.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from minisgl.engine.sampler import SampleRow

logger = logging.getLogger(__name__)


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host list -> device tensor without blocking the host (pinned + non_blocking on CUDA)."""
    if device.type == "cuda":
        host = torch.tensor(values, dtype=dtype, pin_memory=True)
        return host.to(device, non_blocking=True)
    return torch.tensor(values, dtype=dtype, device=device)


def _scatter_index(
    token_lists: list[Sequence[int]], owners: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token id) pairs for every token in token_lists[j], owned by row owners[j]."""
    lengths = [len(t) for t in token_lists]
    total = sum(lengths)
    tokens = to_device(list(itertools.chain.from_iterable(token_lists)), torch.int64, device)
    rows = torch.repeat_interleave(
        to_device(owners, torch.int64, device),
        to_device(lengths, torch.int64, device),
        output_size=total,  # known on the host: no device->host sync for the size
    )
    return rows, tokens


def apply_penalties(
    logits: torch.Tensor, rows: Sequence[SampleRow], row_ids: Sequence[int]
) -> torch.Tensor:
    """Repetition (HF), then frequency and presence (OpenAI) penalties for rows in row_ids.

    repetition_penalty r, for every token seen in prompt + output: logit / r if logit > 0
    else logit * r. frequency f and presence p, with c = count of the token in the output:
    logit -= f * c + p * (c > 0).
    """
    B, V = logits.shape
    device = logits.device
    rep = [i for i in row_ids if rows[i].params.repetition_penalty != 1.0]
    freq = [
        i for i in row_ids
        if rows[i].params.frequency_penalty != 0.0 or rows[i].params.presence_penalty != 0.0
    ]
    if rep:
        owner, tok = _scatter_index(
            [list(rows[i].prompt_ids) + list(rows[i].output_ids) for i in rep], rep, device
        )
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen.index_put_((owner, tok), torch.ones((), dtype=torch.bool, device=device))
        rset = set(rep)
        penalty = to_device(
            [rows[i].params.repetition_penalty if i in rset else 1.0 for i in range(B)],
            torch.float32, device,
        )[:, None]  # [B, 1]
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if freq:
        owner, tok = _scatter_index([rows[i].output_ids for i in freq], freq, device)
        counts = torch.zeros(B, V, dtype=torch.float32, device=device)
        counts.index_put_(
            (owner, tok), torch.ones((), dtype=torch.float32, device=device), accumulate=True
        )
        fset = set(freq)
        f = [rows[i].params.frequency_penalty if i in fset else 0.0 for i in range(B)]
        p = [rows[i].params.presence_penalty if i in fset else 0.0 for i in range(B)]
        f_t = to_device(f, torch.float32, device)[:, None]  # [B, 1]
        p_t = to_device(p, torch.float32, device)[:, None]  # [B, 1]
        logits = logits - f_t * counts - p_t * (counts > 0).float()
    return logits


def apply_min_tokens(
    logits: torch.Tensor,
    rows: Sequence[SampleRow],
    row_ids: Sequence[int],
    eos_token_ids: Sequence[int],
) -> torch.Tensor:
    """Forbid stop_token_ids (and EOS unless ignore_eos, as vLLM) for rows still short of min_tokens."""
    V = logits.shape[1]
    owners: list[int] = []
    tokens: list[int] = []
    for i in row_ids:
        params = rows[i].params
        banned = set(params.stop_token_ids)
        if not params.ignore_eos:
            banned.update(eos_token_ids)
        banned_in_vocab = sorted(t for t in banned if 0 <= t < V)
        owners.extend([i] * len(banned_in_vocab))
        tokens.extend(banned_in_vocab)
    if not tokens:
        return logits
    device = logits.device
    index = (to_device(owners, torch.int64, device), to_device(tokens, torch.int64, device))
    neg_inf = torch.full((), float("-inf"), dtype=logits.dtype, device=device)
    return logits.index_put(index, neg_inf)
