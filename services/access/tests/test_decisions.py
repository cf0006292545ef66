"""The enforcement point: facts gathered, one decision, exactly one audit event, nothing without it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from emage_access.decisions import DECISIONS, AccessDecider, AuditUnavailableError, wire_scope
from emage_access.domain.consent_view import InMemoryConsentView
from emage_access.domain.links import LinkSession
from emage_access.domain.policy import (
    Action,
    BreakGlass,
    PolicySettings,
    Share,
    StudyAttributes,
    search_scope,
)
from emage_access.domain.principal import Principal, Role
from emage_common.access_contract import WireSearchScope
from emage_common.events import AccessDecided, CloudEvent, PatientIdentity
from emage_common.kafka import EventPublisher

A = "750000001"
B = "690000002"
STUDY = StudyAttributes(
    study_instance_uid="1.2.250.1.1",
    facility_finess=A,
    patient_key="pid:750000001:IPP-1",
    referring_physician_rpps="10100000024",
)
RADIOLOGIST_A = Principal("sub-ra", Role.RADIOLOGIST, rpps="10100000016", facility_finess=A)
RADIOLOGIST_B = Principal("sub-rb", Role.RADIOLOGIST, rpps="10100000057", facility_finess=B)
PATIENT = Principal(
    "sub-p1", Role.PATIENT, patient=PatientIdentity(patient_id="IPP-1", issuer_of_patient_id=A)
)


class Directory:
    def __init__(self, *studies: StudyAttributes) -> None:
        self.studies = {study.study_instance_uid: study for study in studies}

    async def attributes(self, study_instance_uid: str) -> StudyAttributes | None:
        return self.studies.get(study_instance_uid)


class Shares:
    def __init__(self, *shares: Share) -> None:
        self.shares = list(shares)
        self.reads = 0

    async def shares_to(self, grantee_rpps: str) -> list[Share]:
        self.reads += 1
        return [share for share in self.shares if share.grantee_rpps == grantee_rpps]


class Grants:
    def __init__(self, *grants: BreakGlass) -> None:
        self.grants = list(grants)

    async def grants_of(self, holder_rpps: str, *, now: datetime) -> list[BreakGlass]:
        return [grant for grant in self.grants if grant.holder_rpps == holder_rpps]


class Producer:
    def __init__(self, *, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.fail = fail

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        if self.fail:
            raise KafkaTimeoutError()
        self.sent.append((topic, value, key))

    def decisions(self) -> list[AccessDecided]:
        return [CloudEvent.from_bytes(value).data_as(AccessDecided) for _, value, _ in self.sent]


def _request() -> Any:
    return SimpleNamespace(state=SimpleNamespace(request_id="req-1"), client=SimpleNamespace(host="10.0.0.7"))


async def _decider(
    producer: Producer, *, shares: Shares | None = None, grants: Grants | None = None
) -> AccessDecider:
    publisher = EventPublisher(
        {"bootstrap_servers": "unused", "client_id": "t", "security_protocol": "PLAINTEXT"}, producer=producer
    )
    await publisher.start()
    return AccessDecider(
        directory=Directory(STUDY),
        consent=InMemoryConsentView(),
        shares=shares or Shares(),
        break_glass=grants or Grants(),
        publisher=publisher,
        settings=PolicySettings(),
    )


async def test_an_allowed_decision_is_audited_once_with_its_basis() -> None:
    producer = Producer()
    decider = await _decider(producer)
    decided = await decider.decide(
        RADIOLOGIST_A, Action.RETRIEVE, STUDY.study_instance_uid, request=_request()
    )
    assert decided.allowed
    assert decided.study == STUDY
    [event] = producer.decisions()
    assert (event.decision, event.basis, event.reason, event.action) == (
        "allow",
        "care",
        "care_owning_facility",
        "retrieve",
    )
    assert (event.request_id, event.client_address, event.patient_key) == (
        "req-1",
        "10.0.0.7",
        STUDY.patient_key,
    )
    assert producer.sent[0][2] == STUDY.patient_key.encode()  # keyed by patient: per-patient order


async def test_decisions_are_counted_by_action_outcome_and_reason() -> None:
    counted = DECISIONS.labels("retrieve", "deny", "no_relationship")
    before = counted._value.get()
    decider = await _decider(Producer())
    await decider.decide(RADIOLOGIST_B, Action.RETRIEVE, STUDY.study_instance_uid, request=_request())
    assert counted._value.get() == before + 1


async def test_unknown_and_forbidden_are_both_denied_and_audited() -> None:
    producer = Producer()
    decider = await _decider(producer)
    unknown = await decider.decide(RADIOLOGIST_A, Action.RETRIEVE, "1.2.250.9.9", request=_request())
    forbidden = await decider.decide(
        RADIOLOGIST_B, Action.RETRIEVE, STUDY.study_instance_uid, request=_request()
    )
    assert not unknown.allowed
    assert not forbidden.allowed
    assert [(e.decision, e.reason) for e in producer.decisions()] == [
        ("deny", "study_unknown"),
        ("deny", "no_relationship"),
    ]


async def test_a_new_study_may_be_stored_by_a_technician() -> None:
    producer = Producer()
    decider = await _decider(producer)
    technician = Principal("sub-t", Role.IMAGING_TECHNICIAN, rpps="10100000040", facility_finess=A)
    decided = await decider.decide(
        technician, Action.STORE, "1.2.250.9.9", request=_request(), new_study_allowed=True
    )
    assert decided.allowed
    assert decided.study is None


async def test_requests_under_break_the_glass_carry_its_justification() -> None:
    now = datetime.now(UTC)
    grant = BreakGlass(
        holder_rpps=RADIOLOGIST_B.rpps or "",
        study_instance_uid=STUDY.study_instance_uid,
        justification="Polytraumatisé aux urgences, patient inconscient",
        opened_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(hours=1),
    )
    producer = Producer()
    decider = await _decider(producer, grants=Grants(grant))
    decided = await decider.decide(
        RADIOLOGIST_B, Action.RENDERED, STUDY.study_instance_uid, request=_request()
    )
    assert decided.allowed
    [event] = producer.decisions()
    assert (event.basis, event.justification) == ("break_glass", grant.justification)


async def test_a_share_link_session_reaches_its_study_only() -> None:
    producer = Producer()
    decider = await _decider(producer)
    session = LinkSession(
        session_id="s1",
        link_id="l1",
        study_instance_uid=STUDY.study_instance_uid,
        patient_key=STUDY.patient_key,
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )
    assert (
        await decider.decide(session, Action.RETRIEVE, STUDY.study_instance_uid, request=_request())
    ).allowed
    assert not (
        await decider.decide(session, Action.STORE, STUDY.study_instance_uid, request=_request())
    ).allowed
    assert not (await decider.decide(session, Action.RETRIEVE, "1.2.250.9.9", request=_request())).allowed
    events = producer.decisions()
    assert [(e.principal.role, e.principal.subject, e.decision) for e in events] == [
        ("link_holder", "link:l1", "allow"),
        ("link_holder", "link:l1", "deny"),
        ("link_holder", "link:l1", "deny"),
    ]
    searched, scope = await decider.search(session, None, request=_request())
    assert searched.allowed
    assert [clause.study_instance_uids for clause in scope.clauses] == [(STUDY.study_instance_uid,)]


async def test_nothing_proceeds_when_the_audit_event_cannot_be_made_durable() -> None:
    decider = await _decider(Producer(fail=True))
    with pytest.raises(AuditUnavailableError):
        await decider.decide(RADIOLOGIST_A, Action.RETRIEVE, STUDY.study_instance_uid, request=_request())


async def test_the_search_scope_goes_to_the_catalog_as_the_policy_made_it() -> None:
    now = datetime.now(UTC)
    share = Share(
        share_id="sh1",
        patient_key="pid:690000002:IPP-9",
        grantee_rpps=RADIOLOGIST_A.rpps or "",
        expires_at=now + timedelta(days=1),
    )
    shares = Shares(share)
    producer = Producer()
    decider = await _decider(producer, shares=shares)
    decided, wire = await decider.search(RADIOLOGIST_A, None, request=_request())
    assert decided.allowed
    assert shares.reads == 1, "one read of the caller's shares serves the decision and the scope"
    assert [(e.action, e.decision) for e in producer.decisions()] == [("search", "allow")]
    expected = wire_scope(search_scope(RADIOLOGIST_A, InMemoryConsentView(), [share], [], now))
    assert wire == expected
    assert WireSearchScope.decode(wire.encode()) == wire
    assert {clause.facility_finess for clause in wire.clauses} == {A, None}
    _, patient_scope = await decider.search(PATIENT, None, request=_request())
    assert [set(clause.patient_keys or ()) for clause in patient_scope.clauses] == [PATIENT.patient_keys]
