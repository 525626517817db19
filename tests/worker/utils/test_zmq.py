from __future__ import annotations

import asyncio
import multiprocessing as mp

from minisgl.message.backend import AbortBackendMsg, BatchBackendMsg, UserMsg
from minisgl.sampling_params import SamplingParams
from minisgl.utils.zmq import AsyncPullQueue, AsyncPushQueue, PullQueue, PushQueue, ipc_endpoint


def _echo_child(inbox: str, outbox: str, count: int) -> None:
    """Receive `count` messages and send each back with uid + 1000 (a real second process)."""
    pull = PullQueue(inbox, bind=True)
    push = PushQueue(outbox, bind=False)
    for _ in range(count):
        msg = pull.get()
        push.put(UserMsg(msg.uid + 1000, msg.input_ids, msg.params, msg.arrival_time))
    push.close()
    pull.close()


def test_typed_messages_cross_a_real_process_in_order(tmp_path):
    to_child, from_child = ipc_endpoint(str(tmp_path), "a"), ipc_endpoint(str(tmp_path), "b")
    replies = PullQueue(from_child, bind=True)
    proc = mp.get_context("spawn").Process(target=_echo_child, args=(to_child, from_child, 50))
    proc.start()
    try:
        # connect before the child binds: ZeroMQ queues until the peer appears
        push = PushQueue(to_child, bind=False)
        params = SamplingParams(stop=("\n",))
        for uid in range(50):
            push.put(UserMsg(uid, [uid, uid + 1], params, float(uid)))
        got = [replies.get(timeout=30) for _ in range(50)]
        assert [m.uid for m in got] == [uid + 1000 for uid in range(50)]
        assert got[7].input_ids == [7, 8] and got[7].params == params
    finally:
        proc.join(30)
        assert proc.exitcode == 0


def test_pull_timeout_and_drain(tmp_path):
    ep = ipc_endpoint(str(tmp_path), "q")
    pull = PullQueue(ep, bind=True)
    push = PushQueue(ep, bind=False)
    assert pull.get(timeout=0.01) is None
    assert pull.get_nowait() is None
    assert pull.drain(timeout=0.01) == []
    for uid in range(5):
        push.put(AbortBackendMsg(uid))
    msgs = pull.drain(timeout=5)
    while len(msgs) < 5:  # delivery is asynchronous; poll up to the deadline
        more = pull.drain(timeout=5)
        assert more, "messages lost"
        msgs += more
    assert msgs == [AbortBackendMsg(uid) for uid in range(5)]
    push.close()
    pull.close()


def test_async_queues_talk_to_sync_ones(tmp_path):
    a, b = ipc_endpoint(str(tmp_path), "async-in"), ipc_endpoint(str(tmp_path), "sync-in")

    async def run() -> None:
        inbox = AsyncPullQueue(a, bind=True)
        outbox = AsyncPushQueue(b, bind=False)
        sync_in = PullQueue(b, bind=True)
        sync_out = PushQueue(a, bind=False)
        sync_out.put(BatchBackendMsg([AbortBackendMsg(1)]))
        got = await asyncio.wait_for(inbox.get(), 10)
        assert got == BatchBackendMsg([AbortBackendMsg(1)])
        await outbox.put(AbortBackendMsg(2))
        assert sync_in.get(timeout=10) == AbortBackendMsg(2)
        for q in (inbox, outbox, sync_in, sync_out):
            q.close()

    asyncio.run(run())
