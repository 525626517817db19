"""Detokenizer process: scheduler token outputs -> ReplyChunks for the API process.

It is also the single sender of messages to the scheduler: tokenized requests are
registered here before being forwarded, so every scheduler output finds its request, and
a choice that hits a stop string is cut here (the scheduler learns through an abort once
every choice of the request is done).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from minisgl.message.backend import AbortBackendMsg, BatchBackendMsg, UserMsg
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, PongMsg, ReplyChunk, make_chunk
from minisgl.message.tokenizer import (AbortMsg, BatchTokenOutputMsg, PingMsg, TokenizedMsg,
                                       TokenizeMsg)
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import TokenOutput
from minisgl.tokenizer.detokenize import IncrementalDetokenizer, batch_decoder

logger = logging.getLogger(__name__)


@dataclass
class _Choice:
    detok: IncrementalDetokenizer
    started: bool = False
    finished: bool = False
    cut_by_stop_string: bool = False  # finished here while the scheduler still runs it


@dataclass
class _Request:
    params: SamplingParams
    input_ids: list[int]
    choices: dict[int, _Choice] = field(default_factory=dict)
    num_finished: int = 0


class DetokenizeManager:
    """Per-request detokenization state; pure (no sockets), so it is unit-testable."""

    def __init__(self, tokenizer: Any, eos_token_ids: list[int] | tuple[int, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self._decode = batch_decoder(tokenizer)
        self._requests: dict[int, _Request] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def register(self, msg: TokenizedMsg) -> UserMsg:
        self._requests[msg.uid] = _Request(msg.params, msg.input_ids)
        return UserMsg(msg.uid, msg.input_ids, msg.params, msg.arrival_time)

    def drop(self, uid: int) -> bool:
        """Forget a request; True if it was live (the scheduler must then be told to abort it)."""
        return self._requests.pop(uid, None) is not None

    def process(self, outputs: list[TokenOutput]
                ) -> tuple[list[ReplyChunk], list[tuple[int, int | None]]]:
        """Chunks for the API process, and (uid, choice index) pairs the scheduler must abort:
        a choice cut by a stop string stops decoding at once, whatever its siblings do.

        Every choice's decode windows of one step go to the tokenizer in one batch call.
        """
        chunks: list[ReplyChunk] = []
        aborts: list[tuple[int, int | None]] = []
        pending: list[tuple[TokenOutput, _Request, _Choice, tuple | None]] = []
        seen: set[tuple[int, int]] = set()
        for out in outputs:
            req = self._requests.get(out.uid)
            if req is None:
                continue  # finished or aborted here already; the scheduler is catching up
            key = (out.uid, out.index)
            if key in seen:  # a second output of one choice: settle the first one before it
                self._settle(pending, chunks, aborts)
                pending, seen = [], set()
                if out.uid not in self._requests:
                    continue
            seen.add(key)
            choice = req.choices.get(out.index)
            if choice is None:
                choice = req.choices[out.index] = _Choice(
                    IncrementalDetokenizer(self.tokenizer, req.params, req.input_ids)
                )
            if choice.finished:
                continue
            pending.append((out, req, choice, choice.detok.feed(self._text_ids(req, out))))
        self._settle(pending, chunks, aborts)
        return chunks, aborts

    def _text_ids(self, req: _Request, out: TokenOutput) -> list[int]:
        if out.token_id is None:
            return []
        params = req.params
        if (
            out.finished
            and out.finish_reason == "stop"
            and not params.include_stop_str_in_output
            and (out.token_id in self.eos_token_ids or out.token_id in params.stop_token_ids)
        ):
            return []  # the stop token itself is not part of the text
        return [out.token_id]

    def _settle(self, pending: list, chunks: list[ReplyChunk],
                aborts: list[tuple[int, int | None]]) -> None:
        texts: list[tuple[str, str] | None] = [None] * len(pending)
        for skip in (True, False):
            rows = [i for i, p in enumerate(pending)
                    if p[3] is not None and p[1].params.skip_special_tokens is skip]
            if not rows:
                continue
            decoded = self._decode([w for i in rows for w in pending[i][3]], skip)
            for j, i in enumerate(rows):
                texts[i] = (decoded[2 * j], decoded[2 * j + 1])
        for (out, req, choice, _), text in zip(pending, texts):
            chunks.append(self._chunk(req, choice, out, text))
            if choice.finished:
                req.num_finished += 1
                if choice.cut_by_stop_string and not out.finished:
                    aborts.append((out.uid, None if req.params.n == 1 else out.index))
                if req.num_finished == req.params.n:
                    self._requests.pop(out.uid, None)

    def _chunk(self, req: _Request, choice: _Choice, out: TokenOutput,
               texts: tuple[str, str] | None) -> ReplyChunk:
        params = req.params
        text, stopped = choice.detok.settle(texts, finished=out.finished)
        finished, reason = out.finished, out.finish_reason
        if stopped:
            choice.cut_by_stop_string = not out.finished
            finished, reason = True, "stop"
        choice.finished = finished
        first = not choice.started
        choice.started = True
        want_logprobs = params.logprobs is not None and out.logprob is not None
        return make_chunk(
            uid=out.uid,
            index=out.index,
            text=text,
            token_ids=[] if out.token_id is None else [out.token_id],
            logprobs=[out.logprob] if want_logprobs else None,
            top_logprobs=[list(out.top_logprobs or [])] if want_logprobs and params.logprobs else None,
            prompt_token_ids=list(req.input_ids) if first else None,
            prompt_logprobs=out.prompt_logprobs if first else None,
            prompt_top_logprobs=out.prompt_top_logprobs if first else None,
            finished=finished,
            finish_reason=reason,
            num_prompt_tokens=out.num_prompt_tokens or len(req.input_ids),
            num_cached_tokens=out.num_cached_tokens,
            num_output_tokens=out.num_output_tokens,
            queue_time_s=out.queue_time_s if first else None,
        )


@dataclass(frozen=True)
class DetokenizerSpec:
    model_path: str
    listen: str
    scheduler: str
    frontend: str
    log_level: str = "info"
    tokenizer_path: str | None = None  # None: the model's own


def detokenizer_main(spec: DetokenizerSpec, ack_queue: Any, settings: Any) -> None:
    """Process entry point (spawn target). `settings` delivers the scheduler's ack info
    (max_model_len, eos_token_ids) once rank 0 is up, so we load the tokenizer meanwhile."""
    from minisgl.utils.proc import run_child

    run_child("detokenizer", ack_queue, spec.log_level, lambda ack: _serve(spec, ack, settings))


def _serve(spec: DetokenizerSpec, ack: Callable[[dict], None], settings: Any) -> None:
    from minisgl.tokenizer.worker import TokenizeManager, load_tokenizer, model_vocab_size
    from minisgl.utils.zmq import PullQueue, PushQueue

    tokenizer = load_tokenizer(spec.tokenizer_path or spec.model_path)
    vocab_size = model_vocab_size(spec.model_path)
    info = settings.get()
    tokenize = TokenizeManager(tokenizer, int(info["max_model_len"]), vocab_size)
    manager = DetokenizeManager(tokenizer, info["eos_token_ids"])
    inbox: PullQueue[Any] = PullQueue(spec.listen, bind=True)
    to_scheduler: PushQueue[BatchBackendMsg] = PushQueue(spec.scheduler, bind=False)
    to_frontend: PushQueue[BatchReplyMsg | ErrorMsg] = PushQueue(spec.frontend, bind=False)
    ack({})
    while True:
        backend: list[UserMsg | AbortBackendMsg] = []
        chunks: list[ReplyChunk] = []
        for msg in inbox.drain(timeout=None):
            if isinstance(msg, BatchTokenOutputMsg):
                new_chunks, aborts = manager.process(msg.outputs)
                chunks.extend(new_chunks)
                backend.extend(AbortBackendMsg(uid, index) for uid, index in aborts)
            elif isinstance(msg, TokenizeMsg):  # --num-tokenizer 0: we tokenize too
                out = tokenize.try_tokenize(msg)
                if isinstance(out, TokenizedMsg):
                    backend.append(manager.register(out))
                else:
                    to_frontend.put(out)
            elif isinstance(msg, TokenizedMsg):
                backend.append(manager.register(msg))
            elif isinstance(msg, AbortMsg):
                if manager.drop(msg.uid):
                    logger.info("request %d aborted by the client", msg.uid)
                    backend.append(AbortBackendMsg(msg.uid))
            elif isinstance(msg, ErrorMsg):  # the scheduler rejected a request
                manager.drop(msg.uid)
                to_frontend.put(msg)
            elif isinstance(msg, PingMsg):
                to_frontend.put(PongMsg("detokenizer", msg.seq))
            else:
                logger.warning("ignoring unexpected %s", type(msg).__name__)
        if backend:
            to_scheduler.put(BatchBackendMsg(backend))
        if chunks:
            to_frontend.put(BatchReplyMsg(chunks))
