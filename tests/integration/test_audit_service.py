"""The audit service on the real stack: events from Kafka appended exactly once to a hash chain in MongoDB,
tampering named by verification, FHIR export, and DICOM audit messages to a syslog collector that misses
nothing, even what was emitted while it was down.

The audit service is restarted for this module with a collector on loopback (the receiver below) and quick
checkpoints, and restored as every other module expects it at the end. Each test uses its own patients, so it
finds its own records whatever else the trail holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import socketserver
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from pymongo import AsyncMongoClient, MongoClient, monitoring
from typer.testing import CliRunner

from emage_audit.adapters.mongo import MongoAuditStore
from emage_audit.domain.atna import AuditSource
from emage_audit.domain.checkpoints import CheckpointSigner, TrustedKeys
from emage_audit.service import AuditService
from emage_audit.settings import DEV_ONLY_CHECKPOINT_SIGNING_KEY
from emage_cli.audit import app as audit_cli
from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal
from emage_common.events import (
    AccessDecided,
    CloudEvent,
    ConsentChanged,
    InstanceStored,
    PatientIdentity,
    ShareChanged,
    data_model_for_type,
    make_event,
)
from emage_common.kafka import EventPublisher, KafkaClientConfig
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

T = TypeVar("T")
WAIT_S = 60
STUDY = "1.2.826.0.1.3680043.8.498.77"
RADIOLOGIST = {
    "subject": "it-radiologist",
    "role": "radiologist",
    "rpps": "10100000016",
    "facility_finess": "750000001",
    "name": "Alice Martin",
    "facility_name": "CHU Alpha",
}


# --- A syslog collector on loopback -------------------------------------------------------------------------


class SyslogReceiver:
    """An RFC 6587 octet-counting receiver that can be stopped (listening socket and connections closed) and
    started again on the same port."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._connections: set[socket.socket] = set()

    def start(self) -> None:
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                receiver._connections.add(self.connection)
                try:
                    while True:
                        length = b""
                        while not length.endswith(b" "):
                            byte = self.rfile.read(1)
                            if not byte:
                                return
                            length += byte
                        message = self.rfile.read(int(length))
                        with receiver._lock:
                            receiver.messages.append(message)
                finally:
                    receiver._connections.discard(self.connection)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._server = None

    def containing(self, text: str) -> list[bytes]:
        with self._lock:
            return [message for message in self.messages if text.encode() in message]


# --- Fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[SyslogReceiver]:
    started = SyslogReceiver()
    started.start()
    yield started
    if started._server is not None:
        started.stop()


@pytest.fixture(scope="module")
def audit_url(services: Stack, receiver: SyslogReceiver) -> Iterator[str]:
    """The audit service exporting to ``receiver``, with checkpoints every second."""
    settings = {
        "EMAGE_AUDIT_SYSLOG_HOST": "127.0.0.1",
        "EMAGE_AUDIT_SYSLOG_PORT": str(receiver.port),
        "EMAGE_AUDIT_SYSLOG_POLL_SECONDS": "0.2",
        "EMAGE_AUDIT_SYSLOG_RETRY_MAX_SECONDS": "0.5",
        "EMAGE_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
    }
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        services.stop_service("audit")
        services.start_services(("audit",))
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    yield services.service_url("audit")
    # Back to the audit service every other module shares.
    services.stop_service("audit")
    services.start_services(("audit",))


@pytest.fixture(scope="module")
async def publisher(kafka_bootstrap: str) -> AsyncIterator[EventPublisher]:
    config = KafkaClientConfig(
        bootstrap_servers=kafka_bootstrap, client_id="it-audit", security_protocol="PLAINTEXT"
    )
    async with EventPublisher(config) as started:
        yield started


@pytest.fixture
def audit_db(mongo_uri: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        yield client["audit"]
    finally:
        client.close()


def as_dpo() -> dict[str, str]:
    return {PRINCIPAL_HEADER: ForwardedPrincipal(subject="it-dpo", role="dpo").encode()}


def as_patient(patient: PatientIdentity) -> dict[str, str]:
    principal = ForwardedPrincipal(subject="it-patient", role="patient", patient_keys=(patient.patient_key,))
    return {PRINCIPAL_HEADER: principal.encode()}


def new_patient() -> PatientIdentity:
    return PatientIdentity(patient_id=f"IT-{uuid.uuid4().hex[:12]}", issuer_of_patient_id="IT-AUDIT")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def access(patient: PatientIdentity, **overrides: Any) -> CloudEvent:
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "principal": RADIOLOGIST,
        "action": "retrieve",
        "study_instance_uid": STUDY,
        "patient_key": patient.patient_key,
        "decision": "allow",
        "basis": "care",
        "reason": "care_owning_facility",
        "client_address": "127.0.0.1",
        "decided_at": datetime.now(UTC),
        **overrides,
    }
    return make_event(AccessDecided.model_validate(values), "/emage/access")


def stored(patient: PatientIdentity) -> CloudEvent:
    sop = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**12}"
    data = InstanceStored(
        study_instance_uid=STUDY,
        series_instance_uid=STUDY + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"it/{sop}",
        size_bytes=1024,
        sha256="cd" * 32,
        facility_finess="750000001",
        patient=patient,
        modality="CT",
        stored_at=datetime.now(UTC),
        dicom_json={"00080020": {"vr": "DA", "Value": ["20250310"]}},
    )
    return make_event(data, "/emage/ingest")


def consent(patient: PatientIdentity) -> CloudEvent:
    data = ConsentChanged.model_validate(
        {
            "consent_id": uuid.uuid4().hex,
            "revision": 1,
            "patient_key": patient.patient_key,
            "status": "active",
            "provision": "permit",
            "grantee": {"kind": "facility", "finess": "690000002"},
            "changed_at": datetime.now(UTC),
        }
    )
    return make_event(data, "/emage/consent")


def share(patient: PatientIdentity) -> CloudEvent:
    data = ShareChanged.model_validate(
        {
            "share_id": uuid.uuid4().hex,
            "revision": 1,
            "patient_key": patient.patient_key,
            "all_studies": True,
            "shared_by": "it-patient",
            "recipient": {"kind": "professional", "rpps": "10100000057"},
            "status": "active",
            "changed_at": datetime.now(UTC),
        }
    )
    return make_event(data, "/emage/access")


async def publish(publisher: EventPublisher, *events: CloudEvent) -> None:
    for event in events:
        await publisher.publish(data_model_for_type(event.type).topic, event)


async def get(url: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url, headers=headers, params=params)


def records_of(audit_url: str, patient: PatientIdentity, expected: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        response = httpx.get(
            f"{audit_url}/api/v1/audit/records",
            params={"patient_key": patient.patient_key},
            headers=as_dpo(),
            timeout=10,
        )
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records if len(records) >= expected else None

    return wait_for(found, f"{expected} records of {patient.patient_key}")


def verify(audit_url: str) -> dict[str, Any]:
    response = httpx.post(f"{audit_url}/api/v1/audit/verify", headers=as_dpo(), timeout=60)
    response.raise_for_status()
    report: dict[str, Any] = response.json()
    return report


# --- Exactly once ------------------------------------------------------------------------------------------


async def test_every_domain_event_is_appended_exactly_once(audit_url: str, publisher: EventPublisher) -> None:
    patient = new_patient()
    decided = access(patient)
    events = [stored(patient), decided, consent(patient), share(patient)]
    await publish(publisher, *events)
    await publish(publisher, decided, events[0])  # redelivered: the same event ids
    records = await asyncio.to_thread(records_of, audit_url, patient, 4)
    await asyncio.sleep(2)  # time for a duplicate to show, were there one
    records = await asyncio.to_thread(records_of, audit_url, patient, 4)
    assert sorted(r["event_id"] for r in records) == sorted(e.id for e in events)
    assert {r["type"] for r in records} == {e.type for e in events}
    seqs = sorted(r["seq"] for r in records)
    assert len(set(seqs)) == 4
    assert (await asyncio.to_thread(verify, audit_url))["valid"] is True


async def test_a_bulk_import_is_appended_whole_and_once(audit_url: str, publisher: EventPublisher) -> None:
    """Hundreds of events published at once (a bulk import), some twice, reach the consumer's batch handler:
    every one is appended once, in one verifiable chain. (That a batch is one transaction is pinned on the
    store below, where the batch is known: here Kafka decides how polls cut the stream.)"""
    patient = new_patient()
    events = [stored(patient) for _ in range(300)] + [access(patient) for _ in range(20)]
    await asyncio.gather(*(publish(publisher, event) for event in events + events[::7]))
    records = await asyncio.to_thread(records_of, audit_url, patient, len(events))
    await asyncio.sleep(2)  # time for a duplicate to show, were there one
    records = await asyncio.to_thread(records_of, audit_url, patient, len(events))
    assert sorted(r["event_id"] for r in records) == sorted(e.id for e in events)
    assert len({r["seq"] for r in records}) == len(events)
    assert (await asyncio.to_thread(verify, audit_url))["valid"] is True


async def test_a_patient_reads_who_saw_their_exam(audit_url: str, publisher: EventPublisher) -> None:
    patient = new_patient()
    justification = "Patient inconscient aux urgences, scanner antérieur nécessaire."
    await publish(
        publisher,
        stored(patient),
        access(patient),
        access(patient, action="break_glass", basis="break_glass", justification=justification),
    )
    await asyncio.to_thread(records_of, audit_url, patient, 3)
    log = (await get(f"{audit_url}/api/v1/audit/me", as_patient(patient))).json()
    assert log["total"] == 2
    text = log["entries"][1]["text"]
    assert (
        "Alice Martin, radiologue (CHU Alpha), a ouvert les images de votre examen « Scanner du 10 mars"
        in text
    )
    english = (await get(f"{audit_url}/api/v1/audit/me", as_patient(patient), lang="en")).json()
    assert "broke the glass to open your exam" in english["entries"][0]["text"]
    alerts = (await get(f"{audit_url}/api/v1/audit/alerts", as_patient(patient))).json()
    assert alerts["total"] == 1
    assert alerts["alerts"][0]["justification"] == justification
    dpo_alerts = (await get(f"{audit_url}/api/v1/audit/alerts", as_dpo(), limit=500)).json()
    assert any(alert["patient_key"] == patient.patient_key for alert in dpo_alerts["alerts"])
    # Another patient sees none of it.
    stranger = await get(f"{audit_url}/api/v1/audit/me", as_patient(new_patient()))
    assert stranger.json()["total"] == 0


async def test_fhir_export_validates(audit_url: str, publisher: EventPublisher) -> None:
    patient = new_patient()
    await publish(publisher, stored(patient), access(patient), consent(patient), share(patient))
    await asyncio.to_thread(records_of, audit_url, patient, 4)
    response = await get(f"{audit_url}/api/v1/audit/fhir", as_dpo(), patient_key=patient.patient_key)
    assert response.headers["content-type"] == "application/fhir+json"
    bundle = Bundle.model_validate_json(response.content)
    assert bundle.total == 4
    codes = sorted(entry.resource.type.code for entry in bundle.entry or [])  # type: ignore[union-attr]
    assert codes == ["110103", "110104", "110110", "110110"]


# --- Tamper evidence ---------------------------------------------------------------------------------------


async def test_changing_deleting_or_reordering_a_record_is_named_by_verification(
    audit_url: str, publisher: EventPublisher, audit_db: Any
) -> None:
    patient = new_patient()
    await publish(publisher, *(access(patient) for _ in range(3)))
    records = await asyncio.to_thread(records_of, audit_url, patient, 3)
    first, second, third = sorted(r["seq"] for r in records)
    assert (await asyncio.to_thread(verify, audit_url))["valid"] is True
    collection = audit_db["records"]
    originals = {seq: collection.find_one({"_id": seq}) for seq in (first, second, third)}

    def restore() -> None:
        # Whole documents back in their places (a swapped one holds another's unique event id meanwhile).
        collection.delete_many({"_id": {"$in": list(originals)}})
        collection.insert_many(list(originals.values()))

    try:
        # Changed: who accessed.
        collection.update_one({"_id": second}, {"$set": {"data.principal.name": "Someone Else"}})
        broken = (await asyncio.to_thread(verify, audit_url))["broken"]
        assert (broken["seq"], broken["reason"]) == (second, "altered")
        restore()
        # Deleted.
        collection.delete_one({"_id": second})
        broken = (await asyncio.to_thread(verify, audit_url))["broken"]
        assert (broken["seq"], broken["reason"]) == (second, "missing")
        restore()
        # Reordered: two records exchange their places in the chain.
        collection.delete_many({"_id": {"$in": [second, third]}})
        collection.insert_one({**originals[third], "_id": second})
        collection.insert_one({**originals[second], "_id": third})
        broken = (await asyncio.to_thread(verify, audit_url))["broken"]
        assert (broken["seq"], broken["reason"]) == (second, "altered")
        restore()
        # Hidden from the patient: the query field changed, the content intact.
        collection.update_one({"_id": third}, {"$set": {"ix.patient_key": "pid:ELSEWHERE:1"}})
        broken = (await asyncio.to_thread(verify, audit_url))["broken"]
        assert (broken["seq"], broken["reason"]) == (third, "index_mismatch")
    finally:
        restore()
    assert (await asyncio.to_thread(verify, audit_url))["valid"] is True


def test_checkpoints_are_signed_and_verified(audit_url: str) -> None:
    def signed() -> dict[str, Any] | None:
        report = verify(audit_url)
        return report if report["checkpoints_checked"] > 0 else None

    report = wait_for(signed, "a signed checkpoint")
    assert report["valid"] is True
    listed = httpx.get(f"{audit_url}/api/v1/audit/checkpoints", headers=as_dpo(), timeout=10).json()
    assert listed["checkpoints"]
    assert {c["key_id"] for c in listed["checkpoints"]} <= set(listed["public_keys"])


@contextlib.asynccontextmanager
async def trail_instances(
    mongo_uri: str, count: int, listener: monitoring.CommandListener | None = None
) -> AsyncIterator[list[AuditService]]:
    """``count`` audit service instances (each its own MongoDB client, watched by ``listener``) on a fresh
    trail, dropped at the end."""
    database_name = f"audit_it_{uuid.uuid4().hex[:8]}"
    listeners = [] if listener is None else [listener]
    clients = [
        AsyncMongoClient[dict[str, Any]](mongo_uri, tz_aware=True, event_listeners=listeners)
        for _ in range(count)
    ]
    try:
        stores = [MongoAuditStore(client, client[database_name]) for client in clients]
        await stores[0].ensure_indexes()
        signer = CheckpointSigner.from_base64_seed(DEV_ONLY_CHECKPOINT_SIGNING_KEY)
        yield [
            AuditService(
                store=store,
                signer=signer,
                trusted_keys=TrustedKeys.of(signer),
                source=AuditSource("it"),
                retention=timedelta(days=1),
            )
            for store in stores
        ]
    finally:
        await clients[0].drop_database(database_name)
        for client in clients:
            await client.close()


async def test_concurrent_writers_never_fork_the_chain(mongo_uri: str) -> None:
    """Two service instances (two clients) appending at once: one gapless chain, each event once."""
    async with trail_instances(mongo_uri, 2) as services:
        patient = new_patient()
        shared = access(patient)
        events = [access(patient) for _ in range(40)]
        results = await asyncio.gather(
            *(services[i % 2].record_event(event) for i, event in enumerate(events)),
            services[0].record_event(shared),
            services[1].record_event(shared),
        )
        assert sum(1 for r in results[-2:] if r.created) == 1
        head = await services[0].store.head()
        assert head.seq == 41
        seqs = sorted([r.record.seq for r in results[:-2]] + [results[-2].record.seq])
        assert seqs == list(range(1, 42))
        report = await services[1].verify()
        assert report.valid, report.broken
        assert report.records_checked == 41


async def test_concurrent_batches_never_fork_the_chain(mongo_uri: str) -> None:
    """Two instances appending batches at once, some events in both: one gapless chain, each event once."""
    async with trail_instances(mongo_uri, 2) as services:
        patient = new_patient()
        events = [access(patient) for _ in range(60)]
        # Writer 0 takes events 0-39, writer 1 events 20-59, ten at a time, all at once.
        batches = [(0, events[i : i + 10]) for i in range(0, 40, 10)]
        batches += [(1, events[i : i + 10]) for i in range(20, 60, 10)]
        results = await asyncio.gather(*(services[w].record_events(batch) for w, batch in batches))
        created = [a for appended in results for a in appended if a.created]
        assert sorted(a.record.event_id for a in created) == sorted(e.id for e in events)
        assert sorted(a.record.seq for a in created) == list(range(1, 61))
        assert (await services[0].store.head()).seq == 60
        report = await services[1].verify()
        assert report.valid, report.broken
        assert report.records_checked == 60


async def test_a_batch_is_one_transaction_with_its_alerts_and_exam(mongo_uri: str) -> None:
    """A poll's events in one transaction: one insert of the records, one move of the head; the
    break-the-glass episode and the exam folded in as one by one would."""
    commands: list[str] = []

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            commands.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

        def failed(self, event: monitoring.CommandFailedEvent) -> None: ...

    async with trail_instances(mongo_uri, 1, Listener()) as (service,):
        patient = new_patient()
        earlier = access(patient)
        await service.record_event(earlier)
        glass = {"basis": "break_glass", "justification": "Polytraumatisé, scanner antérieur nécessaire."}
        image = stored(patient)
        batch = [
            image,
            access(patient, action="break_glass", **glass),
            earlier,  # already in the trail
            access(patient, action="retrieve", **glass),
            image,  # twice in the batch
        ]
        commands.clear()
        appended = await service.record_events(batch)
        batch_commands = Counter(commands)
        assert [(a.record.seq, a.created) for a in appended] == [
            (2, True),
            (3, True),
            (1, False),
            (4, True),
            (2, False),
        ]
        assert len({a.record.recorded_at for a in appended if a.created}) == 1
        # One read of the known event ids, one of the head, one insert, one head update, one bulk write each
        # for the alerts and the exams: whatever the batch's size.
        assert batch_commands == Counter({"find": 2, "insert": 1, "update": 3, "commitTransaction": 1}), (
            batch_commands
        )
        store = service.store
        _, alerts = await store.alerts((patient.patient_key,), offset=0, limit=10)
        assert [(a.first_seq, a.last_seq, a.records) for a in alerts] == [(3, 4, 2)]
        exams = await store.exams([STUDY])
        assert exams[STUDY].modality == "CT"
        report = await service.verify()
        assert report.valid, report.broken
        assert report.records_checked == 4


# --- The DICOM audit message export ------------------------------------------------------------------------


async def test_the_collector_gets_every_message_even_those_emitted_while_it_was_down(
    audit_url: str, publisher: EventPublisher, receiver: SyslogReceiver
) -> None:
    before = new_patient()
    await publish(publisher, *(access(before) for _ in range(3)))
    await asyncio.to_thread(
        wait_for, lambda: len(receiver.containing(before.patient_key)) >= 3, "first messages"
    )
    receiver.stop()
    try:
        during = new_patient()
        await publish(publisher, stored(during), *(access(during) for _ in range(4)))
        await asyncio.to_thread(records_of, audit_url, during, 5)
        await asyncio.sleep(2)  # the exporter tries, fails, backs off
        assert receiver.containing(during.patient_key) == []
    finally:
        receiver.start()
    messages = await asyncio.to_thread(
        wait_for, lambda: receiver.containing(during.patient_key) or None, "the messages emitted while down"
    )
    await asyncio.to_thread(
        wait_for, lambda: len(receiver.containing(during.patient_key)) >= 5, "all five messages"
    )
    messages = receiver.containing(during.patient_key)
    assert all(message.startswith(b"<85>1 ") for message in messages)
    assert all(b" IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage>" in message for message in messages)
    assert sum(b'csd-code="110104"' in message for message in messages) >= 1


# --- Through the gateway, as the DPO and a patient ---------------------------------------------------------


def test_emage_audit_verify_through_the_gateway(gateway: httpx.Client, tokens: Any) -> None:
    result = CliRunner().invoke(
        audit_cli, ["verify", "--url", str(gateway.base_url), "--token", tokens("dpo")]
    )
    assert result.exit_code == 0, result.output
    assert "The audit chain is intact" in result.output
    refused = CliRunner().invoke(
        audit_cli, ["verify", "--url", str(gateway.base_url), "--token", tokens("radiologist-a")]
    )
    assert refused.exit_code == 2
    mine = gateway.get("/api/v1/audit/me", headers={"Authorization": f"Bearer {tokens('patient-1')}"})
    assert mine.status_code == 200
    assert "entries" in mine.json()
