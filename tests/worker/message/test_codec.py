from __future__ import annotations

import dataclasses

import pytest

from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.message import codec
from minisgl.message.backend import (AbortBackendMsg, BatchBackendMsg, FlushCacheMsg,
                                     GrammarReadyMsg, UserMsg)
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, FlushedMsg, ReplyChunk, StatsMsg
from minisgl.message.tokenizer import AbortMsg, BatchTokenOutputMsg, TokenizedMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats, TokenOutput

PARAMS = SamplingParams(max_tokens=7, temperature=0.5, stop=("x", "yz"), stop_token_ids=(3,),
                        logprobs=2, seed=11, extra={"auto_max_tokens": True})

EXAMPLES = [
    UserMsg(1, [1, 2, 3], PARAMS, 12.5),
    AbortBackendMsg(2),
    BatchBackendMsg([UserMsg(3, [4], SamplingParams(), None), AbortBackendMsg(3),
                     GrammarReadyMsg([3, 14]), FlushCacheMsg(7)]),
    BatchBackendMsg([]),
    TokenizeMsg(4, "héllo 🙂", PARAMS, 1.0, add_special_tokens=False),
    TokenizeMsg(5, [9, 8, 7], SamplingParams(n=3), 2.0),
    AbortMsg(6),
    TokenizedMsg(7, [1, 2], PARAMS, 3.0),
    BatchTokenOutputMsg([
        TokenOutput(uid=8, index=1, token_id=5, logprob=-0.25, top_logprobs=[(5, -0.25), (6, -2.0)],
                    prompt_logprobs=[None, -1.5], num_prompt_tokens=2, num_output_tokens=1,
                    queue_time_s=0.01),
        TokenOutput(uid=9, finished=True, finish_reason="abort"),
    ]),
    ReplyChunk(10, 0, "text", [1], logprobs=[-0.5], top_logprobs=[[(1, -0.5), (2, -1.0)]],
               prompt_token_ids=[3, 4], prompt_logprobs=[None, -2.0], finished=True,
               finish_reason="length", num_prompt_tokens=2, num_output_tokens=1),
    BatchReplyMsg([ReplyChunk(11, 2, "", [])]),
    ErrorMsg(12, "ContextTooLong", "too long", "max_tokens"),
    StatsMsg(SchedulerStats(num_running=2, num_waiting=1, kv_used_pages=3, kv_total_pages=10,
                            last_step_time=123.5, has_work=True, extra={"steps": 4})),
    FlushedMsg(7, 1024),
    FlushedMsg(8, None),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_exactly(msg):
    decoded = codec.decode(codec.encode(msg))
    assert type(decoded) is type(msg)
    assert decoded == msg


def test_tuples_stay_tuples_and_lists_stay_lists():
    chunk = codec.decode(codec.encode(EXAMPLES[9]))
    assert isinstance(chunk.token_ids, list)
    assert isinstance(chunk.top_logprobs[0][0], tuple)
    params = codec.decode(codec.encode(PARAMS))
    assert params.stop == ("x", "yz") and isinstance(params.stop, tuple)
    hash(params.stop)


def test_every_message_class_is_in_the_table():
    for msg in EXAMPLES:
        assert codec.MESSAGE_TYPES[type(msg).__name__] is type(msg)


def test_unregistered_types_are_refused_both_ways():
    @dataclasses.dataclass
    class Sneaky:
        x: int = 1

    with pytest.raises(TypeError, match="not in the message table"):
        codec.encode(Sneaky())
    forged = codec._pack(["os.system", "rm -rf /"])  # a payload naming an arbitrary callable
    import msgpack

    blob = msgpack.packb(msgpack.ExtType(1, forged))
    with pytest.raises(ValueError, match="unknown message type"):
        codec.decode(blob)


def test_error_msg_rebuilds_the_exception_type():
    err = ErrorMsg.from_exception(1, ContextTooLong("long", param="max_tokens"))
    exc = codec.decode(codec.encode(err)).to_exception()
    assert type(exc) is ContextTooLong and exc.param == "max_tokens" and str(exc) == "long"
    exc = ErrorMsg.from_exception(2, InvalidRequest("bad", param="top_p")).to_exception()
    assert type(exc) is InvalidRequest and exc.param == "top_p"
    exc = ErrorMsg.from_exception(3, KeyError("x")).to_exception()
    assert exc.http_status == 500


def test_step_batches_travel_as_one_ext_and_round_trip():
    import msgpack

    chunks = [ReplyChunk(u, 0, "t", [u], prompt_token_ids=[1, 2] if u == 0 else None)
              for u in range(5)]
    blob = codec.encode(BatchReplyMsg(chunks))
    assert msgpack.unpackb(blob, ext_hook=lambda code, data: code) == 3
    decoded = codec.decode(blob)
    assert decoded == BatchReplyMsg(chunks) and type(decoded.chunks[0]) is ReplyChunk
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.chunks[0].text = "x"  # rebuilt without __init__, still frozen


def test_forged_batch_names_are_refused():
    import msgpack

    for name, elem in (("os.system", "ReplyChunk"), ("BatchReplyMsg", "TokenOutput"),
                       ("UserMsg", "ReplyChunk")):
        blob = msgpack.packb(msgpack.ExtType(3, codec._pack([name, elem, [1]])))
        with pytest.raises(ValueError, match="unknown batch type"):
            codec.decode(blob)
