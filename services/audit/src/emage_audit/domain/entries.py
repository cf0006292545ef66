"""What each domain event becomes in the trail, and what is derived from a record.

The trail keeps the events that say who did what to whose data (see the service README for why each topic is
consumed): access decisions, archived instances, consents and shares, and the trail's own purges. A record's
``data`` is the event's payload, except for ``instance.stored``, whose DICOM JSON metadata is reduced to the
identifiers, checksum and the few attributes that name the exam (a trail of who did what, not a second
catalog, and no more patient data than it needs).

Derived from a record and never trusted as stored: its query fields (:func:`index_fields`), which
verification recomputes too; its break-the-glass alert (:func:`alert_sighting`); and what it tells of an
exam, to name it for patients (:func:`exam_facts`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from emage_audit.domain.canonical import canonical_json
from emage_audit.domain.chain import ChainEntry, ChainRecord
from emage_common.events import (
    ACCESS_DECIDED_TOPIC,
    CONSENT_CHANGED_TOPIC,
    INSTANCE_STORED_TOPIC,
    SHARE_CHANGED_TOPIC,
    AccessDecided,
    CloudEvent,
    ConsentChanged,
    EventData,
    InstanceStored,
    InvalidEventDataError,
    PatientIdentity,
    ShareChanged,
    decode_data,
    format_rfc3339,
    parse_rfc3339,
)

AUDITED_TOPICS: Final = (
    ACCESS_DECIDED_TOPIC,
    INSTANCE_STORED_TOPIC,
    CONSENT_CHANGED_TOPIC,
    SHARE_CHANGED_TOPIC,
)
"""The domain topics the trail consumes."""

ACCESS_DECIDED: Final = AccessDecided.event_type
INSTANCE_STORED: Final = InstanceStored.event_type
CONSENT_CHANGED: Final = ConsentChanged.event_type
SHARE_CHANGED: Final = ShareChanged.event_type
PURGED: Final = "fr.emage.audit.purged.v1"
"""The trail's own event: a retention purge of whole segments (:func:`purge_entry`)."""

# (0008,0020) Study Date, (0008,1030) Study Description, (0008,0050) Accession Number: what names the exam.
_EXAM_ATTRIBUTES: Final = {"00080020": "study_date", "00081030": "study_description", "00080050": "accession"}


def entry_of(event: CloudEvent) -> ChainEntry:
    """The entry a domain event becomes; :class:`~emage_common.events.EventDecodingError` when it is none."""
    data = decode_data(event)
    if not isinstance(data, AccessDecided | InstanceStored | ConsentChanged | ShareChanged):
        raise InvalidEventDataError(f"{event.type} is not an audited event")
    return ChainEntry(
        event_id=event.id,
        type=event.type,
        time=format_rfc3339(_occurred_at(data)),
        data=_recorded_data(data),
    )


def _occurred_at(data: EventData) -> datetime:
    match data:
        case AccessDecided():
            return data.decided_at
        case InstanceStored():
            return data.stored_at
        case ConsentChanged() | ShareChanged():
            return data.changed_at
    raise InvalidEventDataError(f"{type(data).__name__} is not audited")


def _recorded_data(data: EventData) -> dict[str, Any]:
    if not isinstance(data, InstanceStored):
        return data.model_dump(mode="json", exclude_none=True)
    recorded = data.model_dump(mode="json", exclude_none=True, exclude={"dicom_json", "object_key"})
    for tag, name in _EXAM_ATTRIBUTES.items():
        values = data.dicom_json.get(tag, {}).get("Value")
        if values and isinstance(values[0], str):
            recorded[name] = values[0]
    return recorded


def purge_entry(
    event_id: str,
    *,
    at: datetime,
    through_seq: int,
    through_hash: str,
    records_purged: int,
    retention_days: int,
    requested_by: Mapping[str, Any],
) -> ChainEntry:
    """The trail's record of its own purge of the records up to ``through_seq`` (the anchoring checkpoint)."""
    return ChainEntry(
        event_id=event_id,
        type=PURGED,
        time=format_rfc3339(at),
        data={
            "through_seq": through_seq,
            "through_hash": through_hash,
            "records_purged": records_purged,
            "retention_days": retention_days,
            "requested_by": dict(requested_by),
        },
    )


# --- Derived from a record ----------------------------------------------------------------------------------


def _milliseconds(value: datetime) -> datetime:
    # MongoDB dates hold milliseconds: the derived field must compare equal after a round trip.
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def patient_key_of(record_type: str, data: Mapping[str, Any]) -> str | None:
    """The patient a record concerns, if any."""
    if record_type == INSTANCE_STORED:
        return PatientIdentity.model_validate(data["patient"]).patient_key
    key = data.get("patient_key")
    return key if isinstance(key, str) else None


def index_fields(record_type: str, data: Mapping[str, Any], time: str) -> dict[str, Any]:
    """The query fields of a record (stored beside it under ``ix``), all derived from its content."""
    principal = data.get("principal") if record_type == ACCESS_DECIDED else None
    studies: list[str] = []
    if isinstance(data.get("study_instance_uid"), str):
        studies.append(data["study_instance_uid"])
    studies.extend(uid for uid in data.get("study_instance_uids", ()) if isinstance(uid, str))
    subject = None
    facility = None
    if isinstance(principal, Mapping):
        subject = principal.get("subject")
        facility = principal.get("facility_finess")
    elif record_type == SHARE_CHANGED:
        subject = data.get("shared_by")
        facility = data.get("shared_by_facility")
    elif record_type == INSTANCE_STORED:
        facility = data.get("facility_finess")
    decision = data.get("decision") if record_type == ACCESS_DECIDED else None
    return {
        "patient_key": patient_key_of(record_type, data),
        "studies": studies,
        "subject": subject,
        "facility": facility,
        "decision": decision,
        "action": data.get("action") if record_type == ACCESS_DECIDED else None,
        "break_glass": is_break_glass(record_type, data),
        "at": _milliseconds(parse_rfc3339(time)),
    }


def record_index(record: ChainRecord) -> dict[str, Any]:
    return index_fields(record.type, record.data, record.time)


def is_break_glass(record_type: str, data: Mapping[str, Any]) -> bool:
    """An allowed access under break-the-glass, or the opening of one."""
    return (
        record_type == ACCESS_DECIDED
        and data.get("decision") == "allow"
        and (data.get("basis") == "break_glass" or data.get("action") == "break_glass")
    )


@dataclass(frozen=True, slots=True)
class AlertSighting:
    """One break-the-glass access, to fold into the alert of its episode (same professional, study, reason).

    The alert (``alert_id``) gathers the opening of the break-the-glass and every access made under it.
    """

    alert_id: str
    patient_key: str | None
    study_instance_uid: str | None
    principal: Mapping[str, Any]
    justification: str | None
    at: datetime
    opening: bool


def alert_sighting(entry: ChainEntry) -> AlertSighting | None:
    """The break-the-glass alert a new entry raises or adds to; None for any other entry."""
    if not is_break_glass(entry.type, entry.data):
        return None
    principal = entry.data["principal"]
    study = entry.data.get("study_instance_uid")
    justification = entry.data.get("justification")
    episode = canonical_json([principal.get("subject"), study, justification])
    return AlertSighting(
        alert_id=hashlib.sha256(episode).hexdigest()[:32],
        patient_key=entry.data.get("patient_key"),
        study_instance_uid=study,
        principal=principal,
        justification=justification,
        at=_milliseconds(parse_rfc3339(entry.time)),
        opening=entry.data.get("action") == "break_glass",
    )


@dataclass(frozen=True, slots=True)
class ExamFacts:
    """What an archived instance tells of its exam, so that patients read "CT of 10 March", not a UID."""

    study_instance_uid: str
    modality: str
    study_date: str | None
    study_description: str | None


def exam_facts(entry: ChainEntry) -> ExamFacts | None:
    if entry.type != INSTANCE_STORED:
        return None
    return ExamFacts(
        study_instance_uid=entry.data["study_instance_uid"],
        modality=entry.data["modality"],
        study_date=entry.data.get("study_date"),
        study_description=entry.data.get("study_description"),
    )
