"""The gateway's consent view, kept from ``emage.consent.changed.v1`` without any call on the request path.

Every gateway process reads the whole topic from its beginning (retention is infinite: consents are the
record of the patient's will) into an :class:`~emage_access.domain.consent_view.InMemoryConsentView`, then
follows it. No consumer group: each replica needs every change, and the view is rebuilt at each start, so
there is nothing to commit. The process is ready only once it has caught up with the end offsets it saw at
start — before that it would decide with a stale view, which could let a revoked consent through.

A record that is not a valid ``consent.changed`` event is logged and skipped: the consent service validated
what it published, and a poison record must not stop revocations behind it from taking effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from emage_access.domain.consent_view import InMemoryConsentView
from emage_common.events import CONSENT_CHANGED_TOPIC, CloudEvent, ConsentChanged, EventDecodingError
from emage_common.kafka import KafkaClientConfig

_log = logging.getLogger(__name__)

_POLL_TIMEOUT_MS: Final = 200
_RETRY_SECONDS: Final = 1.0


class ConsentFollower:
    """Feeds a consent view from the topic, from the beginning; ``caught_up`` once the backlog is applied."""

    def __init__(
        self,
        config: KafkaClientConfig,
        view: InMemoryConsentView,
        *,
        topic: str = CONSENT_CHANGED_TOPIC,
    ) -> None:
        self._config = config
        self._view = view
        self._topic = topic
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.applied = 0

    @property
    def caught_up(self) -> bool:
        """Whether every change published before the follower started has been applied."""
        return self._caught_up.is_set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consent-follower")

    async def wait_caught_up(self) -> bool:
        """Wait until caught up or the follower died (callers bound the wait); whether it is caught up."""
        waiter = asyncio.create_task(self._caught_up.wait())
        try:
            await asyncio.wait(
                [waiter, *([self._task] if self._task else [])], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        return self.caught_up

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except KafkaError as error:
                _log.warning("consent view: Kafka error, reconnecting: %s", error)
                await asyncio.sleep(_RETRY_SECONDS)

    async def _follow(self) -> None:
        # Without a group, the consumer is assigned every partition of the topic and, with no committed
        # offset to resume from, starts at the earliest one.
        consumer = AIOKafkaConsumer(
            self._topic,
            **self._config,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await self._assignment(consumer)
            targets = await consumer.end_offsets(partitions) if not self.caught_up else {}
            await self._check_caught_up(consumer, targets)
            while True:
                batches = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                for records in batches.values():
                    for record in records:
                        self._apply(record.value)
                if not self.caught_up:
                    await self._check_caught_up(consumer, targets)
        finally:
            await consumer.stop()

    async def _assignment(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        waited = 0.0
        while not consumer.assignment():
            if waited >= 5.0:
                _log.warning("consent view: no partition of %s assigned yet", self._topic)
                waited = 0.0
            await asyncio.sleep(0.1)
            waited += 0.1
        return sorted(consumer.assignment())

    async def _check_caught_up(self, consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> None:
        for tp, end in targets.items():
            if await consumer.position(tp) < end:
                return
        self._caught_up.set()

    def _apply(self, value: bytes | None) -> None:
        try:
            if value is None:
                raise EventDecodingError("empty record")
            change = CloudEvent.from_bytes(value).data_as(ConsentChanged)
        except (EventDecodingError, ValueError) as error:
            _log.error("consent view: skipped an invalid consent.changed record: %s", error)
            return
        if self._view.apply(change):
            self.applied += 1
