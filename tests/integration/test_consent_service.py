"""The consent service on the real stack: what it writes in MongoDB, what it announces on Kafka, what it
answers — called directly with the ``X-Emage-Principal`` header the gateway would set.

Patients here are unique to the run, so every check reads only this module's records and events: the
``consents`` projection and the append-only ``consent_records`` of the ``consent`` database, and the
``emage.consent.changed.v1`` topic read from the beginning (no consumer group), filtered by patient key.
A study is catalogued for one patient at CHU Alpha (published on ``instance.stored``), so that the catalog
answers the consent service's scoped search the way it answers for real exams.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fhir.resources.bundle import Bundle
from fhir.resources.consent import Consent as FhirConsent
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database

from emage_common.access_contract import (
    PRINCIPAL_HEADER,
    SEARCH_SCOPE_HEADER,
    ForwardedPrincipal,
    WireScopeClause,
    WireSearchScope,
)
from emage_common.events import (
    CONSENT_CHANGED_TOPIC,
    INSTANCE_STORED_TOPIC,
    CloudEvent,
    ConsentChanged,
    InstanceStored,
    PatientIdentity,
    ProfessionalGrantee,
    make_event,
)
from emage_common.kafka import EventPublisher, build_kafka_config
from emage_common.settings import ServiceSettings
from emage_consent.adapters.mongo import MongoConsentStore
from emage_consent.domain import rules
from emage_consent.domain.model import Consent
from emage_consent.ports import OutboxEntry
from emage_consent.service import EVENT_SOURCE
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

WAIT_S = 60
BASE = "/api/v1/consents"
RUN = uuid.uuid4().hex[:10]
CHU_ALPHA, CLINIQUE_BETA = "750000001", "690000002"
RADIOLOGIST_A, RADIOLOGIST_B = "10100000016", "10100000057"
ROOT = "1.2.826.0.1.3680043.8.498.7404"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def patient_key(label: str, facility: str = CHU_ALPHA) -> str:
    return PatientIdentity(patient_id=f"IT-CNS-{RUN}-{label}", issuer_of_patient_id=facility).patient_key


def as_patient(*keys: str) -> dict[str, str]:
    principal = ForwardedPrincipal(
        subject=f"patient-{keys[0]}", role="patient", name="Jeanne", patient_keys=keys
    )
    return {PRINCIPAL_HEADER: principal.encode()}


def as_professional(role: str, rpps: str, finess: str) -> dict[str, str]:
    principal = ForwardedPrincipal(
        subject=f"pro-{rpps}",
        role=role,  # type: ignore[arg-type]
        name=f"Dr {rpps}",
        rpps=rpps,
        facility_finess=finess,
        facility_name="CHU Alpha" if finess == CHU_ALPHA else "Clinique Beta",
    )
    return {PRINCIPAL_HEADER: principal.encode()}


DPO = {PRINCIPAL_HEADER: ForwardedPrincipal(subject="dpo", role="dpo").encode()}
RADIOLOGIST_OF_ALPHA = as_professional("radiologist", RADIOLOGIST_A, CHU_ALPHA)
RADIOLOGIST_OF_BETA = as_professional("radiologist", RADIOLOGIST_B, CLINIQUE_BETA)
INFORMED = {"notice_code": "NOTICE-SHARING-v3", "text": "Sharing outside CHU Alpha explained at the exam."}
TO_B = {"kind": "professional", "rpps": RADIOLOGIST_B}

EXAMINED = patient_key("examined")
"""The patient with a study at CHU Alpha."""


def study_uid() -> str:
    return f"{ROOT}.{uuid.uuid4().int % 10**18}"


EXAMINED_STUDY = study_uid()


def instance_stored(key_label: str, facility: str, study: str) -> InstanceStored:
    series, sop = f"{study}.1", f"{study}.1.1"
    patient = PatientIdentity(patient_id=f"IT-CNS-{RUN}-{key_label}", issuer_of_patient_id=facility)
    return InstanceStored(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=CT_IMAGE_STORAGE,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"studies/{study}/series/{series}/instances/{sop}",
        size_bytes=512,
        sha256="ab" * 32,
        facility_finess=facility,
        patient=patient,
        modality="CT",
        stored_at=datetime(2025, 1, 1, tzinfo=UTC),
        dicom_json={
            "00080016": {"vr": "UI", "Value": [CT_IMAGE_STORAGE]},
            "00080018": {"vr": "UI", "Value": [sop]},
            "00080020": {"vr": "DA", "Value": ["20250101"]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Consent^Test"}]},
            "00100020": {"vr": "LO", "Value": [patient.patient_id]},
            "0020000D": {"vr": "UI", "Value": [study]},
            "0020000E": {"vr": "UI", "Value": [series]},
        },
    )


async def eventually(check: Callable[[], Any], what: str) -> Any:
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
async def consent(services: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=services.service_url("consent"), timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def db(mongo_uri: str) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        yield client["consent"]
    finally:
        client.close()


@pytest.fixture(scope="module")
async def examined(services: Stack, kafka_bootstrap: str) -> str:
    """:data:`EXAMINED` has a study at CHU Alpha, as the catalog's scoped search sees it."""
    config = build_kafka_config(
        ServiceSettings(service_name="it-consent", http_port=1, kafka_bootstrap_servers=kafka_bootstrap)
    )
    async with EventPublisher(config) as publisher:
        stored = instance_stored("examined", CHU_ALPHA, EXAMINED_STUDY)
        await publisher.publish(INSTANCE_STORED_TOPIC, make_event(stored, "/emage/ingest"))
    scope = WireSearchScope(clauses=(WireScopeClause(facility_finess=CHU_ALPHA, patient_keys=(EXAMINED,)),))
    async with httpx.AsyncClient(base_url=services.service_url("catalog"), timeout=10) as catalog:

        async def catalogued() -> bool:
            response = await catalog.get(
                "/studies", params={"limit": "1"}, headers={SEARCH_SCOPE_HEADER: scope.encode()}
            )
            return response.status_code == 200 and int(response.headers["X-Total-Count"]) > 0

        await eventually(catalogued, "the study to be catalogued")
    return EXAMINED


async def consent_events(
    kafka_bootstrap: str,
    keys: set[str],
    done: Callable[[list[ConsentChanged]], bool],
    event_ids: list[str] | None = None,
) -> list[ConsentChanged]:
    """The ``consent.changed`` events of ``keys``, from the beginning of the topic, once ``done`` says so
    (their CloudEvent ids appended to ``event_ids``, when given).

    Events of one patient share a partition, so when ``done`` holds, every earlier event of these patients
    has been read too.
    """
    consumer = AIOKafkaConsumer(
        CONSENT_CHANGED_TOPIC,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[ConsentChanged] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while not done(found):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if record.key is not None and record.key.decode() in keys:
                            envelope = CloudEvent.from_bytes(record.value)
                            found.append(envelope.data_as(ConsentChanged))
                            if event_ids is not None:
                                event_ids.append(envelope.id)
    except TimeoutError:
        pytest.fail(f"timed out reading consent.changed; found {found}")
    finally:
        await consumer.stop()
    return found


def has(count: int) -> Callable[[list[ConsentChanged]], bool]:
    return lambda found: len(found) >= count


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


async def test_a_patient_grants_revokes_opposes_and_lifts_with_history_events_and_fhir(
    consent: httpx.AsyncClient, db: Database[dict[str, Any]], kafka_bootstrap: str
) -> None:
    key = patient_key("portal")
    me = as_patient(key)
    grant = ok(await consent.post(BASE, headers=me, json={"grantee": TO_B}), 201)
    assert (grant["patient_key"], grant["status"], grant["revision"]) == (key, "active", 1)
    document = db["consents"].find_one({"_id": grant["consent_id"]})
    assert document is not None
    assert (document["revision"], document["status"]) == (1, "active")
    assert db["consent_records"].count_documents({"consent_id": grant["consent_id"]}) == 1

    revoked = ok(
        await consent.post(f"{BASE}/{grant['consent_id']}/revoke", headers=me, json={"reason": "done"})
    )
    assert (revoked["status"], revoked["revision"]) == ("revoked", 2)
    assert ok(await consent.post(f"{BASE}/{grant['consent_id']}/revoke", headers=me)) == revoked
    opposition = ok(await consent.post(f"{BASE}/oppositions", headers=me, json={}), 201)
    lifted = ok(await consent.post(f"{BASE}/oppositions/{opposition['consent_id']}/lift", headers=me))
    assert (lifted["status"], lifted["revision"]) == ("lifted", 2)
    later = ok(
        await consent.post(
            BASE,
            headers=me,
            json={"grantee": {"finess": CLINIQUE_BETA}, "valid_until": "2099-01-01T00:00:00Z"},
        ),
        201,
    )

    # The records: appended, never rewritten; the projection is their fold.
    records = list(db["consent_records"].find({"patient_key": key}).sort("sequence", 1))
    assert [(r["consent_id"], r["revision"], r["action"], r["status"]) for r in records] == [
        (grant["consent_id"], 1, "grant", "active"),
        (grant["consent_id"], 2, "revoke", "inactive"),
        (opposition["consent_id"], 1, "oppose", "active"),
        (opposition["consent_id"], 2, "lift", "inactive"),
        (later["consent_id"], 1, "grant", "active"),
    ]
    assert [r["sequence"] for r in records] == [1, 2, 3, 4, 5]
    history = ok(await consent.get(f"{BASE}/history", headers=me))["records"]
    assert [(r["consent_id"], r["revision"], r["action"]) for r in history] == [
        (r["consent_id"], r["revision"], r["action"]) for r in records
    ]
    assert (
        ok(await consent.get(f"{BASE}/history", headers=DPO, params={"patient_key": key}))["records"]
        == history
    )

    # The events: one per record, revision = the consent's record count, what the gateway's view needs.
    events = await consent_events(kafka_bootstrap, {key}, has(5))
    assert [(e.consent_id, e.revision, e.status, e.provision) for e in events] == [
        (grant["consent_id"], 1, "active", "permit"),
        (grant["consent_id"], 2, "inactive", "permit"),
        (opposition["consent_id"], 1, "active", "deny"),
        (opposition["consent_id"], 2, "inactive", "deny"),
        (later["consent_id"], 1, "active", "permit"),
    ]
    assert events[0].grantee == ProfessionalGrantee(rpps=RADIOLOGIST_B)
    assert events[2].grantee is None
    assert events[4].valid_until == datetime(2099, 1, 1, tzinfo=UTC)

    async def all_published() -> bool:
        ids = [e["_id"] for e in db["outbox"].find({"key": key})]
        return len(ids) == 5 and db["outbox"].count_documents({"key": key, "state": "published"}) == 5

    await eventually(all_published, "the outbox entries to be settled")

    # FHIR: a valid R5 collection of the patient's consents, and each consent alone.
    bundle = await consent.get(f"{BASE}/fhir", headers=me)
    assert bundle.headers["content-type"] == "application/fhir+json"
    parsed = Bundle.model_validate(bundle.json())
    assert parsed.type == "collection"
    resources = [entry["resource"] for entry in bundle.json()["entry"]]
    assert [(r["id"], r["decision"], r["status"]) for r in resources] == [
        (grant["consent_id"], "permit", "inactive"),
        (opposition["consent_id"], "deny", "inactive"),
        (later["consent_id"], "permit", "active"),
    ]
    one = await consent.get(f"{BASE}/{later['consent_id']}/fhir", headers=me)
    FhirConsent.model_validate(one.json())
    assert one.json()["provision"][0]["actor"][0]["reference"]["identifier"] == {
        "system": "urn:oid:1.2.250.1.71.4.2.2",
        "value": CLINIQUE_BETA,
    }
    history_bundle = ok(await consent.get(f"{BASE}/history/fhir", headers=me))
    Bundle.model_validate(history_bundle)
    assert history_bundle["total"] == 5


async def test_a_professional_records_consent_at_the_exam_for_their_facilitys_patient_only(
    consent: httpx.AsyncClient, db: Database[dict[str, Any]], examined: str, kafka_bootstrap: str
) -> None:
    body = {
        "patient_key": examined,
        "grantee": TO_B,
        "study_instance_uid": EXAMINED_STUDY,
        "information": INFORMED,
    }
    is_problem(await consent.post(BASE, headers=RADIOLOGIST_OF_BETA, json=body), 404)
    is_problem(
        await consent.post(
            BASE, headers=RADIOLOGIST_OF_ALPHA, json={**body, "study_instance_uid": study_uid()}
        ),
        404,
    )
    recorded = ok(await consent.post(BASE, headers=RADIOLOGIST_OF_ALPHA, json=body), 201)
    assert recorded["recorded_by"]["channel"] == "at_exam"
    assert recorded["recorded_by"]["rpps"] == RADIOLOGIST_A
    assert recorded["information"] == INFORMED
    [record] = db["consent_records"].find({"patient_key": examined})
    assert record["recorded_by"]["facility_finess"] == CHU_ALPHA
    assert record["information"] == INFORMED
    nurse = as_professional("nurse", "10100000032", CHU_ALPHA)
    listed = ok(await consent.get(BASE, headers=nurse, params={"patient_key": examined}))
    assert [item["consent_id"] for item in listed["items"]] == [recorded["consent_id"]]
    is_problem(await consent.get(BASE, headers=RADIOLOGIST_OF_BETA, params={"patient_key": examined}), 404)
    fhir = ok(await consent.get(f"{BASE}/{recorded['consent_id']}/fhir", headers=nurse))
    assert fhir["verification"][0]["verifiedBy"]["identifier"]["value"] == RADIOLOGIST_A
    [event] = await consent_events(kafka_bootstrap, {examined}, has(1))
    assert (event.consent_id, event.study_instance_uid) == (recorded["consent_id"], EXAMINED_STUDY)


async def test_bad_input_gets_a_clear_4xx_and_writes_and_announces_nothing(
    consent: httpx.AsyncClient, db: Database[dict[str, Any]], kafka_bootstrap: str
) -> None:
    key = patient_key("refused")
    me = as_patient(key)
    someone_else = as_patient(patient_key("someone-else"))
    refused = [
        (me, {"grantee": {"kind": "professional"}}, 422),
        (me, {"grantee": {"rpps": "123"}}, 422),
        (me, {"grantee": {"finess": "ABC000001"}}, 422),
        (me, {"grantee": {"name": "Dr Nobody"}}, 422),
        (
            me,
            {"grantee": TO_B, "valid_from": "2031-01-02T00:00:00Z", "valid_until": "2031-01-01T00:00:00Z"},
            422,
        ),
        (me, {"grantee": TO_B, "valid_until": "2020-01-01T00:00:00Z"}, 422),
        (me, {"grantee": TO_B, "valid_until": "2031-01-01"}, 422),
        (someone_else, {"patient_key": key, "grantee": TO_B}, 404),
        (DPO, {"patient_key": key, "grantee": TO_B}, 403),
        (RADIOLOGIST_OF_ALPHA, {"patient_key": key, "grantee": TO_B, "information": INFORMED}, 404),
        (RADIOLOGIST_OF_ALPHA, {"patient_key": key, "grantee": TO_B}, 422),
        ({}, {"patient_key": key, "grantee": TO_B}, 401),
    ]
    for headers, body, status in refused:
        is_problem(await consent.post(BASE, headers=headers, json=body), status)
    malformed = await consent.post(
        BASE, headers={**me, "content-type": "application/json"}, content=b'{"grantee":'
    )
    assert is_problem(malformed, 422)["errors"][0]["type"] == "json_invalid"
    is_problem(
        await consent.post(f"{BASE}/oppositions", headers=me, json={"valid_until": "1999-01-01T00:00:00Z"}),
        422,
    )
    assert db["consent_records"].count_documents({"patient_key": key}) == 0
    assert db["consents"].count_documents({"patient_key": key}) == 0
    assert db["outbox"].count_documents({"key": key}) == 0

    # Then one valid change: the first, and only, event of this patient on the topic.
    accepted = ok(await consent.post(BASE, headers=me, json={"grantee": TO_B}), 201)
    events = await consent_events(
        kafka_bootstrap, {key}, lambda found: any(e.consent_id == accepted["consent_id"] for e in found)
    )
    assert [(e.consent_id, e.revision) for e in events] == [(accepted["consent_id"], 1)]

    # Someone else's consent, an opposition revoked, a grant lifted: refused, nothing appended.
    url = f"{BASE}/{accepted['consent_id']}"
    is_problem(await consent.post(f"{url}/revoke", headers=someone_else), 404)
    is_problem(await consent.get(url, headers=someone_else), 404)
    is_problem(await consent.post(f"{BASE}/oppositions/{accepted['consent_id']}/lift", headers=me), 409)
    assert db["consent_records"].count_documents({"patient_key": key}) == 1


async def test_events_left_in_the_outbox_are_published_when_the_service_restarts(
    services: Stack, consent: httpx.AsyncClient, mongo_uri: str, kafka_bootstrap: str
) -> None:
    """A change committed by a replica that died before publishing: its event is only in the outbox, leased
    to the dead replica. The restarted service's relay publishes it, under the same event id."""
    key = patient_key("restart")
    principal = ForwardedPrincipal(subject="restart", role="patient", patient_keys=(key,))
    record = rules.grant(
        principal,
        rules.GrantDraft(key, ProfessionalGrantee(rpps=RADIOLOGIST_B)),
        consent_id=str(uuid.uuid4()),
        now=datetime.now(UTC),
    )
    event = make_event(record.change(), EVENT_SOURCE, subject=record.consent_id)
    services.stop_service("consent")
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
        try:
            await MongoConsentStore(client["consent"]).append(
                record,
                Consent.opened(record),
                OutboxEntry(event.id, CONSENT_CHANGED_TOPIC, event),
                publisher_id="dead-replica/direct",
                publishing_lease=timedelta(seconds=1),
            )
            pending = await client["consent"]["outbox"].find_one({"_id": event.id})
            assert pending is not None
            assert pending["state"] == "pending"
        finally:
            await client.close()
    finally:
        services.start_services(("consent",))

    published_ids: list[str] = []
    [announced] = await consent_events(kafka_bootstrap, {key}, has(1), published_ids)
    assert announced == record.change()
    assert published_ids == [event.id]
    listed = ok(await consent.get(BASE, headers=as_patient(key)))
    assert [(item["consent_id"], item["status"]) for item in listed["items"]] == [
        (record.consent_id, "active")
    ]
    revoked = ok(await consent.post(f"{BASE}/{record.consent_id}/revoke", headers=as_patient(key)))
    assert revoked["revision"] == 2
    events = await consent_events(kafka_bootstrap, {key}, has(2))
    assert [(e.revision, e.status) for e in events] == [(1, "active"), (2, "inactive")]


async def test_concurrent_changes_of_one_patient_are_ordered_and_a_consent_is_revoked_once(
    consent: httpx.AsyncClient, db: Database[dict[str, Any]], kafka_bootstrap: str
) -> None:
    key = patient_key("concurrent")
    me = as_patient(key)
    grants = await asyncio.gather(*(consent.post(BASE, headers=me, json={"grantee": TO_B}) for _ in range(5)))
    ids = [ok(response, 201)["consent_id"] for response in grants]
    revocations = await asyncio.gather(
        *(consent.post(f"{BASE}/{ids[0]}/revoke", headers=me) for _ in range(5))
    )
    assert {(r.status_code, r.json()["revision"], r.json()["status"]) for r in revocations} == {
        (200, 2, "revoked")
    }
    records = list(db["consent_records"].find({"patient_key": key}).sort("sequence", 1))
    assert [r["sequence"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert sorted(r["consent_id"] for r in records if r["action"] == "grant") == sorted(ids)
    assert [(r["consent_id"], r["revision"]) for r in records if r["action"] == "revoke"] == [(ids[0], 2)]
    events = await consent_events(kafka_bootstrap, {key}, has(6))
    assert sorted((e.consent_id, e.revision) for e in events) == sorted([(i, 1) for i in ids] + [(ids[0], 2)])
