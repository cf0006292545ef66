"""FHIR R4 AuditEvents of every kind of record, validated by the fhir.resources models."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from emage_audit.domain.atna import AuditSource
from emage_audit.domain.chain import EMPTY_HEAD, ChainRecord, append_to
from emage_audit.domain.entries import entry_of, purge_entry
from emage_audit.domain.fhir import audit_event, search_bundle
from emage_common.events import CloudEvent, Ins, PatientIdentity

SOURCE = AuditSource("emage-test", "e-mage test site")


def record_of(event: CloudEvent) -> ChainRecord:
    return append_to(EMPTY_HEAD, entry_of(event), recorded_at="2025-03-12T13:05:01Z")


def as_json(record: ChainRecord) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads(audit_event(record, SOURCE).model_dump_json())
    return resource


def test_an_access_is_an_audit_event(audit: ModuleType) -> None:
    resource = as_json(record_of(audit.access_event()))
    assert resource["resourceType"] == "AuditEvent"
    assert resource["id"] == "1"
    assert resource["type"]["code"] == "110103"
    assert resource["action"] == "R"
    assert resource["outcome"] == "0"
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert resource["recorded"].startswith("2025-03-12T13:05:01")
    (agent,) = resource["agent"]
    assert agent["who"]["identifier"] == {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10100000016"}
    assert agent["name"] == "Alice Martin"
    assert agent["location"]["identifier"]["value"] == audit.CHU_ALPHA
    assert agent["network"] == {"address": "10.1.2.3", "type": "2"}
    assert resource["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{audit.STUDY_1}"
    assert resource["entity"][1]["what"]["identifier"]["value"] == audit.PATIENT_1.patient_key


def test_break_the_glass_is_emergency_treatment_with_its_justification(audit: ModuleType) -> None:
    event = audit.access_event(basis="break_glass", justification=audit.JUSTIFICATION)
    resource = as_json(record_of(event))
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    details = {d["type"]: d["valueString"] for d in resource["entity"][1]["detail"]}
    assert details["justification"] == audit.JUSTIFICATION


def test_a_refusal_is_a_minor_failure(audit: ModuleType) -> None:
    resource = as_json(record_of(audit.access_event(decision="deny", reason="no_relationship")))
    assert (resource["outcome"], resource["outcomeDesc"]) == ("4", "no_relationship")
    assert "purposeOfEvent" not in resource


def test_a_qualified_patient_is_identified_by_ins(audit: ModuleType) -> None:
    patient = PatientIdentity(
        patient_id="IPP-9",
        issuer_of_patient_id="CHUA",
        ins=Ins(matricule="277076322082910", oid="1.2.250.1.213.1.4.10"),
    )
    resource = as_json(record_of(audit.access_event(patient=patient)))
    assert resource["entity"][1]["what"]["identifier"] == {
        "system": "urn:oid:1.2.250.1.213.1.4.10",
        "value": "277076322082910",
    }


def test_every_kind_of_record_validates(audit: ModuleType) -> None:
    purge = purge_entry(
        "purge-1",
        at=audit.NOW,
        through_seq=10,
        through_hash="a" * 64,
        records_purged=10,
        retention_days=365,
        requested_by={"subject": "kc-dpo", "role": "dpo", "name": "Denise Paul"},
    )
    records = [
        record_of(audit.instance_event()),
        record_of(audit.consent_event()),
        record_of(audit.share_event()),
        record_of(audit.access_event(action="search", study=None, patient=None)),
        record_of(
            audit.access_event(action="break_glass", basis="break_glass", justification=audit.JUSTIFICATION)
        ),
        append_to(EMPTY_HEAD, purge, recorded_at="2025-03-12T13:05:01Z"),
    ]
    types = [as_json(record)["type"]["code"] for record in records]
    assert types == ["110104", "110110", "110110", "110112", "110113", "110101"]


def test_a_search_bundle(audit: ModuleType) -> None:
    events = [audit_event(record_of(audit.access_event()), SOURCE)]
    bundle = json.loads(search_bundle(events, total=7).model_dump_json())
    assert (bundle["resourceType"], bundle["type"], bundle["total"]) == ("Bundle", "searchset", 7)
    assert bundle["entry"][0]["resource"]["resourceType"] == "AuditEvent"
    assert bundle["entry"][0]["search"] == {"mode": "match"}
