"""The catalog's use cases: record a stored instance, search (QIDO-RS), read metadata (WADO-RS), announce.

Entrypoints (HTTP routes, the Kafka handler) call one function here each; the rules are in ``domain`` and
the storage behind :class:`CatalogStore`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from emage_catalog.domain.care import (
    CareAttributes,
    OrderedCare,
    OrderLookup,
    StudyOwner,
    with_ordered_care,
)
from emage_catalog.domain.dicom import DicomJson
from emage_catalog.domain.filing import Filing, HeldState, StoredInstance, file_instances
from emage_catalog.domain.model import (
    CatalogConflictError,
    StudySnapshot,
    accession_number_of,
    catalog_entry,
    study_changed,
)
from emage_catalog.domain.query import SearchQuery
from emage_catalog.domain.results import Hit, ResultShape, resolve_bulk_data, result_dataset, result_shape
from emage_common.access_contract import StudyAccessAttributes
from emage_common.events import STUDY_CHANGED_TOPIC, Acquisition, CloudEvent, InstanceStored, make_event

logger = logging.getLogger(__name__)

EVENT_SOURCE: Final = "/emage/catalog"


class CatalogStore(Protocol):
    """Where the catalog keeps its study, series and instance documents."""

    async def file(self, instances: Sequence[StoredInstance], plan: Callable[[HeldState], Filing]) -> Filing:
        """Read what the catalog holds of ``instances``, and write the :class:`Filing` ``plan`` makes of it,
        atomically (``plan`` may run more than once, on a fresh read each time); return what was written."""
        ...

    async def pending_announcements(self, limit: int) -> list[StudySnapshot]: ...

    async def mark_announced(self, study_instance_uid: str, revision: int) -> None: ...

    async def search(self, query: SearchQuery, shape: ResultShape) -> tuple[int, list[Hit]]: ...

    async def care_attributes(self, study_instance_uid: str) -> CareAttributes | None: ...

    def metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> AsyncIterator[Mapping[str, Any]]: ...


class OrderStore(Protocol):
    """The orders facilities announced (``emage.acquisition.v1``) and their care relationships applied to
    studies (:class:`~emage_catalog.adapters.orders.MongoOrderStore`)."""

    async def record_order(self, ordered: OrderedCare) -> tuple[OrderedCare, OrderedCare | None]: ...

    async def ordered_care(self, lookups: Collection[OrderLookup]) -> Mapping[OrderLookup, OrderedCare]: ...

    async def studies_of_order(self, ordered: OrderedCare) -> list[StudyOwner]: ...

    async def absorb_ordered_care(self, study_instance_uid: str, ordered: OrderedCare) -> None: ...

    async def dicom_care(self, study_instance_uid: str) -> CareAttributes | None: ...

    async def replace_care(self, study_instance_uid: str, care: CareAttributes) -> None: ...


class EventSink(Protocol):
    """Where ``study.changed`` events go (:class:`emage_common.kafka.EventPublisher`)."""

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of QIDO-RS results and the number of matches on all pages."""

    total: int
    results: list[DicomJson]

    def remaining_after(self, offset: int) -> int:
        """How many matches come after this page."""
        return max(0, self.total - offset - len(self.results))


class CatalogService:
    """Records stored instances and answers searches and metadata requests."""

    def __init__(
        self,
        store: CatalogStore,
        *,
        on_study_changed: Callable[[], None],
        orders: OrderStore | None = None,
    ) -> None:
        self._store = store
        self._on_study_changed = on_study_changed
        self._orders = orders

    async def record_instance(self, stored: InstanceStored, *, revision: int) -> None:
        """Catalog one stored instance (:meth:`record_instances` of one event)."""
        await self.record_instances([(stored, revision)])

    async def record_instances(self, events: Sequence[tuple[InstanceStored, int]]) -> None:
        """Catalog stored instances, in order, in one transaction; their series and studies follow.

        Each event comes with its study's revision: the position of the event in its partition, where every
        event of the study is, plus one. Applying an event again, or an older one, changes nothing and
        announces nothing; a study whose revision rises is announced on ``emage.study.changed.v1``.
        Raises :class:`~emage_catalog.domain.model.CatalogConflictError` for an event that contradicts the
        catalog (another facility's study, a UID already filed elsewhere); nothing is written then, not even
        the other events'.
        """
        instances = [
            StoredInstance(catalog_entry(stored), revision, stored.stored_at) for stored, revision in events
        ]
        ordered = await self._ordered_care_of(instances)
        filing = await self._store.file(instances, lambda held: file_instances(instances, held, ordered))
        if filing.announces:
            self._on_study_changed()

        # The order may have been announced while these instances were being recorded, its relationships then
        # overwritten above: the order store is read again after writing, so that one of the two consumers
        # always sees the other's write (each writes before it reads), and applies the order.
        latest = await self._ordered_care_of(instances)
        applied: set[tuple[str, str]] = set()
        for instance, before, after in zip(instances, ordered, latest, strict=True):
            study_instance_uid = instance.entry.study_instance_uid
            if after is None or (before is not None and after.event_id == before.event_id):
                continue
            if (study_instance_uid, after.event_id) not in applied:
                applied.add((study_instance_uid, after.event_id))
                await self._apply_order(study_instance_uid, after, superseded=before)

    async def record_acquisition(
        self, acquisition: Acquisition, *, event_id: str, announced_at: datetime
    ) -> None:
        """Record the care relationships an acquisition event announces, and merge them into its study.

        The order's latest announcement is kept (:meth:`OrderStore.record_order`) and applied to the study
        if it is catalogued already; otherwise :meth:`record_instance` merges it when the study arrives.
        Applying an announcement again, or an older one, changes nothing. Raises
        :class:`~emage_catalog.domain.model.CatalogConflictError` when the study the event names belongs to
        another facility or patient: no relationship is granted on it.
        """
        if self._orders is None:
            return
        announced = OrderedCare.of(acquisition, event_id=event_id, announced_at=announced_at)
        current, superseded = await self._orders.record_order(announced)
        refused = []
        for owner in await self._orders.studies_of_order(current):
            if not current.concerns(owner.facility_finess, owner.patient):
                refused.append(owner.study_instance_uid)
                continue
            await self._apply_order(owner.study_instance_uid, current, superseded=superseded)
        if refused:
            raise CatalogConflictError(
                f"order {current.order_key} of patient {current.patient_id!r} names study "
                f"{', '.join(refused)}, which is another facility's or another patient's"
            )

    async def _ordered_care_of(self, instances: Sequence[StoredInstance]) -> list[OrderedCare | None]:
        """What the order of each instance's study announced, when it concerns the study (one look-up)."""
        if self._orders is None:
            return [None] * len(instances)
        lookups = [
            OrderLookup(
                instance.entry.study_instance_uid,
                instance.entry.facility_finess,
                accession_number_of(instance.entry),
            )
            for instance in instances
        ]
        found = await self._orders.ordered_care(set(lookups))
        applicable: list[OrderedCare | None] = []
        refused: set[tuple[str, str]] = set()
        for instance, lookup in zip(instances, lookups, strict=True):
            ordered = found.get(lookup)
            entry = instance.entry
            if ordered is not None and not ordered.concerns(entry.facility_finess, entry.patient):
                if (ordered.order_key, entry.study_instance_uid) not in refused:
                    refused.add((ordered.order_key, entry.study_instance_uid))
                    logger.warning(
                        "order %s does not concern study %s (another facility or patient); not applied",
                        ordered.order_key,
                        entry.study_instance_uid,
                    )
                ordered = None
            applicable.append(ordered)
        return applicable

    async def _apply_order(
        self, study_instance_uid: str, ordered: OrderedCare, *, superseded: OrderedCare | None
    ) -> None:
        """Merge ``ordered``'s relationships into the study's care attributes, at every level.

        Adding is an update independent of what the documents hold, so it commutes with concurrent
        writes of the study. A corrected order that withdraws a relationship recomputes the study's care
        from its headers and the order instead.
        """
        assert self._orders is not None
        if not ordered.withdraws_from(superseded):
            await self._orders.absorb_ordered_care(study_instance_uid, ordered)
            return
        headers = await self._orders.dicom_care(study_instance_uid)
        if headers is not None:
            await self._orders.replace_care(study_instance_uid, with_ordered_care(headers, ordered))

    async def search(self, query: SearchQuery, base_url: str) -> SearchPage:
        """QIDO-RS: the page of results ``query`` asks for and the total number of matches.

        Within its scope, if it has one: a scope permitting nothing is an empty page, found without a query.
        """
        if query.permits_nothing:
            return SearchPage(0, [])
        shape = result_shape(query)
        total, hits = await self._store.search(query, shape)
        return SearchPage(total, [result_dataset(shape, hit, base_url) for hit in hits])

    async def access_attributes(self, study_instance_uid: str) -> StudyAccessAttributes | None:
        """What the access policy needs to know about a study; None when it is not catalogued."""
        care = await self._store.care_attributes(study_instance_uid)
        if care is None:
            return None
        return StudyAccessAttributes(
            study_instance_uid=study_instance_uid,
            facility_finess=care.facility_finess,
            patient_key=care.patient_key,
            referring_physician_rpps=care.referring_physician_rpps,
            performing_technician_rpps=care.performing_technician_rpps,
        )

    async def metadata(
        self,
        base_url: str,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> AsyncGenerator[DicomJson]:
        """WADO-RS metadata (PS3.18 §10.4.1.1.2): the instances' datasets, BulkDataURIs made absolute."""
        async for dataset in self._store.metadata(study_instance_uid, series_instance_uid, sop_instance_uid):
            yield resolve_bulk_data(dataset, base_url)


class StudyAnnouncer:
    """Publishes ``study.changed`` for the studies the catalog marked as changed, at least once each.

    The mark is written with the study itself, so a change is announced even if the catalog stops between
    the two; one announcement covers every change made before it was read (a series of 200 instances makes
    a handful of announcements, not 200). Announcements carry the study's revision, so a consumer ignores a
    repeated or stale one.
    """

    BATCH: Final = 100

    def __init__(self, store: CatalogStore, sink: EventSink, *, debounce_seconds: float) -> None:
        self._store = store
        self._sink = sink
        self._debounce_seconds = debounce_seconds
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """Say that a study changed (called by the service after writing the mark)."""
        self._changed.set()

    async def announce_pending(self) -> int:
        """Announce up to :attr:`BATCH` marked studies; return how many were announced."""
        snapshots = await self._store.pending_announcements(self.BATCH)
        for snapshot in snapshots:
            event = make_event(study_changed(snapshot, changed_at=datetime.now(UTC)), EVENT_SOURCE)
            await self._sink.publish(STUDY_CHANGED_TOPIC, event)
            await self._store.mark_announced(snapshot.study_instance_uid, snapshot.revision)
        return len(snapshots)

    async def run(self, *, idle_seconds: float = 5.0, retry_seconds: float = 1.0) -> None:
        """Announce until cancelled: on each change, and every ``idle_seconds`` for marks left by a crash."""
        while True:
            self._changed.clear()
            try:
                announced = await self.announce_pending()
            except Exception:
                logger.exception("announcing study changes failed; retrying in %.1f s", retry_seconds)
                await asyncio.sleep(retry_seconds)
                continue
            if announced == self.BATCH:
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=idle_seconds)
            except TimeoutError:
                continue
            await asyncio.sleep(self._debounce_seconds)
