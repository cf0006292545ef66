"""The audit trail's use cases: append a domain event, verify the chain, sign checkpoints, purge expired
segments, and read the trail (a patient's access log, the DPO's searches, FHIR, break-the-glass alerts).

Entrypoints (the Kafka handler, HTTP routes, background loops) call one method here each; the rules are in
``domain`` and the storage behind :class:`AuditStore`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from fhir.resources.R4B.bundle import Bundle

from emage_audit.domain.atna import AuditSource
from emage_audit.domain.chain import ChainEntry, ChainHead, ChainRecord
from emage_audit.domain.checkpoints import Checkpoint, CheckpointSigner, TrustedKeys
from emage_audit.domain.entries import (
    ACCESS_DECIDED,
    AlertSighting,
    ExamFacts,
    alert_sighting,
    entry_of,
    exam_facts,
    purge_entry,
    record_index,
)
from emage_audit.domain.fhir import audit_event, search_bundle
from emage_audit.domain.rendering import AccessLogLine, Language, access_log_line, alert_text
from emage_audit.domain.verification import ChainVerifier, StoredRecord, VerificationReport
from emage_common.events import CloudEvent, parse_rfc3339

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Appendable:
    """An entry to append, with what it adds to a break-the-glass alert and tells of its exam."""

    entry: ChainEntry
    alert: AlertSighting | None
    exam: ExamFacts | None

    @classmethod
    def of(cls, entry: ChainEntry) -> Appendable:
        return cls(entry, alert_sighting(entry), exam_facts(entry))


@dataclass(frozen=True, slots=True)
class Appended:
    record: ChainRecord
    created: bool
    """False when the event was already in the trail (a redelivery): nothing was appended."""


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Which records a search returns; every given condition must hold."""

    patient_keys: tuple[str, ...] | None = None
    """Only records about one of these patients (a patient's own keys); None: any record."""
    patient_key: str | None = None
    study: str | None = None
    subject: str | None = None
    facility: str | None = None
    decision: Literal["allow", "deny"] | None = None
    action: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    break_glass: bool | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """A break-the-glass episode: one professional's emergency access to one study, with one justification."""

    alert_id: str
    patient_key: str | None
    study_instance_uid: str | None
    principal: Mapping[str, Any]
    justification: str | None
    first_at: datetime
    last_at: datetime
    first_seq: int
    last_seq: int
    records: int
    """How many records the episode holds: its opening and the accesses made under it."""


@dataclass(frozen=True, slots=True)
class PurgeResult:
    through_seq: int | None
    """The last purged sequence number (the anchoring checkpoint's); None when nothing had expired."""
    records_purged: int
    record: ChainRecord | None
    """The trail's own record of the purge."""


class AuditStore(Protocol):
    """Where the chain, its checkpoints, alerts, exam names and export cursors are kept."""

    async def append(self, items: Sequence[Appendable], *, now: datetime) -> list[Appended]:
        """Append ``items`` in order, all or none: each after the previous one, except those whose event is
        already in the trail (in it before, or earlier in ``items``), which append nothing."""
        ...

    async def head(self) -> ChainHead: ...

    def stored_records(self, through_seq: int) -> AsyncIterator[StoredRecord]: ...

    async def checkpoints(self) -> dict[int, Checkpoint]: ...

    async def latest_checkpoint(self) -> Checkpoint | None: ...

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    async def first_seq(self) -> int | None: ...

    async def count_through(self, seq: int) -> int: ...

    async def delete_through(self, seq: int) -> int: ...

    async def search(
        self, query: RecordQuery, *, offset: int, limit: int
    ) -> tuple[int, list[ChainRecord]]: ...

    async def exams(self, study_instance_uids: Sequence[str]) -> dict[str, ExamFacts]: ...

    async def alerts(
        self, patient_keys: tuple[str, ...] | None, *, offset: int, limit: int
    ) -> tuple[int, list[Alert]]: ...

    async def export_position(self, name: str) -> int | None: ...


@dataclass(slots=True)
class AuditService:
    """The audit trail of one service instance (several may run: the store keeps one chain)."""

    store: AuditStore
    signer: CheckpointSigner
    trusted_keys: TrustedKeys
    source: AuditSource
    retention: timedelta
    checkpoint_every_records: int = 1000
    export_cursor: str | None = None
    """The export whose cursor bounds purges (nothing is purged before it was exported); None: no export."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    appended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after each append, for the exporter; cleared by whoever waits on it."""
    checkpoint_due: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when ``checkpoint_every_records`` records were appended since the last checkpoint."""

    # --- Writing ------------------------------------------------------------------------------------------

    async def record_event(self, event: CloudEvent) -> Appended:
        """Append a domain event once, with its break-the-glass alert and what it tells of its exam."""
        return (await self.record_events([event]))[0]

    async def record_events(self, events: Sequence[CloudEvent]) -> list[Appended]:
        """Append domain events in order, all or none, each once (a bulk import's trail is written a batch at
        a time: one transaction and one extension of the chain, not one per event).

        Raises :class:`~emage_common.events.EventDecodingError`, appending nothing, if one is not an event
        the trail keeps."""
        return await self._append([entry_of(event) for event in events])

    async def _append(self, entries: Sequence[ChainEntry]) -> list[Appended]:
        appended = await self.store.append([Appendable.of(entry) for entry in entries], now=self.clock())
        created = [a.record.seq for a in appended if a.created]
        if created:
            self.appended.set()
            every = self.checkpoint_every_records
            if created[-1] // every > (created[0] - 1) // every:  # a multiple of it was reached in this batch
                self.checkpoint_due.set()
        return appended

    async def checkpoint(self, *, interval: timedelta | None = None) -> Checkpoint | None:
        """Sign the head if records were appended since the last checkpoint (and, with ``interval``, the last
        one is that old or ``checkpoint_every_records`` behind)."""
        head = await self.store.head()
        latest = await self.store.latest_checkpoint()
        if head.seq == 0 or head.recorded_at is None or (latest is not None and latest.seq >= head.seq):
            return None
        now = self.clock()
        if interval is not None and latest is not None:
            behind = head.seq - latest.seq
            if behind < self.checkpoint_every_records and now - parse_rfc3339(latest.signed_at) < interval:
                return None
        checkpoint = self.signer.sign(head.seq, head.hash, head.recorded_at, now)
        await self.store.add_checkpoint(checkpoint)
        logger.info("chain checkpoint signed at seq %d", checkpoint.seq)
        return checkpoint

    async def purge(self, requested_by: Mapping[str, Any]) -> PurgeResult:
        """Delete the whole segments whose last record is older than the retention period.

        A segment ends at a signed checkpoint; the last expired one (not past what the export has sent)
        anchors the first kept record, so the chain stays verifiable. The purge is itself appended first:
        if the deletion is interrupted, the remaining chain is intact and the purge can be asked again.
        """
        now = self.clock()
        cutoff = now - self.retention
        first = await self.store.first_seq()
        exported = (
            None
            if self.export_cursor is None
            else (await self.store.export_position(self.export_cursor)) or 0
        )
        anchor = None
        for checkpoint in sorted(
            (await self.store.checkpoints()).values(), key=lambda c: c.seq, reverse=True
        ):
            if first is None or checkpoint.seq < first:
                break
            if exported is not None and checkpoint.seq > exported:
                continue
            if parse_rfc3339(checkpoint.recorded_at) < cutoff and self.trusted_keys.verify(checkpoint):
                anchor = checkpoint
                break
        if anchor is None:
            return PurgeResult(through_seq=None, records_purged=0, record=None)
        count = await self.store.count_through(anchor.seq)
        entry = purge_entry(
            str(uuid.uuid4()),
            at=now,
            through_seq=anchor.seq,
            through_hash=anchor.hash,
            records_purged=count,
            retention_days=self.retention.days,
            requested_by=requested_by,
        )
        (appended,) = await self._append([entry])
        deleted = await self.store.delete_through(anchor.seq)
        logger.warning("audit trail purged through seq %d (%d records)", anchor.seq, deleted)
        return PurgeResult(through_seq=anchor.seq, records_purged=count, record=appended.record)

    # --- Verifying ----------------------------------------------------------------------------------------

    async def verify(self) -> VerificationReport:
        """Recompute the whole chain up to its current head; the report names the first break, if any."""
        head = await self.store.head()
        verifier = ChainVerifier(
            checkpoints=await self.store.checkpoints(),
            signature_valid=self.trusted_keys.verify,
            index_of=record_index,
        )
        async for stored in self.store.stored_records(head.seq):
            if not verifier.feed(stored):
                break
        return verifier.finish(head)

    # --- Reading ------------------------------------------------------------------------------------------

    async def search(self, query: RecordQuery, *, offset: int, limit: int) -> tuple[int, list[ChainRecord]]:
        return await self.store.search(query, offset=offset, limit=limit)

    async def access_log(
        self,
        patient_keys: tuple[str, ...],
        *,
        reader_subject: str,
        lang: Language,
        include_denied: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[AccessLogLine]]:
        """A patient's access log, most recent first: every decision about their data, in words."""
        query = RecordQuery(
            patient_keys=patient_keys, type=ACCESS_DECIDED, decision=None if include_denied else "allow"
        )
        total, records = await self.store.search(query, offset=offset, limit=limit)
        studies = sorted({r.data["study_instance_uid"] for r in records if r.data.get("study_instance_uid")})
        exams = await self.store.exams(studies) if studies else {}
        lines = [
            access_log_line(
                record.seq,
                record.data,
                exams.get(record.data.get("study_instance_uid", "")),
                lang,
                reader_subject=reader_subject,
            )
            for record in records
        ]
        return total, lines

    async def fhir_bundle(self, query: RecordQuery, *, offset: int, limit: int) -> Bundle:
        total, records = await self.store.search(query, offset=offset, limit=limit)
        return search_bundle((audit_event(record, self.source) for record in records), total)

    async def alerts(
        self, patient_keys: tuple[str, ...] | None, *, lang: Language, offset: int, limit: int
    ) -> tuple[int, list[tuple[Alert, str]]]:
        """Break-the-glass alerts, most recent first, each with its text for people."""
        total, alerts = await self.store.alerts(patient_keys, offset=offset, limit=limit)
        studies = sorted({a.study_instance_uid for a in alerts if a.study_instance_uid})
        exams = await self.store.exams(studies) if studies else {}
        return total, [
            (
                alert,
                alert_text(
                    alert.principal,
                    alert.study_instance_uid,
                    exams.get(alert.study_instance_uid or ""),
                    alert.justification,
                    alert.first_at,
                    lang,
                ),
            )
            for alert in alerts
        ]
