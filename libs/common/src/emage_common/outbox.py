"""The transactional outbox: events recorded with the state change they announce, published to Kafka at
least once.

A service writes an outbox entry in the transaction of its change, leased for a while to its own direct
publication (:class:`DirectPublication`: publish now, else leave it to the relay). The :class:`OutboxRelay`,
a task in each replica, publishes the entries whose direct publication did not happen (Kafka was down, the
replica died between commit and publish), so every acknowledged change is eventually announced. Entries
are leased before publication (:class:`MongoOutbox`), so replicas share the work without publishing an
entry twice at once; an entry whose publication fails is retried with exponential backoff. Consumers
deduplicate by event id, which stays the same however often the entry is published.

Only the mechanism lives here; each service chooses its collection, its topics and what its entries hold.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from aiokafka.errors import KafkaError
from bson import Binary
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from emage_common.events import CloudEvent

_logger = logging.getLogger(__name__)

OUTBOX: Final = "outbox"
"""The default name of the outbox collection."""

BATCH: Final = 100
"""The most entries the relay leases at once."""

_PENDING: Final = "pending"
_PUBLISHED: Final = "published"
# Published entries are kept a week for investigations, then MongoDB's TTL monitor removes them.
_PUBLISHED_RETENTION_S: Final = 7 * 24 * 3600
_FIRST_BACKOFF_S: Final = 0.5
_MAX_BACKOFF_S: Final = 10.0
# What a failed publication raises by default: Kafka refused, did not confirm in time, or was unreachable.
PUBLICATION_ERRORS: Final[tuple[type[Exception], ...]] = (KafkaError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event waiting to be published on ``topic`` (its bytes are the CloudEvent, structured JSON)."""

    event_id: str
    topic: str
    event: CloudEvent
    attempts: int = 0


class Entry(Protocol):
    """What the outbox needs of an entry (:class:`OutboxEntry`, or a service's own equivalent)."""

    @property
    def event_id(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def event(self) -> CloudEvent: ...

    @property
    def attempts(self) -> int: ...


E = TypeVar("E", bound=Entry)


class EventSink(Protocol):
    """Where events go (:class:`emage_common.kafka.EventPublisher`)."""

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None: ...


class OutboxMarks(Protocol):
    """Settling an outbox entry once a publication succeeded or failed."""

    async def mark_published(self, event_id: str, owner: str) -> None: ...

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None: ...


class LeasingOutbox(OutboxMarks, Protocol):
    """The outbox as the relay drains it (:class:`MongoOutbox`)."""

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> Sequence[Entry]: ...


def backoff(attempts: int) -> timedelta:
    """Delay before the next try of an entry that failed ``attempts`` times: 0.5 s doubling, at most 10 s."""
    return timedelta(seconds=min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** max(0, attempts - 1)))


# --- MongoDB ----------------------------------------------------------------------------------------------


def entry_document(entry: Entry, *, lease_owner: str, lease_until: datetime) -> dict[str, Any]:
    """The outbox document of a new ``entry``, leased to ``lease_owner`` (the direct publication) until
    ``lease_until``; insert it in the transaction of the change it announces."""
    return {
        "_id": entry.event_id,
        "topic": entry.topic,
        "key": entry.event.partitionkey,
        "event": Binary(entry.event.to_bytes()),
        "state": _PENDING,
        "created_at": datetime.now(UTC),
        "lease_owner": lease_owner,
        "lease_until": lease_until,
        "attempts": 0,
    }


class MongoOutbox(Generic[E]):
    """The outbox collection: entries wait there until Kafka has them.

    Any number of replicas may drain it: an entry is leased (owner and expiry) before it is published, so
    at most one replica publishes it at a time; a replica that dies mid-way lets its lease expire and
    another (or itself, restarted) publishes the entry. Leased entries are made by ``make_entry`` (event
    id, topic, event, attempts), so a service gets its own entry type back.
    """

    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        make_entry: Callable[[str, str, CloudEvent, int], E],
        collection: str = OUTBOX,
    ) -> None:
        self._entries = database[collection]
        self._make_entry = make_entry

    async def ensure_indexes(self) -> None:
        await self._entries.create_index(
            [("state", ASCENDING), ("lease_until", ASCENDING), ("created_at", ASCENDING)], name="due"
        )
        await self._entries.create_index(
            "published_at", expireAfterSeconds=_PUBLISHED_RETENTION_S, name="published_retention"
        )

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> builtins.list[E]:
        """Lease up to ``limit`` pending entries whose lease expired, oldest first."""
        entries: builtins.list[E] = []
        for _ in range(limit):
            now = datetime.now(UTC)
            document = await self._entries.find_one_and_update(
                {"state": _PENDING, "lease_until": {"$lte": now}},
                {"$set": {"lease_owner": owner, "lease_until": now + lease}, "$inc": {"attempts": 1}},
                sort=[("created_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                break
            entries.append(
                self._make_entry(
                    document["_id"],
                    document["topic"],
                    CloudEvent.from_bytes(bytes(document["event"])),
                    int(document["attempts"]),
                )
            )
        return entries

    async def mark_published(self, event_id: str, owner: str) -> None:
        """Kafka has the event: the entry is done."""
        await self._entries.update_one(
            {"_id": event_id, "lease_owner": owner, "state": _PENDING},
            {"$set": {"state": _PUBLISHED, "published_at": datetime.now(UTC)}, "$unset": {"lease_until": ""}},
        )

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None:
        """Publication failed: let any replica lease the entry again after ``delay``."""
        await self._entries.update_one(
            {"_id": event_id, "lease_owner": owner, "state": _PENDING},
            {"$set": {"lease_until": datetime.now(UTC) + delay}},
        )


# --- Publication ------------------------------------------------------------------------------------------


class OutboxRelay:
    """Drains the outbox into Kafka until stopped; :meth:`wake` makes it look at once.

    It drains at once on start: entries a stopped replica left behind go out as soon as any replica runs.
    A service may subclass it to name its task and its logger.
    """

    task_name: ClassVar[str] = "outbox-relay"
    logger: ClassVar[logging.Logger] = _logger

    def __init__(
        self,
        outbox: LeasingOutbox,
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
        self._task = asyncio.create_task(self._run(), name=self.task_name)

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
        entries = await self._outbox.lease_due(self._owner, self._lease, BATCH)
        published = 0
        for position, entry in enumerate(entries):
            try:
                async with asyncio.timeout(self._publish_timeout):
                    await self._events.publish(entry.topic, entry.event)
            except PUBLICATION_ERRORS:
                self.logger.warning(
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
                self.logger.warning("outbox relay: MongoDB unavailable", exc_info=True)
                published = 0
            except Exception:
                self.logger.exception("outbox relay: unexpected failure")
                published = 0
            if published >= BATCH:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wakeup.wait()


class DirectPublication:
    """A service's own publication of the events it just committed with their outbox entries.

    :meth:`publish` publishes at once; if Kafka does not confirm in time, the entry is handed to the relay.
    Either way the change is durable and announced or about to be, so the bookkeeping of the outbox entry
    happens after the answer, in the background (:meth:`settle_pending` awaits it). The entries are leased
    to :attr:`publisher_id` when written, so the relay leaves them alone meanwhile.
    """

    def __init__(
        self,
        events: EventSink,
        outbox: OutboxMarks,
        *,
        replica_id: str,
        publish_timeout: float,
        wake_relay: Callable[[], None],
        failures: tuple[type[Exception], ...] = PUBLICATION_ERRORS,
        log_prefix: str = "",
        logger: logging.Logger = _logger,
    ) -> None:
        self._events = events
        self._outbox = outbox
        self.publisher_id: Final = f"{replica_id}/direct"
        self._publish_timeout = publish_timeout
        self._wake_relay = wake_relay
        self._failures = failures
        self._prefix = log_prefix
        self._logger = logger
        self._settling: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, event: CloudEvent) -> None:
        """Publish ``event`` on ``topic`` now, else leave its outbox entry to the relay; never raises for
        a failure in ``failures``."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._events.publish(topic, event)
        except self._failures:
            self._logger.warning(
                f"{self._prefix}Kafka did not take the event; the outbox relay will publish it", exc_info=True
            )
            self._in_background(self._hand_to_relay(event.id))
            return
        self._in_background(self._settle(event.id))

    async def settle_pending(self) -> None:
        """Wait for the outbox bookkeeping of the publications made so far (at shutdown)."""
        while self._settling:
            await asyncio.gather(*self._settling)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, event_id: str) -> None:
        try:
            await self._outbox.mark_published(event_id, self.publisher_id)
        except PyMongoError:
            # Harmless: the relay publishes the entry again when its lease ends, under the same event id.
            self._logger.warning(
                f"{self._prefix}published, but the outbox entry could not be settled", exc_info=True
            )

    async def _hand_to_relay(self, event_id: str) -> None:
        try:
            await self._outbox.retry_after(event_id, self.publisher_id, timedelta(0))
        except PyMongoError:
            self._logger.warning(
                f"{self._prefix}the outbox entry stays leased until its lease expires", exc_info=True
            )
        self._wake_relay()
