"""The outbox mechanism over an in-memory outbox: the relay publishes due entries in order, backs off when
Kafka fails and drains what a stopped replica left as soon as it starts; the direct publication settles
the entry or hands it to the relay."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from emage_common.events import CloudEvent
from emage_common.outbox import DirectPublication, OutboxEntry, OutboxRelay, backoff


def _entry(event_id: str) -> OutboxEntry:
    return OutboxEntry(event_id, "topic", CloudEvent(id=event_id, source="/t", type="t"))


class MemoryOutbox:
    def __init__(self, count: int) -> None:
        self.pending = {f"e{i}": _entry(f"e{i}") for i in range(count)}
        self.published: list[str] = []
        self.retries: dict[str, timedelta] = {}
        self.owners: set[str] = set()

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> list[OutboxEntry]:
        due = [entry for key, entry in self.pending.items() if key not in self.retries][:limit]
        return [OutboxEntry(e.event_id, e.topic, e.event, attempts=1) for e in due]

    async def mark_published(self, event_id: str, owner: str) -> None:
        self.owners.add(owner)
        self.published.append(event_id)
        del self.pending[event_id]

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None:
        self.owners.add(owner)
        self.retries[event_id] = delay


class Events:
    def __init__(self, fail_after: int | None = None, error: Exception | None = None) -> None:
        self.sent: list[str] = []
        self.fail_after = fail_after
        self.error = error or KafkaConnectionError("down")
        self._sent_one = asyncio.Condition()

    async def publish(self, topic: str, event: Any, key: str | None = None) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise self.error
        self.sent.append(event.id)
        async with self._sent_one:
            self._sent_one.notify_all()

    async def wait_for(self, count: int) -> None:
        async with self._sent_one:
            await self._sent_one.wait_for(lambda: len(self.sent) >= count)


def relay(outbox: MemoryOutbox, events: Events) -> OutboxRelay:
    return OutboxRelay(
        outbox, events, replica_id="r", poll_interval=0.05, lease=timedelta(seconds=30), publish_timeout=1
    )


async def test_due_entries_are_published_in_order_and_marked() -> None:
    outbox, events = MemoryOutbox(3), Events()
    assert await relay(outbox, events).drain_once() == 3
    assert events.sent == outbox.published == ["e0", "e1", "e2"]
    assert outbox.owners == {"r/relay"}


async def test_a_failure_puts_the_entry_and_the_rest_of_the_batch_back_with_backoff() -> None:
    outbox, events = MemoryOutbox(4), Events(fail_after=1)
    assert await relay(outbox, events).drain_once() == 1
    assert outbox.published == ["e0"]
    assert outbox.retries == {f"e{i}": backoff(1) for i in (1, 2, 3)}


def test_backoff_doubles_up_to_ten_seconds() -> None:
    assert [backoff(n).total_seconds() for n in (0, 1, 2, 3, 6, 10, 20)] == [
        0.5,
        0.5,
        1.0,
        2.0,
        10.0,
        10.0,
        10.0,
    ]


async def test_the_running_relay_drains_at_start_and_when_woken() -> None:
    outbox, events = MemoryOutbox(2), Events()
    running = relay(outbox, events)
    running.start()
    try:
        async with asyncio.timeout(5):
            await events.wait_for(2)
        outbox.pending["late"] = _entry("late")
        running.wake()
        async with asyncio.timeout(5):
            await events.wait_for(3)
    finally:
        await running.stop()
    assert events.sent == ["e0", "e1", "late"]
    await running.stop()  # stopping twice is harmless


def publication(
    outbox: MemoryOutbox, events: Events, wakeups: list[None], **options: Any
) -> DirectPublication:
    return DirectPublication(
        events,
        outbox,
        replica_id="r",
        publish_timeout=1,
        wake_relay=lambda: wakeups.append(None),
        **options,
    )


async def test_a_direct_publication_settles_its_entry_in_the_background() -> None:
    outbox, events, wakeups = MemoryOutbox(1), Events(), list[None]()
    direct = publication(outbox, events, wakeups)
    assert direct.publisher_id == "r/direct"
    await direct.publish("topic", outbox.pending["e0"].event)
    await direct.settle_pending()
    assert events.sent == outbox.published == ["e0"]
    assert outbox.owners == {"r/direct"}
    assert wakeups == []


async def test_a_failed_direct_publication_hands_the_entry_to_the_relay_at_once() -> None:
    outbox, events, wakeups = MemoryOutbox(1), Events(fail_after=0), list[None]()
    direct = publication(outbox, events, wakeups)
    await direct.publish("topic", outbox.pending["e0"].event)
    await direct.settle_pending()
    assert outbox.published == []
    assert outbox.retries == {"e0": timedelta(0)}
    assert wakeups == [None]


async def test_only_the_chosen_failures_are_left_to_the_relay() -> None:
    outbox, wakeups = MemoryOutbox(1), list[None]()
    narrow = publication(outbox, Events(fail_after=0, error=ValueError("bug")), wakeups)
    with pytest.raises(ValueError, match="bug"):
        await narrow.publish("topic", outbox.pending["e0"].event)
    broad = publication(outbox, Events(fail_after=0, error=ValueError("bug")), wakeups, failures=(Exception,))
    await broad.publish("topic", outbox.pending["e0"].event)
    await broad.settle_pending()
    assert outbox.retries == {"e0": timedelta(0)}
