"""FrontendManager over real ZeroMQ sockets; the test plays the tokenizer/detokenizer peer."""

from __future__ import annotations

import asyncio
import time

import pytest

from minisgl.errors import ContextTooLong, ServiceUnavailable
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, PongMsg, ReplyChunk, StatsMsg
from minisgl.message.tokenizer import AbortMsg, PingMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats
from minisgl.server.endpoints import Endpoints
from minisgl.server.frontend import FrontendManager
from minisgl.utils.zmq import PullQueue, PushQueue


class Peer:
    """Receives what the frontend sends to tokenizer 0 and answers on the frontend socket
    (pings too, for tokenizer 0 and the detokenizer, unless `answer_pings` is off)."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.inbox = PullQueue(endpoints.tokenizer(0), bind=True)
        self.outbox = PushQueue(endpoints.frontend, bind=False)
        self.answer_pings = True
        self.pings = 0

    def _pong(self, msg: PingMsg) -> None:
        self.pings += 1
        if self.answer_pings:
            for name in ("tokenizer0", "detokenizer"):
                self.outbox.put(PongMsg(name, msg.seq))

    async def next(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = self.inbox.get_nowait()
            if isinstance(msg, PingMsg):
                self._pong(msg)
                continue
            if msg is not None:
                return msg
            await asyncio.sleep(0.005)  # poll interval (the loop must keep running)
        raise AssertionError("nothing arrived")

    def reply(self, *chunks: ReplyChunk) -> None:
        self.outbox.put(BatchReplyMsg(list(chunks)))


def _run(tmp_path, body, stuck_timeout_s: float = 60.0):
    endpoints = Endpoints(str(tmp_path), num_tokenizer=1)

    async def main():
        fe = FrontendManager(endpoints, "m", 128, tokenizer=None, stuck_timeout_s=stuck_timeout_s)
        peer = Peer(endpoints)
        await fe.start()
        try:
            await body(fe, peer)
        finally:
            await fe.stop()
            peer.inbox.close()
            peer.outbox.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_chunks_of_every_choice_are_routed_until_all_finish(tmp_path):
    async def body(fe, peer):
        gen = fe.generate([1, 2], SamplingParams(n=2), add_special_tokens=False)
        first = asyncio.ensure_future(gen.__anext__())
        msg = await peer.next()
        assert isinstance(msg, TokenizeMsg) and msg.prompt == [1, 2] and not msg.add_special_tokens
        assert fe.in_flight == 1
        peer.reply(ReplyChunk(msg.uid, 0, "a", [5]), ReplyChunk(msg.uid + 99, 0, "x", [9]),
                   ReplyChunk(msg.uid, 1, "b", [6], finished=True, finish_reason="length"),
                   ReplyChunk(msg.uid, 0, "c", [7], finished=True, finish_reason="stop"))
        got = [await first] + [c async for c in gen]
        assert [(c.index, c.text) for c in got] == [(0, "a"), (1, "b"), (0, "c")]
        assert fe.in_flight == 0

    _run(tmp_path, body)


def test_errors_are_raised_before_the_first_chunk(tmp_path):
    async def body(fe, peer):
        gen = fe.generate("x" * 10, SamplingParams())
        task = asyncio.ensure_future(gen.__anext__())
        msg = await peer.next()
        peer.outbox.put(ErrorMsg(msg.uid, "ContextTooLong", "too long", "max_tokens"))
        with pytest.raises(ContextTooLong, match="too long"):
            await task
        assert fe.in_flight == 0
        assert peer.inbox.get(timeout=0.2) is None  # nothing to abort: it never started

    _run(tmp_path, body)


def test_closing_the_stream_early_aborts_the_request(tmp_path):
    async def body(fe, peer):
        gen = fe.generate("hello", SamplingParams(max_tokens=100))
        task = asyncio.ensure_future(gen.__anext__())
        msg = await peer.next()
        peer.reply(ReplyChunk(msg.uid, 0, "h", [1]))
        assert (await task).text == "h"
        await gen.aclose()  # the client went away
        assert await peer.next() == AbortMsg(msg.uid)
        assert fe.in_flight == 0

    _run(tmp_path, body)


def test_stats_health_draining_and_failure(tmp_path):
    async def body(fe, peer):
        assert fe.ready and fe.health() == (True, "ok")
        stats = SchedulerStats(num_running=3, kv_used_pages=1, kv_total_pages=4,
                               last_step_time=time.time(), has_work=True)
        peer.outbox.put(StatsMsg(stats))
        deadline = time.monotonic() + 10
        while fe.stats().num_running != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)  # poll interval
        assert fe.stats().kv_usage == 0.25
        # a scheduler that has work but stopped stepping is unhealthy
        peer.outbox.put(StatsMsg(SchedulerStats(has_work=True, last_step_time=time.time() - 5)))
        while fe.stats().last_step_time > time.time() - 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)  # poll interval
        ok, reason = fe.health()
        assert not ok and "no step" in reason
        # a live request fails fast when a child dies
        gen = fe.generate("hi", SamplingParams())
        task = asyncio.ensure_future(gen.__anext__())
        await peer.next()
        fe.mark_failed("scheduler0 (pid 1) exited with code -9")
        with pytest.raises(ServiceUnavailable, match="scheduler0"):
            await task
        assert fe.health() == (False, "scheduler0 (pid 1) exited with code -9")
        assert not fe.ready

    _run(tmp_path, body, stuck_timeout_s=2.0)


def test_draining_refuses_new_requests(tmp_path):
    async def body(fe, peer):
        fe.draining = True
        assert not fe.ready
        with pytest.raises(ServiceUnavailable):
            await fe.generate("hi", SamplingParams()).__anext__()

    _run(tmp_path, body)


def test_unencodable_text_is_an_invalid_request(tmp_path):
    from minisgl.errors import InvalidRequest

    async def body(fe, peer):
        with pytest.raises(InvalidRequest, match="cannot be encoded"):
            await fe.generate("bad \ud800 surrogate", SamplingParams()).__anext__()
        with pytest.raises(InvalidRequest):
            await fe.generate("ok", SamplingParams(stop=("\udfff",))).__anext__()
        assert fe.in_flight == 0

    _run(tmp_path, body)


def test_merge_chunks_joins_a_run_of_one_choice_once():
    from minisgl.message.frontend import ReplyChunk
    from minisgl.server.frontend import merge_chunks

    run = [ReplyChunk(1, 0, "a", [1], prompt_token_ids=[9], queue_time_s=0.5,
                      num_output_tokens=1),
           ReplyChunk(1, 0, "b", [2], num_output_tokens=2),
           ReplyChunk(1, 0, "c", [3], finished=True, finish_reason="length", num_output_tokens=3)]
    merged = merge_chunks(run)
    assert merged == ReplyChunk(1, 0, "abc", [1, 2, 3], prompt_token_ids=[9], finished=True,
                                finish_reason="length", num_output_tokens=3, queue_time_s=0.5)
    assert merge_chunks(run[:1]) is run[0]


def test_a_worker_that_stops_answering_pings_fails_health(tmp_path):
    async def body(fe, peer):
        deadline = time.monotonic() + 30

        def serve_once() -> None:  # the scheduler keeps reporting; pings as peer decides
            peer.outbox.put(StatsMsg(SchedulerStats()))
            msg = peer.inbox.get_nowait()
            if isinstance(msg, PingMsg):
                peer._pong(msg)

        while peer.pings < 2:
            assert time.monotonic() < deadline
            serve_once()
            await asyncio.sleep(0.05)  # poll interval
        assert fe.health() == (True, "ok")
        peer.answer_pings = False
        while fe.health()[0]:
            assert time.monotonic() < deadline
            serve_once()
            await asyncio.sleep(0.05)  # poll interval
        ok, reason = fe.health()
        assert not ok and "has not answered a ping" in reason

    _run(tmp_path, body, stuck_timeout_s=1.5)
