"""Pulling the study an acquisition event announces from its facility's PACS (one attempt per call).

:meth:`StudyPuller.pull` resolves the event's source against the settings (never connecting anywhere the
settings do not configure for the event's facility), finds the study there (QIDO-RS or C-FIND), lists its
instances, retrieves those the archive does not hold yet (WADO-RS, C-GET or C-MOVE) and returns only once
every instance of the study is archived. Each retrieved instance goes through
:meth:`~emage_ingest.service.IngestService.store_instance`, like a STOW-RS or C-STORE one: same validation,
encryption, index, outbox and ``instance.stored`` event, same duplicate handling, for the event's facility.

An attempt that fails part way leaves what it stored stored; the next attempt lists the study again and
retrieves only what is still missing, so a study is never stored, nor announced, twice. Transient failures
raise :class:`~emage_ingest.domain.sources.SourceUnavailableError` (the consumer retries with backoff);
failures no retry can fix raise :class:`~emage_ingest.domain.sources.PullRejectedError` (dead-lettered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import Counter

from emage_common.events import Acquisition
from emage_ingest.domain.model import ArchivedInstance
from emage_ingest.domain.sources import (
    FacilitySources,
    PullRejectedError,
    RejectionReason,
    ResolvedSource,
    SourceInstance,
    SourceStudy,
    SourceUnavailableError,
    resolve_source,
    the_study,
)
from emage_ingest.domain.status import FailureReason
from emage_ingest.service import StoreOutcome, StoreRequest

logger = logging.getLogger(__name__)

PULLED_INSTANCES = Counter(
    "emage_pull_instances", "Instances retrieved from source PACS, by store status.", ["status"]
)
PULLS = Counter("emage_pulls", "Pull attempts of announced studies, by result.", ["result"])

_MAX_LISTED_FAILURES: Final = 5

StoreCallback = Callable[[Path], Coroutine[Any, Any, StoreOutcome]]
"""Stores one retrieved Part 10 file (which the caller deletes afterwards) and says how it went."""


class StudySource(Protocol):
    """A source PACS, reached through one of its query/retrieve services."""

    async def find_studies(self, acquisition: Acquisition) -> list[SourceStudy]:
        """The studies matching the event: its Study Instance UID, else its accession number and patient."""
        ...

    async def list_instances(self, study_instance_uid: str) -> list[SourceInstance]:
        """Every instance of the study the source holds."""
        ...

    async def retrieve(
        self,
        study_instance_uid: str,
        instances: Sequence[SourceInstance] | None,
        store: StoreCallback,
    ) -> None:
        """Retrieve ``instances`` of the study (``None``: the whole study), each handed to ``store``.

        Raises :class:`SourceUnavailableError` when the source cannot be reached or stops answering; what was
        stored before stays stored.
        """
        ...


SourceOpener = Callable[[ResolvedSource], AbstractAsyncContextManager[StudySource]]
"""Opens a client of a resolved source (HTTP client, or the means to open DIMSE associations)."""


class InstanceStore(Protocol):
    """The store use case (:class:`~emage_ingest.service.IngestService`)."""

    async def store_instance(self, part10_path: Path, request: StoreRequest) -> StoreOutcome: ...


class ArchivedInstances(Protocol):
    """The instances of a study in the archive (:class:`~emage_ingest.adapters.repository.InstanceIndex`)."""

    async def list(self, study_uid: str, series_uid: str | None = None) -> list[ArchivedInstance]: ...


@dataclass(frozen=True, slots=True)
class PullReport:
    """What one successful pull did."""

    study_instance_uid: str
    instances: int
    """Instances of the study at the source, all archived now."""
    retrieved: int
    """Instances retrieved by this attempt (the others were archived already)."""


@dataclass
class _Outcomes:
    """The outcomes of the instances stored during one attempt."""

    stored: int = 0
    unavailable: list[StoreOutcome] = field(default_factory=list)
    rejected: list[StoreOutcome] = field(default_factory=list)

    def record(self, outcome: StoreOutcome) -> None:
        PULLED_INSTANCES.labels(outcome.status).inc()
        if outcome.succeeded:
            self.stored += 1
        elif outcome.failure_reason == FailureReason.OUT_OF_RESOURCES:
            self.unavailable.append(outcome)
        else:
            self.rejected.append(outcome)


def _describe(outcomes: Sequence[StoreOutcome]) -> str:
    shown = "; ".join(
        f"{outcome.sop_instance_uid or '?'}: {outcome.detail}" for outcome in outcomes[:_MAX_LISTED_FAILURES]
    )
    more = len(outcomes) - _MAX_LISTED_FAILURES
    return shown + (f"; and {more} more" if more > 0 else "")


class StudyPuller:
    """Pulls announced studies from the configured sources into the archive."""

    def __init__(
        self,
        *,
        store: InstanceStore,
        archived: ArchivedInstances,
        open_source: SourceOpener,
        sources: Mapping[str, FacilitySources],
        ae_title_facilities: Mapping[str, str],
        attempt_timeout_s: float,
    ) -> None:
        self._store = store
        self._archived = archived
        self._open_source = open_source
        self._sources = sources
        self._ae_title_facilities = ae_title_facilities
        self._attempt_timeout_s = attempt_timeout_s

    async def pull(self, acquisition: Acquisition) -> PullReport:
        """One attempt at archiving the whole study of ``acquisition``; returns once all of it is archived.

        Raises :class:`PullRejectedError` (no retry can help) or :class:`SourceUnavailableError` (retry later,
        also when the attempt exceeds its timeout).
        """
        resolved = resolve_source(acquisition, self._sources, ae_title_facilities=self._ae_title_facilities)
        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                report = await self._pull(acquisition, resolved)
        except TimeoutError:
            PULLS.labels("unavailable").inc()
            raise SourceUnavailableError(
                f"the pull did not complete within {self._attempt_timeout_s:.0f} s"
            ) from None
        except SourceUnavailableError:
            PULLS.labels("unavailable").inc()
            raise
        except PullRejectedError:
            PULLS.labels("rejected").inc()
            raise
        PULLS.labels("complete").inc()
        return report

    async def _archived_uids(self, study_instance_uid: str) -> set[str]:
        return {instance.sop_instance_uid for instance in await self._archived.list(study_instance_uid)}

    async def _pull(self, acquisition: Acquisition, resolved: ResolvedSource) -> PullReport:
        async with self._open_source(resolved) as source:
            study = the_study(acquisition, await source.find_studies(acquisition))
            study_uid = study.study_instance_uid
            listed = await source.list_instances(study_uid)
            if not listed:
                raise SourceUnavailableError(f"the source lists no instance of study {study_uid} (yet)")
            archived = await self._archived_uids(study_uid)
            missing = [instance for instance in listed if instance.sop_instance_uid not in archived]
            outcomes = _Outcomes()
            if missing:
                request = StoreRequest(
                    source="pull",
                    facility_finess=acquisition.facility_finess,
                    expected_study_uid=study_uid,
                )

                async def store(path: Path) -> StoreOutcome:
                    outcome = await self._store.store_instance(path, request)
                    outcomes.record(outcome)
                    return outcome

                # Nothing archived yet: one whole-study request; otherwise only what is missing.
                wanted = None if len(missing) == len(listed) else missing
                await source.retrieve(study_uid, wanted, store)
        if outcomes.rejected:
            raise PullRejectedError(
                RejectionReason.INSTANCE_REJECTED,
                f"the archive refused {len(outcomes.rejected)} instance(s) of study {study_uid}: "
                + _describe(outcomes.rejected),
            )
        archived_now = await self._archived_uids(study_uid)
        still_missing = {instance.sop_instance_uid for instance in listed} - archived_now
        if outcomes.unavailable or still_missing:
            unavailable = _describe(outcomes.unavailable)
            raise SourceUnavailableError(
                f"{len(still_missing)} of {len(listed)} instance(s) of study {study_uid} are not archived yet"
                + (f" (archive unavailable: {unavailable})" if unavailable else "")
            )
        # Counted in the index: instances a C-MOVE delivers are stored by the SCP, not through ``store``.
        retrieved = len(archived_now & {instance.sop_instance_uid for instance in missing})
        return PullReport(study_uid, instances=len(listed), retrieved=retrieved)
