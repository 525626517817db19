"""FlashInfer attention over the paged cache (CUDA only).

Names on the CLI: `fi` (FlashInfer prefill + decode kernels), `fa3` (FlashInfer's
FA3-template Hopper kernels for prefill and decode), `fa3,fi` (FA3 prefill, FlashInfer
decode — the Mini-SGLang default on Hopper).

The KV storage's per-layer [num_slots, Hkv, D] buffers are viewed as
[num_pages, page_size, Hkv, D] (NHD); a row's page table is slots[::page_size] // page_size.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch

from minisgl.attention.base import AttentionBackend
from minisgl.attention.split_decode import SplitDecode, SplitWorkspace, split_shape
from minisgl.engine.batch import upload
from minisgl.engine.state import kv_indices

WORKSPACE_BYTES = 256 << 20
# Which FlashInfer decode kernel a decode batch of B rows runs (backends with a decode
# wrapper: fi, fa3,fi): the tensor-core kernel (the prefill kernel with a KV head's query
# heads packed into one query tile) when the GQA group is >= 4 and B >= the threshold, else
# the CUDA-core decode kernel. $MINISGL_FI_DECODE_TC_MIN_BS overrides the threshold (an
# ablation knob: 1 = always, a number past the largest batch = never).
# Measured on an H200, Llama-3.1-8B shape (32 q / 8 kv heads, page 1; profile-*.json in
# benchmarks/results): the tensor-core kernel is 1.2-1.4x faster from 32 rows up (256 x 512
# tokens: 144 vs 181 us a layer) and, inside a CUDA graph at batch 1, 11.7 vs 12.9 us a layer
# with its merge kernel — so it runs at every batch size.
DECODE_TC_ENV = "MINISGL_FI_DECODE_TC_MIN_BS"
DECODE_TC_MIN_BS = 1
_CUDA_CORE_GROUPS = (1, 2, 3, 4, 8)  # the CUDA-core decode kernel dispatches only these
# Decode batches of at most MAX_BS rows (and, when FROM_BS > 0, of at least FROM_BS rows)
# run the Triton split-KV kernel (attention/split_decode.py) instead of FlashInfer's; 0 =
# never. Measured on an H200, Llama-3.1-8B shape: inside CUDA graphs
# (benchmarks/decode_attention.py, decode-attention-*.json) 1 row x 256 tokens 5.1 vs 9.6 us
# a layer, 8 x 512 12.5 vs 13.7; latency-b1 4.74 vs 4.99 ms/token (same call). FlashInfer
# wins at 16-32 rows with the small-batch tile (17.0 vs 19.1 us). From 32 rows the kernel
# runs again with a wider tile (split_decode.default_tile: heads inner, 64-128 keys): 256 x
# 512 144.1 vs FlashInfer's 156.6 us, 64 x 512 38.4 vs 48.4; end to end, one call: offline-256
# 8B 10,370 vs 10,149 / 10,225 tok/s (FlashInfer, run twice), shared-prefix 0.6B 24,019 vs
# 23,080 (median of 3 each). With the old 32-key tile at these sizes offline-256 was 9,874.
SPLIT_DECODE_ENV = "MINISGL_SPLIT_DECODE_MAX_BS"
SPLIT_DECODE_MAX_BS = 8
SPLIT_DECODE_FROM_ENV = "MINISGL_SPLIT_DECODE_FROM_BS"
SPLIT_DECODE_FROM_BS = 32
# CUDA-graph decode batches of at least this many rows run FlashInfer's kernel without its KV
# split: in graph mode FlashInfer always splits (the grid is fixed at capture), and at large
# batches the split only adds a float32 partial write and a merge kernel per layer (0 = never;
# offline-256 8B, one call: 10,314 unsplit vs 10,206 split tok/s).
NO_SPLIT_ENV = "MINISGL_FI_NO_SPLIT_MIN_BS"
NO_SPLIT_MIN_BS = 64


def _env_batch_size(name: str, default: int) -> int:
    """A batch-size threshold from the environment (an ablation knob), else default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"${name} must be a batch size >= 0, got {raw!r}")
    return value


def decode_tc_min_bs(num_heads: int, num_kv_heads: int) -> int:
    """The smallest decode batch that runs the tensor-core kernel (a huge number: never)."""
    group = num_heads // num_kv_heads
    if group not in _CUDA_CORE_GROUPS:
        return 1
    if group < 4:
        return 1 << 30
    value = _env_batch_size(DECODE_TC_ENV, DECODE_TC_MIN_BS)
    if value < 1:
        raise ValueError(f"${DECODE_TC_ENV} must be a batch size >= 1, got {value}")
    return value


@dataclass
class PageTable:
    qo_indptr: torch.Tensor  # [B + 1] int32 cpu (pinned on cuda)
    kv_indptr: torch.Tensor  # [B + 1] int32 cpu
    indices: torch.Tensor  # [num_pages_in_batch] int32 device, gathered from the slot table
    last_page_len: torch.Tensor  # [B] int32 cpu


def build_page_table(batch, page_size: int, device: torch.device) -> PageTable:
    seq = torch.tensor(batch.seq_lens, dtype=torch.int32)
    pages = (seq + page_size - 1) // page_size
    zero = torch.zeros(1, dtype=torch.int32)
    ext = torch.tensor(batch.extend_lens, dtype=torch.int32)
    kv_indptr = torch.cat([zero, pages.cumsum(0, dtype=torch.int32)])
    indices = kv_indices(batch, page_size, int(kv_indptr[-1]), upload(kv_indptr, device))
    # Pinned host arrays: plan() copies them to the device without a pageable staging copy.
    return PageTable(
        qo_indptr=torch.cat([zero, ext.cumsum(0, dtype=torch.int32)]).pin_memory(),
        kv_indptr=kv_indptr.pin_memory(),
        indices=indices,
        last_page_len=(seq - (pages - 1) * page_size).pin_memory(),
    )


class FlashInferBackend(AttentionBackend):
    supports_cuda_graph = True
    def __init__(self, kv, num_heads, num_kv_heads, head_dim, page_size=1, *,
                 prefill_backend: str = "auto", decode_with_prefill_kernel: bool = False) -> None:
        import flashinfer

        super().__init__(kv, num_heads, num_kv_heads, head_dim, page_size)
        device = kv.k.device
        if device.type != "cuda":
            raise ValueError("FlashInfer backends need --device cuda")
        self.flashinfer = flashinfer
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.prefill_backend = prefill_backend
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace, "NHD", backend=prefill_backend)
        self.decode_with_prefill_kernel = decode_with_prefill_kernel
        self.tc_min_bs = decode_tc_min_bs(num_heads, num_kv_heads)
        self.decode = None if decode_with_prefill_kernel else {}  # tensor cores? -> wrapper
        split_ok = self.decode is not None and head_dim >= 16 and head_dim & (head_dim - 1) == 0
        self.split_max_bs = _env_batch_size(SPLIT_DECODE_ENV, SPLIT_DECODE_MAX_BS) if split_ok else 0
        self.split_from_bs = (_env_batch_size(SPLIT_DECODE_FROM_ENV, SPLIT_DECODE_FROM_BS)
                              if split_ok else 0)
        self.no_split_min_bs = _env_batch_size(NO_SPLIT_ENV, NO_SPLIT_MIN_BS)  # 0 = never
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self._split_eager: dict[int, SplitDecode] = {}  # small batch sizes only (bounded)
        self._split_workspace = SplitWorkspace(device)  # one stream: one step's attention at a time
        self.split_steps = 0  # decode steps planned for the split-KV kernel (tests read it)
        self.active = None  # wrapper planned for the current step
        self.device = device
        self._graph_indices: torch.Tensor | None = None
        # plan() writes a wrapper's pinned host buffer and copies it to the device
        # asynchronously; with overlap scheduling the next plan() can come before that copy
        # has run, so each plan waits for the previous one's copy (microseconds, not a step).
        self._planned = torch.cuda.Event()
        self._planned.record()

    def _decode_wrapper(self, tensor_cores: bool, **graph_options):
        return self.flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=tensor_cores, **graph_options)

    def _decode_for(self, bs: int):
        """The eager decode wrapper for a batch of bs rows (each kind made on first use)."""
        tc = bs >= self.tc_min_bs
        if tc not in self.decode:
            self.decode[tc] = self._decode_wrapper(tc)
        return self.decode[tc]

    def uses_split_decode(self, bs: int) -> bool:
        return bs <= self.split_max_bs or 0 < self.split_from_bs <= bs

    def _split_decode(self, bs: int) -> SplitDecode:
        splits, min_chunk = split_shape(bs, self.num_kv_heads, self.num_sms)
        return SplitDecode(bs, self.num_heads, self.num_kv_heads, self.head_dim, splits,
                           self.device, self.kv.compute_dtype, min_chunk,
                           workspace=self._split_workspace)

    def _plan(self, wrapper, table: PageTable, decode: bool, no_split: bool = False) -> None:
        common = dict(q_data_type=self.kv.compute_dtype, kv_data_type=self.kv.k.dtype,
                      sm_scale=self.scale)
        self._planned.synchronize()
        if decode and not self.decode_with_prefill_kernel:
            if no_split and _plan_takes_disable_split_kv(type(wrapper)):
                common["disable_split_kv"] = True  # older FlashInfer: keeps its split
            wrapper.plan(table.kv_indptr, table.indices, table.last_page_len, self.num_heads,
                         self.num_kv_heads, self.head_dim, self.page_size, **common)
        else:
            wrapper.plan(table.qo_indptr, table.kv_indptr, table.indices, table.last_page_len,
                         self.num_heads, self.num_kv_heads, self.head_dim, self.page_size,
                         causal=True, **common)
        self._planned.record()

    def prepare(self, batch) -> None:
        decode = batch.phase == "decode"
        if decode and self.uses_split_decode(batch.size):
            if batch.size > self.split_max_bs:  # large eager batches: a fresh one each step
                self.active = self._split_decode(batch.size)
            else:
                if batch.size not in self._split_eager:
                    self._split_eager[batch.size] = self._split_decode(batch.size)
                self.active = self._split_eager[batch.size]
            self.active.plan(batch)  # no page table: the kernel reads the slot table
            self.split_steps += 1
            return
        table = build_page_table(batch, self.page_size, self.device)
        wrapper = self._decode_for(batch.size) if decode and self.decode is not None else self.prefill
        self._plan(wrapper, table, decode)
        self.active = wrapper

    def attend(self, q, layer, batch):
        if isinstance(self.active, SplitDecode):
            return self.active.run(q, self.kv.k[layer], self.kv.v[layer], self.scale)
        shape = (-1, self.page_size, self.num_kv_heads, self.head_dim)
        cache = (self.kv.k[layer].view(shape), self.kv.v[layer].view(shape))
        return self.active.run(q.contiguous(), cache)

    # ---- CUDA graph support (decode only) ------------------------------------------------
    def graph_wrapper(self, bs: int, max_pages: int):
        """A decode wrapper with fixed buffers for batch size bs, for capture and replay."""
        if self.uses_split_decode(bs):
            return self._split_decode(bs)
        if self._graph_indices is None or self._graph_indices.numel() < max_pages:
            # One page-index buffer shared by every captured size (only one replays at a time).
            self._graph_indices = torch.zeros(max_pages, dtype=torch.int32, device=self.device)
        buffers = dict(
            paged_kv_indptr_buffer=torch.zeros(bs + 1, dtype=torch.int32, device=self.device),
            paged_kv_indices_buffer=self._graph_indices,
            paged_kv_last_page_len_buffer=torch.zeros(bs, dtype=torch.int32, device=self.device),
        )
        if self.decode_with_prefill_kernel:
            return self.flashinfer.BatchPrefillWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True,
                qo_indptr_buf=torch.arange(bs + 1, dtype=torch.int32, device=self.device),
                paged_kv_indptr_buf=buffers["paged_kv_indptr_buffer"],
                paged_kv_indices_buf=buffers["paged_kv_indices_buffer"],
                paged_kv_last_page_len_buf=buffers["paged_kv_last_page_len_buffer"],
                backend=self.prefill_backend)
        return self._decode_wrapper(bs >= self.tc_min_bs, use_cuda_graph=True, **buffers)

    def use_graph_wrapper(self, wrapper, batch) -> None:
        self.active = wrapper
        if isinstance(wrapper, SplitDecode):
            wrapper.plan(batch)
            self.split_steps += 1
            return
        # The split choice must be the same at capture and at every replay (batch.size is the
        # captured size); only the tensor-core kernel's planner takes disable_split_kv.
        no_split = (0 < self.no_split_min_bs <= batch.size and batch.size >= self.tc_min_bs
                    and not self.decode_with_prefill_kernel)
        self._plan(wrapper, build_page_table(batch, self.page_size, self.device), decode=True,
                   no_split=no_split)


@functools.cache
def _plan_takes_disable_split_kv(wrapper_type: type) -> bool:
    return "disable_split_kv" in inspect.signature(wrapper_type.plan).parameters


def fi(*args, **kwargs) -> FlashInferBackend:
    return FlashInferBackend(*args, prefill_backend="fa2", **kwargs)


def fa3(*args, **kwargs) -> FlashInferBackend:
    return FlashInferBackend(*args, prefill_backend="fa3", decode_with_prefill_kernel=True, **kwargs)


def fa3_fi(*args, **kwargs) -> FlashInferBackend:
    return FlashInferBackend(*args, prefill_backend="fa3", **kwargs)
