"""Split-KV decode attention in Triton: small decode batches (the latency path) and, with
wider tiles, large ones (from 32 rows; flashinfer_backend.py says where each kernel runs).

At batch 1 FlashInfer's decode kernels give a layer's few hundred cached tokens to one
program per (KV head, 128-token chunk) plus a merge kernel: ~13 us a layer inside a CUDA
graph (benchmarks/results/profile-*.json) to read well under a megabyte. Here each row's
cache is cut into `splits` chunks so that rows x KV heads x splits programs cover the GPU;
a program reads its chunk once for all query heads of its KV head (one tl.dot tile), and a
second kernel merges the chunks by their log-sum-exp.

An FP8 cache is upcast as it is read, and both products then run in fp16 (queries past
fp16's 65,504 would overflow: far beyond any real model's). The kernel reads the KV slots
straight from the engine's slot table (engine/state.py), so it needs no page table: per row
only its state slot and sequence length, which live in fixed device buffers for CUDA-graph
replay. Any page size works (the table holds slots).
`split_decode_reference` is the same computation in PyTorch (the CPU test runs the kernel
under Triton's interpreter against it).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from minisgl.layers.fused import pdl_launch

MIN_CHUNK = 32  # tokens: a program's share of a row is at least one key tile
BLOCK_N = 32  # keys per tl.dot tile
MAX_SPLITS = 64
# Large batches: rows x KV heads fill the GPU unsplit; a row past LONG_CHUNK tokens still
# splits (up to LARGE_SPLITS ways), so one long row beside many short ones is not a tail.
LARGE_SPLITS = 4
LONG_CHUNK = 2048
# The merge kernel's heads per program once rows split only when long: most rows then have
# one split and their program exits at once, so one program a row (not one a head: 8,192 at
# 256 rows x 32 heads, 12.6 us a layer on an H200 to merge nothing) keeps it to a few us.
MERGE_HEADS = 32


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def split_decode_partial(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, state_ptr, seq_ptr,
                             part_o_ptr, part_lse_ptr, out_ptr, sm_scale,
                             H: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr,
                             GP: tl.constexpr, D: tl.constexpr, S: tl.constexpr,
                             BLOCK_N: tl.constexpr, MIN_CHUNK: tl.constexpr, PDL: tl.constexpr,
                             HEADS_INNER: tl.constexpr, KV_FP8: tl.constexpr):
        if PDL:  # launched early (layers/fused.py: pdl_launch): wait for q and the new K/V
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        if HEADS_INNER:  # grid (HKV, B, S): a row's KV heads run side by side
            kvh = tl.program_id(0)
            b = tl.program_id(1)
        else:
            b = tl.program_id(0)
            kvh = tl.program_id(1)
        s = tl.program_id(2)
        seq = tl.load(seq_ptr + b).to(tl.int32)
        chunk = tl.maximum(tl.cdiv(seq, S), MIN_CHUNK)
        n_valid = tl.cdiv(seq, chunk)  # the row's non-empty splits
        if s < n_valid:
            row = tl.load(state_ptr + b).to(tl.int64)
            lo = s * chunk
            hi = tl.minimum(lo + chunk, seq)
            g = tl.arange(0, GP)
            d = tl.arange(0, D)
            heads = kvh * GROUP + g
            gmask = g < GROUP
            q = tl.load(q_ptr + (b * H + heads)[:, None] * D + d[None, :], mask=gmask[:, None],
                        other=0.0)  # [GP, D]
            if KV_FP8:  # an FP8 cache: both products in fp16 (e4m3 -> f16 is one packed
                q = q.to(tl.float16)  # convert a pair; to bf16 it goes through f32: 1.2x slower)
            m_i = tl.full([GP], float("-inf"), tl.float32)
            l_i = tl.zeros([GP], tl.float32)
            acc = tl.zeros([GP, D], tl.float32)
            for start in range(lo, hi, BLOCK_N):
                n = start + tl.arange(0, BLOCK_N)
                nmask = n < hi
                slot = tl.load(table_ptr + row * table_stride + n, mask=nmask, other=0).to(tl.int64)
                offs = slot[:, None] * (HKV * D) + kvh * D + d[None, :]  # [BLOCK_N, D]
                # an FP8 cache is upcast as it is read
                k = tl.load(k_ptr + offs, mask=nmask[:, None], other=0.0).to(q.dtype)
                v = tl.load(v_ptr + offs, mask=nmask[:, None], other=0.0).to(q.dtype)
                qk = tl.dot(q, tl.trans(k)) * sm_scale  # [GP, BLOCK_N] f32
                qk = tl.where(nmask[None, :], qk, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(qk - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
                m_i = m_new
            out = acc / l_i[:, None]
            if n_valid == 1:  # the whole row: the final output, no merge
                dst = out_ptr + (b * H + heads)[:, None] * D + d[None, :]
                tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])
            else:
                base = (b * H + heads) * S + s  # [GP]
                tl.store(part_o_ptr + base[:, None] * D + d[None, :], out, mask=gmask[:, None])
                tl.store(part_lse_ptr + base, m_i + tl.log(l_i), mask=gmask)

    @triton.jit
    def split_decode_merge(part_o_ptr, part_lse_ptr, seq_ptr, out_ptr, H: tl.constexpr,
                           D: tl.constexpr, S: tl.constexpr, MIN_CHUNK: tl.constexpr,
                           HB: tl.constexpr, PDL: tl.constexpr):
        """grid (B, cdiv(H, HB)): a program merges HB heads of one row ([S, HB, D] at once)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        b = tl.program_id(0)
        seq = tl.load(seq_ptr + b).to(tl.int32)
        n_valid = tl.cdiv(seq, tl.maximum(tl.cdiv(seq, S), MIN_CHUNK))
        if n_valid > 1:  # rows of one split were written by the first kernel
            h = tl.program_id(1) * HB + tl.arange(0, HB)
            hmask = h < H
            sidx = tl.arange(0, S)
            smask = sidx < n_valid
            d = tl.arange(0, D)
            idx = (b * H + h)[None, :] * S + sidx[:, None]  # [S, HB]
            both = smask[:, None] & hmask[None, :]
            # splits past the row's last one weigh nothing; padded heads merge zeros
            lse = tl.where(smask[:, None],
                           tl.load(part_lse_ptr + idx, mask=both, other=0.0), float("-inf"))
            w = tl.exp(lse - tl.max(lse, 0)[None, :])  # [S, HB]
            o = tl.load(part_o_ptr + idx[:, :, None] * D + d[None, None, :],
                        mask=both[:, :, None], other=0.0)  # [S, HB, D]
            merged = tl.sum(o * w[:, :, None], 0) / tl.sum(w, 0)[:, None]  # [HB, D]
            tl.store(out_ptr + (b * H + h)[:, None] * D + d[None, :],
                     merged.to(out_ptr.dtype.element_ty), mask=hmask[:, None])

    return split_decode_partial, split_decode_merge


def _pow2_floor(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


def num_splits(batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Chunks per row so that rows x KV heads x chunks is about two programs an SM."""
    return max(1, min(MAX_SPLITS, _pow2_floor(2 * num_sms // max(1, batch_size * num_kv_heads))))


def split_shape(batch_size: int, num_kv_heads: int, num_sms: int) -> tuple[int, int]:
    """(splits, min_chunk) for a batch: small batches cut every row to cover the SMs; once
    rows x KV heads alone do (one split), rows split only past LONG_CHUNK tokens."""
    splits = num_splits(batch_size, num_kv_heads, num_sms)
    return (splits, MIN_CHUNK) if splits > 1 else (LARGE_SPLITS, LONG_CHUNK)


@dataclass(frozen=True)
class TileConfig:
    """How the partial kernel runs: keys per tile, warps, pipeline stages, and the grid
    order (heads_inner: the KV heads of a row are neighbouring programs, so the 8 programs
    that read one token's K/V row from HBM run at the same time)."""

    block_n: int = BLOCK_N
    num_warps: int = 4
    num_stages: int = 3
    heads_inner: bool = False

    def __post_init__(self) -> None:
        if not 16 <= self.block_n <= 256 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n must be a power of two in 16..256, got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8, 16) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"bad split-decode warps/stages {self.num_warps}/{self.num_stages}")

    @classmethod
    def parse(cls, raw: str) -> "TileConfig":
        """"block_n,num_warps,num_stages[,heads_inner]" (MINISGL_SPLIT_DECODE_TILE)."""
        try:
            parts = [int(p) for p in raw.split(",")]
            if len(parts) not in (3, 4):
                raise ValueError
            if len(parts) == 4 and parts[3] not in (0, 1):
                raise ValueError("heads_inner is 0 or 1")
            return cls(*parts[:3], bool(parts[3]) if len(parts) == 4 else False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"MINISGL_SPLIT_DECODE_TILE must be 'block_n,num_warps,num_stages"
                             f"[,heads_inner]' (powers of two), got {raw!r}: {exc}") from None


def default_tile(batch_size: int) -> TileConfig:
    """The tile for a batch (MINISGL_SPLIT_DECODE_TILE overrides it). Measured on an H200,
    Llama-3.1-8B shape, in CUDA graphs (benchmarks/decode_attention.py; us a layer, 32 x 4 x 3
    -> this tile): 256 x 512 tokens 158.7 -> 144.1 (128 x 8 x 2, heads inner; FlashInfer
    156.6), 256 x 1,024 300.2 -> 268.6 (FlashInfer 282.4), 64 x 512 41.7 -> 38.4
    (64 x 4 x 2, heads inner; FlashInfer 48.4). Small batches keep the 32-key tile their
    latency figures were taken with."""
    raw = os.environ.get("MINISGL_SPLIT_DECODE_TILE", "").strip()
    if raw:
        return TileConfig.parse(raw)
    if batch_size >= 128:
        return TileConfig(128, 8, 2, True)
    if batch_size >= 32:
        return TileConfig(64, 4, 2, True)
    return TileConfig()


class SplitWorkspace:
    """The partial results and output of SplitDecode instances that never run at the same time
    (the CUDA graphs of one stream, the eager steps between them): one buffer a name, grown on
    demand. An instance keeps views of the buffer it was built with, so a later, larger one
    leaves it intact; built largest first (as graphs are captured), all share one. Without it,
    8B's graphs of 32-256 rows held ~0.3 GiB of their own."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def view(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class SplitDecode:
    """Decode attention state for a batch of `batch_size` rows: fixed device buffers (the
    rows' state slots and sequence lengths, the partial results), so that a CUDA graph can
    capture `run` once and replay it after `plan` has copied in a new batch."""

    def __init__(self, batch_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 splits: int, device: torch.device, dtype: torch.dtype,
                 min_chunk: int = MIN_CHUNK, tile: TileConfig | None = None,
                 workspace: SplitWorkspace | None = None) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
        if head_dim & (head_dim - 1) or head_dim < 16:
            raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
        if splits < 1 or splits & (splits - 1):
            raise ValueError(f"splits must be a power of two, got {splits}")
        self.batch_size, self.splits, self.min_chunk = batch_size, splits, min_chunk
        self.tile = tile or default_tile(batch_size)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.state_slots = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(batch_size, dtype=torch.int64, device=device)
        ws = workspace or SplitWorkspace(device)
        self.part_o = ws.view("part_o", (batch_size, num_heads, splits, head_dim), torch.float32)
        self.part_lse = ws.view("part_lse", (batch_size, num_heads, splits), torch.float32)
        self.out = ws.view("out", (batch_size, num_heads, head_dim), dtype)
        self.slot_table: torch.Tensor | None = None
        # Small batches split every row: one merge program a head runs them side by side.
        self.merge_heads = (min(MERGE_HEADS, _pow2_ceil(num_heads))
                            if min_chunk > MIN_CHUNK else 1)

    def plan(self, batch) -> None:
        """Copy the batch's rows into the fixed buffers (device to device, no host sync)."""
        if batch.size != self.batch_size:
            raise ValueError(f"planned for {self.batch_size} rows, got a batch of {batch.size}")
        self.state_slots.copy_(batch.state_slots)
        self.seq_lens.copy_(batch.seq_lens_dev)
        self.slot_table = batch.slot_table

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            sm_scale: float) -> torch.Tensor:
        """q [B, H, D]; k_cache, v_cache [num_slots, Hkv, D] -> [B, H, D]: self.out, the same
        buffer on every call (the next layer's call overwrites it; clone to keep it)."""
        if q.shape != self.out.shape:
            raise ValueError(f"q must be {tuple(self.out.shape)}, got {tuple(q.shape)}")
        partial, merge = _kernels()
        group = self.num_heads // self.num_kv_heads
        table = self.slot_table
        pdl = pdl_launch(q)
        tile = self.tile
        grid = ((self.num_kv_heads, self.batch_size, self.splits) if tile.heads_inner
                else (self.batch_size, self.num_kv_heads, self.splits))
        partial[grid](
            q.contiguous(), k_cache, v_cache, table, table.stride(0), self.state_slots,
            self.seq_lens, self.part_o, self.part_lse, self.out, sm_scale,
            H=self.num_heads, HKV=self.num_kv_heads, GROUP=group,
            GP=max(16, _pow2_ceil(group)), D=self.head_dim, S=self.splits,
            BLOCK_N=tile.block_n, MIN_CHUNK=self.min_chunk, PDL=bool(pdl),
            HEADS_INNER=tile.heads_inner, KV_FP8=k_cache.dtype == torch.float8_e4m3fn,
            num_warps=tile.num_warps, num_stages=tile.num_stages,
            **pdl)
        if self.splits > 1:
            hb = self.merge_heads
            merge[(self.batch_size, -(-self.num_heads // hb))](
                self.part_o, self.part_lse, self.seq_lens, self.out, H=self.num_heads,
                D=self.head_dim, S=self.splits, MIN_CHUNK=self.min_chunk, HB=hb,
                PDL=bool(pdl), num_warps=8 if hb >= 16 else 4, **pdl)
        return self.out


def split_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           slot_table: torch.Tensor, state_slots: torch.Tensor,
                           seq_lens: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Plain softmax attention of each row's one query over its cached positions (float32)."""
    B, H, D = q.shape
    hkv = k_cache.shape[1]
    out = torch.empty(B, H, D, dtype=q.dtype)
    for b in range(B):
        slots = slot_table[int(state_slots[b]), : int(seq_lens[b])].long()
        k = k_cache[slots].float().repeat_interleave(H // hkv, dim=1)  # [L, H, D]
        v = v_cache[slots].float().repeat_interleave(H // hkv, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * sm_scale
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out
