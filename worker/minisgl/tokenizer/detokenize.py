"""Incremental detokenization with stop strings, shared by the server and the offline LLM.

Decoding token by token is wrong for two reasons: a character may span several tokens
(byte-level BPE emits partial UTF-8, which decodes to U+FFFD) and some tokenizers drop or
add a leading space depending on what precedes a token. So we decode a small sliding window
(`prefix_offset`..end) and emit only the text beyond what the window's prefix decoded to.

DetokenizeManager runs it for every live request of the detokenizer process (and of `LLM`):
it registers requests, turns each step's outputs into ReplyChunks in one batched decode, and
cuts a choice at its stop string.

Stop strings may span tokens: text that could still be the start of a stop string is held
back until it either completes one (cut there, never emitted unless include_stop_str_in_output)
or diverges (emitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from minisgl.message.backend import UserMsg
from minisgl.message.frontend import ReplyChunk, make_chunk
from minisgl.message.tokenizer import TokenizedMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import TokenOutput

# Prompt tokens kept as decoding context so the first output token gets its leading space right.
_PROMPT_CONTEXT = 5


BatchDecode = Callable[[list[list[int]], bool], list[str]]


def batch_decoder(tokenizer: Any) -> BatchDecode:
    """`(id lists, skip_special_tokens) -> texts`, each exactly `tokenizer.decode(ids, ...)`.

    For a Hugging Face fast tokenizer whose decode is the stock one this is a single call
    into the Rust tokenizer for the whole list: per-sequence `tokenizer.decode` spends ~20 µs
    in Python around ~1 µs of Rust, and the detokenizer decodes two windows per request per
    step. Anything else (a slow tokenizer, an overridden decode, clean-up of tokenization
    spaces that would really run) decodes one by one through `tokenizer.decode`.
    """
    backend = _stock_backend(tokenizer)
    if backend is not None:
        return lambda seqs, skip: backend.decode_batch(seqs, skip_special_tokens=skip) if seqs else []
    return lambda seqs, skip: [tokenizer.decode(s, skip_special_tokens=skip) for s in seqs]


def _stock_backend(tokenizer: Any) -> Any | None:
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    except ImportError:
        return None
    cls = type(tokenizer)
    backend = getattr(tokenizer, "_tokenizer", None)
    if (not isinstance(tokenizer, PreTrainedTokenizerFast) or not hasattr(backend, "decode_batch")
            or cls.decode is not PreTrainedTokenizerBase.decode
            or cls._decode is not PreTrainedTokenizerFast._decode):
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # transformers skips the clean-up for BPE models (unless forced); otherwise it runs.
        forced = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_"
                                    "corrupt_output", True)
        if type(backend.model).__name__ != "BPE" or forced:
            return None
    return backend


class DetokenizeResult(NamedTuple):
    text: str  # new text to emit (may be "")
    stopped: bool  # a stop string was found; text is final, feed no more tokens


class IncrementalDetokenizer:
    """Turns one choice's output token ids into text, chunk by chunk.

    >>> detok = IncrementalDetokenizer(tokenizer, params, prompt_ids)
    >>> text, stopped = detok.add([token_id])            # after every step
    >>> text, stopped = detok.add([], finished=True)     # flush what was held back

    `add` = `feed` + decode the windows it returns + `settle`; the detokenizer process calls
    the halves itself so that one step of every request decodes in one batch.
    """

    def __init__(self, tokenizer: Any, params: SamplingParams, prompt_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stop = tuple(params.stop)
        self.include_stop = params.include_stop_str_in_output
        context = list(prompt_ids[-_PROMPT_CONTEXT:]) if prompt_ids else []
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._text = ""  # all output text decoded so far (emitted + held back)
        self._emitted = 0  # chars of _text already returned
        self._stopped = False

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text[: self._emitted]

    @property
    def stopped(self) -> bool:
        return self._stopped

    def add(self, token_ids: list[int], finished: bool = False) -> DetokenizeResult:
        """Feed new token ids; `finished=True` on the last call flushes held-back text."""
        windows = self.feed(token_ids)
        texts = None if windows is None else (self._decode(windows[0]), self._decode(windows[1]))
        return self.settle(texts, finished)

    def feed(self, token_ids: list[int]) -> tuple[list[int], list[int]] | None:
        """Take new ids; the (prefix, full) windows whose decoded texts `settle` needs,
        None if there is nothing to decode."""
        if self._stopped:
            return None
        self._ids.extend(token_ids)
        if self._read_offset == len(self._ids):
            return None
        return self._ids[self._prefix_offset : self._read_offset], self._ids[self._prefix_offset :]

    def settle(self, texts: tuple[str, str] | None, finished: bool = False) -> DetokenizeResult:
        """Finish the step `feed` began, given its windows decoded (None if it returned None)."""
        if self._stopped:
            return DetokenizeResult("", True)
        if texts is not None:
            self._text += self._new_text(*texts, force=finished)
        if self.stop:
            cut = self._find_stop()
            if cut is not None:
                self._stopped = True
                return DetokenizeResult(self._take(cut), True)
        end = len(self._text) if finished else len(self._text) - self._held_back()
        return DetokenizeResult(self._take(end), False)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _new_text(self, prefix: str, full: str, force: bool) -> str:
        if len(full) <= len(prefix) and not force:
            return ""
        if full.endswith("\ufffd") and not force:
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix) :]

    def _find_stop(self) -> int | None:
        """End (exclusive) of the text to emit if a stop string occurs in unemitted text."""
        longest = max(len(s) for s in self.stop)
        search_from = max(0, self._emitted - longest + 1)
        best: tuple[int, int] | None = None
        for s in self.stop:
            pos = self._text.find(s, search_from)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, len(s))
        if best is None:
            return None
        pos, length = best
        return max(pos + length if self.include_stop else pos, self._emitted)

    def _held_back(self) -> int:
        """Length of the longest unemitted suffix that is a proper prefix of some stop string."""
        if not self.stop:
            return 0
        tail = self._text[self._emitted :]
        for n in range(min(len(tail), max(len(s) for s in self.stop) - 1), 0, -1):
            suffix = tail[-n:]
            if any(s.startswith(suffix) for s in self.stop):
                return n
        return 0

    def _take(self, end: int) -> str:
        text = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return text


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
