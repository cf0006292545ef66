"""In-memory adapters of the audit service's ports, event factories, and the service and app as fixtures.

Patient 1 (CHU Alpha) has study 1; patient 2 (Clinique Beta) has study 2. Events are made as the services
publishing them make them (``make_event``), at fixed instants.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from emage_audit.api import router
from emage_audit.domain.atna import AuditSource
from emage_audit.domain.chain import EMPTY_HEAD, ChainHead, ChainRecord, extend
from emage_audit.domain.checkpoints import Checkpoint, CheckpointSigner, TrustedKeys
from emage_audit.domain.entries import ExamFacts, index_fields
from emage_audit.domain.verification import StoredRecord
from emage_audit.service import Alert, Appendable, Appended, AuditService, RecordQuery
from emage_audit.settings import DEV_ONLY_CHECKPOINT_SIGNING_KEY, Settings
from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal
from emage_common.events import (
    AccessDecided,
    CloudEvent,
    ConsentChanged,
    InstanceStored,
    PatientIdentity,
    ShareChanged,
    make_event,
)
from emage_common.web import create_service_app

NOW = datetime(2025, 3, 12, 13, 5, tzinfo=UTC)
CHU_ALPHA, CLINIQUE_BETA = "750000001", "690000002"
PATIENT_1 = PatientIdentity(patient_id="IPP-0001", issuer_of_patient_id="CHUA")
PATIENT_2 = PatientIdentity(patient_id="IPP-0002", issuer_of_patient_id="CLIB")
STUDY_1 = "1.2.826.0.1.3680043.8.498.1"
STUDY_2 = "1.2.826.0.1.3680043.8.498.2"
RADIOLOGIST_A = {
    "subject": "kc-radiologist-a",
    "role": "radiologist",
    "rpps": "10100000016",
    "facility_finess": CHU_ALPHA,
    "name": "Alice Martin",
    "facility_name": "CHU Alpha",
}
RADIOLOGIST_B = {
    "subject": "kc-radiologist-b",
    "role": "radiologist",
    "rpps": "10100000057",
    "facility_finess": CLINIQUE_BETA,
    "name": "Bruno Petit",
    "facility_name": "Clinique Beta",
}
PATIENT_1_PRINCIPAL = {"subject": "kc-patient-1", "role": "patient", "name": "Paul Durand"}
JUSTIFICATION = "Patient inconscient aux urgences, scanner antérieur nécessaire."
SIGNER = CheckpointSigner.from_base64_seed(DEV_ONLY_CHECKPOINT_SIGNING_KEY)


def access_event(
    principal: Mapping[str, Any] = RADIOLOGIST_A,
    *,
    action: str = "retrieve",
    study: str | None = STUDY_1,
    patient: PatientIdentity | None = PATIENT_1,
    decision: str = "allow",
    basis: str | None = "care",
    reason: str = "care_owning_facility",
    justification: str | None = None,
    at: datetime = NOW,
) -> CloudEvent:
    data = AccessDecided.model_validate(
        {
            "request_id": "req-1",
            "principal": dict(principal),
            "action": action,
            "study_instance_uid": study,
            "patient_key": patient.patient_key if patient is not None else None,
            "decision": decision,
            "basis": basis if decision == "allow" else None,
            "reason": reason,
            "justification": justification,
            "client_address": "10.1.2.3",
            "decided_at": at,
        }
    )
    return make_event(data, "/emage/access", subject=study, time=at)


def instance_event(
    *, study: str = STUDY_1, sop: str = "1.2.826.0.1.3680043.8.498.11", at: datetime = NOW
) -> CloudEvent:
    series = "1.2.826.0.1.3680043.8.498.101"
    data = InstanceStored(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{study}/{sop}",
        size_bytes=524_288,
        sha256="ab" * 32,
        facility_finess=CHU_ALPHA,
        patient=PATIENT_1,
        modality="CT",
        stored_at=at,
        dicom_json={
            "0020000D": {"vr": "UI", "Value": [study]},
            "00080020": {"vr": "DA", "Value": ["20250310"]},
            "00081030": {"vr": "LO", "Value": ["THORAX"]},
            "00080050": {"vr": "SH", "Value": ["ACC-1"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DURAND^PAUL"}]},
        },
    )
    return make_event(data, "/emage/ingest", time=at)


def consent_event(*, revision: int = 1, status: str = "active", at: datetime = NOW) -> CloudEvent:
    data = ConsentChanged.model_validate(
        {
            "consent_id": "consent-1",
            "revision": revision,
            "patient_key": PATIENT_1.patient_key,
            "status": status,
            "provision": "permit",
            "grantee": {"kind": "facility", "finess": CLINIQUE_BETA},
            "study_instance_uid": STUDY_1,
            "changed_at": at,
        }
    )
    return make_event(data, "/emage/consent", time=at)


def share_event(*, at: datetime = NOW) -> CloudEvent:
    data = ShareChanged.model_validate(
        {
            "share_id": "share-1",
            "revision": 1,
            "patient_key": PATIENT_1.patient_key,
            "study_instance_uids": [STUDY_1],
            "shared_by": "kc-patient-1",
            "recipient": {"kind": "professional", "rpps": RADIOLOGIST_B["rpps"]},
            "status": "active",
            "changed_at": at,
        }
    )
    return make_event(data, "/emage/access", time=at)


class MemoryAuditStore:
    """The store in memory: ``documents`` maps sequence numbers to records and their stored query fields,
    so tests can tamper with them as someone with database access would."""

    def __init__(self) -> None:
        self.documents: dict[int, StoredRecord] = {}
        self.chain_head: ChainHead = EMPTY_HEAD
        self.signed: dict[int, Checkpoint] = {}
        self.alert_documents: dict[str, dict[str, Any]] = {}
        self.exam_facts: dict[str, ExamFacts] = {}
        self.exports: dict[str, dict[str, Any]] = {}

    async def append(self, items: Sequence[Appendable], *, now: datetime) -> list[Appended]:
        known = {stored.record.event_id: stored.record for stored in self.documents.values()}
        entries = [item.entry for item in items]
        extended, self.chain_head = extend(self.chain_head, entries, known=known, now=now)
        for item, (record, created) in zip(items, extended, strict=True):
            if not created:
                continue
            index = index_fields(record.type, record.data, record.time)
            self.documents[record.seq] = StoredRecord(record, index)
            if item.alert is not None:
                alert = item.alert
                found = self.alert_documents.setdefault(
                    alert.alert_id,
                    {
                        "alert": alert,
                        "first_at": alert.at,
                        "first_seq": record.seq,
                        "last_at": alert.at,
                        "last_seq": record.seq,
                        "records": 0,
                    },
                )
                found["last_at"] = max(found["last_at"], alert.at)
                found["last_seq"] = max(found["last_seq"], record.seq)
                found["records"] += 1
            if item.exam is not None:
                self.exam_facts[item.exam.study_instance_uid] = item.exam
        return [Appended(record, created) for record, created in extended]

    async def head(self) -> ChainHead:
        return self.chain_head

    async def stored_records(self, through_seq: int) -> AsyncIterator[StoredRecord]:
        for seq in sorted(self.documents):
            if seq <= through_seq:
                yield self.documents[seq]

    async def checkpoints(self) -> dict[int, Checkpoint]:
        return dict(self.signed)

    async def latest_checkpoint(self) -> Checkpoint | None:
        return self.signed[max(self.signed)] if self.signed else None

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.signed.setdefault(checkpoint.seq, checkpoint)

    async def first_seq(self) -> int | None:
        return min(self.documents, default=None)

    async def count_through(self, seq: int) -> int:
        return sum(1 for s in self.documents if s <= seq)

    async def delete_through(self, seq: int) -> int:
        purged = [s for s in self.documents if s <= seq]
        for s in purged:
            del self.documents[s]
        for alert_id in [a for a, found in self.alert_documents.items() if found["last_seq"] <= seq]:
            del self.alert_documents[alert_id]
        return len(purged)

    def _matches(self, stored: StoredRecord, query: RecordQuery) -> bool:
        ix = stored.index
        return (
            (query.patient_keys is None or ix["patient_key"] in query.patient_keys)
            and (query.patient_key is None or ix["patient_key"] == query.patient_key)
            and (query.study is None or query.study in ix["studies"])
            and (query.subject is None or ix["subject"] == query.subject)
            and (query.facility is None or ix["facility"] == query.facility)
            and (query.decision is None or ix["decision"] == query.decision)
            and (query.action is None or ix["action"] == query.action)
            and (query.break_glass is None or ix["break_glass"] == query.break_glass)
            and (query.type is None or stored.record.type == query.type)
            and (query.since is None or ix["at"] >= query.since)
            and (query.until is None or ix["at"] < query.until)
        )

    async def search(self, query: RecordQuery, *, offset: int, limit: int) -> tuple[int, list[ChainRecord]]:
        found = [s.record for _, s in sorted(self.documents.items(), reverse=True) if self._matches(s, query)]
        return len(found), found[offset : offset + limit]

    async def exams(self, study_instance_uids: Sequence[str]) -> dict[str, ExamFacts]:
        return {uid: self.exam_facts[uid] for uid in study_instance_uids if uid in self.exam_facts}

    async def alerts(
        self, patient_keys: tuple[str, ...] | None, *, offset: int, limit: int
    ) -> tuple[int, list[Alert]]:
        alerts = [
            Alert(
                alert_id=alert_id,
                patient_key=found["alert"].patient_key,
                study_instance_uid=found["alert"].study_instance_uid,
                principal=found["alert"].principal,
                justification=found["alert"].justification,
                first_at=found["first_at"],
                last_at=found["last_at"],
                first_seq=found["first_seq"],
                last_seq=found["last_seq"],
                records=found["records"],
            )
            for alert_id, found in self.alert_documents.items()
            if patient_keys is None or found["alert"].patient_key in patient_keys
        ]
        alerts.sort(key=lambda a: a.last_at, reverse=True)
        return len(alerts), alerts[offset : offset + limit]

    async def export_position(self, name: str) -> int | None:
        export = self.exports.get(name)
        return None if export is None else int(export["last_seq"])

    async def claim_export(self, name: str, owner: str, *, now: datetime, lease: timedelta) -> int | None:
        export = self.exports.setdefault(name, {"last_seq": 0, "owner": None, "lease_until": now})
        if export["owner"] not in (None, owner) and export["lease_until"] >= now:
            return None
        export.update(owner=owner, lease_until=now + lease)
        return int(export["last_seq"])

    async def advance_export(self, name: str, owner: str, last_seq: int) -> bool:
        export = self.exports[name]
        if export["owner"] != owner or export["last_seq"] >= last_seq:
            return False
        export["last_seq"] = last_seq
        return True

    async def records_after(self, seq: int, limit: int) -> list[ChainRecord]:
        return [self.documents[s].record for s in sorted(self.documents) if s > seq][:limit]


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def build_service(store: MemoryAuditStore, clock: Clock, **overrides: Any) -> AuditService:
    options: dict[str, Any] = {
        "store": store,
        "signer": SIGNER,
        "trusted_keys": TrustedKeys.of(SIGNER),
        "source": AuditSource("emage-test", "e-mage test site"),
        "retention": timedelta(days=365),
        "checkpoint_every_records": 1000,
        "clock": clock,
        **overrides,
    }
    return AuditService(**options)


@pytest.fixture
def store() -> MemoryAuditStore:
    return MemoryAuditStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: MemoryAuditStore, clock: Clock) -> AuditService:
    return build_service(store, clock)


def principal_header(
    role: str, *, subject: str = "kc-user", patient_keys: Sequence[str] = ()
) -> dict[str, str]:
    principal = ForwardedPrincipal.model_validate(
        {"subject": subject, "role": role, "patient_keys": tuple(patient_keys)}
    )
    return {PRINCIPAL_HEADER: principal.encode()}


@pytest.fixture
def client(service: AuditService) -> Iterator[TestClient]:
    app = create_service_app(Settings(), title="audit", version="test", readiness={}, routers=[router])
    app.state.audit = service
    app.state.settings = Settings()
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def audit() -> ModuleType:
    """This module: its constants and event factories, for the test modules (which cannot import it)."""
    return sys.modules[__name__]
