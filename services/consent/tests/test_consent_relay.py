"""The outbox relay over an in-memory outbox: publishes due entries in order, backs off when Kafka fails,
and drains what a stopped replica left as soon as it starts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiokafka.errors import KafkaConnectionError

from emage_common.events import CloudEvent
from emage_consent.ports import OutboxEntry
from emage_consent.relay import OutboxRelay, backoff


class MemoryOutbox:
    def __init__(self, count: int) -> None:
        self.pending = {
            f"e{i}": OutboxEntry(
                f"e{i}", "emage.consent.changed.v1", CloudEvent(id=f"e{i}", source="/t", type="t")
            )
            for i in range(count)
        }
        self.published: list[str] = []
        self.retries: dict[str, timedelta] = {}

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> list[OutboxEntry]:
        due = [entry for key, entry in self.pending.items() if key not in self.retries][:limit]
        return [OutboxEntry(e.event_id, e.topic, e.event, attempts=1) for e in due]

    async def mark_published(self, event_id: str, owner: str) -> None:
        self.published.append(event_id)
        del self.pending[event_id]

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None:
        self.retries[event_id] = delay


class Events:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.fail_after = fail_after
        self._sent_one = asyncio.Condition()

    async def publish(self, topic: str, event: Any, key: str | None = None) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise KafkaConnectionError("down")
        self.sent.append(event.id)
        async with self._sent_one:
            self._sent_one.notify_all()

    async def wait_for(self, count: int) -> None:
        async with self._sent_one:
            await self._sent_one.wait_for(lambda: len(self.sent) >= count)


def relay(outbox: MemoryOutbox, events: Events) -> OutboxRelay:
    return OutboxRelay(
        outbox, events, replica_id="r", poll_interval=0.05, lease=timedelta(seconds=15), publish_timeout=1
    )


async def test_due_entries_are_published_in_order_and_marked() -> None:
    outbox, events = MemoryOutbox(3), Events()
    assert await relay(outbox, events).drain_once() == 3
    assert events.sent == outbox.published == ["e0", "e1", "e2"]


async def test_a_failure_puts_the_entry_and_the_rest_of_the_batch_back_with_backoff() -> None:
    outbox, events = MemoryOutbox(3), Events(fail_after=1)
    assert await relay(outbox, events).drain_once() == 1
    assert outbox.published == ["e0"]
    assert outbox.retries == {"e1": backoff(1), "e2": backoff(1)}


def test_backoff_doubles_up_to_ten_seconds() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 6, 20)] == [0.5, 1.0, 2.0, 10.0, 10.0]


async def test_the_running_relay_drains_at_start_and_when_woken() -> None:
    outbox, events = MemoryOutbox(2), Events()
    running = relay(outbox, events)
    running.start()
    try:
        async with asyncio.timeout(5):
            await events.wait_for(2)
        outbox.pending["late"] = OutboxEntry("late", "t", CloudEvent(id="late", source="/t", type="t"))
        running.wake()
        async with asyncio.timeout(5):
            await events.wait_for(3)
    finally:
        await running.stop()
    assert events.sent == ["e0", "e1", "late"]
