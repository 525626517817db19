"""The tokenizer worker and detokenizer processes (spawned by server/children.py).

Tokenizer worker: TokenizeMsg -> TokenizedMsg to the detokenizer (or ErrorMsg to the API).
Detokenizer: the single sender of messages to the scheduler — tokenized requests are
registered here before being forwarded, so every scheduler output finds its request — and
the scheduler's outputs become ReplyChunks for the API process; a choice that hits a stop
string is cut here (the scheduler learns through an abort). Both answer the API process's
pings (its /health).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from minisgl.message.backend import AbortBackendMsg, BackendMsg, BatchBackendMsg, FlushCacheMsg
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, PongMsg, ReplyChunk
from minisgl.message.tokenizer import (AbortMsg, BatchTokenOutputMsg, PingMsg, TokenizedMsg,
                                       TokenizeMsg)
from minisgl.tokenizer.detokenize import DetokenizeManager
from minisgl.tokenizer.tokenize import TokenizeManager, load_tokenizer, model_vocab_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer worker process needs (pickled once by multiprocessing at spawn)."""

    rank: int
    model_path: str
    listen: str  # endpoint to bind
    detokenizer: str
    frontend: str
    log_level: str = "info"
    tokenizer_path: str | None = None  # None: the model's own


def tokenizer_main(spec: TokenizerSpec, ack_queue: Any, settings: Any) -> None:
    """Process entry point (spawn target). `settings` delivers the scheduler's ack info
    (max_model_len, ...) once rank 0 is up, so we load the tokenizer meanwhile."""
    from minisgl.utils.proc import run_child

    run_child(f"tokenizer{spec.rank}", ack_queue, spec.log_level,
              lambda ack: _serve_tokenizer(spec, ack, settings))


def _serve_tokenizer(spec: TokenizerSpec, ack: Callable[[dict], None], settings: Any) -> None:
    from minisgl.utils.zmq import PullQueue, PushQueue

    tokenizer = load_tokenizer(spec.tokenizer_path or spec.model_path)
    vocab_size = model_vocab_size(spec.model_path)
    manager = TokenizeManager(tokenizer, int(settings.get()["max_model_len"]), vocab_size)
    inbox: PullQueue[TokenizeMsg | AbortMsg] = PullQueue(spec.listen, bind=True)
    to_detok: PushQueue[TokenizedMsg | AbortMsg] = PushQueue(spec.detokenizer, bind=False)
    to_frontend: PushQueue[ErrorMsg] = PushQueue(spec.frontend, bind=False)
    ack({})
    while True:
        for msg in inbox.drain(timeout=None):
            if isinstance(msg, TokenizeMsg):
                out = manager.try_tokenize(msg)
                (to_detok if isinstance(out, TokenizedMsg) else to_frontend).put(out)
            elif isinstance(msg, AbortMsg):
                to_detok.put(msg)
            elif isinstance(msg, PingMsg):
                to_frontend.put(PongMsg(f"tokenizer{spec.rank}", msg.seq))
            else:
                logger.warning("ignoring unexpected %s", type(msg).__name__)


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

    run_child("detokenizer", ack_queue, spec.log_level, lambda ack: _serve_detokenizer(spec, ack, settings))


def _serve_detokenizer(spec: DetokenizerSpec, ack: Callable[[dict], None], settings: Any) -> None:
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
        backend: list[BackendMsg] = []
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
            elif isinstance(msg, FlushCacheMsg):  # after the requests that came before it
                backend.append(msg)
            else:
                logger.warning("ignoring unexpected %s", type(msg).__name__)
        if backend:
            to_scheduler.put(BatchBackendMsg(backend))
        if chunks:
            to_frontend.put(BatchReplyMsg(chunks))
