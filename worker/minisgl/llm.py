"""Offline batch generation: `LLM(model_path).generate(prompts, sampling_params)`.

Runs the scheduler in this process (no ZMQ, no HTTP): the fastest way to push a fixed
set of prompts through the engine, and the reference the server's output is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

from minisgl.config import SchedulerConfig
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
    def __init__(self, model_path: str, **kwargs) -> None:
        unknown = set(kwargs) - _CONFIG_FIELDS
        if unknown:
            raise ValueError(f"unknown LLM options {sorted(unknown)}; valid: {sorted(_CONFIG_FIELDS)}")
        from minisgl.scheduler.scheduler import Scheduler

        self.config = SchedulerConfig(model_path=model_path, **kwargs)
        self.scheduler = Scheduler(self.config)
        self._tokenizer = None
        self._next_uid = 0

    @property
    def tokenizer(self):
        """The model directory's tokenizer, or None when it ships none (config-only
        --dummy-weight models: token-id prompts work, outputs carry no text)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            model_dir = self.scheduler.engine.model_dir
            if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                           "tokenizer.model")):
                return None
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        return self._tokenizer

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
        live = {(uid, i) for uid in order for i in range(params_of[uid].n)}
        while live:
            for out in self.scheduler.step():
                res, p = results[out.uid], params_of[out.uid]
                choice = res.outputs[out.index]
                if out.prompt_logprobs is not None:
                    res.prompt_logprobs = out.prompt_logprobs
                res.num_cached_tokens = max(res.num_cached_tokens, out.num_cached_tokens)
                if out.token_id is not None:
                    choice.token_ids.append(out.token_id)
                    if out.logprob is not None:
                        choice.logprobs.append(out.logprob)
                    if p.stop and self.tokenizer and not out.finished and self._hit_stop(choice, p):
                        self.scheduler.abort(out.uid) if p.n == 1 else None
                        choice.finish_reason = "stop"
                        live.discard((out.uid, out.index))
                        continue
                if out.finished and (out.uid, out.index) in live:
                    choice.finish_reason = out.finish_reason
                    live.discard((out.uid, out.index))
        for uid in order:
            for choice in results[uid].outputs:
                if not choice.text:
                    choice.text = self._decode(choice.token_ids, params_of[uid])
        return [results[uid] for uid in order]

    def _decode(self, ids: list[int], p: SamplingParams) -> str:
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)
        for s in p.stop:
            at = text.find(s)
            if at >= 0:
                text = text[: at + (len(s) if p.include_stop_str_in_output else 0)]
        return text

    def _hit_stop(self, choice: CompletionOutput, p: SamplingParams) -> bool:
        text = self.tokenizer.decode(choice.token_ids, skip_special_tokens=p.skip_special_tokens)
        if any(s in text for s in p.stop):
            choice.text = self._decode(choice.token_ids, p)
            return True
        return False
