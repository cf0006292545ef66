"""The catalog's use cases: record a stored instance, search (QIDO-RS), read metadata (WADO-RS), announce.

Entrypoints (HTTP routes, the Kafka handler) call one function here each; the rules are in ``domain`` and
the storage behind :class:`CatalogStore`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from emage_catalog.domain.care import (
    REFERRER_FIELD,
    CareAttributes,
    OrderedCare,
    StudyOwner,
    with_ordered_care,
)
from emage_catalog.domain.dicom import DicomJson
from emage_catalog.domain.levels import QueryLevel
from emage_catalog.domain.matching import QUERY_KEYS
from emage_catalog.domain.model import (
    CatalogConflictError,
    CatalogEntry,
    IndexFields,
    InstancePlacement,
    SeriesState,
    SeriesSummary,
    SeriesTotals,
    StudySnapshot,
    StudyState,
    accession_number_of,
    catalog_entry,
    check_consistency,
    index_fields,
    series_dataset,
    study_care,
    study_changed,
    study_dataset,
)
from emage_catalog.domain.query import SearchQuery
from emage_catalog.domain.results import Hit, ResultShape, resolve_bulk_data, result_dataset, result_shape
from emage_common.access_contract import StudyAccessAttributes
from emage_common.events import STUDY_CHANGED_TOPIC, Acquisition, CloudEvent, InstanceStored, make_event

logger = logging.getLogger(__name__)

EVENT_SOURCE: Final = "/emage/catalog"


class CatalogStore(Protocol):
    """Where the catalog keeps its study, series and instance documents."""

    async def states(
        self, entry: CatalogEntry
    ) -> tuple[StudyState | None, SeriesState | None, InstancePlacement | None]: ...

    async def put_instance(self, entry: CatalogEntry, index: IndexFields, *, stored_at: datetime) -> None: ...

    async def series_totals(self, series_instance_uid: str) -> SeriesTotals: ...

    async def put_series(
        self,
        entry: CatalogEntry,
        dataset: Mapping[str, Any],
        index: IndexFields,
        totals: SeriesTotals,
        *,
        previous: IndexFields | None,
    ) -> None: ...

    async def series_summaries(self, study_instance_uid: str) -> list[SeriesSummary]: ...

    async def put_study(
        self,
        entry: CatalogEntry,
        dataset: Mapping[str, Any],
        index: IndexFields,
        *,
        previous: StudyState | None,
        revision: int,
        announcement_pending: bool,
    ) -> None: ...

    async def copy_study_keys(
        self, entry: CatalogEntry, index: IndexFields, previous: IndexFields | None, *, whole_study: bool
    ) -> None: ...

    async def copy_series_keys(
        self, entry: CatalogEntry, index: IndexFields, previous: IndexFields | None, *, whole_series: bool
    ) -> None: ...

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

    async def ordered_care(
        self, study_instance_uid: str, facility_finess: str, accession_number: str | None
    ) -> OrderedCare | None: ...

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


def _previous_referrer(study: StudyState | None) -> str | None:
    referrer = None if study is None else study.index.get(REFERRER_FIELD)
    return referrer if isinstance(referrer, str) else None


def _keys_of(index: IndexFields, level: QueryLevel) -> IndexFields:
    own = {key.attribute.keyword for key in QUERY_KEYS.values() if key.level is level}
    return {name: value for name, value in index.items() if name in own}


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
        """Catalog a stored instance; its series and study are re-derived from what the catalog holds.

        ``revision`` orders the events of a study (the position of this event in its partition, where every
        event of the study is, plus one). Applying an event again, or an older one, changes nothing and
        announces nothing; a study whose revision rises is announced on ``emage.study.changed.v1``.
        Raises :class:`~emage_catalog.domain.model.CatalogConflictError` for an event that contradicts the
        catalog (another facility's study, a UID already filed elsewhere); nothing is written then.
        """
        entry = catalog_entry(stored)
        study, series, instance = await self._store.states(entry)
        check_consistency(entry, study=study, series=series, instance=instance)
        ordered = await self._ordered_care_of(entry)

        # The instance first, with the higher-level keys known so far, so that it counts in the totals below.
        inherited = series.index if series is not None else study.index if study is not None else {}
        instance_index = {**inherited, **index_fields(entry.instance, QueryLevel.INSTANCE)}
        await self._store.put_instance(entry, instance_index, stored_at=stored.stored_at)

        totals = await self._store.series_totals(entry.series_instance_uid)
        series_attributes = series_dataset(entry.series_attributes, totals)
        series_index = index_fields(series_attributes, QueryLevel.SERIES)
        previous_series_index = None if series is None else _keys_of(series.index, QueryLevel.SERIES)
        await self._store.put_series(
            entry, series_attributes, series_index, totals, previous=previous_series_index
        )

        summaries = await self._store.series_summaries(entry.study_instance_uid)
        study_attributes = study_dataset(entry.study_attributes, summaries)
        # The care attributes go with the study's keys, and are copied below it with them.
        study_index = {
            **index_fields(study_attributes, QueryLevel.STUDY),
            **study_care(entry, summaries, ordered, previous_referrer=_previous_referrer(study)).fields(),
        }
        next_revision = max(revision, 0 if study is None else study.revision)
        pending = study is None or next_revision > study.revision or study.announcement_pending
        await self._store.put_study(
            entry,
            study_attributes,
            study_index,
            previous=study,
            revision=next_revision,
            announcement_pending=pending,
        )

        # The copies of the study's and series' keys below them, rewritten wholesale only when they changed.
        previous_study_index = None if study is None else study.index
        await self._store.copy_study_keys(
            entry,
            study_index,
            previous_study_index,
            whole_study=previous_study_index is not None and previous_study_index != study_index,
        )
        await self._store.copy_series_keys(
            entry,
            series_index,
            previous_series_index,
            whole_series=previous_series_index is not None and previous_series_index != series_index,
        )
        if pending:
            self._on_study_changed()

        # The order may have been announced while this instance was being recorded, its relationships then
        # overwritten above: the order store is read again after writing, so that one of the two consumers
        # always sees the other's write (each writes before it reads), and applies the order.
        latest = await self._ordered_care_of(entry)
        if latest is not None and (ordered is None or latest.event_id != ordered.event_id):
            await self._apply_order(entry.study_instance_uid, latest, superseded=ordered)

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

    async def _ordered_care_of(self, entry: CatalogEntry) -> OrderedCare | None:
        if self._orders is None:
            return None
        ordered = await self._orders.ordered_care(
            entry.study_instance_uid, entry.facility_finess, accession_number_of(entry)
        )
        if ordered is not None and not ordered.concerns(entry.facility_finess, entry.patient):
            logger.warning(
                "order %s does not concern study %s (another facility or patient); not applied",
                ordered.order_key,
                entry.study_instance_uid,
            )
            return None
        return ordered

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
