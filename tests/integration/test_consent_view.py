"""The gateway's consent view follows ``emage.consent.changed.v1`` on the real Kafka: it rebuilds from the
beginning at start, is ready only once caught up, applies later changes as they come, and skips poison."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from emage_access.adapters.consent_follower import ConsentFollower
from emage_access.domain.consent_view import InMemoryConsentView
from emage_common.events import (
    CONSENT_CHANGED_TOPIC,
    ConsentChanged,
    ProfessionalGrantee,
    make_event,
)
from emage_common.kafka import EventPublisher, KafkaClientConfig

pytestmark = pytest.mark.integration

RADIOLOGIST_B = "10100000057"


def _consent(patient_key: str, consent_id: str, revision: int, status: str = "active") -> ConsentChanged:
    return ConsentChanged(
        consent_id=consent_id,
        revision=revision,
        patient_key=patient_key,
        status=status,  # type: ignore[arg-type]
        provision="permit",
        grantee=ProfessionalGrantee(rpps=RADIOLOGIST_B),
        changed_at=datetime.now(UTC),
    )


async def _wait_for(condition: object) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_view_rebuilds_then_follows_revocations(kafka_bootstrap: str) -> None:
    config = KafkaClientConfig(
        bootstrap_servers=kafka_bootstrap, client_id="it-consent-view", security_protocol="PLAINTEXT"
    )
    patient = f"pid:750000001:IT-{uuid.uuid4().hex[:8]}"
    consent_id = f"c-{uuid.uuid4().hex}"
    async with EventPublisher(config) as publisher:
        granted = _consent(patient, consent_id, 1)
        await publisher.publish(CONSENT_CHANGED_TOPIC, make_event(granted, "/it/consent"))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(CONSENT_CHANGED_TOPIC, b"not a cloud event", key=patient.encode())
        finally:
            await producer.stop()

        view = InMemoryConsentView()
        follower = ConsentFollower(config, view)
        await follower.start()
        try:
            async with asyncio.timeout(60):
                assert await follower.wait_caught_up()
            # Everything published before the start is in the view once it says it caught up.
            grants = list(view.consents_of(patient).grants)
            assert [grant.consent_id for grant in grants] == [consent_id]
            assert grants[0].in_force(datetime.now(UTC))

            revoked = _consent(patient, consent_id, 2, status="inactive")
            await publisher.publish(CONSENT_CHANGED_TOPIC, make_event(revoked, "/it/consent"))
            await _wait_for(lambda: not view.consents_of(patient).grants[0].active)
            # A replayed, older revision changes nothing.
            await publisher.publish(CONSENT_CHANGED_TOPIC, make_event(granted, "/it/consent"))
            await asyncio.sleep(1)
            assert not view.consents_of(patient).grants[0].active
        finally:
            await follower.stop()
