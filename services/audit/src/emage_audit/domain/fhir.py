"""FHIR R4 AuditEvent resources built from the trail's records, validated by the ``fhir.resources`` models.

The models are ``fhir.resources.R4B``: FHIR 4.3 left AuditEvent exactly as R4 (4.0.1) defined it, so the
resources are R4 AuditEvents. Each record maps as its DICOM audit message does
(:mod:`emage_audit.domain.atna`), the AuditEvent being the DICOM audit message's FHIR form (FHIR R4
AuditEvent §6.4.4.1): ``type`` is its EventID (DCM), ``action`` its EventActionCode, ``outcome`` its
EventOutcomeIndicator; the access's basis becomes ``purposeOfEvent`` (HL7 v3 ActReason: TREAT, ETREAT for
break-the-glass, PATRQT for a patient's own acts, HOPERAT for audit reads). Professionals are identified by
RPPS (``urn:oid:1.2.250.1.71.4.2.1``), facilities by FINESS (``urn:oid:1.2.250.1.71.4.2.2``), studies by
DICOM UID, patients by INS when qualified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from emage_audit.domain import atna
from emage_audit.domain.chain import ChainRecord
from emage_audit.domain.entries import (
    ACCESS_DECIDED,
    CONSENT_CHANGED,
    INSTANCE_STORED,
    PURGED,
    SHARE_CHANGED,
    patient_key_of,
)

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
LIFECYCLE: Final = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
RPPS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.2"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
PATIENT_KEY_SYSTEM: Final = "urn:emage:patient-key"
SUBJECT_SYSTEM: Final = "urn:emage:subject"
ROLE_SYSTEM: Final = "urn:emage:role"
ACTION_SYSTEM: Final = "urn:emage:action"

_PURPOSES: Final[Mapping[str, tuple[str, str]]] = {
    "care": ("TREAT", "treatment"),
    "consent": ("TREAT", "treatment"),
    "share": ("TREAT", "treatment"),
    "link": ("PATRQT", "patient requested"),
    "break_glass": ("ETREAT", "Emergency Treatment"),
    "own_record": ("PATRQT", "patient requested"),
    "audit_role": ("HOPERAT", "healthcare operations"),
}


def _coding(code: atna.Code) -> dict[str, str]:
    value, scheme, meaning = code
    return {
        "system": DCM if scheme == "DCM" else f"urn:dicom:{scheme.lower()}",
        "code": value,
        "display": meaning,
    }


def _study(uid: str, *, disclosed: bool = False) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
    }
    if disclosed:
        entity["lifecycle"] = {"system": LIFECYCLE, "code": "11", "display": "Disclosure"}
    return entity


def _patient_identifier(patient_key: str) -> dict[str, str]:
    kind, _, rest = patient_key.partition(":")
    if kind == "ins":
        oid, _, matricule = rest.rpartition(":")
        return {"system": f"urn:oid:{oid}", "value": matricule}
    return {"system": PATIENT_KEY_SYSTEM, "value": patient_key}


def _patient(patient_key: str | None, details: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    if patient_key is None:
        return []
    entity: dict[str, Any] = {
        "what": {"identifier": _patient_identifier(patient_key)},
        "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    }
    if details:
        entity["detail"] = [{"type": name, "valueString": value} for name, value in details.items()]
    return [entity]


def _audit_log(source: atna.AuditSource, details: Mapping[str, str] | None = None) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"system": "urn:ietf:rfc:3986", "value": source.audit_log_uri}},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
        "name": "Security Audit Log",
    }
    if details:
        entity["detail"] = [{"type": name, "valueString": value} for name, value in details.items()]
    return entity


def _person(principal: Mapping[str, Any], address: str | None) -> dict[str, Any]:
    rpps = principal.get("rpps")
    identifier = (
        {"system": RPPS_SYSTEM, "value": rpps}
        if rpps
        else {"system": SUBJECT_SYSTEM, "value": principal["subject"]}
    )
    role = str(principal.get("role", ""))
    agent: dict[str, Any] = {
        "role": [{"coding": [{"system": ROLE_SYSTEM, "code": role, "display": role.replace("_", " ")}]}],
        "who": {"identifier": identifier},
        "altId": principal["subject"],
        "requestor": True,
    }
    if principal.get("name"):
        agent["name"] = principal["name"]
        agent["who"]["display"] = principal["name"]
    if principal.get("facility_finess"):
        agent["location"] = {
            "identifier": {"system": FINESS_SYSTEM, "value": principal["facility_finess"]},
            **({"display": principal["facility_name"]} if principal.get("facility_name") else {}),
        }
    if address:
        agent["network"] = {"address": address, "type": "2"}
    return agent


def _system(name: str, *, requestor: bool) -> dict[str, Any]:
    return {"who": {"display": name}, "requestor": requestor}


def _access_decided(resource: dict[str, Any], record: ChainRecord, source: atna.AuditSource) -> None:
    data = record.data
    action = data["action"]
    if action == "search":
        code, verb = atna.QUERY, "E"
    elif action == "break_glass":
        code, verb = atna.SECURITY_ALERT, "E"
        resource["subtype"] = [_coding(atna.EMERGENCY_OVERRIDE_STARTED)]
    elif action in ("read_audit", "verify_audit"):
        code, verb = atna.AUDIT_LOG_USED, "R"
    elif action in ("share", "revoke_share", "create_link", "revoke_link"):
        code, verb = atna.PATIENT_RECORD, "U"
    else:
        code, verb = atna.INSTANCES_ACCESSED, {"store": "C", "correct_metadata": "U"}.get(action, "R")
    resource["type"] = _coding(code)
    resource.setdefault("subtype", []).append({"system": ACTION_SYSTEM, "code": action})
    resource["action"] = verb
    if data["decision"] == "allow":
        resource["outcome"] = "0"
        purpose, display = _PURPOSES.get(data["basis"], ("TREAT", "treatment"))
        resource["purposeOfEvent"] = [
            {"coding": [{"system": ACT_REASON, "code": purpose, "display": display}]}
        ]
    else:
        resource["outcome"] = "4"
        resource["outcomeDesc"] = data["reason"]
    resource["agent"] = [_person(data["principal"], data.get("client_address"))]
    entities = []
    if action in ("read_audit", "verify_audit"):
        entities.append(_audit_log(source))
    if data.get("study_instance_uid"):
        entities.append(_study(data["study_instance_uid"], disclosed=code == atna.PATIENT_RECORD))
    details = {"basis": data["basis"]} if data.get("basis") else {}
    if data.get("justification"):
        details["justification"] = data["justification"]
    entities.extend(_patient(data.get("patient_key"), details))
    resource["entity"] = entities


def _instance_stored(resource: dict[str, Any], record: ChainRecord, source: atna.AuditSource) -> None:
    data = record.data
    resource["type"] = _coding(atna.INSTANCES_TRANSFERRED)
    resource["action"] = "C"
    resource["outcome"] = "0"
    resource["agent"] = [
        {
            "type": {"coding": [_coding(atna.SOURCE_ROLE)]},
            "who": {"identifier": {"system": FINESS_SYSTEM, "value": data["facility_finess"]}},
            "requestor": True,
        },
        {"type": {"coding": [_coding(atna.DESTINATION_ROLE)]}, **_system(source.source_id, requestor=False)},
    ]
    study = _study(data["study_instance_uid"])
    study["detail"] = [
        {"type": "SOPClassUID", "valueString": data["sop_class_uid"]},
        {"type": "SOPInstanceUID", "valueString": data["sop_instance_uid"]},
        {"type": "SHA-256", "valueString": data["sha256"]},
    ]
    resource["entity"] = [study, *_patient(patient_key_of(record.type, data))]


def _patient_record(resource: dict[str, Any], record: ChainRecord, source: atna.AuditSource) -> None:
    data = record.data
    resource["type"] = _coding(atna.PATIENT_RECORD)
    resource["action"] = "C" if data["revision"] == 1 else "U"
    resource["outcome"] = "0"
    if record.type == SHARE_CHANGED:
        resource["agent"] = [
            {"who": {"identifier": {"system": SUBJECT_SYSTEM, "value": data["shared_by"]}}, "requestor": True}
        ]
        details = {
            "share_id": data["share_id"],
            "status": data["status"],
            "recipient": data["recipient"]["kind"],
        }
        studies = list(data.get("study_instance_uids", ()))
    else:
        resource["agent"] = [_system(f"{source.source_id}:consent", requestor=True)]
        details = {"consent_id": data["consent_id"], "status": data["status"], "provision": data["provision"]}
        studies = [data["study_instance_uid"]] if data.get("study_instance_uid") else []
    disclosed = record.type == SHARE_CHANGED
    resource["entity"] = [
        *(_study(uid, disclosed=disclosed) for uid in studies),
        *_patient(data["patient_key"], details),
    ]


def _purged(resource: dict[str, Any], record: ChainRecord, source: atna.AuditSource) -> None:
    data = record.data
    resource["type"] = _coding(atna.AUDIT_LOG_USED)
    resource["action"] = "D"
    resource["outcome"] = "0"
    requested_by = data["requested_by"]
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": SUBJECT_SYSTEM, "value": requested_by["subject"]}},
        "requestor": True,
    }
    if requested_by.get("name"):
        agent["name"] = requested_by["name"]
    resource["agent"] = [agent]
    resource["entity"] = [
        _audit_log(
            source, {"through_seq": str(data["through_seq"]), "records_purged": str(data["records_purged"])}
        )
    ]


_BUILDERS: Final = {
    ACCESS_DECIDED: _access_decided,
    INSTANCE_STORED: _instance_stored,
    CONSENT_CHANGED: _patient_record,
    SHARE_CHANGED: _patient_record,
    PURGED: _purged,
}


def audit_event(record: ChainRecord, source: atna.AuditSource) -> AuditEvent:
    """The FHIR R4 AuditEvent of a record, validated; its id is the record's sequence number."""
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record.seq),
        "period": {"start": record.time, "end": record.time},
        "recorded": record.recorded_at,
        "source": {
            "observer": {"display": source.source_id},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if source.enterprise_site_id is not None:
        resource["source"]["site"] = source.enterprise_site_id
    builder = _BUILDERS.get(record.type)
    if builder is None:
        resource["type"] = _coding(atna.APPLICATION_ACTIVITY)
        resource["agent"] = [_system(source.source_id, requestor=True)]
    else:
        builder(resource, record, source)
    return AuditEvent.model_validate(resource)


def search_bundle(events: Iterable[AuditEvent], total: int) -> Bundle:
    """A ``searchset`` Bundle of AuditEvents with the number of matches on all pages, validated."""
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "entry": [{"resource": event, "search": {"mode": "match"}} for event in events],
        }
    )
