"""DICOM audit messages: built for every kind of record and valid against the PS3.15 A.5.1 schema."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from lxml import etree

from emage_audit.domain.atna import AuditSource, audit_message
from emage_audit.domain.chain import EMPTY_HEAD, ChainRecord, append_to
from emage_audit.domain.entries import entry_of, purge_entry
from emage_common.events import CloudEvent

SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "dicom-audit-message.rnc"
SOURCE = AuditSource("emage-test", "e-mage test site")


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    # The standard writes its value annotations as "##" comments after the values, where the RELAX NG compact
    # grammar accepts documentation only before a pattern; as plain comments they mean the same (nothing).
    compact = SCHEMA_PATH.read_text(encoding="utf-8").replace("##", "#")
    return etree.RelaxNG.from_rnc_string(compact)


def record_of(event: CloudEvent) -> ChainRecord:
    return append_to(EMPTY_HEAD, entry_of(event), recorded_at="2025-03-12T13:05:01Z")


def validated(schema: etree.RelaxNG, record: ChainRecord) -> etree._Element:
    document = etree.fromstring(audit_message(record, SOURCE))
    assert schema.validate(document), schema.error_log
    return document


def event_of(document: etree._Element) -> tuple[str, str, str]:
    identification = document.find("EventIdentification")
    assert identification is not None
    event_id = identification.find("EventID")
    assert event_id is not None
    return (
        event_id.get("csd-code", ""),
        identification.get("EventActionCode", ""),
        identification.get("EventOutcomeIndicator", ""),
    )


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("retrieve", ("110103", "R", "0")),
        ("read_metadata", ("110103", "R", "0")),
        ("download", ("110103", "R", "0")),
        ("open_link", ("110103", "R", "0")),
        ("store", ("110103", "C", "0")),
        ("correct_metadata", ("110103", "U", "0")),
        ("share", ("110110", "U", "0")),
        ("create_link", ("110110", "U", "0")),
    ],
)
def test_access_decisions_are_valid_audit_messages(
    schema: etree.RelaxNG, audit: ModuleType, action: str, expected: tuple[str, str, str]
) -> None:
    document = validated(schema, record_of(audit.access_event(action=action)))
    assert event_of(document) == expected
    participant = document.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == "kc-radiologist-a"
    assert participant.get("AlternativeUserID") == "RPPS:10100000016"
    assert participant.get("UserName") == "Alice Martin"
    assert participant.get("NetworkAccessPointID") == "10.1.2.3"
    objects = {
        o.get("ParticipantObjectTypeCodeRole"): o for o in document.iter("ParticipantObjectIdentification")
    }
    assert objects["3"].get("ParticipantObjectID") == audit.STUDY_1
    assert objects["1"].get("ParticipantObjectID") == audit.PATIENT_1.patient_key


def test_a_search_is_a_query_message(schema: etree.RelaxNG, audit: ModuleType) -> None:
    document = validated(schema, record_of(audit.access_event(action="search", study=None, patient=None)))
    assert event_of(document) == ("110112", "E", "0")
    (query,) = document.iter("ParticipantObjectIdentification")
    assert query.get("ParticipantObjectTypeCodeRole") == "24"


def test_a_refused_access_is_a_minor_failure_with_its_reason(
    schema: etree.RelaxNG, audit: ModuleType
) -> None:
    document = validated(schema, record_of(audit.access_event(decision="deny", reason="no_relationship")))
    assert event_of(document) == ("110103", "R", "4")
    assert document.findtext("EventIdentification/EventOutcomeDescription") == "no_relationship"


def test_break_the_glass_is_a_security_alert(schema: etree.RelaxNG, audit: ModuleType) -> None:
    event = audit.access_event(action="break_glass", basis="break_glass", justification=audit.JUSTIFICATION)
    document = validated(schema, record_of(event))
    assert event_of(document) == ("110113", "E", "0")
    type_code = document.find("EventIdentification/EventTypeCode")
    assert type_code is not None
    assert type_code.get("csd-code") == "110127"


def test_reading_the_trail_is_audit_log_used(schema: etree.RelaxNG, audit: ModuleType) -> None:
    dpo = {"subject": "kc-dpo", "role": "dpo", "name": "Denise Paul"}
    event = audit.access_event(dpo, action="read_audit", study=None, patient=None, basis="audit_role")
    document = validated(schema, record_of(event))
    assert event_of(document) == ("110101", "R", "0")


def test_an_archived_instance_is_instances_transferred(schema: etree.RelaxNG, audit: ModuleType) -> None:
    document = validated(schema, record_of(audit.instance_event()))
    assert event_of(document) == ("110104", "C", "0")
    roles = [p.find("RoleIDCode").get("csd-code") for p in document.iter("ActiveParticipant")]  # type: ignore[union-attr]
    assert roles == ["110153", "110152"]
    instance = document.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass/Instance")
    assert instance is not None
    assert instance.get("UID") == "1.2.826.0.1.3680043.8.498.11"


def test_consents_and_shares_are_patient_record_messages(schema: etree.RelaxNG, audit: ModuleType) -> None:
    assert event_of(validated(schema, record_of(audit.consent_event()))) == ("110110", "C", "0")
    assert event_of(validated(schema, record_of(audit.consent_event(revision=2)))) == ("110110", "U", "0")
    assert event_of(validated(schema, record_of(audit.share_event()))) == ("110110", "C", "0")


def test_a_purge_is_a_deletion_of_the_audit_log(schema: etree.RelaxNG, audit: ModuleType) -> None:
    entry = purge_entry(
        "purge-1",
        at=audit.NOW,
        through_seq=1000,
        through_hash="a" * 64,
        records_purged=1000,
        retention_days=3650,
        requested_by={"subject": "kc-dpo", "role": "dpo"},
    )
    record = append_to(EMPTY_HEAD, entry, recorded_at="2025-03-12T13:05:01Z")
    assert event_of(validated(schema, record)) == ("110101", "D", "0")


def test_the_schema_rejects_what_it_should(schema: etree.RelaxNG, audit: ModuleType) -> None:
    document = etree.fromstring(audit_message(record_of(audit.access_event()), SOURCE))
    identification = document.find("EventIdentification")
    assert identification is not None
    identification.set("EventOutcomeIndicator", "1")
    assert not schema.validate(document)


def test_text_is_escaped_not_interpreted(schema: etree.RelaxNG, audit: ModuleType) -> None:
    principal = {**audit.RADIOLOGIST_A, "name": 'Dr "<Evil/>" & Co'}
    document = validated(schema, record_of(audit.access_event(principal)))
    participant = document.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserName") == 'Dr "<Evil/>" & Co'
