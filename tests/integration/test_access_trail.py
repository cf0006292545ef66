"""Every access decision the gateway makes appears exactly once in the audit trail, and the trail is read
through the gateway: the patient their own log in French, the DPO everything, nobody else anything.

Named to run after the other ``test_access_*`` modules: its last test checks that every decision they
caused reached the trail."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from gateway_world import FACILITY_A, RPPS, Tokens, World, await_catalogued, get, publish_study
from pydicom.uid import generate_uid

from emage_common.events import ACCESS_DECIDED_TOPIC, CloudEvent
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_decision_is_in_the_audit_trail_exactly_once(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    study = publish_study(services, FACILITY_A, "IPP-A-000001", FACILITY_A, referring_rpps=RPPS["referrer-a"])
    await_catalogued(services, study)
    requests = [
        ("radiologist-a", f"/dicomweb/studies/{study.uid}/metadata", "allow"),
        ("referrer-a", f"/dicomweb/studies/{study.uid}/thumbnail", "allow"),
        ("nurse-a", f"/dicomweb/studies/{study.uid}", "deny"),
        ("radiologist-b", f"/dicomweb/studies/{study.uid}/metadata", "deny"),
        ("patient-1", f"/dicomweb/studies/{study.uid}/metadata", "allow"),
        ("patient-2", f"/dicomweb/studies/{study.uid}/metadata", "deny"),
    ]
    expected: dict[str, str] = {}
    for user, path, decision in requests:
        response = get(gateway, tokens(user), path)
        expected[response.headers["x-request-id"]] = decision

    dpo = _auth(tokens("dpo"))

    def trail() -> list[dict[str, object]]:
        response = gateway.get(
            f"/api/v1/audit/records?study={study.uid}&type=fr.emage.access.decided.v1&limit=100", headers=dpo
        )
        assert response.status_code == 200, response.text
        return [record["data"] for record in response.json()]

    deadline = time.monotonic() + 60
    while {data["request_id"] for data in trail()} < set(expected):
        assert time.monotonic() < deadline, "decisions missing from the audit trail"
        time.sleep(0.2)
    recorded = [data for data in trail() if data["request_id"] in expected]
    assert sorted(data["request_id"] for data in recorded) == sorted(expected), "each exactly once"
    assert {data["request_id"]: data["decision"] for data in recorded} == expected

    # The patient reads who saw their exam, in French; another patient sees none of it.
    log = gateway.get("/api/v1/audit/me?lang=fr&limit=200", headers=_auth(tokens("patient-1")))
    assert log.status_code == 200, log.text
    mine = [entry for entry in log.json()["entries"] if entry["study_instance_uid"] == study.uid]
    assert any(entry["who"]["profession"].lower().startswith("radiolog") for entry in mine)
    other = gateway.get("/api/v1/audit/me?lang=fr&limit=200", headers=_auth(tokens("patient-2")))
    assert other.status_code == 200
    assert all(entry["study_instance_uid"] != study.uid for entry in other.json()["entries"])

    # Only the DPO searches and verifies the trail; professionals reach nothing of it.
    for user in ("radiologist-a", "nurse-a"):
        assert gateway.get("/api/v1/audit/records", headers=_auth(tokens(user))).status_code == 403
    verified = gateway.post("/api/v1/audit/verify", headers=dpo)
    assert verified.status_code == 200, verified.text
    assert verified.json()["valid"] is True
    assert gateway.get(f"/api/v1/audit/records?study={generate_uid()}", headers=dpo).json() == []


async def _decision_event_ids(bootstrap: str) -> list[str]:
    consumer = AIOKafkaConsumer(
        ACCESS_DECIDED_TOPIC, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(300):
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        ids: list[str] = []
        while not all([await consumer.position(tp) >= end[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids.extend(CloudEvent.from_bytes(record.value).id for record in records)
        return ids
    finally:
        await consumer.stop()


def test_every_decision_of_the_access_tests_is_in_the_trail_exactly_once(
    tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    """Runs after the other gateway modules (file order): every access.decided they caused, in the trail."""
    published = asyncio.run(_decision_event_ids(services.kafka.bootstrap_servers))
    assert len(published) == len(set(published)), "the gateway published a decision twice"
    dpo = _auth(tokens("dpo"))

    def audited() -> list[str]:
        """The event id of every access.decided record, one per chain position (``seq``).

        Pages come newest first and the trail grows while they are read (the DPO's own reads are decisions),
        so offset pages overlap: a record seen twice at the same position is the paging, not a duplicate.
        """
        by_seq: dict[int, str] = {}
        read = 0
        while True:
            page = gateway.get(
                f"/api/v1/audit/records?type=fr.emage.access.decided.v1&limit=500&offset={read}",
                headers=dpo,
            )
            assert page.status_code == 200, page.text
            records = page.json()
            by_seq.update((record["seq"], record["event_id"]) for record in records)
            read += len(records)
            if read >= int(page.headers["X-Total-Count"]) or not records:
                return list(by_seq.values())

    deadline = time.monotonic() + 120
    trail = audited()
    while not set(published) <= set(trail):
        assert time.monotonic() < deadline, f"{len(set(published) - set(trail))} decisions not in the trail"
        time.sleep(0.5)
        trail = audited()
    assert len(trail) == len(set(trail)), "a decision is in the trail twice"
    assert published, "the tests before this one made decisions"
