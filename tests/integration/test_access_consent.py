"""Consent through the gateway, with real tokens: granted → allowed, revoked → denied, opposed → even the
ordering physician is denied while the owning facility's radiologist keeps access, break-the-glass still
works and is flagged, the history is returned in order and as FHIR.

The consent service publishes ``consent.changed``; the gateway applies it to its view without any call on
the request path, so each effect is awaited by polling (the one-second target is measured in ``bench/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from gateway_world import (
    FACILITY_A,
    RPPS,
    Study,
    Tokens,
    World,
    await_catalogued,
    decisions_for,
    publish_study,
)

from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration

PATIENT_1_KEY = f"pid:{FACILITY_A}:IPP-A-000001"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _status(gateway: httpx.Client, token: str, study: Study) -> int:
    return gateway.get(f"/dicomweb/studies/{study.uid}/metadata", headers=_auth(token)).status_code


@pytest.fixture(scope="module")
def study(services: Stack, world: World) -> Study:
    """A study of patient-1 at CHU Alpha, ordered by referrer-a, for this module alone."""
    a3 = publish_study(services, FACILITY_A, "IPP-A-000001", FACILITY_A, referring_rpps=RPPS["referrer-a"])
    await_catalogued(services, a3)
    return a3


def test_consent_grant_revoke_oppose_and_break_the_glass(
    study: Study, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    patient, colleague = tokens("patient-1"), tokens("radiologist-b")
    referrer, radiologist = tokens("referrer-a"), tokens("radiologist-a")
    assert _status(gateway, colleague, study) == 404

    grant = {
        "patient_key": PATIENT_1_KEY,
        "grantee": {"kind": "professional", "rpps": RPPS["radiologist-b"]},
        "study_instance_uid": study.uid,
    }
    once = {**_auth(patient), "Idempotency-Key": f"grant-{study.uid}"}
    granted = gateway.post("/api/v1/consents", json=grant, headers=once)
    assert granted.status_code == 201, granted.text
    consent_id = granted.json()["consent_id"]
    # The portal lost the answer and retries with the same key: the same consent, not a second one.
    retried = gateway.post("/api/v1/consents", json=grant, headers=once)
    assert (retried.status_code, retried.json()) == (201, granted.json())
    _eventually(lambda: _status(gateway, colleague, study) == 200, "the consent never took effect")

    revoked = gateway.post(f"/api/v1/consents/{consent_id}/revoke", json={}, headers=_auth(patient))
    assert revoked.status_code == 200, revoked.text
    _eventually(lambda: _status(gateway, colleague, study) == 404, "the revocation never took effect")

    assert _status(gateway, referrer, study) == 200
    opposed = gateway.post(
        "/api/v1/consents/oppositions", json={"patient_key": PATIENT_1_KEY}, headers=_auth(patient)
    )
    assert opposed.status_code == 201, opposed.text
    opposition_id = opposed.json()["consent_id"]
    try:
        _eventually(lambda: _status(gateway, referrer, study) == 404, "the opposition never took effect")
        assert _status(gateway, radiologist, study) == 200, "the owning facility's radiology is spared"

        justification = "Patient inconscient aux urgences, examen antérieur indispensable"
        glass = gateway.post(
            "/api/v1/break-glass",
            json={"study_instance_uid": study.uid, "justification": justification, "duration_minutes": 15},
            headers=_auth(colleague),
        )
        assert glass.status_code == 201, glass.text
        viewed = gateway.get(f"/dicomweb/studies/{study.uid}/metadata", headers=_auth(colleague))
        assert viewed.status_code == 200
        request_id = viewed.headers["x-request-id"]
        [decided] = decisions_for(services.kafka.bootstrap_servers, {request_id})[request_id]
        assert (decided.basis, decided.justification) == ("break_glass", justification)
    finally:
        lifted = gateway.post(
            f"/api/v1/consents/oppositions/{opposition_id}/lift", json={}, headers=_auth(patient)
        )
        assert lifted.status_code == 200, lifted.text
    _eventually(lambda: _status(gateway, referrer, study) == 200, "lifting the opposition never took effect")

    history = gateway.get(f"/api/v1/consents/history?patient_key={PATIENT_1_KEY}", headers=_auth(patient))
    assert history.status_code == 200, history.text
    records = history.json()["records"]
    mine = [record for record in records if record["consent_id"] in {consent_id, opposition_id}]
    assert [record["action"] for record in mine] == ["grant", "revoke", "oppose", "lift"]

    fhir = gateway.get(f"/api/v1/consents/fhir?patient_key={PATIENT_1_KEY}", headers=_auth(patient))
    assert fhir.status_code == 200, fhir.text
    bundle = fhir.json()
    assert bundle["resourceType"] == "Bundle"
    ids = {entry["resource"]["id"] for entry in bundle["entry"]}
    assert {consent_id, opposition_id} <= ids

    # Another patient reads nothing of it; a professional of another facility records nothing for them.
    other = gateway.get(f"/api/v1/consents/{consent_id}", headers=_auth(tokens("patient-2")))
    assert other.status_code == 404
    elsewhere = gateway.post(
        "/api/v1/consents",
        json={
            "patient_key": PATIENT_1_KEY,
            "grantee": {"rpps": RPPS["radiologist-b"]},
            "information": {"text": "Information orale donnée au patient."},
        },
        headers=_auth(colleague),
    )
    assert elsewhere.status_code == 404
