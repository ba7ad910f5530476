"""FakeBackend (trio_eventbus.testing.fake) on its own: the new ``open(outcomes)`` seam, release, deliver."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus._abc import Delivery, Disposition, Outcome, OutgoingMessage
from trio_eventbus.testing.fake import FakeBackend, FakeConfig


def message(seq: int) -> OutgoingMessage:
    return OutgoingMessage(seq, "t", b"%d" % seq, {}, None, None)


async def test_open_seam_holds_outcomes_until_released_in_any_order() -> None:
    backend = FakeBackend()
    send, receive = trio.open_memory_channel[Sequence[Outcome]](10)
    states = [backend.running]
    async with backend.open(send):
        states.append(backend.running)
        await backend.send([message(1), message(2), message(3)])
        assert backend.held_seqs() == [1, 2, 3]
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()  # nothing until the test releases it
        await backend.release([3])
        error = teb.BackendUnavailable("no")
        await backend.release_all(error)
        first, second = receive.receive_nowait(), receive.receive_nowait()
        assert [(list(o.seqs), o.error) for o in (*first, *second)] == [([3], None), ([1, 2], error)]
        with pytest.raises(KeyError):
            await backend.release([3])  # released twice: a bug in the test, loudly
    states.append(backend.running)
    assert states == [False, True, False]
    assert backend.batches == [3]


async def test_wait_sent_and_auto_ack() -> None:
    backend = FakeBackend(auto_ack=True)
    send, receive = trio.open_memory_channel[Sequence[Outcome]](10)
    reached: list[int] = []

    async def waiter() -> None:
        await backend.wait_sent(2)
        reached.append(len(backend.sent))

    async with backend.open(send), trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await backend.send([message(1)])
        await trio.testing.wait_all_tasks_blocked()
        assert reached == []
        await backend.send([message(2)])
    assert reached == [2]
    assert backend.held == {}
    assert [list(o.seqs) for batch in (receive.receive_nowait(), receive.receive_nowait()) for o in batch] == [
        [1],
        [2],
    ]


async def test_deliveries_reach_the_bus_and_settlements_are_recorded() -> None:
    backend = FakeBackend()
    got: list[bytes] = []
    async with teb.open_bus(FakeConfig(backend)) as bus:

        async def handler(msg: teb.Message) -> None:
            got.append(msg.data)

        await bus.subscribe("t", handler, group="g")
        delivery = Delivery("t", b"hello", {}, "k", "id-1", 1, token=object())
        await backend.deliver("t", "g", [delivery])
        await trio.testing.wait_all_tasks_blocked()
    assert got == [b"hello"]
    assert backend.settled == [(delivery, Disposition.ACK, 0.0)]
    assert backend.sinks == {}  # stop_consuming at close forgot the sinks
