"""The outbox relay: publishes the events whose direct publication did not happen (Kafka was down, the
replica died between commit and publish), so every acknowledged consent change is eventually announced.

Runs as a task in each consent replica's lifespan, and drains at once on start: events a stopped replica
left behind go out as soon as any replica runs. Entries are leased before publication
(:class:`~emage_consent.adapters.mongo.MongoOutbox`), so replicas share the work without publishing an entry
twice at once; an entry whose publication fails is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Final

from aiokafka.errors import KafkaError
from pymongo.errors import PyMongoError

from emage_consent.ports import EventSink, Outbox

logger = logging.getLogger(__name__)

_BATCH: Final = 100
_FIRST_BACKOFF_S: Final = 0.5
_MAX_BACKOFF_S: Final = 10.0


def backoff(attempts: int) -> timedelta:
    """Delay before the next try of an entry that failed ``attempts`` times: 0.5 s doubling, at most 10 s."""
    return timedelta(seconds=min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** max(0, attempts - 1)))


class OutboxRelay:
    """Drains the outbox into Kafka until stopped; :meth:`wake` makes it look at once."""

    def __init__(
        self,
        outbox: Outbox,
        events: EventSink,
        *,
        replica_id: str,
        poll_interval: float,
        lease: timedelta,
        publish_timeout: float,
    ) -> None:
        self._outbox = outbox
        self._events = events
        self._owner = f"{replica_id}/relay"
        self._poll_interval = poll_interval
        self._lease = lease
        self._publish_timeout = publish_timeout
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consent-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def drain_once(self) -> int:
        """Lease the due entries and publish them in order; the number published.

        Stops at the first failure (Kafka is likely down): that entry and the rest of the batch are put
        back with a backoff delay.
        """
        entries = await self._outbox.lease_due(self._owner, self._lease, _BATCH)
        published = 0
        for position, entry in enumerate(entries):
            try:
                async with asyncio.timeout(self._publish_timeout):
                    await self._events.publish(entry.topic, entry.event)
            except (KafkaError, TimeoutError, OSError):
                logger.warning(
                    "outbox relay: publication failed, will retry",
                    extra={"event_id": entry.event_id, "attempts": entry.attempts},
                )
                for pending in entries[position:]:
                    await self._outbox.retry_after(pending.event_id, self._owner, backoff(pending.attempts))
                return published
            await self._outbox.mark_published(entry.event_id, self._owner)
            published += 1
        return published

    async def _run(self) -> None:
        while True:
            try:
                published = await self.drain_once()
            except PyMongoError:
                logger.warning("outbox relay: MongoDB unavailable", exc_info=True)
                published = 0
            except Exception:
                logger.exception("outbox relay: unexpected failure")
                published = 0
            if published >= _BATCH:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wakeup.wait()
