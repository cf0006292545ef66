"""The consent use cases: grant, oppose, revoke, lift, read; each appends through the store and announces.

A change is acknowledged once its record, the new current state and its ``consent.changed`` event are
committed together (:meth:`~emage_consent.ports.ConsentStore.append`): from then on the event is durable
in the outbox even if Kafka is down or this replica dies. The event is then published at once, so the
gateway's view follows within a second; if Kafka does not confirm in time, the outbox relay publishes it.

A decision rests on the consent as read; if another request appended meanwhile, the append is refused
and the use case reads and decides again (a second revocation then finds the consent revoked: nothing
to do).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from emage_common.access_contract import ForwardedPrincipal
from emage_common.events import CONSENT_CHANGED_TOPIC, make_event
from emage_common.outbox import DirectPublication
from emage_consent.domain import rules
from emage_consent.domain.model import Consent, ConsentRecord
from emage_consent.domain.rules import (
    AtFacility,
    ConflictError,
    GrantDraft,
    IdempotencyKeyReusedError,
    InvalidConsentError,
    NotFoundError,
    OppositionDraft,
)
from emage_consent.ports import (
    ConcurrentChangeError,
    ConsentPage,
    ConsentQuery,
    ConsentStore,
    EventSink,
    OutboxEntry,
    OutboxMarks,
    PatientDirectory,
)

logger = logging.getLogger(__name__)

EVENT_SOURCE: Final = "/emage/consent"
_DECISION_ATTEMPTS: Final = 3
#: Namespace of the consent ids derived from a client's ``Idempotency-Key``.
_IDEMPOTENT_ID_NAMESPACE: Final = uuid.UUID("0b6f3f0e-6c1a-4f55-a1a4-6f8f2c1d9e21")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_consent_id() -> str:
    return str(uuid.uuid4())


def idempotent_consent_id(subject: str, idempotency_key: str) -> str:
    """The id of the consent a caller's ``Idempotency-Key`` opens: the same for a retry of the same caller,
    different for anyone else using the same key."""
    return str(uuid.uuid5(_IDEMPOTENT_ID_NAMESPACE, f"{subject}\x00{idempotency_key}"))


def _same_request(opening: ConsentRecord, retried: ConsentRecord) -> bool:
    """Whether a retried creation asks for what the recorded one did (its time aside)."""
    return (
        opening.action,
        opening.patient_key,
        opening.grantee,
        opening.study_instance_uid,
        opening.period,
        opening.information,
        opening.recorded_by,
    ) == (
        retried.action,
        retried.patient_key,
        retried.grantee,
        retried.study_instance_uid,
        retried.period,
        retried.information,
        retried.recorded_by,
    )


class ConsentService:
    """Records and reads consents under the rules of :mod:`emage_consent.domain.rules`."""

    def __init__(
        self,
        *,
        store: ConsentStore,
        directory: PatientDirectory,
        events: EventSink,
        outbox: OutboxMarks,
        replica_id: str,
        publish_timeout: float,
        outbox_lease: timedelta,
        wake_relay: Callable[[], None],
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_consent_id,
    ) -> None:
        self._store = store
        self._directory = directory
        self._outbox_lease = outbox_lease
        # Whatever fails, the change is committed with its event: the answer is a success.
        self._publication = DirectPublication(
            events,
            outbox,
            replica_id=replica_id,
            publish_timeout=publish_timeout,
            wake_relay=wake_relay,
            failures=(Exception,),
            logger=logger,
        )
        self._clock = clock
        self._new_id = new_id

    def now(self) -> datetime:
        return self._clock()

    # --- Recording ------------------------------------------------------------------------------------------

    async def grant(
        self, principal: ForwardedPrincipal, draft: GrantDraft, *, idempotency_key: str | None = None
    ) -> Consent:
        """Record a grant; raises a :class:`~emage_consent.domain.rules.ConsentRuleError` if refused.

        With an ``idempotency_key``, a retry of the same request (a client that lost the answer) returns the
        consent recorded the first time instead of recording a second one.
        """
        consent_id = self._consent_id(principal, idempotency_key)
        record = rules.grant(principal, draft, consent_id=consent_id, now=self._clock())
        await self._check_reach(principal, record.patient_key, record.study_instance_uid)
        return await self._open(record, idempotent=idempotency_key is not None)

    async def oppose(
        self, principal: ForwardedPrincipal, draft: OppositionDraft, *, idempotency_key: str | None = None
    ) -> Consent:
        """Record an opposition; raises a :class:`~emage_consent.domain.rules.ConsentRuleError` if refused.

        ``idempotency_key`` as for :meth:`grant`.
        """
        consent_id = self._consent_id(principal, idempotency_key)
        record = rules.oppose(principal, draft, consent_id=consent_id, now=self._clock())
        await self._check_reach(principal, record.patient_key, record.study_instance_uid)
        return await self._open(record, idempotent=idempotency_key is not None)

    def _consent_id(self, principal: ForwardedPrincipal, idempotency_key: str | None) -> str:
        if idempotency_key is None:
            return self._new_id()
        return idempotent_consent_id(principal.subject, idempotency_key)

    async def revoke(self, principal: ForwardedPrincipal, consent_id: str, reason: str | None) -> Consent:
        """Revoke a grant (idempotent: an inactive one is returned as it is)."""
        rules.check_may_write(principal)
        return await self._close(
            principal,
            consent_id,
            lambda consent, now: rules.revoke(principal, consent, now=now, reason=reason),
        )

    async def lift(self, principal: ForwardedPrincipal, consent_id: str, reason: str | None) -> Consent:
        """Lift an opposition (idempotent: a lifted one is returned as it is)."""
        rules.check_may_lift(principal)
        return await self._close(
            principal, consent_id, lambda consent, now: rules.lift(principal, consent, now=now, reason=reason)
        )

    async def _open(self, record: ConsentRecord, *, idempotent: bool) -> Consent:
        consent = Consent.opened(record)
        try:
            await self._append(record, consent)
        except ConcurrentChangeError:
            if idempotent:
                return await self._replayed(record)
            # A fresh random id that exists already: never in practice, and nothing was written.
            raise ConflictError("This consent was recorded concurrently; retry.") from None
        return consent

    async def _replayed(self, retried: ConsentRecord) -> Consent:
        """The consent a reused ``Idempotency-Key`` opened, if the retry asks for the same thing."""
        records = await self._store.records(retried.consent_id)
        recorded = await self._store.get(retried.consent_id)
        if not records or recorded is None:
            raise ConflictError("This consent is being recorded concurrently; retry.")
        if not _same_request(records[0], retried):
            raise IdempotencyKeyReusedError(
                "This Idempotency-Key was already used for a different request; nothing was written."
            )
        return recorded

    async def _close(
        self,
        principal: ForwardedPrincipal,
        consent_id: str,
        decide: Callable[[Consent, datetime], ConsentRecord | None],
    ) -> Consent:
        for _ in range(_DECISION_ATTEMPTS):
            consent = await self._readable(principal, consent_id)
            record = decide(consent, self._clock())
            if record is None:
                return consent
            closed = consent.after(record)
            try:
                await self._append(record, closed)
            except ConcurrentChangeError:
                continue
            return closed
        raise ConflictError("The consent keeps changing concurrently; retry.")

    async def _append(self, record: ConsentRecord, consent: Consent) -> None:
        event = make_event(record.change(), EVENT_SOURCE, subject=record.consent_id)
        await self._store.append(
            record,
            consent,
            OutboxEntry(event.id, CONSENT_CHANGED_TOPIC, event),
            publisher_id=self._publication.publisher_id,
            publishing_lease=self._outbox_lease,
        )
        # Publish now; if Kafka does not confirm in time, the outbox entry stays for the relay.
        await self._publication.publish(CONSENT_CHANGED_TOPIC, event)

    async def settle_pending(self) -> None:
        """Wait for the outbox bookkeeping of the publications made so far (at shutdown)."""
        await self._publication.settle_pending()

    # --- Reading --------------------------------------------------------------------------------------------

    async def _check_reach(
        self, principal: ForwardedPrincipal, patient_key: str, study_instance_uid: str | None = None
    ) -> None:
        """Raise :class:`NotFoundError` unless the caller reaches the patient (the catalog says so for a
        professional). :class:`~emage_consent.ports.PatientDirectoryUnavailableError` when it cannot say."""
        reach = rules.reach(principal, patient_key, study_instance_uid)
        if isinstance(reach, AtFacility) and not await self._directory.has_studies_at(
            reach.facility_finess, patient_key, reach.study_instance_uid
        ):
            raise NotFoundError(rules.NOT_FOUND)

    async def _readable(self, principal: ForwardedPrincipal, consent_id: str) -> Consent:
        consent = await self._store.get(consent_id)
        if consent is None:
            raise NotFoundError(rules.NOT_FOUND)
        await self._check_reach(principal, consent.patient_key)
        return consent

    async def get(self, principal: ForwardedPrincipal, consent_id: str) -> Consent:
        """One consent the caller may read."""
        return await self._readable(principal, consent_id)

    async def records(self, principal: ForwardedPrincipal, consent_id: str) -> list[ConsentRecord]:
        """The records of one consent the caller may read, in revision order."""
        await self._readable(principal, consent_id)
        return await self._store.records(consent_id)

    async def _patient_keys(self, principal: ForwardedPrincipal, patient_key: str | None) -> tuple[str, ...]:
        """The patient keys a read is about: the one asked (once reached), or all of a patient's own."""
        if patient_key is not None:
            await self._check_reach(principal, patient_key)
            return (patient_key,)
        if principal.role == "patient":
            return principal.patient_keys
        raise InvalidConsentError("patient_key is required: the patient whose consents to read.")

    async def list_consents(
        self,
        principal: ForwardedPrincipal,
        query: ConsentQuery,
        *,
        limit: int,
        offset: int,
    ) -> ConsentPage:
        """The consents the caller asks for and may read, newest first.

        ``query.patient_keys`` holds at most one key (the one asked); without it a patient lists their own
        and the DPO everyone's, while a professional must name the patient.
        """
        asked = query.patient_keys[0] if query.patient_keys else None
        if asked is None and principal.role == "dpo":
            keys: tuple[str, ...] | None = None
        else:
            keys = await self._patient_keys(principal, asked)
            if not keys:
                return ConsentPage([], 0)
        return await self._store.list(
            ConsentQuery(keys, query.provision, query.state), now=self._clock(), limit=limit, offset=offset
        )

    async def history(self, principal: ForwardedPrincipal, patient_key: str | None) -> list[ConsentRecord]:
        """Every record of a patient's consents, in the order they were appended."""
        keys = await self._patient_keys(principal, patient_key)
        return await self._store.history(keys) if keys else []

    async def consents_of(self, principal: ForwardedPrincipal, patient_key: str | None) -> list[Consent]:
        """Every consent of a patient (current state), oldest first: the FHIR export."""
        keys = await self._patient_keys(principal, patient_key)
        records = await self._store.history(keys) if keys else []
        by_consent: dict[str, list[ConsentRecord]] = {}
        for record in records:
            by_consent.setdefault(record.consent_id, []).append(record)
        return [Consent.fold(sorted(chain, key=_revision)) for chain in by_consent.values()]


def _revision(record: ConsentRecord) -> int:
    return record.revision
