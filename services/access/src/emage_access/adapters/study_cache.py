"""A short-lived cache of study access attributes in front of the catalog.

A viewer opening a study sends one request per frame: a 100-slice CT is a hundred decisions within a few
seconds, each of which would ask the catalog the same question. The answer is kept for a short time (one
second by default), so a burst of frame requests costs one catalog call, while a change of the study's
attributes (a corrected order, a new series by another technician) still reaches decisions within that time —
the same order as the consent view's propagation.

Only studies the catalog knows are kept: "unknown" is asked again every time, so a study stored a moment ago
is reachable at once. Concurrent requests for the same study share one catalog call; an error is not kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from emage_access.domain.policy import StudyAttributes
from emage_access.ports import StudyDirectory

DEFAULT_MAX_ENTRIES: Final = 10_000


class CachedStudyDirectory:
    """A :class:`~emage_access.ports.StudyDirectory` that keeps known studies' attributes ``ttl`` seconds."""

    def __init__(
        self,
        directory: StudyDirectory,
        *,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StudyAttributes]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[StudyAttributes | None]] = {}

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        """See :meth:`~emage_access.ports.StudyDirectory.attributes`."""
        if self._ttl <= 0:
            return await self._directory.attributes(study_instance_uid)
        cached = self._entries.get(study_instance_uid)
        if cached is not None:
            expires_at, attributes = cached
            if self._clock() < expires_at:
                return attributes
            del self._entries[study_instance_uid]
        fetch = self._in_flight.get(study_instance_uid)
        if fetch is None:
            fetch = asyncio.create_task(self._fetch(study_instance_uid))
            self._in_flight[study_instance_uid] = fetch
            fetch.add_done_callback(lambda _: self._in_flight.pop(study_instance_uid, None))
        # Shielded: a client that goes away does not cancel the answer the others wait for.
        return await asyncio.shield(fetch)

    async def _fetch(self, study_instance_uid: str) -> StudyAttributes | None:
        asked_at = self._clock()
        attributes = await self._directory.attributes(study_instance_uid)
        if attributes is not None:
            # Counted from the question, not the answer: a slow answer is no fresher than when it was asked.
            self._entries[study_instance_uid] = (asked_at + self._ttl, attributes)
            self._entries.move_to_end(study_instance_uid)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return attributes
