"""OpenAI requests -> (prompts, SamplingParams) -> responses, streaming (SSE) or whole.

`build_*` turn a validated request into what `frontend.generate` takes; `*_response` and
`*_stream` assemble what the client sees from the merged chunks of a GenerationRun.
Choice i of prompt p is choice `p * n + i` in the response, as in vLLM.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import orjson

from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.sampling_params import SamplingParams
from minisgl.server.constraints import logit_bias, request_grammar
from minisgl.server.generation import GenerationRun
from minisgl.server.logprobs import LogprobFormatter
from minisgl.server.protocol import ChatCompletionRequest, CompletionRequest, _SamplingFields
from minisgl.grammar import json_grammar
from minisgl.server.reasoning import create_reasoning_parser, split_reasoning
from minisgl.server.tools import ToolPlan, normalize_messages, plan_tools

logger = logging.getLogger(__name__)

MAX_PROMPTS = 1024
# `required` with parallel_tool_calls: the grammar's bound on calls in one answer (a model
# could otherwise keep adding calls until max_tokens).
MAX_FORCED_CALLS = 8
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


def sampling_params(req: _SamplingFields, max_tokens: int, logprobs: int | None,
                    prompt_logprobs: bool = False) -> SamplingParams:
    def pick(value, default):
        return default if value is None else value

    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    params = SamplingParams(
        max_tokens=max_tokens, min_tokens=req.min_tokens,
        temperature=pick(req.temperature, 1.0), top_k=pick(req.top_k, -1),
        top_p=pick(req.top_p, 1.0), min_p=pick(req.min_p, 0.0), seed=req.seed,
        presence_penalty=pick(req.presence_penalty, 0.0),
        frequency_penalty=pick(req.frequency_penalty, 0.0),
        repetition_penalty=pick(req.repetition_penalty, 1.0),
        stop=stop, stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos,
        n=req.n, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
        grammar=request_grammar(req), logit_bias=logit_bias(req),
    )
    return params.validate()


def _check_max_tokens(value: int, max_model_len: int, allow_zero: bool, name: str) -> None:
    if value < (0 if allow_zero else 1):
        hint = " (0 is allowed only with echo)" if not allow_zero else ""
        raise InvalidRequest(f"{name} must be >= 1{hint}, got {value}", param=name)
    if value > max_model_len:
        raise ContextTooLong(f"{name} {value} exceeds the model's context of {max_model_len} "
                             f"tokens", param=name)


def build_completion(req: CompletionRequest, max_model_len: int
                     ) -> tuple[list[str | list[int]], SamplingParams]:
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    elif isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    for p in prompts:
        if len(p) == 0:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if isinstance(p, list) and min(p) < 0:
            raise InvalidRequest("prompt token ids must be >= 0", param="prompt")
    max_tokens = DEFAULT_COMPLETION_TOKENS if req.max_tokens is None else req.max_tokens
    _check_max_tokens(max_tokens, max_model_len, allow_zero=req.echo, name="max_tokens")
    params = sampling_params(req, max_tokens, req.logprobs,
                             prompt_logprobs=req.echo and req.logprobs is not None)
    return prompts, params


def render_chat(tokenizer, messages: list, add_generation_prompt: bool,
                continue_final_message: bool = False, template_kwargs: dict | None = None,
                tools: list | tuple | None = None) -> str:
    """The chat template applied to messages (tool calls and tool results included) and
    tools. template_kwargs are variables for the template only: none may name an argument of
    apply_chat_template (e.g. `chat_template`, which would let a request replace the server's
    template)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequest("this model has no chat template; use /v1/completions")
    kwargs = template_kwargs or {}
    reserved = sorted(set(kwargs) & _template_arguments(type(tokenizer)))
    if reserved:
        raise InvalidRequest(f"chat_template_kwargs may not set {', '.join(reserved)}",
                             param="chat_template_kwargs")
    dicts = normalize_messages(messages)
    try:
        return tokenizer.apply_chat_template(
            dicts, tools=list(tools) if tools else None, tokenize=False,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message, **kwargs)
    except Exception as e:  # jinja errors: the template rejected these messages
        raise InvalidRequest(f"chat template failed: {e}", param="messages") from e


@functools.cache
def _template_arguments(cls: type) -> frozenset[str]:
    names = set(inspect.signature(cls.apply_chat_template).parameters) - {"self", "kwargs"}
    return frozenset(names | {"chat_template", "tokenize", "tokenizer"})


def build_chat(req: ChatCompletionRequest, tokenizer, max_model_len: int,
               tool_parser: str | None = None) -> tuple[list[int], SamplingParams, ToolPlan | None]:
    """Apply the chat template here (the API process owns the HF tokenizer) -> prompt ids,
    sampling parameters and the request's tool plan. A forced tool choice (`required`, a named
    function) becomes a JSON-schema grammar, so the output is always a valid call."""
    plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    if plan is not None:
        plan.parser(tool_parser)  # refuses `auto` now when no parser can read the answer
    text = render_chat(tokenizer, req.messages, req.add_generation_prompt,
                       req.continue_final_message, req.chat_template_kwargs,
                       plan.tools if plan is not None else None)
    # The template already contains BOS and role markers: add no special tokens twice.
    ids = tokenizer.encode(text, add_special_tokens=False)
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if len(ids) >= max_model_len:
        raise ContextTooLong(f"the prompt has {len(ids)} tokens; the model's context is "
                             f"{max_model_len}", param="messages")
    if limit is None:
        limit = max_model_len - len(ids)
    _check_max_tokens(limit, max_model_len, allow_zero=False, name=name)
    if len(ids) + limit > max_model_len:
        raise ContextTooLong(f"prompt ({len(ids)} tokens) + {name} ({limit}) exceeds the "
                             f"model's context of {max_model_len} tokens", param=name)
    top = req.top_logprobs if req.top_logprobs is not None else 0
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    params = sampling_params(req, limit, top if req.logprobs else None)
    if plan is not None and plan.forced:
        if params.grammar is not None:
            raise InvalidRequest("a forced tool_choice cannot be combined with another output "
                                 "constraint (response_format, guided_*)", param="tool_choice")
        params = params.replace(grammar=json_grammar(plan.schema(MAX_FORCED_CALLS))).validate()
    return ids, params, plan


def sse(obj: dict | str) -> bytes:
    if isinstance(obj, str):
        return f"data: {obj}\n\n".encode()
    try:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
    except TypeError:  # e.g. an int beyond 64 bits: the standard library copes
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    text_len: int = 0  # len("".join(text)), kept so a stream's text_offset is O(1) per chunk


class ResponseBuilder:
    """Accumulates chunks and renders OpenAI completion / chat objects from them."""

    def __init__(self, run: GenerationRun, model: str, chat: bool, fmt: LogprobFormatter,
                 echo_texts: list[str] | None = None, reasoning_parser: str | None = None,
                 tools: ToolPlan | None = None, tool_parser: str | None = None) -> None:
        self.run, self.model, self.chat, self.fmt = run, model, chat, fmt
        self.reasoning_parser = reasoning_parser if chat else None  # --reasoning-parser
        self.n = run.params.n
        self.created = int(time.time())
        self.echo_texts = echo_texts
        self.choices = [_Choice() for _ in range(len(run.prompts) * self.n)]
        self.reasoners = [create_reasoning_parser(self.reasoning_parser) for _ in self.choices]
        # Tool calls: one parser per choice, reading the content after any reasoning.
        self.tool_parsers = [tools.parser(tool_parser) if tools is not None else None
                             for _ in self.choices]
        self.prompt_tokens = [0] * len(run.prompts)
        self.cached_tokens = [0] * len(run.prompts)
        self.prompt_ids: list[list[int] | None] = [None] * len(run.prompts)
        self.prompt_logprobs: list[list | None] = [None] * len(run.prompts)
        self.prompt_top: list[list | None] = [None] * len(run.prompts)
        self.echo_lens = [0] * len(run.prompts)  # echoed characters: where a choice's text starts
        self.want_logprobs = run.params.logprobs is not None

    def add(self, p: int, chunk) -> int:
        idx = p * self.n + chunk.index
        c = self.choices[idx]
        if chunk.num_prompt_tokens:
            self.prompt_tokens[p] = chunk.num_prompt_tokens
            self.cached_tokens[p] = chunk.num_cached_tokens
        if chunk.prompt_token_ids is not None and self.prompt_ids[p] is None:
            self.prompt_ids[p] = list(chunk.prompt_token_ids)
        if chunk.prompt_logprobs is not None and self.prompt_logprobs[p] is None:
            self.prompt_logprobs[p] = list(chunk.prompt_logprobs)
            self.prompt_top[p] = chunk.prompt_top_logprobs
        c.text.append(chunk.text)
        c.text_len += len(chunk.text)
        c.token_ids += chunk.token_ids
        if chunk.logprobs:
            c.logprobs += chunk.logprobs
            c.top += chunk.top_logprobs or [[] for _ in chunk.logprobs]
        c.num_output_tokens = max(c.num_output_tokens + len(chunk.token_ids),
                                  chunk.num_output_tokens)
        if chunk.finished:
            c.finish_reason = chunk.finish_reason
        return idx

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(c.num_output_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)}}

    def _echo(self, p: int) -> tuple[str, dict | None]:
        """Prompt text and prompt logprobs block for echo (completions only); prompt
        positions carry their top_logprobs like generated ones (lm-eval's is_greedy)."""
        ids = self.prompt_ids[p] or []
        text = self.echo_texts[p] if self.echo_texts else ""
        if not text and ids:
            text = self.fmt.decode(ids)
        self.echo_lens[p] = len(text)
        lps = self.prompt_logprobs[p]
        if not self.want_logprobs:
            return text, None
        return text, self.fmt.completion(ids, lps or [None] * len(ids), self.prompt_top[p], 0)

    def _logprobs(self, idx: int, start: int, offset: int):
        c = self.choices[idx]
        ids, lps, top = c.token_ids[start:], c.logprobs[start:], c.top[start:]
        if self.chat:
            return self.fmt.chat(ids, lps, top)
        return self.fmt.completion(ids, lps, top, offset)

    def response(self) -> dict:
        rid, out = self.run.request_id, []
        for idx, c in enumerate(self.choices):
            p, text = idx // self.n, "".join(c.text)
            logprobs = None
            if self.chat:
                if self.want_logprobs:
                    logprobs = self._logprobs(idx, 0, 0)
                message = {"role": "assistant", "content": text}
                if self.reasoning_parser is not None:
                    reasoning, message["content"] = split_reasoning(self.reasoning_parser, text)
                    message["reasoning_content"] = reasoning
                parser = self.tool_parsers[idx]
                if parser is not None:
                    message["content"], calls = parser.parse(message["content"] or "")
                    if calls:
                        message["tool_calls"] = [call.to_openai() for call in calls]
                out.append({"index": idx, "message": message, "logprobs": logprobs,
                            "finish_reason": self.finish_reason(idx)})
                continue
            echo_text, echo_lp = self._echo(p) if self.echo_texts is not None else ("", None)
            if self.want_logprobs:
                logprobs = self._logprobs(idx, 0, len(echo_text))
                if echo_lp is not None:
                    logprobs = self.fmt.concat(echo_lp, logprobs)
            out.append({"index": idx, "text": echo_text + text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason})
        obj = "chat.completion" if self.chat else "text_completion"
        return {"id": rid, "object": obj, "created": self.created, "model": self.model,
                "choices": out, "usage": self.usage()}

    def finish_reason(self, idx: int) -> str | None:
        """The choice's finish reason; "tool_calls" when it stopped after making calls."""
        reason, parser = self.choices[idx].finish_reason, self.tool_parsers[idx]
        return "tool_calls" if reason == "stop" and parser is not None and parser.calls else reason

    def chat_deltas(self, idx: int, text: str, finished: bool) -> list[dict]:
        """The chat deltas of new text: reasoning, content and tool-call fragments."""
        reasoner, parser = self.reasoners[idx], self.tool_parsers[idx]
        reasoning, content = reasoner.feed(text, final=finished) if reasoner else ("", text)
        if parser is None:
            delta = {"reasoning_content": reasoning} if reasoning else {}
            return [{**delta, "content": content} if content else delta]
        deltas = [{"reasoning_content": reasoning}] if reasoning else []
        deltas += parser.feed(content) if content else []
        if finished:
            deltas += parser.finish()
        return deltas or [{}]

    def chunk_obj(self, choices: list[dict], usage: bool) -> dict:
        obj = {"id": self.run.request_id,
               "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}
        if usage:
            obj["usage"] = self.usage()
        return obj


async def stream_events(builder: ResponseBuilder, include_usage: bool,
                        continuous_usage: bool) -> AsyncIterator[bytes]:
    """SSE events for a started run; always ends with `data: [DONE]`."""
    run, started = builder.run, set()
    try:
        async for p, chunk in run.chunks():
            idx = p * builder.n + chunk.index
            c = builder.choices[idx]
            start, text_len = len(c.token_ids), c.text_len
            builder.add(p, chunk)
            choices = []
            if idx not in started:
                started.add(idx)
                if builder.chat:
                    choices.append({"index": idx, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None})
                elif builder.echo_texts is not None:
                    text, lp = builder._echo(p)
                    choices.append({"index": idx, "text": text, "logprobs": lp,
                                    "finish_reason": None})
            offset = builder.echo_lens[p] + text_len  # text_offset of this chunk, echo counted
            # A token that ends mid-character has no text yet: send it with the next one.
            has_new = bool(chunk.text or chunk.finished or (builder.want_logprobs and chunk.token_ids))
            if has_new:
                lp = builder._logprobs(idx, start, offset) if builder.want_logprobs else None
                fin = builder.finish_reason(idx) if chunk.finished else None
                if builder.chat:
                    deltas = builder.chat_deltas(idx, chunk.text, chunk.finished)
                    for k, delta in enumerate(deltas):  # logprobs on the first, finish on the last
                        choices.append({"index": idx, "delta": delta,
                                        "logprobs": lp if k == 0 else None,
                                        "finish_reason": fin if k == len(deltas) - 1 else None})
                else:
                    choices.append({"index": idx, "text": chunk.text, "logprobs": lp,
                                    "finish_reason": fin})
            # One write for all events of this chunk (the same bytes as one write each).
            if len(choices) == 1:
                yield sse(builder.chunk_obj(choices, usage=continuous_usage))
            elif choices:
                yield b"".join(sse(builder.chunk_obj([choice], usage=continuous_usage))
                               for choice in choices)
        if include_usage:
            yield sse(builder.chunk_obj([], usage=True))
    except Exception as e:  # the status line is gone: report in-band, then end the stream
        logger.exception("request %s failed mid-stream", run.request_id)
        yield sse({"error": {"message": str(e), "type": "internal_error", "param": None,
                             "code": 500}})
    yield sse("[DONE]")
