"""Consents as FHIR R5 Consent resources and Bundles, validated with ``fhir.resources`` before they leave.

FHIR R5 (5.0.0) rather than R4: R5 Consent states the decision (``permit``/``deny``) at the top, as the
``consent.changed`` events and the gateway's view do, and ``fhir.resources`` models R5 natively (R4B and
STU3 only as secondary packages). The mapping:

* ``Consent.id`` is the consent id; ``meta.versionId`` its revision (its record count), ``meta.lastUpdated``
  its last record's instant; ``identifier`` the same id as ``urn:uuid``.
* ``status``: ``active`` while recorded active and not expired; ``inactive`` once revoked, lifted or expired
  (the ``period`` says which).
* ``subject`` and ``grantor``: the patient, by INS (``urn:oid:1.2.250.1.213.1.4.*``) when the patient key
  is INS-based, else by the e-mage patient key (``urn:emage:patient-key``).
* ``decision``: ``permit`` for a grant, ``deny`` for an opposition; ``period``: the validity period.
* ``provision.actor``: the grantee, with role ``IRCP`` (information recipient): a Practitioner by RPPS
  (``urn:oid:1.2.250.1.71.4.2.1``), an Organization by FINESS (``urn:oid:1.2.250.1.71.4.2.2``), or the
  holder of an e-mage share (``urn:emage:share``). Also in ``grantee``.
* ``provision.data``: the one study concerned, an ImagingStudy by Study Instance UID (``urn:dicom:uid``).
* provenance: a professional who recorded the consent at the exam is in ``verification.verifiedBy`` (and
  their facility in ``manager``); the information given to the patient is a ``sourceAttachment`` (text)
  and a ``policyText`` reference to the information notice (code).

A patient's consents export as a ``collection`` Bundle; the versions of their consents as a ``history``
Bundle, newest version first as the FHIR RESTful history interaction orders them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from fhir.resources.bundle import Bundle
from fhir.resources.consent import Consent as FhirConsent
from pydantic_core import from_json

from emage_common.events import FacilityGrantee, ProfessionalGrantee, format_rfc3339
from emage_consent.domain.model import Consent, ConsentRecord, Recorder

FHIR_JSON: Final = "application/fhir+json"

RPPS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.2"
PATIENT_KEY_SYSTEM: Final = "urn:emage:patient-key"
SHARE_SYSTEM: Final = "urn:emage:share"
NOTICE_SYSTEM: Final = "urn:emage:information-notice"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"

_PATIENT_CONSENT: Final = {"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
_INFORMATION_RECIPIENT: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
    "code": "IRCP",
    "display": "information recipient",
}
_ACCESS: Final = {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}
_TREATMENT: Final = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
# Required bindings fhir.resources does not enforce (it checks structure and datatypes only).
_CONSENT_STATES: Final = frozenset({"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"})
_DECISIONS: Final = frozenset({"permit", "deny"})


class FhirValidationError(ValueError):
    """A resource this module built is not valid FHIR R5: a bug, never the caller's input."""


def patient_reference(patient_key: str) -> dict[str, Any]:
    """A Reference to the patient: by INS when the key is INS-based, else by the e-mage patient key."""
    scheme, _, rest = patient_key.partition(":")
    if scheme == "ins":
        oid, _, matricule = rest.partition(":")
        identifier = {"system": f"urn:oid:{oid}", "value": matricule}
    else:
        identifier = {"system": PATIENT_KEY_SYSTEM, "value": patient_key}
    if scheme == "pid":
        issuer, _, patient_id = rest.partition(":")
        return {
            "type": "Patient",
            "identifier": identifier,
            "display": f"Patient {unquote(patient_id)} of {unquote(issuer)}",
        }
    return {"type": "Patient", "identifier": identifier}


def _grantee_reference(consent: Consent) -> dict[str, Any] | None:
    grantee = consent.grantee
    if grantee is None:
        return None
    if isinstance(grantee, ProfessionalGrantee):
        return {"type": "Practitioner", "identifier": {"system": RPPS_SYSTEM, "value": grantee.rpps}}
    if isinstance(grantee, FacilityGrantee):
        return {"type": "Organization", "identifier": {"system": FINESS_SYSTEM, "value": grantee.finess}}
    return {
        "identifier": {"system": SHARE_SYSTEM, "value": grantee.share_id},
        "display": f"Holder of e-mage share {grantee.share_id}",
    }


def _professional_reference(recorder: Recorder) -> dict[str, Any]:
    reference: dict[str, Any] = {"type": "Practitioner"}
    if recorder.rpps is not None:
        reference["identifier"] = {"system": RPPS_SYSTEM, "value": recorder.rpps}
    if recorder.name is not None:
        reference["display"] = recorder.name
    return reference


def _instant(value: datetime) -> str:
    return format_rfc3339(value)


def consent_resource(consent: Consent, now: datetime) -> dict[str, Any]:
    """The FHIR R5 Consent of ``consent`` as it stands at ``now`` (not yet validated)."""
    state = consent.state(now)
    patient = patient_reference(consent.patient_key)
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent.consent_id,
        "meta": {"versionId": str(consent.revision), "lastUpdated": _instant(consent.updated_at)},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{consent.consent_id}"}],
        "status": "active" if state in ("active", "scheduled") else "inactive",
        "category": [{"coding": [_PATIENT_CONSENT]}],
        "subject": patient,
        "date": consent.created_at.date().isoformat(),
        "grantor": [patient],
        "decision": consent.provision,
    }
    period = {
        name: _instant(instant)
        for name, instant in (("start", consent.period.valid_from), ("end", consent.period.valid_until))
        if instant is not None
    }
    if period:
        resource["period"] = period
    grantee = _grantee_reference(consent)
    if grantee is not None:
        resource["grantee"] = [grantee]
    recorder = consent.created_by
    if recorder.channel == "at_exam":
        resource["verification"] = [
            {
                "verified": True,
                "verifiedBy": _professional_reference(recorder),
                "verifiedWith": patient,
                "verificationDate": [_instant(consent.created_at)],
            }
        ]
        if recorder.facility_finess is not None:
            facility: dict[str, Any] = {
                "type": "Organization",
                "identifier": {"system": FINESS_SYSTEM, "value": recorder.facility_finess},
            }
            if recorder.facility_name is not None:
                facility["display"] = recorder.facility_name
            resource["manager"] = [facility]
    information = consent.information
    if information is not None and information.text is not None:
        resource["sourceAttachment"] = [
            {
                "contentType": "text/plain; charset=utf-8",
                "title": "Information given to the patient",
                "data": base64.b64encode(information.text.encode()).decode("ascii"),
                "creation": _instant(consent.created_at),
            }
        ]
    if information is not None and information.notice_code is not None:
        resource["policyText"] = [
            {
                "type": "DocumentReference",
                "identifier": {"system": NOTICE_SYSTEM, "value": information.notice_code},
                "display": "Information notice given to the patient",
            }
        ]
    provision: dict[str, Any] = {}
    if grantee is not None:
        provision["actor"] = [{"role": {"coding": [_INFORMATION_RECIPIENT]}, "reference": grantee}]
        provision["action"] = [{"coding": [_ACCESS]}]
        provision["purpose"] = [_TREATMENT]
    if consent.study_instance_uid is not None:
        provision["data"] = [
            {
                "meaning": "instance",
                "reference": {
                    "type": "ImagingStudy",
                    "identifier": {
                        "system": DICOM_UID_SYSTEM,
                        "value": f"urn:oid:{consent.study_instance_uid}",
                    },
                },
            }
        ]
    if provision:
        resource["provision"] = [provision]
    return resource


def _check_bindings(resource: dict[str, Any]) -> None:
    if resource.get("status") not in _CONSENT_STATES:
        raise FhirValidationError(f"Consent.status {resource.get('status')!r} is not a ConsentState code")
    if resource.get("decision") not in _DECISIONS:
        raise FhirValidationError(f"Consent.decision {resource.get('decision')!r} is not permit or deny")


def validated_consent(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` validated as an R5 Consent, as the validated model serialises it."""
    _check_bindings(resource)
    try:
        model = FhirConsent.model_validate(resource)
    except ValueError as error:
        raise FhirValidationError(f"invalid FHIR R5 Consent: {error}") from error
    return _json_of(model.model_dump_json(exclude_none=True))


def validated_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """``bundle`` validated as an R5 Bundle (its Consent entries with it)."""
    for entry in bundle.get("entry", ()):
        _check_bindings(entry["resource"])
    try:
        model = Bundle.model_validate(bundle)
    except ValueError as error:
        raise FhirValidationError(f"invalid FHIR R5 Bundle: {error}") from error
    return _json_of(model.model_dump_json(exclude_none=True))


def _json_of(text: str) -> dict[str, Any]:
    value: dict[str, Any] = from_json(text)
    return value


def consent_json(consent: Consent, now: datetime) -> dict[str, Any]:
    """One consent as a validated FHIR R5 Consent."""
    return validated_consent(consent_resource(consent, now))


def collection_bundle(consents: Iterable[Consent], now: datetime) -> dict[str, Any]:
    """A patient's consents as a validated ``collection`` Bundle of FHIR R5 Consents."""
    entries = [
        {"fullUrl": f"urn:uuid:{consent.consent_id}", "resource": consent_resource(consent, now)}
        for consent in consents
    ]
    return validated_bundle(
        {"resourceType": "Bundle", "type": "collection", "timestamp": _instant(now), "entry": entries}
    )


def history_bundle(records: Sequence[ConsentRecord], now: datetime) -> dict[str, Any]:
    """Every version of the consents of ``records`` as a validated ``history`` Bundle, newest first.

    ``records`` are the records of one or more consents; each consent's records are in revision order.
    """
    states: list[tuple[ConsentRecord, Consent]] = []
    current: dict[str, Consent] = {}
    for record in records:
        previous = current.get(record.consent_id)
        state = Consent.opened(record) if previous is None else previous.after(record)
        current[record.consent_id] = state
        states.append((record, state))
    entries = []
    for record, state in reversed(states):
        opened = record.revision == 1
        entries.append(
            {
                "fullUrl": f"urn:uuid:{record.consent_id}",
                "resource": consent_resource(state, now),
                "request": {
                    "method": "POST" if opened else "PUT",
                    "url": "Consent" if opened else f"Consent/{record.consent_id}",
                },
                "response": {
                    "status": "201 Created" if opened else "200 OK",
                    "etag": f'W/"{record.revision}"',
                    "lastModified": _instant(record.recorded_at),
                },
            }
        )
    return validated_bundle(
        {
            "resourceType": "Bundle",
            "type": "history",
            "timestamp": _instant(now),
            "total": len(entries),
            "entry": entries,
        }
    )
