"""Batched sampler: one call per scheduler step turns a batch's logits into next tokens.

Order (as vLLM / HF): logit_bias and the grammar's token bitmask (structured output), then
penalties and min_tokens on the raw logits -> greedy rows take the
argmax -> temperature -> top-k -> top-p -> min-p -> sample with the exponential-race trick
(argmax(probs / q), q ~ Exp(1)), which needs no host sync. Seeded rows draw their noise
from their own generator over the whole vocabulary, so a seed gives the same tokens
whatever else is in the batch; unseeded rows share one batched draw. Logprobs are
log_softmax of the raw logits (before penalties and temperature), as vLLM reports them.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, NamedTuple, Sequence

import torch

from minisgl.engine.batch import SampleRow, to_device
from minisgl.engine.penalties import TokenHistory, apply_min_tokens, apply_penalties

logger = logging.getLogger(__name__)

_SEED_MASK = (1 << 64) - 1


class SamplerOutput(NamedTuple):
    token_ids: torch.Tensor  # [B] int64, logits' device
    logprobs: torch.Tensor | None  # [B] float32 raw log_softmax at the chosen token
    top_ids: torch.Tensor | None  # [B, K] int64, K = max requested top logprobs
    top_logprobs: torch.Tensor | None  # [B, K] float32, sorted descending


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator for one seeded request (n > 1: give choice i the seed seed + i)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed & _SEED_MASK)  # any Python int, negative too
    return generator


def filter_logits(
    logits: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    k_bound: int | None = None,
) -> torch.Tensor:
    """Set logits outside each row's top-k, then top-p, then min-p support to -inf.

    logits: [B, V] float32 (temperature already applied). top_k: [B] int64 in [1, V]
    (V = off). top_p: [B] float32 in (0, 1] (1 = off): keep the smallest prefix of the
    top-k-renormalised distribution whose mass reaches top_p. min_p: [B] float32 in [0, 1]
    (0 = off): keep tokens with prob >= min_p * max prob. Sorts once for top-k and top-p;
    k_bound (host int, >= every row's top_k) sorts only the k_bound best instead of all V.
    """
    V = logits.shape[1]
    neg_inf = float("-inf")
    if top_k is not None or top_p is not None:
        if top_k is not None and k_bound is not None and k_bound < V:
            sorted_logits, order = logits.topk(k_bound, dim=-1)  # [B, K], sorted
        else:
            sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # [B, V]
        rank = torch.arange(sorted_logits.shape[1], device=logits.device)[None, :]  # [1, K]
        if top_k is not None:
            sorted_logits = sorted_logits.masked_fill(rank >= top_k[:, None], neg_inf)
        if top_p is not None:
            probs = sorted_logits.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
            # top_p == 1 keeps everything, even where float rounding pushes the sum past 1.
            p = torch.where(top_p >= 1.0, torch.full_like(top_p, float("inf")), top_p)
            drop = (mass_before >= p[:, None]) & (rank > 0)
            sorted_logits = sorted_logits.masked_fill(drop, neg_inf)
        logits = torch.full_like(logits, neg_inf).scatter_(1, order, sorted_logits)
    if min_p is not None:
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); log(0) = -inf keeps all.
        threshold = logits.amax(dim=-1, keepdim=True) + torch.log(min_p)[:, None]
        logits = logits.masked_fill(logits < threshold, neg_inf)
    return logits


@functools.cache
def _argmax_chunk(vocab: int) -> int:
    """A divisor of vocab near 1,024 (0 when there is none between 256 and 4,096)."""
    best = 0
    for c in range(256, min(vocab, 4096) + 1):
        if vocab % c == 0 and (best == 0 or abs(c - 1024) < abs(best - 1024)):
            best = c
    return best


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """argmax over the last dim of [B, V] (the first index on ties, as torch.argmax).

    On CUDA a full-vocabulary argmax is one block per row: ~37 us for 128k ids at batch 1
    (benchmarks/results/profile-*.json), most of a small model's sampling. Two stages — the
    max of each ~1k-id chunk, then the best chunk — spread it over the whole GPU."""
    B, V = x.shape
    if not x.is_cuda or V < 16384 or x.stride(1) != 1:
        return x.argmax(dim=-1)
    c = _argmax_chunk(V)
    if not c:
        return x.argmax(dim=-1)
    return two_stage_argmax(x, c)


def two_stage_argmax(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """argmax_rows through chunks of `chunk` ids (a divisor of V)."""
    B, V = x.shape
    values, index = x.view(B, V // chunk, chunk).max(dim=-1)  # [B, V / chunk] each
    best = values.argmax(dim=-1, keepdim=True)  # [B, 1]: the first chunk holding the max
    return (best * chunk + index.gather(1, best)).squeeze(1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log_softmax(logits[:, :vocab_size]) at token_ids: [N, V_padded], [N] -> [N] float32.

    For prompt_logprobs: logits of prompt positions 0..L-2 and the prompt's tokens 1..L-1.
    """
    logprobs = torch.log_softmax(logits[:, :vocab_size].float(), dim=-1)
    return logprobs.gather(1, token_ids[:, None].long()).squeeze(1)


class Sampler:
    """Turns [B, V_padded] logits and the batch's rows into next tokens (+ logprobs)."""

    def __init__(
        self, vocab_size: int, eos_token_ids: Sequence[int], device: torch.device | str
    ) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.device = torch.device(device)
        self._history = TokenHistory()  # token ids of live rows, for penalties

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow],
                 mask: "Callable[[], tuple[torch.Tensor, list[int]]] | None" = None) -> SamplerOutput:
        """mask: called once the logits are enqueued (so on a GPU the host fills the grammar
        bitmask while the forward runs); returns ([B, ceil(V/32)] int32 bitmask, its rows)."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(
                f"logits must be [num_rows={len(rows)}, vocab], got {tuple(logits.shape)}"
            )
        if logits.shape[1] < self.vocab_size:
            raise ValueError(
                f"logits have {logits.shape[1]} columns, fewer than vocab_size {self.vocab_size}"
            )
        logits = logits[:, : self.vocab_size].float()  # [B, V] f32: padded columns dropped
        params = [row.params for row in rows]
        all_greedy = all(p.greedy for p in params)
        want_logprobs = any(p.logprobs is not None for p in params)
        penalty_rows = [i for i, p in enumerate(params) if p.needs_penalties]
        min_token_rows = [
            i for i, row in enumerate(rows) if len(row.output_ids) < row.params.min_tokens
        ]
        adjusted = _apply_logit_bias(logits, params)
        if mask is not None:
            bitmask, masked_rows = mask()
            if masked_rows:
                from minisgl.grammar import apply_bitmask

                adjusted = apply_bitmask(adjusted, bitmask, masked_rows)
        if all_greedy and not (want_logprobs or penalty_rows or min_token_rows):
            return SamplerOutput(argmax_rows(adjusted), None, None, None)

        if penalty_rows:
            adjusted = apply_penalties(adjusted, rows, penalty_rows, self._history)
        if min_token_rows:
            adjusted = apply_min_tokens(adjusted, rows, min_token_rows, self.eos_token_ids)

        if all_greedy:
            token_ids = argmax_rows(adjusted)
        else:
            token_ids = self._sample(adjusted, rows)
            greedy = [p.greedy for p in params]
            if any(greedy):
                greedy_mask = to_device(greedy, torch.bool, logits.device)
                token_ids = torch.where(greedy_mask, argmax_rows(adjusted), token_ids)

        if not want_logprobs:
            return SamplerOutput(token_ids, None, None, None)
        raw_logprobs = torch.log_softmax(logits, dim=-1)  # [B, V] f32
        chosen = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)
        k = min(max(p.logprobs or 0 for p in params), self.vocab_size)
        if k == 0:
            return SamplerOutput(token_ids, chosen, None, None)
        top_logprobs, top_ids = raw_logprobs.topk(k, dim=-1)  # sorted descending
        return SamplerOutput(token_ids, chosen, top_ids, top_logprobs)

    def _sample(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        """Random draw for every row (greedy rows get a throwaway value). -> [B] int64."""
        B, V = logits.shape
        device = logits.device
        params = [row.params for row in rows]
        temperature = to_device(
            [1.0 if p.greedy else p.temperature for p in params], torch.float32, device
        )
        scaled = logits / temperature[:, None]
        top_k = top_p = min_p = k_bound = None
        if any(p.top_k > 0 and not p.greedy for p in params):
            ks = [1 if p.greedy else min(p.top_k, V) if p.top_k > 0 else V for p in params]
            top_k = to_device(ks, torch.int64, device)
            k_bound = max(ks)
        if any(p.top_p < 1.0 and not p.greedy for p in params):
            top_p = to_device([p.top_p for p in params], torch.float32, device)
        if any(p.min_p > 0.0 and not p.greedy for p in params):
            min_p = to_device([p.min_p for p in params], torch.float32, device)
        scaled = filter_logits(scaled, top_k, top_p, min_p, k_bound)
        probs = scaled.softmax(dim=-1)  # [B, V] f32, 0 outside the support

        noise = _exponential(torch.empty(B, V, dtype=torch.float32, device=device))
        for i, row in enumerate(rows):
            if row.generator is not None and not row.params.greedy:
                _exponential(noise[i], row.generator)
        # Exp(1) can return 0; 0 / 0 would be NaN, which argmax prefers.
        noise.clamp_min_(torch.finfo(torch.float32).tiny)
        return argmax_rows(probs / noise)


def _apply_logit_bias(logits: torch.Tensor, params: Sequence) -> torch.Tensor:
    """logits plus each row's logit_bias (a new tensor; ids past the vocabulary are ignored)."""
    rows, cols, values = [], [], []
    V = logits.shape[1]
    for i, p in enumerate(params):
        for token, bias in p.logit_bias:
            if token < V:
                rows.append(i)
                cols.append(token)
                values.append(bias)
    if not rows:
        return logits
    device = logits.device
    index = (to_device(rows, torch.int64, device), to_device(cols, torch.int64, device))
    return logits.index_put(index, to_device(values, torch.float32, device), accumulate=True)


def _exponential(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill out with Exp(1) noise in place. On CPU -log(U) is several times faster than
    exponential_; on CUDA exponential_ is one fused kernel."""
    if out.device.type == "cpu":
        return out.uniform_(generator=generator).log_().neg_()
    return out.exponential_(generator=generator)
