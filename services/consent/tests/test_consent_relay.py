"""Consent's outbox relay is the shared one (:mod:`emage_common.outbox`, tested there) under its own task
and logger names, draining consent's outbox entries (:class:`emage_consent.ports.OutboxEntry`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from emage_common import outbox
from emage_common.events import CloudEvent
from emage_consent.ports import OutboxEntry
from emage_consent.relay import OutboxRelay, backoff


class LateEntryOutbox:
    def __init__(self) -> None:
        self.pending = [
            OutboxEntry("e0", "emage.consent.changed.v1", CloudEvent(id="e0", source="/t", type="t"))
        ]
        self.published: list[tuple[str, str]] = []
        self.settled = asyncio.Event()

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> list[OutboxEntry]:
        due, self.pending = self.pending, []
        return due

    async def mark_published(self, event_id: str, owner: str) -> None:
        self.published.append((event_id, owner))
        self.settled.set()

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None:
        raise AssertionError("no failure expected")


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def publish(self, topic: str, event: Any, key: str | None = None) -> None:
        self.sent.append((topic, event.id))


async def test_the_consent_relay_drains_consent_entries_at_start_under_its_names() -> None:
    entries, events = LateEntryOutbox(), Events()
    relay = OutboxRelay(
        entries, events, replica_id="r", poll_interval=30, lease=timedelta(seconds=15), publish_timeout=1
    )
    assert isinstance(relay, outbox.OutboxRelay)
    assert (relay.task_name, relay.logger.name) == ("consent-outbox-relay", "emage_consent.relay")
    relay.start()
    try:
        async with asyncio.timeout(5):
            await entries.settled.wait()
    finally:
        await relay.stop()
    assert events.sent == [("emage.consent.changed.v1", "e0")]
    assert entries.published == [("e0", "r/relay")]
    assert backoff is outbox.backoff
