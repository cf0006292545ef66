"""DICOM audit messages (PS3.15 Annex A.5, IHE ATNA) built from the trail's records.

Each record becomes one ``AuditMessage`` valid against the DICOM Audit Message Schema (PS3.15 A.5.1, vendored
in ``services/audit/schemas``) and shaped after the DICOM specific audit messages (A.5.3):

=====================================  ===============================================================
record                                 message (EventID, EventActionCode)
=====================================  ===============================================================
access.decided, search                 Query (110112, E) with the QIDO-RS query object
access.decided, reading a study        DICOM Instances Accessed (110103, R)
access.decided, store / correction     DICOM Instances Accessed (110103, C / U)
access.decided, share or link acts     Patient Record (110110, U), study objects disclosed (life cycle 11)
access.decided, break-the-glass        Security Alert (110113, E), type Emergency Override Started (110127)
access.decided, audit trail reads      Audit Log Used (110101, R)
instance.stored                        DICOM Instances Transferred (110104, C): facility source → archive
consent.changed, share.changed         Patient Record (110110, C for the first revision, else U)
the trail's own purge                  Audit Log Used (110101, D)
=====================================  ===============================================================

A denied access is the same message with EventOutcomeIndicator 4 (minor failure: the request was refused,
nothing was disclosed) and the policy's reason as EventOutcomeDescription. Patients are identified by their
platform patient key (INS when qualified, else the facility's Patient ID with its issuer).
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from emage_audit.domain.chain import ChainRecord
from emage_audit.domain.entries import (
    ACCESS_DECIDED,
    CONSENT_CHANGED,
    INSTANCE_STORED,
    PURGED,
    SHARE_CHANGED,
    patient_key_of,
)

Code = tuple[str, str, str]
"""A coded value: (code, coding scheme designator, code meaning)."""

APPLICATION_ACTIVITY: Final = ("110100", "DCM", "Application Activity")
AUDIT_LOG_USED: Final = ("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED: Final = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Final = ("110104", "DCM", "DICOM Instances Transferred")
PATIENT_RECORD: Final = ("110110", "DCM", "Patient Record")
QUERY: Final = ("110112", "DCM", "Query")
SECURITY_ALERT: Final = ("110113", "DCM", "Security Alert")
EMERGENCY_OVERRIDE_STARTED: Final = ("110127", "DCM", "Emergency Override Started")
SOURCE_ROLE: Final = ("110153", "DCM", "Source Role ID")
DESTINATION_ROLE: Final = ("110152", "DCM", "Destination Role ID")
STUDY_INSTANCE_UID: Final = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Final = ("110181", "DCM", "SOP Class UID")
PATIENT_NUMBER: Final = ("2", "RFC-3881", "Patient Number")
URI: Final = ("12", "RFC-3881", "URI")
ROLE_SCHEME: Final = "e-mage role"
"""Coding scheme of the platform roles a person acts in (RoleIDCode)."""

STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2): QIDO-RS searches are its web form."""

# Participant Object Type Code / Role / Data Life Cycle values (PS3.15 A.5.1.2).
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE, ROLE_QUERY = "1", "3", "13", "24"
LIFE_CYCLE_DISCLOSURE: Final = "11"
LIFE_CYCLE_PERMANENT_ERASURE: Final = "15"

_READS: Final = frozenset({"read_metadata", "retrieve", "rendered", "download", "open_link"})
_SHARE_ACTS: Final = frozenset({"share", "revoke_share", "create_link", "revoke_link"})
_AUDIT_ACTS: Final = frozenset({"read_audit", "verify_audit"})


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports the messages (AuditSourceIdentification, PS3.15 A.5.2)."""

    source_id: str
    enterprise_site_id: str | None = None
    audit_log_uri: str = "urn:emage:audit"
    """ParticipantObjectID of the audit trail itself, in Audit Log Used messages."""


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    value, scheme, meaning = code
    return ET.SubElement(parent, tag, {"csd-code": value, "codeSystemName": scheme, "originalText": meaning})


def _event(
    root: ET.Element,
    event_id: Code,
    action: str,
    time: str,
    *,
    allowed: bool = True,
    outcome: str | None = None,
    type_code: Code | None = None,
) -> None:
    attributes = {
        "EventActionCode": action,
        "EventDateTime": time,
        "EventOutcomeIndicator": "0" if allowed else "4",
    }
    identification = ET.SubElement(root, "EventIdentification", attributes)
    _coded(identification, "EventID", event_id)
    if type_code is not None:
        _coded(identification, "EventTypeCode", type_code)
    if outcome is not None:
        ET.SubElement(identification, "EventOutcomeDescription").text = outcome


def _participant(
    root: ET.Element,
    user_id: str,
    *,
    requestor: bool,
    name: str | None = None,
    alternative_id: str | None = None,
    address: str | None = None,
    role: Code | None = None,
) -> None:
    attributes = {"UserID": user_id, "UserIsRequestor": "true" if requestor else "false"}
    if alternative_id is not None:
        attributes["AlternativeUserID"] = alternative_id
    if name is not None:
        attributes["UserName"] = name
    if address is not None:
        attributes["NetworkAccessPointID"] = address
        attributes["NetworkAccessPointTypeCode"] = "2"
    participant = ET.SubElement(root, "ActiveParticipant", attributes)
    if role is not None:
        _coded(participant, "RoleIDCode", role)


def _person(root: ET.Element, principal: Mapping[str, Any], address: str | None) -> None:
    role = str(principal.get("role", ""))
    rpps = principal.get("rpps")
    _participant(
        root,
        str(principal["subject"]),
        requestor=True,
        name=principal.get("name"),
        alternative_id=f"RPPS:{rpps}" if rpps else None,
        address=address,
        role=(role, ROLE_SCHEME, role.replace("_", " ")),
    )


def _source(root: ET.Element, source: AuditSource) -> None:
    attributes = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id is not None:
        attributes["AuditEnterpriseSiteID"] = source.enterprise_site_id
    identification = ET.SubElement(root, "AuditSourceIdentification", attributes)
    # 4: application server process tier in a multi-tier system (PS3.15 A.5.1.2.1).
    ET.SubElement(identification, "AuditSourceTypeCode", {"csd-code": "4"})


def _object(
    root: ET.Element,
    object_id: str,
    id_type: Code,
    *,
    type_code: str,
    role: str,
    name: str,
    life_cycle: str | None = None,
    details: Mapping[str, str] | None = None,
) -> ET.Element:
    attributes = {
        "ParticipantObjectID": object_id,
        "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role,
    }
    if life_cycle is not None:
        attributes["ParticipantObjectDataLifeCycle"] = life_cycle
    participant_object = ET.SubElement(root, "ParticipantObjectIdentification", attributes)
    _coded(participant_object, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(participant_object, "ParticipantObjectName").text = name
    for detail_type, value in (details or {}).items():
        encoded = base64.b64encode(value.encode()).decode("ascii")
        ET.SubElement(participant_object, "ParticipantObjectDetail", {"type": detail_type, "value": encoded})
    return participant_object


def _study(root: ET.Element, uid: str, *, life_cycle: str | None = None) -> ET.Element:
    return _object(
        root,
        uid,
        STUDY_INSTANCE_UID,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        name=uid,
        life_cycle=life_cycle,
    )


def _patient(root: ET.Element, patient_key: str | None, details: Mapping[str, str] | None = None) -> None:
    if patient_key is not None:
        _object(
            root,
            patient_key,
            PATIENT_NUMBER,
            type_code=PERSON,
            role=ROLE_PATIENT,
            name=patient_key,
            details=details,
        )


def _audit_log(root: ET.Element, source: AuditSource, details: Mapping[str, str] | None = None) -> None:
    _object(
        root,
        source.audit_log_uri,
        URI,
        type_code=SYSTEM_OBJECT,
        role=ROLE_SECURITY_RESOURCE,
        name="Security Audit Log",
        details=details,
    )


def _access_decided(root: ET.Element, record: ChainRecord, source: AuditSource) -> None:
    data = record.data
    action = data["action"]
    allowed = data["decision"] == "allow"
    outcome = None if allowed else data["reason"]
    study = data.get("study_instance_uid")
    if action == "search":
        _event(root, QUERY, "E", record.time, allowed=allowed, outcome=outcome)
    elif action == "break_glass":
        _event(
            root,
            SECURITY_ALERT,
            "E",
            record.time,
            allowed=allowed,
            outcome=outcome,
            type_code=EMERGENCY_OVERRIDE_STARTED,
        )
    elif action in _AUDIT_ACTS:
        _event(root, AUDIT_LOG_USED, "R", record.time, allowed=allowed, outcome=outcome)
    elif action in _SHARE_ACTS:
        _event(root, PATIENT_RECORD, "U", record.time, allowed=allowed, outcome=outcome)
    else:
        code = {"store": "C", "correct_metadata": "U"}.get(action, "R")
        _event(root, INSTANCES_ACCESSED, code, record.time, allowed=allowed, outcome=outcome)
    _person(root, data["principal"], data.get("client_address"))
    _source(root, source)
    if action == "search":
        _object(
            root, STUDY_ROOT_FIND, SOP_CLASS_UID, type_code=SYSTEM_OBJECT, role=ROLE_QUERY, name="QIDO-RS"
        )
    if action in _AUDIT_ACTS:
        _audit_log(root, source)
    if study is not None:
        _study(root, study, life_cycle=LIFE_CYCLE_DISCLOSURE if action in _SHARE_ACTS else None)
    details = {"basis": data["basis"]} if data.get("basis") else {}
    if data.get("justification"):
        details["justification"] = data["justification"]
    _patient(root, data.get("patient_key"), details)


def _instance_stored(root: ET.Element, record: ChainRecord, source: AuditSource) -> None:
    data = record.data
    _event(root, INSTANCES_TRANSFERRED, "C", record.time)
    _participant(root, f"FINESS:{data['facility_finess']}", requestor=True, role=SOURCE_ROLE)
    _participant(root, source.source_id, requestor=False, role=DESTINATION_ROLE)
    _source(root, source)
    study = _study(root, data["study_instance_uid"])
    description = ET.SubElement(study, "ParticipantObjectDescription")
    if data.get("accession"):
        ET.SubElement(description, "Accession", {"Number": data["accession"]})
    sop_class = ET.SubElement(
        description, "SOPClass", {"UID": data["sop_class_uid"], "NumberOfInstances": "1"}
    )
    ET.SubElement(sop_class, "Instance", {"UID": data["sop_instance_uid"]})
    _patient(root, patient_key_of(record.type, data))


def _patient_record(root: ET.Element, record: ChainRecord, source: AuditSource) -> None:
    data = record.data
    _event(root, PATIENT_RECORD, "C" if data["revision"] == 1 else "U", record.time)
    if record.type == SHARE_CHANGED:
        _participant(root, data["shared_by"], requestor=True)
        details = {
            "share_id": data["share_id"],
            "status": data["status"],
            "recipient": data["recipient"]["kind"],
        }
    else:
        # A consent is recorded by the consent service on the patient's behalf.
        _participant(root, f"{source.source_id}:consent", requestor=True)
        details = {"consent_id": data["consent_id"], "status": data["status"], "provision": data["provision"]}
    _source(root, source)
    studies = list(data.get("study_instance_uids", ()))
    if data.get("study_instance_uid"):
        studies.append(data["study_instance_uid"])
    for uid in studies:
        _study(root, uid, life_cycle=LIFE_CYCLE_DISCLOSURE if record.type == SHARE_CHANGED else None)
    _patient(root, data["patient_key"], details)


def _purged(root: ET.Element, record: ChainRecord, source: AuditSource) -> None:
    data = record.data
    _event(root, AUDIT_LOG_USED, "D", record.time)
    requested_by = data["requested_by"]
    _participant(root, str(requested_by["subject"]), requestor=True, name=requested_by.get("name"))
    _source(root, source)
    _audit_log(
        root,
        source,
        {"through_seq": str(data["through_seq"]), "records_purged": str(data["records_purged"])},
    )


_BUILDERS: Final = {
    ACCESS_DECIDED: _access_decided,
    INSTANCE_STORED: _instance_stored,
    CONSENT_CHANGED: _patient_record,
    SHARE_CHANGED: _patient_record,
    PURGED: _purged,
}


def audit_message(record: ChainRecord, source: AuditSource) -> bytes:
    """The DICOM audit message of a record, as UTF-8 XML without declaration (RFC 5424 §6.4 MSG)."""
    root = ET.Element("AuditMessage")
    builder = _BUILDERS.get(record.type)
    if builder is None:
        # A record type of a later version: reported as application activity rather than dropped.
        _event(root, APPLICATION_ACTIVITY, "E", record.time)
        _participant(root, source.source_id, requestor=True)
        _source(root, source)
    else:
        builder(root, record, source)
    return ET.tostring(root, encoding="unicode").encode("utf-8")
