"""One HTTP generation request as the serving layer sees it: frontend streams plus metrics.

A request may carry several prompts (`/v1/completions` with a list); each becomes one
`frontend.generate` stream and their chunks are merged. Errors the engine raises before the
first chunk (InvalidRequest, ContextTooLong) surface from `start()`, before any HTTP status is
sent. Closing the run (client gone, handler cancelled) closes every stream, which aborts the
request end to end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable

from minisgl.sampling_params import SamplingParams
from minisgl.server.metrics import FINISH_REASONS

if TYPE_CHECKING:
    from minisgl.message.frontend import ReplyChunk
    from minisgl.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

_END = object()


class GenerationRun:
    """Chunks of all prompts of one request, tagged with the prompt index; records metrics."""

    def __init__(self, frontend, metrics: ServerMetrics, prompts: list[str | list[int]],
                 params: SamplingParams, request_id: str,
                 on_tokens: Callable[[int], None] | None = None) -> None:
        self.frontend, self.metrics, self.request_id = frontend, metrics, request_id
        self._on_tokens = on_tokens  # called once at the end with prompt + completion tokens
        self.num_tokens = 0
        self.prompts, self.params = prompts, params
        self.arrival = time.perf_counter()
        self._iters: list[AsyncIterator[ReplyChunk]] = []
        self._firsts: list[ReplyChunk | None] = []
        self._pumps: list[asyncio.Task] = []
        self._first_token_seen = False
        self._last_token_time: dict[tuple[int, int], float] = {}
        self._live: set[tuple[int, int]] = set()
        self.status: str | None = None  # "abort" when the engine aborted a choice
        self._recorded = False

    async def start(self) -> None:
        """Open every stream and wait for its first chunk; raise the engine's error if any."""
        self._iters = [self.frontend.generate(p, self.params) for p in self.prompts]
        tasks = [asyncio.ensure_future(it.__anext__()) for it in self._iters]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close("abort")
            raise
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()
                  and not isinstance(t.exception(), StopAsyncIteration)]
        if failed:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close("error")
            raise failed[0].exception()
        self._firsts = [None if isinstance(t.exception(), StopAsyncIteration) else t.result()
                        for t in tasks]
        self._live = {(i, c) for i in range(len(self.prompts)) for c in range(self.params.n)}

    async def chunks(self) -> AsyncIterator[tuple[int, ReplyChunk]]:
        """Yield (prompt index, chunk) until every choice of every prompt has finished."""
        try:
            if len(self._iters) == 1:
                if self._firsts[0] is not None:
                    yield 0, self._observe(0, self._firsts[0])
                async for chunk in self._iters[0]:
                    yield 0, self._observe(0, chunk)
            else:
                queue: asyncio.Queue = asyncio.Queue()
                self._pumps = [asyncio.ensure_future(self._pump(i, queue))
                               for i in range(len(self._iters))]
                remaining = len(self._pumps)
                while remaining:
                    item = await queue.get()
                    if item is _END:
                        remaining -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item[0], self._observe(item[0], item[1])
        finally:
            # Reached on normal end as well as on cancellation / GeneratorExit (client gone).
            await self.close("success" if not self._live else "abort")

    async def _pump(self, i: int, queue: asyncio.Queue) -> None:
        try:
            if self._firsts[i] is not None:
                queue.put_nowait((i, self._firsts[i]))
            async for chunk in self._iters[i]:
                queue.put_nowait((i, chunk))
        except Exception as e:  # forwarded to the consumer, which raises it
            queue.put_nowait(e)
        queue.put_nowait(_END)

    def _observe(self, i: int, chunk: ReplyChunk) -> ReplyChunk:
        now, key = time.perf_counter(), (i, chunk.index)
        m = self.metrics
        if chunk.prompt_token_ids is not None or chunk.queue_time_s is not None:
            if chunk.index == 0:  # prompt tokens count once per prompt, not per choice
                m.prompt_tokens.inc(chunk.num_prompt_tokens)
                self.num_tokens += chunk.num_prompt_tokens
            if chunk.queue_time_s is not None:
                m.queue_time.observe(chunk.queue_time_s)
        if chunk.token_ids:
            n = len(chunk.token_ids)
            m.generation_tokens.inc(n)
            self.num_tokens += n
            if not self._first_token_seen:
                self._first_token_seen = True
                m.ttft.observe(now - self.arrival)
            last = self._last_token_time.get(key)
            if last is not None:
                for _ in range(n):  # a chunk may carry several tokens: spread the gap
                    m.itl.observe((now - last) / n)
            self._last_token_time[key] = now
        if chunk.finished:
            self._live.discard(key)
            if chunk.finish_reason in FINISH_REASONS:
                m.finish_reasons.labels(m.model, chunk.finish_reason).inc()
            if chunk.finish_reason == "abort":
                self.status = "abort"
        return chunk

    async def close(self, status: str) -> None:
        """Close every stream (aborting unfinished choices) and record the request once."""
        for t in self._pumps:
            t.cancel()
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        for it in self._iters:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except RuntimeError:  # still running in a cancelled pump: it is closing itself
                    pass
        self._iters = []
        if self._recorded:
            return
        self._recorded = True
        if self._on_tokens is not None:
            self._on_tokens(self.num_tokens)
        final = self.status or status
        self.metrics.request_finished(final)
        if final != "error":
            self.metrics.e2e.observe(time.perf_counter() - self.arrival)
        if final == "abort":
            logger.info("request %s aborted", self.request_id)


async def wait_disconnected(receive) -> None:
    """Return once the ASGI client has gone away (use after the body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
