"""The access service's view of patient consents and oppositions, as the policy reads it.

The consent service owns consents (FHIR Consent shape) and publishes every change on
``emage.consent.changed.v1``; the gateway never calls it on the request path. It keeps this view, built
from the events, and decides with it. :class:`ConsentView` is what the policy needs from such a view;
:class:`InMemoryConsentView` is the pure implementation, fed with :meth:`InMemoryConsentView.apply`, used by
the unit tests and as the gateway's projection.

Vocabulary (FHIR R5 Consent, reduced as :class:`~emage_common.events.ConsentChanged` carries it):

* a :class:`ConsentGrant` is a ``permit`` provision: the patient lets a professional (RPPS), every
  professional of a facility (FINESS), or the holder of one share, see one study or all their studies,
  within a validity period;
* an :class:`Opposition` is a ``deny`` provision: the patient objects to access to one study or to all
  their studies. An opposition is read as patient-wide (or study-wide) whoever the event's grantee names:
  the product's opposition is "to sharing altogether", and reading a deny as narrower than it is would let
  access through that the patient refused.

Validity periods are half-open, ``valid_from <= now < valid_until``, so a consent lapses by itself at its end
without any event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from emage_common.events import (
    ConsentChanged,
    ConsentGrantee,
    FacilityGrantee,
    ProfessionalGrantee,
    ShareGrantee,
)


def _within(now: datetime, valid_from: datetime | None, valid_until: datetime | None) -> bool:
    return (valid_from is None or valid_from <= now) and (valid_until is None or now < valid_until)


def _expired(now: datetime, valid_until: datetime | None) -> bool:
    return valid_until is not None and now >= valid_until


@dataclass(frozen=True, slots=True, kw_only=True)
class _Provision:
    """What a permit and a deny (FHIR Consent ``provision.type``) share: a scope and a validity."""

    consent_id: str
    study_instance_uid: str | None = None
    """The one study concerned, or None for every study of the patient."""
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    active: bool = True
    """False once revoked or lifted (FHIR ``inactive``)."""

    def covers(self, study_instance_uid: str) -> bool:
        """Whether it is about ``study_instance_uid`` (that study, or every study of the patient)."""
        return self.study_instance_uid is None or self.study_instance_uid == study_instance_uid

    def in_force(self, now: datetime) -> bool:
        """Active and within its validity period at ``now``."""
        return self.active and _within(now, self.valid_from, self.valid_until)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentGrant(_Provision):
    """A patient's permission (FHIR Consent ``permit``) for one grantee, on one study or all of them."""

    grantee: ConsentGrantee

    def expired(self, now: datetime) -> bool:
        """Its validity period ended at or before ``now``."""
        return _expired(now, self.valid_until)

    def names_professional(self, rpps: str | None, facility_finess: str | None) -> bool:
        """Whether the grantee is the professional ``rpps`` or the facility ``facility_finess``."""
        grantee = self.grantee
        if isinstance(grantee, ProfessionalGrantee):
            return rpps is not None and grantee.rpps == rpps
        if isinstance(grantee, FacilityGrantee):
            return facility_finess is not None and grantee.finess == facility_finess
        return False

    def names_share(self, share_id: str) -> bool:
        """Whether the grantee is the holder of the share ``share_id``."""
        return isinstance(self.grantee, ShareGrantee) and self.grantee.share_id == share_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Opposition(_Provision):
    """A patient's objection (FHIR Consent ``deny``) to access to one study or all their studies."""


@dataclass(frozen=True, slots=True)
class PatientConsents:
    """Everything the view knows about one patient's consents and oppositions, current and past."""

    patient_key: str
    grants: tuple[ConsentGrant, ...] = ()
    oppositions: tuple[Opposition, ...] = ()

    def opposed(self, study_instance_uid: str, now: datetime) -> bool:
        """Whether an opposition in force at ``now`` covers the study."""
        return any(o.in_force(now) and o.covers(study_instance_uid) for o in self.oppositions)

    def grants_to(self, rpps: str | None, facility_finess: str | None) -> Iterator[ConsentGrant]:
        """The grants, in force or not, naming the professional or their facility."""
        return (grant for grant in self.grants if grant.names_professional(rpps, facility_finess))

    def grants_to_share(self, share_id: str) -> Iterator[ConsentGrant]:
        """The grants, in force or not, naming the holder of the share."""
        return (grant for grant in self.grants if grant.names_share(share_id))


class ConsentView(Protocol):
    """What the policy reads about consents. Implementations answer from memory: no I/O per decision."""

    def consents_of(self, patient_key: str) -> PatientConsents:
        """The consents and oppositions of one patient (empty when none is known)."""
        ...

    def grants_to(
        self, *, rpps: str | None, facility_finess: str | None
    ) -> Iterable[tuple[str, ConsentGrant]]:
        """``(patient key, grant)`` for every grant, in force or not, naming the professional or facility."""
        ...

    def oppositions(self) -> Iterable[tuple[str, Opposition]]:
        """``(patient key, opposition)`` for every opposition, in force or not."""
        ...


class InMemoryConsentView:
    """A :class:`ConsentView` built from ``consent.changed`` events, held in memory.

    Applying is idempotent and order-tolerant per consent: a change whose ``revision`` is not above the
    last applied one for its consent is ignored, so redelivery and replay are safe. Consents are indexed by
    patient and by grantee, so a decision or a search scope reads only the consents it is about.
    """

    def __init__(self, patients: Iterable[PatientConsents] = ()) -> None:
        self._revisions: dict[str, int] = {}
        self._patient_of: dict[str, str] = {}
        self._grants: dict[str, ConsentGrant] = {}
        self._oppositions: dict[str, Opposition] = {}
        self._by_patient: dict[str, set[str]] = {}
        self._by_grantee: dict[tuple[str, str], set[str]] = {}
        for patient in patients:
            for grant in patient.grants:
                self._put(patient.patient_key, grant)
            for opposition in patient.oppositions:
                self._put(patient.patient_key, opposition)

    def apply(self, change: ConsentChanged) -> bool:
        """Fold one ``consent.changed`` event into the view; False when it was stale or already applied."""
        if change.revision <= self._revisions.get(change.consent_id, 0):
            return False
        self._revisions[change.consent_id] = change.revision
        self._remove(change.consent_id)
        active = change.status == "active"
        if change.provision == "permit" and change.grantee is not None:
            self._put(
                change.patient_key,
                ConsentGrant(
                    consent_id=change.consent_id,
                    grantee=change.grantee,
                    study_instance_uid=change.study_instance_uid,
                    valid_from=change.valid_from,
                    valid_until=change.valid_until,
                    active=active,
                ),
            )
        elif change.provision == "deny":
            self._put(
                change.patient_key,
                Opposition(
                    consent_id=change.consent_id,
                    study_instance_uid=change.study_instance_uid,
                    valid_from=change.valid_from,
                    valid_until=change.valid_until,
                    active=active,
                ),
            )
        return True

    def _put(self, patient_key: str, provision: ConsentGrant | Opposition) -> None:
        consent_id = provision.consent_id
        self._patient_of[consent_id] = patient_key
        self._by_patient.setdefault(patient_key, set()).add(consent_id)
        if isinstance(provision, ConsentGrant):
            self._grants[consent_id] = provision
            key = _grantee_key(provision.grantee)
            if key is not None:
                self._by_grantee.setdefault(key, set()).add(consent_id)
        else:
            self._oppositions[consent_id] = provision

    def _remove(self, consent_id: str) -> None:
        patient_key = self._patient_of.pop(consent_id, None)
        if patient_key is not None:
            self._by_patient[patient_key].discard(consent_id)
        grant = self._grants.pop(consent_id, None)
        if grant is not None:
            key = _grantee_key(grant.grantee)
            if key is not None:
                self._by_grantee[key].discard(consent_id)
        self._oppositions.pop(consent_id, None)

    def consents_of(self, patient_key: str) -> PatientConsents:
        """See :meth:`ConsentView.consents_of`."""
        ids = sorted(self._by_patient.get(patient_key, ()))
        return PatientConsents(
            patient_key=patient_key,
            grants=tuple(self._grants[cid] for cid in ids if cid in self._grants),
            oppositions=tuple(self._oppositions[cid] for cid in ids if cid in self._oppositions),
        )

    def grants_to(
        self, *, rpps: str | None, facility_finess: str | None
    ) -> Iterator[tuple[str, ConsentGrant]]:
        """See :meth:`ConsentView.grants_to`."""
        keys = [("professional", rpps), ("facility", facility_finess)]
        for kind, value in keys:
            if value is None:
                continue
            for consent_id in sorted(self._by_grantee.get((kind, value), ())):
                yield self._patient_of[consent_id], self._grants[consent_id]

    def oppositions(self) -> Iterator[tuple[str, Opposition]]:
        """See :meth:`ConsentView.oppositions`."""
        for consent_id, opposition in self._oppositions.items():
            yield self._patient_of[consent_id], opposition


def _grantee_key(grantee: ConsentGrantee) -> tuple[str, str] | None:
    if isinstance(grantee, ProfessionalGrantee):
        return ("professional", grantee.rpps)
    if isinstance(grantee, FacilityGrantee):
        return ("facility", grantee.finess)
    return None
