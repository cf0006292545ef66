"""Shares, share links and break-the-glass through the real gateway, with real Keycloak tokens.

The studies are those of the authorisation matrix (``test_access_gateway``): ``A1`` at CHU Alpha for
``patient-1``; ``radiologist-b`` works at Clinique Beta and has no relationship with it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from gateway_world import (
    FACILITY_A,
    RPPS,
    Tokens,
    World,
    await_catalogued,
    decisions_for,
    publish_study,
)

from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _in(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def _create(gateway: httpx.Client, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``path`` as ``token``'s user; the share or link created (201)."""
    created = gateway.post(path, json=body, headers=_auth(token))
    assert created.status_code == 201, created.text
    return dict(created.json())


def _share_with_colleague(gateway: httpx.Client, token: str, study: str, *, days: float) -> dict[str, Any]:
    """A share of ``study`` with ``radiologist-b``, made by ``token``'s user, for ``days``."""
    body = {"study_instance_uid": study, "grantee_rpps": RPPS["radiologist-b"], "expires_at": _in(days=days)}
    return _create(gateway, token, "/api/v1/shares", body)


def _link(gateway: httpx.Client, token: str, study: str, *, expires_at: str, **limits: Any) -> dict[str, Any]:
    """A share link to ``study`` made by ``token``'s user, with its secret and one-time code."""
    body = {"study_instance_uid": study, "expires_at": expires_at, **limits}
    return _create(gateway, token, "/api/v1/share-links", body)


def _sees(gateway: httpx.Client, token: str, study: str) -> bool:
    metadata = gateway.get(f"/dicomweb/studies/{study}/metadata", headers=_auth(token))
    found = gateway.get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=_auth(token))
    assert metadata.status_code in (200, 404)
    assert (metadata.status_code == 200) == (found.headers["X-Total-Count"] == "1")
    return metadata.status_code == 200


def test_a_patient_shares_a_study_with_a_professional_then_revokes_it(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    patient, colleague = tokens("patient-1"), tokens("radiologist-b")
    assert not _sees(gateway, colleague, world.a1.uid)
    share = _share_with_colleague(gateway, patient, world.a1.uid, days=7)
    assert (share["status"], share["shared_by_facility"]) == ("active", None)
    assert _sees(gateway, colleague, world.a1.uid)
    assert not _sees(gateway, colleague, world.a2.uid), "a share covers its study only"
    granted = gateway.get("/api/v1/shares", headers=_auth(colleague)).json()["shares"]
    assert share["share_id"] in {entry["share_id"] for entry in granted}

    # Another patient cannot revoke it, nor learn that it exists.
    assert (
        gateway.delete(f"/api/v1/shares/{share['share_id']}", headers=_auth(tokens("patient-2"))).status_code
        == 404
    )
    assert gateway.delete(f"/api/v1/shares/{share['share_id']}", headers=_auth(patient)).status_code == 204
    assert not _sees(gateway, colleague, world.a1.uid)


def test_sharing_needs_the_right_to_share(world: World, tokens: Tokens, gateway: httpx.Client) -> None:
    body = {
        "study_instance_uid": world.a1.uid,
        "grantee_rpps": "10100000099",
        "expires_at": _in(days=1),
    }
    for user in ("nurse-a", "referrer-a", "technician-a", "patient-2", "radiologist-b", "dpo"):
        response = gateway.post("/api/v1/shares", json=body, headers=_auth(tokens(user)))
        assert response.status_code in (403, 404), (user, response.text)
    for bad in (
        body | {"expires_at": _in(days=-1)},
        body | {"grantee_rpps": "123"},
        body | {"study_instance_uid": "not-a-uid"},
        {"grantee_rpps": RPPS["radiologist-b"]},
    ):
        response = gateway.post("/api/v1/shares", json=bad, headers=_auth(tokens("patient-1")))
        assert response.status_code == 422, (bad, response.text)
        assert "Traceback" not in response.text


def test_a_professionals_share_outside_the_facility_needs_the_patients_consent(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    share = _share_with_colleague(gateway, tokens("radiologist-a"), world.a1.uid, days=1)
    assert share["shared_by_facility"] == "750000001"
    try:
        assert not _sees(gateway, tokens("radiologist-b"), world.a1.uid)
    finally:
        gateway.delete(f"/api/v1/shares/{share['share_id']}", headers=_auth(tokens("radiologist-a")))


def _open(gateway: httpx.Client, secret: str, **factor: str) -> httpx.Response:
    return gateway.post("/api/v1/share-links/open", json={"secret": secret, **factor})


def test_a_share_link_with_a_birth_date_opens_the_study_read_only(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    link = _link(
        gateway,
        tokens("patient-1"),
        world.a1.uid,
        expires_at=_in(days=2),
        max_uses=2,
        second_factor="birth_date",
    )
    assert link["url"].endswith("#" + link["secret"])

    wrong = _open(gateway, link["secret"], birth_date="19900101")
    assert wrong.status_code == 403
    unknown = _open(gateway, link["secret"][:-4] + "AAAA", birth_date="19850412")
    assert (unknown.status_code, unknown.json()["detail"]) == (403, wrong.json()["detail"])
    time.sleep(2.5)  # the pause a wrong factor imposes
    opened = _open(gateway, link["secret"], birth_date="1985-04-12")
    assert opened.status_code == 200, opened.text
    session = opened.json()
    assert session["study_instance_uid"] == world.a1.uid

    client = DICOMwebClient(url=f"{world.gateway}/dicomweb", headers=_auth(session["access_token"]))
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [world.a1.uid]
    metadata = client.retrieve_study_metadata(world.a1.uid)
    assert metadata[0]["0020000D"]["Value"][0] == world.a1.uid
    instance = client.retrieve_instance(world.a1.uid, world.a1.series, world.a1.instance)
    assert instance.SOPInstanceUID == world.a1.instance
    headers = _auth(session["access_token"])
    assert gateway.get(f"/dicomweb/studies/{world.b1.uid}/metadata", headers=headers).status_code == 404
    assert gateway.get(f"/dicomweb/studies/{world.a2.uid}/metadata", headers=headers).status_code == 404
    stow = gateway.post(
        f"/dicomweb/studies/{world.a1.uid}",
        content=b"--x--",
        headers=headers | {"Content-Type": "multipart/related; type=application/dicom; boundary=x"},
    )
    assert stow.status_code == 404, "read-only"
    assert gateway.get("/api/v1/me", headers=headers).status_code == 401, "a link is no identity"

    time.sleep(1.2)  # second-factor attempts are spaced, even right ones
    assert _open(gateway, link["secret"], birth_date="19850412").status_code == 200
    time.sleep(1.2)
    assert _open(gateway, link["secret"], birth_date="19850412").status_code == 403, "max uses reached"

    # Revoking the link ends its sessions at once.
    listed = gateway.get("/api/v1/share-links", headers=_auth(tokens("patient-1"))).json()["links"]
    assert link["link_id"] in {entry["link_id"] for entry in listed}
    revoked = gateway.delete(f"/api/v1/share-links/{link['link_id']}", headers=_auth(tokens("patient-1")))
    assert revoked.status_code == 204
    assert gateway.get(f"/dicomweb/studies/{world.a1.uid}/metadata", headers=headers).status_code == 401


def test_a_one_time_code_link_locks_after_repeated_wrong_codes(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    link = _link(
        gateway, tokens("radiologist-a"), world.a1.uid, expires_at=_in(days=1), second_factor="one_time_code"
    )
    code = link["one_time_code"]
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    delay = 1.0
    for _ in range(5):
        assert _open(gateway, link["secret"], one_time_code=wrong).status_code == 403
        delay *= 2
        time.sleep(min(delay, 16) + 0.2)
    assert _open(gateway, link["secret"], one_time_code=code).status_code == 403, "locked"


def test_an_expired_link_is_refused(world: World, tokens: Tokens, gateway: httpx.Client) -> None:
    link = _link(gateway, tokens("patient-1"), world.a1.uid, expires_at=_in(seconds=3))
    time.sleep(4)
    assert _open(gateway, link["secret"]).status_code == 403


def test_break_the_glass_is_justified_time_boxed_and_view_only(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    # A study of its own: the grant outlives the test, and radiologist-b must stay a stranger to A1.
    study = publish_study(services, FACILITY_A, "IPP-A-000001", FACILITY_A)
    await_catalogued(services, study)
    colleague = tokens("radiologist-b")
    body = {"study_instance_uid": study.uid, "duration_minutes": 30}
    assert (
        gateway.post(
            "/api/v1/break-glass", json=body | {"justification": " "}, headers=_auth(colleague)
        ).status_code
        == 422
    )
    assert (
        gateway.post(
            "/api/v1/break-glass",
            json=body | {"justification": "x" * 20, "duration_minutes": 600},
            headers=_auth(colleague),
        ).status_code
        == 422
    )
    assert not _sees(gateway, colleague, study.uid)
    refused = gateway.post(
        "/api/v1/break-glass",
        json=body | {"justification": "Patient inconscient aux urgences, scanner antérieur nécessaire"},
        headers=_auth(tokens("nurse-a")),
    )
    assert refused.status_code == 404
    opened = gateway.post(
        "/api/v1/break-glass",
        json=body | {"justification": "Patient inconscient aux urgences, scanner antérieur nécessaire"},
        headers=_auth(colleague),
    )
    assert opened.status_code == 201, opened.text
    assert opened.json()["in_force"]
    assert _sees(gateway, colleague, study.uid)
    viewed = gateway.get(f"/dicomweb/studies/{study.uid}/thumbnail", headers=_auth(colleague))
    assert viewed.status_code == 200
    opening, viewing = opened.headers["x-request-id"], viewed.headers["x-request-id"]
    found = decisions_for(services.kafka.bootstrap_servers, {opening, viewing})
    for request_id, action in ((opening, "break_glass"), (viewing, "rendered")):
        [decided] = found[request_id]
        assert (decided.action, decided.decision, decided.basis) == (action, "allow", "break_glass")
        assert decided.justification == "Patient inconscient aux urgences, scanner antérieur nécessaire"
    download = gateway.get(f"/dicomweb/studies/{study.uid}", headers=_auth(colleague))
    assert download.status_code == 404, "break-the-glass is view-only"
    grants = gateway.get("/api/v1/break-glass", headers=_auth(colleague)).json()["grants"]
    assert study.uid in {grant["study_instance_uid"] for grant in grants}
