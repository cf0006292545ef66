"""What each domain event becomes in the trail, and what is derived from a record."""

from __future__ import annotations

from types import ModuleType

import pytest

from emage_audit.domain.entries import (
    ACCESS_DECIDED,
    INSTANCE_STORED,
    alert_sighting,
    entry_of,
    exam_facts,
    index_fields,
)
from emage_common.events import (
    Acquisition,
    EventDecodingError,
    InvalidEventDataError,
    StudyChanged,
    make_event,
)


def test_an_access_decision_is_kept_whole_at_the_instant_it_was_decided(audit: ModuleType) -> None:
    event = audit.access_event()
    entry = entry_of(event)
    assert entry.event_id == event.id
    assert entry.type == ACCESS_DECIDED
    assert entry.time == "2025-03-12T13:05:00Z"
    assert entry.data["principal"]["name"] == "Alice Martin"
    assert entry.data["study_instance_uid"] == audit.STUDY_1
    assert "justification" not in entry.data  # absent values are left out, not null


def test_an_archived_instance_keeps_identifiers_and_checksum_not_its_metadata(audit: ModuleType) -> None:
    entry = entry_of(audit.instance_event())
    assert entry.type == INSTANCE_STORED
    assert "dicom_json" not in entry.data
    assert "object_key" not in entry.data
    assert entry.data["sha256"] == "ab" * 32
    assert entry.data["sop_instance_uid"] == "1.2.826.0.1.3680043.8.498.11"
    # What names the exam for patients, and nothing else of the dataset (no patient name).
    assert entry.data["study_date"] == "20250310"
    assert entry.data["study_description"] == "THORAX"
    assert entry.data["accession"] == "ACC-1"
    assert "DURAND" not in str(entry.data)


def test_consents_and_shares_are_kept_at_their_change(audit: ModuleType) -> None:
    consent = entry_of(audit.consent_event(revision=2, status="inactive"))
    share = entry_of(audit.share_event())
    assert consent.data["status"] == "inactive"
    assert share.data["recipient"] == {"kind": "professional", "rpps": audit.RADIOLOGIST_B["rpps"]}


def test_events_the_trail_does_not_keep_are_refused(audit: ModuleType) -> None:
    changed = StudyChanged.model_validate(
        {
            "study_instance_uid": audit.STUDY_1,
            "change": "created",
            "revision": 1,
            "facility_finess": audit.CHU_ALPHA,
            "patient": audit.PATIENT_1.model_dump(),
            "number_of_series": 1,
            "number_of_instances": 1,
            "changed_at": audit.NOW,
        }
    )
    with pytest.raises(InvalidEventDataError):
        entry_of(make_event(changed, "/emage/catalog"))
    acquisition = Acquisition.model_validate(
        {
            "facility_finess": audit.CHU_ALPHA,
            "accession_number": "ACC-1",
            "patient": audit.PATIENT_1.model_dump(),
            "performing_technician": "T1",
            "source": {"kind": "dicomweb", "base_url": "https://pacs.example.org/dicom-web"},
        }
    )
    with pytest.raises(EventDecodingError):
        entry_of(make_event(acquisition, "/hospital"))


def test_query_fields_of_an_access_decision(audit: ModuleType) -> None:
    entry = entry_of(audit.access_event(decision="deny", reason="no_relationship"))
    ix = index_fields(entry.type, entry.data, entry.time)
    assert ix["patient_key"] == audit.PATIENT_1.patient_key
    assert ix["studies"] == [audit.STUDY_1]
    assert ix["subject"] == "kc-radiologist-a"
    assert ix["facility"] == audit.CHU_ALPHA
    assert ix["decision"] == "deny"
    assert ix["action"] == "retrieve"
    assert ix["break_glass"] is False
    assert ix["at"] == audit.NOW


def test_query_fields_of_other_records(audit: ModuleType) -> None:
    stored = entry_of(audit.instance_event())
    share = entry_of(audit.share_event())
    stored_ix = index_fields(stored.type, stored.data, stored.time)
    share_ix = index_fields(share.type, share.data, share.time)
    assert stored_ix["patient_key"] == audit.PATIENT_1.patient_key
    assert stored_ix["facility"] == audit.CHU_ALPHA
    assert share_ix["subject"] == "kc-patient-1"
    assert share_ix["studies"] == [audit.STUDY_1]
    assert share_ix["decision"] is None


def test_the_time_field_keeps_milliseconds_as_mongodb_does(audit: ModuleType) -> None:
    entry = entry_of(audit.access_event(at=audit.NOW.replace(microsecond=123_456)))
    assert entry.time == "2025-03-12T13:05:00.123456Z"
    assert index_fields(entry.type, entry.data, entry.time)["at"].microsecond == 123_000


def test_break_the_glass_raises_an_alert_for_its_episode(audit: ModuleType) -> None:
    opening = entry_of(
        audit.access_event(
            audit.RADIOLOGIST_B, action="break_glass", basis="break_glass", justification=audit.JUSTIFICATION
        )
    )
    access = entry_of(
        audit.access_event(audit.RADIOLOGIST_B, basis="break_glass", justification=audit.JUSTIFICATION)
    )
    first, then = alert_sighting(opening), alert_sighting(access)
    assert first is not None
    assert then is not None
    assert first.opening
    assert not then.opening
    assert first.alert_id == then.alert_id
    assert first.patient_key == audit.PATIENT_1.patient_key
    assert first.justification == audit.JUSTIFICATION


def test_other_accesses_and_refused_break_the_glass_raise_no_alert(audit: ModuleType) -> None:
    assert alert_sighting(entry_of(audit.access_event())) is None
    refused = audit.access_event(action="break_glass", decision="deny", reason="break_glass_unjustified")
    assert alert_sighting(entry_of(refused)) is None


def test_an_archived_instance_names_its_exam(audit: ModuleType) -> None:
    facts = exam_facts(entry_of(audit.instance_event()))
    assert facts is not None
    assert (facts.modality, facts.study_date, facts.study_description) == ("CT", "20250310", "THORAX")
    assert exam_facts(entry_of(audit.access_event())) is None
