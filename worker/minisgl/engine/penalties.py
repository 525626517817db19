"""Logit penalties applied before sampling: repetition, frequency/presence, min_tokens.

Every function takes a [B, V] float32 logits tensor and the batch's rows, touches only
the rows listed in `row_ids`, and returns a new tensor (the caller's logits stay raw so
that logprobs can be taken from them). Token ids reach the device through TokenHistory
(prompt once per request, new output ids once per step); the [B, V] count/seen tensors
are built with index_put, so nothing syncs.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

from minisgl.engine.batch import SampleRow, to_device

logger = logging.getLogger(__name__)


@dataclass
class _History:
    prompt: torch.Tensor  # [prompt_len] int64, device
    output: torch.Tensor  # [output_len] int64, device: the output ids seen so far
    prompt_len: int
    output_len: int
    ref: weakref.ref | None = None


class TokenHistory:
    """Device copies of each live row's prompt and output ids, kept between steps.

    A prompt goes to the device once per request and each step only the new output ids
    travel (one copy for the whole batch), instead of every row's full history every
    step. Entries are keyed by the row object and dropped when it is garbage collected.
    Rows' output_ids are expected only to grow; a changed prompt length, a shorter output
    or another device rebuilds the row's entry.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _History] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def gather(
        self,
        rows: Sequence[SampleRow],
        row_ids: Sequence[int],
        device: torch.device,
        with_prompt: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index, token id) pairs, both [N] int64 on device, for the rows' output ids
        (and prompt ids when with_prompt)."""
        histories = self._histories(rows, row_ids, device)
        new = [rows[i].output_ids[h.output_len:] for i, h in zip(row_ids, histories)]
        if any(new):
            flat = to_device(list(itertools.chain.from_iterable(new)), torch.int64, device)
            for h, piece in zip(histories, flat.split([len(n) for n in new])):
                if piece.numel():
                    h.output = torch.cat([h.output, piece])
                    h.output_len += piece.numel()
        parts: list[torch.Tensor] = []
        lengths: list[int] = []
        for h in histories:
            if with_prompt:
                parts.append(h.prompt)
            parts.append(h.output)
            lengths.append(h.output_len + (h.prompt_len if with_prompt else 0))
        tokens = torch.cat(parts)
        owners = torch.repeat_interleave(
            to_device(list(row_ids), torch.int64, device),
            to_device(lengths, torch.int64, device),
            output_size=sum(lengths),  # known on the host: no device->host sync for the size
        )
        return owners, tokens

    def _histories(
        self, rows: Sequence[SampleRow], row_ids: Sequence[int], device: torch.device
    ) -> list[_History]:
        found: list[_History | None] = []
        missing: list[int] = []
        for j, i in enumerate(row_ids):
            row = rows[i]
            h = self._entries.get(id(row))
            if h is not None and (
                h.ref is None or h.ref() is not row or h.prompt.device != device
                or h.prompt_len != len(row.prompt_ids) or h.output_len > len(row.output_ids)
            ):
                h = None
            found.append(h)
            if h is None:
                missing.append(j)
        if missing:  # new rows: all their prompts in one copy
            prompts = [rows[row_ids[j]].prompt_ids for j in missing]
            flat = to_device(list(itertools.chain.from_iterable(prompts)), torch.int64, device)
            empty = torch.empty(0, dtype=torch.int64, device=device)
            for j, prompt in zip(missing, flat.split([len(p) for p in prompts])):
                h = _History(prompt, empty, prompt.numel(), 0)
                self._remember(rows[row_ids[j]], h)
                found[j] = h
        return found  # type: ignore[return-value]

    def _remember(self, row: SampleRow, h: _History) -> None:
        key = id(row)
        entries = self._entries
        try:
            # The callback runs before the id can be reused by another object.
            h.ref = weakref.ref(row, lambda _ref: entries.pop(key, None))
        except TypeError:  # not weak-referenceable (__slots__): no caching for this row
            return
        entries[key] = h


def apply_penalties(
    logits: torch.Tensor,
    rows: Sequence[SampleRow],
    row_ids: Sequence[int],
    history: TokenHistory | None = None,
) -> torch.Tensor:
    """Repetition (HF), then frequency and presence (OpenAI) penalties for rows in row_ids.

    repetition_penalty r, for every token seen in prompt + output: logit / r if logit > 0
    else logit * r. frequency f and presence p, with c = count of the token in the output:
    logit -= f * c + p * (c > 0). Pass the sampler's TokenHistory to reuse device copies.
    """
    history = history if history is not None else TokenHistory()
    B, V = logits.shape
    device = logits.device
    rep = [i for i in row_ids if rows[i].params.repetition_penalty != 1.0]
    freq = [
        i for i in row_ids
        if rows[i].params.frequency_penalty != 0.0 or rows[i].params.presence_penalty != 0.0
    ]
    if rep:
        owner, tok = history.gather(rows, rep, device, with_prompt=True)
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
        owner, tok = history.gather(rows, freq, device, with_prompt=False)
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
    """Forbid stop_token_ids, and EOS unless ignore_eos (as vLLM), for rows short of min_tokens."""
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
