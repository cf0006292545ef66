"""What the consent use cases need from the outside, as small interfaces (adapters implement them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from emage_common.events import CloudEvent
from emage_common.outbox import OutboxEntry as OutboxEntry
from emage_consent.domain.model import Consent, ConsentRecord, ConsentState, Provision


class ConcurrentChangeError(RuntimeError):
    """The consent gained a record between the read the decision rested on and the append."""


class PatientDirectoryUnavailableError(RuntimeError):
    """The catalog could not say whether the patient has studies at the facility."""


@dataclass(frozen=True, slots=True)
class ConsentQuery:
    """Which consents a listing returns: ``None`` for no condition."""

    patient_keys: tuple[str, ...] | None = None
    provision: Provision | None = None
    state: ConsentState | None = None


@dataclass(frozen=True, slots=True)
class ConsentPage:
    """One page of a listing, with the number of consents matching in all."""

    consents: list[Consent]
    total: int


class ConsentStore(Protocol):
    """The consents: their append-only records and the current state derived from them."""

    async def get(self, consent_id: str) -> Consent | None:
        """The current state of a consent, or ``None``."""
        ...

    async def records(self, consent_id: str) -> list[ConsentRecord]:
        """The records of one consent, in revision order."""
        ...

    async def history(self, patient_keys: Sequence[str]) -> list[ConsentRecord]:
        """Every record of the consents of these patient keys, in the order they were appended."""
        ...

    async def list(self, query: ConsentQuery, *, now: datetime, limit: int, offset: int) -> ConsentPage:
        """The consents matching ``query`` at ``now``, newest first."""
        ...

    async def append(
        self,
        record: ConsentRecord,
        consent: Consent,
        entry: OutboxEntry,
        *,
        publisher_id: str,
        publishing_lease: timedelta,
    ) -> None:
        """Append ``record``, set the current state to ``consent`` and store ``entry``, all or nothing.

        The entry is leased to ``publisher_id`` for ``publishing_lease`` (the relay leaves it to the
        direct publication meanwhile). Raises :class:`ConcurrentChangeError` when the consent is not at
        the revision before ``record`` any more (or already exists, for a first record).
        """
        ...


class OutboxMarks(Protocol):
    """Settling an outbox entry once the direct publication succeeded or failed."""

    async def mark_published(self, event_id: str, owner: str) -> None: ...

    async def retry_after(self, event_id: str, owner: str, delay: timedelta) -> None: ...


class Outbox(OutboxMarks, Protocol):
    """The outbox as the relay drains it."""

    async def lease_due(self, owner: str, lease: timedelta, limit: int) -> list[OutboxEntry]: ...


class EventSink(Protocol):
    """Where events go (:class:`emage_common.kafka.EventPublisher`)."""

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None: ...


class PatientDirectory(Protocol):
    """Whether a patient has studies at a facility (the catalog's answer)."""

    async def has_studies_at(
        self, facility_finess: str, patient_key: str, study_instance_uid: str | None = None
    ) -> bool:
        """Whether ``patient_key`` has a study (``study_instance_uid``, when given) at the facility.

        Raises :class:`PatientDirectoryUnavailableError` when the catalog cannot answer.
        """
        ...
