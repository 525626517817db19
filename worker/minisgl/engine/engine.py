"""The engine executes: one model shard, its KV storage, attention backend and sampler.

It never decides what to run (the scheduler does) and never touches sockets.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch

from minisgl.attention import create_attention_backend
from minisgl.config import EngineConfig
from minisgl.distributed import init_tp_group
from minisgl.engine.batch import Batch, to_device
from minisgl.engine.sampler import Sampler
from minisgl.engine.state import RequestState
from minisgl.kvcache.storage import KVStorage, kv_storage_dtype
from minisgl.models import BUILTIN_MODELS, create_model, resolve_model_path
from minisgl.models.config import ModelConfig
from minisgl.models.loader import init_dummy_weights, load_weights

logger = logging.getLogger(__name__)

PROMPT_LOGPROB_BLOCK = 512  # positions per lm-head call when scoring prompts


class ForwardOutput(NamedTuple):
    # One entry per batch.sample_rows, on the CPU.
    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[int, float]]] | None
    # row index -> logprobs of its prompt tokens computed this step (position p -> token p + 1)
    prompt_logprobs: dict[int, list[float]]
    # row index -> each of those positions' top-k (id, logprob), for rows asking logprobs=k > 0
    prompt_top_logprobs: dict[int, list[list[tuple[int, float]]]]


class PendingForward:
    """A launched step: its outputs are being copied to pinned host memory; result() waits
    for that copy only (an event), never for work launched after it."""

    def __init__(self, tensors: dict[str, torch.Tensor], prompt_rows: list[int]) -> None:
        self._prompt_rows = prompt_rows
        if any(t.is_cuda for t in tensors.values()):
            self._host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                t, non_blocking=True) for k, t in tensors.items()}
            self._event: torch.cuda.Event | None = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = tensors, None

    def result(self) -> ForwardOutput:
        if self._event is not None:
            self._event.synchronize()
        h = self._host
        logprobs = h["logprobs"].tolist() if "logprobs" in h else None
        top = None
        if "top_ids" in h:
            top = [list(zip(i, p)) for i, p in zip(h["top_ids"].tolist(), h["top_logprobs"].tolist())]
        prompt = {r: h[f"prompt{r}"].tolist() for r in self._prompt_rows}
        prompt_top = {r: [list(zip(i, p)) for i, p in zip(h[f"prompt_top_ids{r}"].tolist(),
                                                           h[f"prompt_top{r}"].tolist())]
                      for r in self._prompt_rows if f"prompt_top{r}" in h}
        return ForwardOutput(h["token_ids"].tolist(), logprobs, top, prompt, prompt_top)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        if config.device == "cuda":
            self.device = torch.device("cuda", config.local_rank)  # multi-node: its GPU on its node
            torch.cuda.set_device(self.device)
        self.tp = init_tp_group(config.tp_rank, config.tp_size, config.dist_init_method, config.device)
        torch.manual_seed(config.seed)  # identical on every rank: unseeded sampling agrees under TP
        self.model_dir = resolve_model_path(config.model_path, weights=not config.dummy_weight)
        self.model_config = ModelConfig.from_path(self.model_dir)
        self.dtype = self.model_config.resolve_dtype(config.dtype)
        self.max_model_len = min(config.max_model_len or 1 << 30,
                                 self.model_config.max_position_embeddings)
        self.model = self._load_model()
        self.num_kv_heads = max(1, self.model_config.num_kv_heads // config.tp_size)
        self.kv_dtype = kv_storage_dtype(config.kv_cache_dtype, self.dtype)
        if self.kv_dtype == torch.float8_e4m3fn and self.device.type == "cuda":
            cap = torch.cuda.get_device_capability(self.device)
            if cap < (8, 9):
                raise ValueError(f"--kv-cache-dtype fp8_e4m3 needs a GPU of compute capability "
                                 f"8.9 or newer (Ada, Hopper: FP8 conversions in its kernels); "
                                 f"this one is {cap[0]}.{cap[1]}")
        self.num_pages = self._num_pages()
        # One extra page past the pool: scratch space that padded CUDA-graph rows write to.
        self.kv = KVStorage(self.model_config.num_layers, (self.num_pages + 1) * config.page_size,
                            self.num_kv_heads, self.model_config.head_dim, self.kv_dtype,
                            self.device, compute_dtype=self.dtype)
        self.attn = create_attention_backend(
            config.attention_backend, self.kv, self.model_config.num_heads // config.tp_size,
            self.num_kv_heads, self.model_config.head_dim, config.page_size,
        )
        self.sampler = Sampler(self.model_config.vocab_size, self.model_config.eos_token_ids,
                               self.device)
        width = -(-self.max_model_len // config.page_size) * config.page_size
        self.state = RequestState(config.max_running_requests, width,
                                  scratch_slot=self.num_pages * config.page_size, device=self.device)
        logger.info("KV cache: %d pages of %d tokens, %s (%.2f GiB)%s", self.num_pages,
                    config.page_size, str(self.kv_dtype).removeprefix("torch."),
                    2 * self.kv.k.numel() * self.kv.k.element_size() / 2**30, self._memory_note())
        self.graphs = None
        if config.device == "cuda" and config.cuda_graph_max_bs > 0 and self.attn.supports_cuda_graph:
            from minisgl.engine.graph import GraphRunner

            with torch.inference_mode():
                self.graphs = GraphRunner(self.model, self.attn, self.state, config.cuda_graph_max_bs,
                                          scratch_slot=self.num_pages * config.page_size,
                                          max_pages=self._max_graph_pages(), device=self.device)
        logger.info("engine ready: %s %s on %s%s", self.model_config.architecture, self.dtype,
                    self.device, self._memory_note())

    def _load_model(self):
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = create_model(self.model_config, self.tp)
        finally:
            torch.set_default_dtype(torch.float32)
        builtin = self.model_dir in BUILTIN_MODELS.values()  # shipped without weights
        if self.config.dummy_weight or (builtin and not any(self.model_dir.glob("*.safetensors"))):
            init_dummy_weights(model, self.device, seed=self.config.seed)
        else:
            load_weights(model, self.model_dir, self.device)
        return model.eval().requires_grad_(False)

    def _memory_note(self) -> str:
        if self.device.type != "cuda":
            return ""
        free, total = torch.cuda.mem_get_info(self.device)
        return (f"; GPU {(total - free) / 2**30:.1f}/{total / 2**30:.1f} GiB used, "
                f"torch allocated {torch.cuda.memory_allocated(self.device) / 2**30:.1f} GiB")

    def _max_graph_pages(self) -> int:
        """Upper bound of page-table entries in one decode batch (shared prefixes repeat)."""
        per_req = -(-self.max_model_len // self.config.page_size)
        return min(self.config.cuda_graph_max_bs * per_req, (self.num_pages + 1) * 64) + 1

    def _num_pages(self) -> int:
        c = self.config
        if c.num_pages is not None:
            return c.num_pages
        per_page = c.page_size * KVStorage.bytes_per_slot(
            self.model_config.num_layers, self.num_kv_heads, self.model_config.head_dim,
            self.kv_dtype)
        if c.device == "cuda":
            torch.cuda.empty_cache()  # dummy-weight temporaries must not count as used
            free, total = torch.cuda.mem_get_info(self.device)
            # Keep (1 - memory_ratio) of the card plus headroom for activations / CUDA graphs.
            budget = free - total * (1.0 - c.memory_ratio) - (1 << 30)
        else:
            budget = c.cpu_kv_budget_mb << 20
        pages = int(budget // per_page)
        logger.info("KV budget %.2f GiB (%d bytes per page)", budget / 2**30, per_page)
        if pages < 2:
            raise ValueError(f"not enough memory for the KV cache ({budget / 2**20:.0f} MiB free); "
                             "lower the model size or raise --memory-ratio")
        if self.tp.size > 1 and c.device == "cuda":  # every rank must agree on the page count
            t = torch.tensor([pages], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            pages = int(t.item())
        return pages

    def forward_batch(self, batch: Batch) -> ForwardOutput:
        """Run one step and wait for its outputs (the non-overlapped path)."""
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: Batch, mask: Callable[[], tuple[torch.Tensor, list[int]]] | None = None
               ) -> PendingForward:
        """Enqueue one step (forward, sampling, copies to the host) without waiting for it.

        mask: the grammar bitmask of the sample rows, called after the forward is enqueued."""
        self.state.apply(batch)
        prompt_lp: dict[str, torch.Tensor] = {}
        if self.graphs is not None and self.graphs.can_run(batch):
            logits = self.graphs.run(batch)
        else:
            self.attn.prepare(batch)
            hidden = self.model(batch.input_ids, batch.positions, batch, self.attn)  # [T, hidden]
            last = batch.last_token_index()
            for r in batch.prompt_logprob_rows:
                lp, top = self._prompt_logprobs(batch, r, hidden, last[r])
                prompt_lp[f"prompt{r}"] = lp
                if top is not None:
                    prompt_lp[f"prompt_top{r}"], prompt_lp[f"prompt_top_ids{r}"] = top
            logits = self.model.logits(hidden[batch.sample_index]) if batch.sample_rows else None
        tensors = dict(prompt_lp)
        if logits is None:
            tensors["token_ids"] = torch.empty(0, dtype=torch.int64)
        else:
            out = self.sampler(logits, [batch.rows[r] for r in batch.sample_rows], mask)
            self.state.store_tokens(batch, out.token_ids)
            tensors["token_ids"] = out.token_ids
            if out.logprobs is not None:
                tensors["logprobs"] = out.logprobs
            if out.top_ids is not None:
                tensors["top_ids"], tensors["top_logprobs"] = out.top_ids, out.top_logprobs
        return PendingForward(tensors, list(batch.prompt_logprob_rows))

    def _prompt_logprobs(self, batch: Batch, r: int, hidden: torch.Tensor, last: int
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Logprob of prompt token p + 1 given tokens <= p, for each new position p of row r
        whose successor is still in the prompt: [n] f32, and with logprobs k > 0 the top k
        ([n, k] logprobs, [n, k] ids) at each position, as generated tokens get them."""
        row = batch.rows[r]
        V = self.model_config.vocab_size
        k = min(row.params.logprobs or 0, V)
        start = last - batch.extend_lens[r] + 1
        first_pos = batch.prefix_lens[r]
        n = max(0, min(batch.extend_lens[r], len(row.prompt_ids) - 1 - first_pos))
        targets = to_device(row.prompt_ids[first_pos + 1 : first_pos + 1 + n], torch.int64, self.device)
        out = [torch.empty(0, device=self.device)]
        top_lp = [torch.empty(0, k, device=self.device)]
        top_ids = [torch.empty(0, k, dtype=torch.int64, device=self.device)]
        for b in range(0, n, PROMPT_LOGPROB_BLOCK):  # bounded [block, vocab] f32 at a time
            logits = self.model.logits(hidden[start + b : start + min(n, b + PROMPT_LOGPROB_BLOCK)])
            logits = logits[:, :V].float()
            t = targets[b : b + logits.shape[0]].unsqueeze(1)
            norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            out.append((logits.gather(1, t) - norm).squeeze(1))
            if k:
                values, ids = logits.topk(k, dim=-1)
                top_lp.append(values - norm)
                top_ids.append(ids)
        top = (torch.cat(top_lp), torch.cat(top_ids)) if k else None
        return torch.cat(out), top

    def shutdown(self) -> None:
        from minisgl.distributed import shutdown

        shutdown()
