"""Offline batch generation: `LLM(model_path).generate(prompts, sampling_params)`.

Runs the scheduler in this process (no ZMQ, no HTTP): the fastest way to push a fixed
set of prompts through the engine, and the reference the server's output is tested against.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Sequence

from minisgl.config import SchedulerConfig, auto_attention_backend, auto_cuda_graph_max_bs, auto_device
from minisgl.sampling_params import SamplingParams


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int = 0
    prompt_logprobs: list[float | None] | None = None

    # Conveniences for n == 1.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


_CONFIG_FIELDS = {f.name for f in fields(SchedulerConfig)}


class LLM:
    """Offline engine. Options are SchedulerConfig's fields; as with the server, device,
    attention_backend and cuda_graph_max_bs default to the fastest for the machine (cuda
    if visible, FlashInfer with CUDA graphs where installed). Also: tokenizer_path (a
    tokenizer directory other than the model's), disable_overlap=True (= overlap=False)."""

    def __init__(self, model_path: str, *, tokenizer_path: str | None = None,
                 disable_overlap: bool = False, **kwargs) -> None:
        unknown = set(kwargs) - _CONFIG_FIELDS
        if unknown:
            valid = sorted(_CONFIG_FIELDS | {"disable_overlap"})
            raise ValueError(f"unknown LLM options {sorted(unknown)}; valid: {valid}")
        from minisgl.scheduler.scheduler import Scheduler

        kwargs.setdefault("device", auto_device())
        kwargs.setdefault("attention_backend", auto_attention_backend(
            kwargs["device"], kwargs.get("dtype", "auto"), model_path,
            kwargs.get("kv_cache_dtype", "auto")))
        kwargs.setdefault("cuda_graph_max_bs", auto_cuda_graph_max_bs(kwargs["attention_backend"]))
        if disable_overlap:
            kwargs["overlap"] = False
        self.tokenizer_path = tokenizer_path
        self.config = SchedulerConfig(model_path=model_path, tokenizer_path=tokenizer_path, **kwargs)
        self.scheduler = Scheduler(self.config)
        self._next_uid = 0

    @functools.cached_property
    def tokenizer(self):
        """The model directory's tokenizer, or None when it ships none (config-only
        --dummy-weight models: token-id prompts work, outputs carry no text)."""
        from minisgl.models import TOKENIZER_FILES
        from minisgl.tokenizer.tokenize import load_tokenizer

        if self.tokenizer_path is not None:
            return load_tokenizer(self.tokenizer_path)
        model_dir = self.scheduler.engine.model_dir
        if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
            return None
        return load_tokenizer(str(model_dir))

    def generate(self, prompts: Sequence[str] | Sequence[list[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ValueError("prompts must be a list of strings or a list of token-id lists")
        params = sampling_params or SamplingParams()
        params_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params_list) != len(prompts):
            raise ValueError("one SamplingParams per prompt, or a single one for all")
        results: dict[int, RequestOutput] = {}
        order: list[int] = []
        for prompt, p in zip(prompts, params_list):
            if isinstance(prompt, str) and self.tokenizer is None:
                raise ValueError(f"{self.config.model_path} has no tokenizer: pass token-id prompts")
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            uid = self._next_uid
            self._next_uid += 1
            self.scheduler.add_request(uid, ids, p)
            results[uid] = RequestOutput(prompt if isinstance(prompt, str) else None, ids,
                                         [CompletionOutput(i) for i in range(p.n)])
            order.append(uid)
        params_of = dict(zip(order, params_list))
        detok = self._detokenize_manager()
        if detok is not None:  # the server's detokenizer: the same text, stops and aborts
            from minisgl.message.tokenizer import TokenizedMsg

            for uid in order:
                detok.register(TokenizedMsg(uid, results[uid].prompt_token_ids, params_of[uid], 0.0))
        live = {(uid, i) for uid in order for i in range(params_of[uid].n)}
        while live:
            outputs = self.scheduler.step()
            if detok is None:
                chunks, aborts = [_raw_chunk(out) for out in outputs], []
            else:
                chunks, aborts = detok.process(outputs)
            for chunk in chunks:
                key = (chunk.uid, chunk.index)
                if key not in live:
                    continue
                res = results[chunk.uid]
                choice = res.outputs[chunk.index]
                if chunk.prompt_logprobs is not None:
                    res.prompt_logprobs = chunk.prompt_logprobs
                res.num_cached_tokens = max(res.num_cached_tokens, chunk.num_cached_tokens)
                choice.token_ids += chunk.token_ids
                choice.logprobs += chunk.logprobs or []
                choice.text += chunk.text
                if chunk.finished:
                    choice.finish_reason = chunk.finish_reason
                    live.discard(key)
            for uid, index in aborts:  # a choice cut by a stop string stops decoding at once
                self.scheduler.abort(uid, index)
        while self.scheduler.has_work:  # only abort notices of this call remain
            self.scheduler.step()
        return [results[uid] for uid in order]

    def flush_cache(self) -> int:
        """Empty the prefix cache (between benchmark runs, after a weights change): the number
        of cached tokens dropped. Between generate() calls nothing is running."""
        dropped = self.scheduler.flush_cache()
        if dropped is None:  # generate() drains the scheduler before it returns
            raise RuntimeError("flush_cache: requests are still running")
        return dropped

    def _detokenize_manager(self):
        """The server's DetokenizeManager over this tokenizer (None without a tokenizer)."""
        if self.tokenizer is None:
            return None
        from minisgl.tokenizer.detokenize import DetokenizeManager

        return DetokenizeManager(self.tokenizer, self.scheduler.eos_token_ids)


def _raw_chunk(out):
    """A TokenOutput as a text-less ReplyChunk (models without a tokenizer)."""
    from minisgl.message.frontend import ReplyChunk

    return ReplyChunk(
        uid=out.uid, index=out.index, text="",
        token_ids=[] if out.token_id is None else [out.token_id],
        logprobs=[out.logprob] if out.token_id is not None and out.logprob is not None else None,
        prompt_logprobs=out.prompt_logprobs, finished=out.finished,
        finish_reason=out.finish_reason, num_cached_tokens=out.num_cached_tokens)
