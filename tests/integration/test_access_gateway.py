"""The access gateway on the real stack, with real Keycloak tokens: the authorisation matrix, token attacks,
forbidden-looks-like-unknown, and exactly one ``access.decided`` event per decision.

The studies are the gateway world of ``tests/support/gateway_world.py`` (A1 and A2 at CHU Alpha, B1 at
Clinique Beta); every dev user asks the gateway for each of them, and the answers are compared with the role
table of ARCHITECTURE.md as the policy makes it precise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from gateway_world import (
    FACILITY_A,
    FACILITY_B,
    RPPS,
    STOW_TYPE,
    Study,
    Tokens,
    World,
    await_catalogued,
    ct_instance,
    decisions_for,
    get,
    multipart,
)
from jwt.algorithms import RSAAlgorithm
from pydicom.uid import generate_uid

from emage_common.access_contract import FACILITY_HEADER, STUDY_ACCESS_ATTRIBUTES_PATH
from emage_devstack.stack import Stack

pytestmark = pytest.mark.integration


# --- The authorisation matrix ----------------------------------------------------------------------------

USERS = [
    "radiologist-a",
    "referrer-a",
    "nurse-a",
    "technician-a",
    "radiologist-b",
    "patient-1",
    "patient-2",
    "dpo",
]

SEES: dict[str, set[str]] = {
    "radiologist-a": {"A1", "A2"},
    "referrer-a": {"A1"},
    "nurse-a": {"A1", "A2"},
    "technician-a": {"A1"},
    "radiologist-b": {"B1"},
    "patient-1": {"A1"},
    "patient-2": {"B1"},
    "dpo": set(),
}
"""The studies each user finds by searching (and may read the metadata, images and renderings of)."""

DOWNLOADS: dict[str, set[str]] = {
    "radiologist-a": {"A1", "A2"},
    "referrer-a": {"A1"},
    "nurse-a": set(),  # consultative: no download
    "technician-a": set(),  # operational: sees what they acquired, exports nothing
    "radiologist-b": {"B1"},
    "patient-1": {"A1"},
    "patient-2": {"B1"},
    "dpo": set(),
}

STORES: dict[str, set[str]] = {
    "radiologist-a": {"A1", "A2"},  # reports and annotations into their facility's studies
    "radiologist-b": {"B1"},
}
"""Who may add instances to an existing study (a technician only to unreleased studies they acquired)."""


@pytest.mark.parametrize("user", USERS)
def test_search_returns_exactly_the_permitted_studies_with_their_count(
    world: World, tokens: Tokens, gateway: httpx.Client, user: str
) -> None:
    uids = ",".join(study.uid for study in world.studies.values())
    response = get(gateway, tokens(user), f"/dicomweb/studies?StudyInstanceUID={uids}&limit=1")
    if user == "dpo":
        assert response.status_code == 403
        return
    assert response.status_code == 200, response.text
    expected = SEES[user]
    assert int(response.headers["X-Total-Count"]) == len(expected)
    first_page = {result["0020000D"]["Value"][0] for result in response.json()}
    assert len(first_page) == min(1, len(expected))
    everything = get(gateway, tokens(user), f"/dicomweb/studies?StudyInstanceUID={uids}")
    found = {result["0020000D"]["Value"][0] for result in everything.json()}
    assert found == {world.studies[name].uid for name in expected}
    # Series and instance searches are scoped the same way.
    series = get(gateway, tokens(user), f"/dicomweb/series?StudyInstanceUID={uids}")
    assert int(series.headers["X-Total-Count"]) == len(expected)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("name", ["A1", "A2", "B1"])
def test_reading_a_study_follows_the_role_table(
    world: World, tokens: Tokens, gateway: httpx.Client, user: str, name: str
) -> None:
    study = world.studies[name]
    token = tokens(user)
    instance = f"/dicomweb/studies/{study.uid}/series/{study.series}/instances/{study.instance}"
    answers = {
        "metadata": get(gateway, token, f"/dicomweb/studies/{study.uid}/metadata", "application/dicom+json"),
        "retrieve": get(gateway, token, instance, 'multipart/related; type="application/dicom"'),
        "frames": get(
            gateway, token, f"{instance}/frames/1", "multipart/related; type=application/octet-stream"
        ),
        "rendered": get(gateway, token, f"{instance}/rendered", "image/jpeg"),
        "thumbnail": get(gateway, token, f"/dicomweb/studies/{study.uid}/thumbnail", "image/jpeg"),
        "download": get(
            gateway, token, f"/dicomweb/studies/{study.uid}", 'multipart/related; type="application/dicom"'
        ),
        "series-search": get(gateway, token, f"/dicomweb/studies/{study.uid}/series"),
    }
    sees = name in SEES[user]
    expected = {
        "metadata": 200 if sees else 404,
        "retrieve": 200 if sees else 404,
        "frames": 200 if sees else 404,
        "rendered": 200 if sees else 404,
        "thumbnail": 200 if sees else 404,
        "download": 200 if name in DOWNLOADS[user] else 404,
        "series-search": 200,
    }
    assert {what: response.status_code for what, response in answers.items()} == expected
    series_found = int(answers["series-search"].headers["X-Total-Count"])
    assert series_found == (1 if sees else 0), "a forbidden study's series are as absent as an unknown one's"
    if sees:
        assert answers["retrieve"].content.count(study.instance.encode()) >= 1
        assert answers["rendered"].content[:2] == b"\xff\xd8"


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("name", ["A1", "B1"])
def test_storing_into_an_existing_study_follows_the_role_table(
    world: World, tokens: Tokens, gateway: httpx.Client, user: str, name: str
) -> None:
    study = world.studies[name]
    part10 = ct_instance(
        study.uid, generate_uid(), patient_id=study.patient_id, issuer=study.issuer, number=9
    )
    response = gateway.post(
        f"/dicomweb/studies/{study.uid}",
        content=multipart(part10),
        headers={
            "Authorization": f"Bearer {tokens(user)}",
            "Content-Type": STOW_TYPE,
            "Accept": "application/dicom+json",
        },
    )
    assert response.status_code == (200 if name in STORES.get(user, set()) else 404), response.text


def test_a_technician_uploads_a_new_study_for_their_facility(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    study = generate_uid()
    part10 = ct_instance(
        study, generate_uid(), patient_id="IPP-A-NEW", issuer=FACILITY_A, operator_rpps=RPPS["technician-a"]
    )
    headers = {"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}
    # A forged facility header is dropped: the facility is the technician's own, from their token.
    headers[FACILITY_HEADER] = FACILITY_B
    for user, status in [("nurse-a", 403), ("patient-1", 403), ("radiologist-a", 403), ("technician-a", 200)]:
        response = gateway.post(
            "/dicomweb/studies",
            content=multipart(part10),
            headers=headers | {"Authorization": f"Bearer {tokens(user)}"},
        )
        assert response.status_code == status, (user, response.text)
    await_catalogued(services, Study(study, "", "", FACILITY_A, "", ""))
    attributes = httpx.get(
        services.service_url("catalog") + STUDY_ACCESS_ATTRIBUTES_PATH.format(study=study), timeout=10
    ).json()
    assert attributes["facility_finess"] == FACILITY_A
    assert attributes["performing_technician_rpps"] == [RPPS["technician-a"]]
    found = get(gateway, tokens("technician-a"), f"/dicomweb/studies?StudyInstanceUID={study}")
    assert found.headers["X-Total-Count"] == "1"


# --- Forbidden and unknown look alike ---------------------------------------------------------------------


def test_a_forbidden_study_answers_exactly_like_an_unknown_one(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    token = tokens("radiologist-b")
    unknown = generate_uid()
    for suffix in ("/metadata", "", "/thumbnail", "/series"):
        forbidden = get(gateway, token, f"/dicomweb/studies/{world.a1.uid}{suffix}")
        missing = get(gateway, token, f"/dicomweb/studies/{unknown}{suffix}")
        assert forbidden.status_code == missing.status_code, suffix
        assert forbidden.headers.get("content-type") == missing.headers.get("content-type"), suffix

        def body(response: httpx.Response) -> Any:
            if not response.headers.get("content-type", "").endswith("json"):
                return response.content
            document = response.json()
            return (
                {k: v for k, v in document.items() if k != "request_id"}
                if isinstance(document, dict)
                else document
            )

        assert body(forbidden) == body(missing), suffix


# --- Tokens -----------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    pad = lambda part: part + "=" * (-len(part) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(header))), json.loads(
        base64.urlsafe_b64decode(pad(payload))
    )


def _forgeries(services: Stack, token: str) -> dict[str, str]:
    header, claims = _parts(token)
    issuer = services.keycloak.issuer
    jwks = httpx.get(httpx.get(f"{issuer}/.well-known/openid-configuration").json()["jwks_uri"]).json()
    jwk = next(key for key in jwks["keys"] if key["kid"] == header["kid"])
    public_pem = RSAAlgorithm.from_jwk(json.dumps(jwk)).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': header['kid']}).encode())}."
    hs_input += _b64(json.dumps(claims).encode())
    hs256 = f"{hs_input}.{_b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
    none_header = _b64(json.dumps({"alg": "none", "kid": header["kid"]}).encode())
    none = f"{none_header}.{_b64(json.dumps(claims).encode())}."
    elevated = dict(claims, roles=["radiologist"], facility=FACILITY_A)
    signature = token.rsplit(".", 1)[1]
    escalated = f"{token.split('.')[0]}.{_b64(json.dumps(elevated).encode())}.{signature}"
    master = issuer.rsplit("/realms/", 1)[0] + "/realms/master"
    foreign = httpx.post(
        f"{master}/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"},
        timeout=30,
    )
    forged = {"alg-none": none, "hs256-with-public-key": hs256, "claims-escalated": escalated}
    if foreign.status_code == 200:
        forged["wrong-issuer"] = foreign.json()["access_token"]
    no_audience = httpx.post(
        f"{issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": "patient-2",
            "password": "patient-2",
        },
        timeout=30,
    )
    if no_audience.status_code == 200:
        # Keycloak's built-in admin-cli client: a genuine token of the right issuer, but not for e-mage's API
        # unless the realm gives every client the audience.
        other = no_audience.json()["access_token"]
        audience = _parts(other)[1].get("aud") or []
        if "emage-api" not in ([audience] if isinstance(audience, str) else audience):
            forged["wrong-audience"] = other
    return forged


def test_forged_and_foreign_tokens_get_401_and_reach_nothing(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    forged = _forgeries(services, tokens("radiologist-b"))
    assert {"alg-none", "hs256-with-public-key", "claims-escalated", "wrong-issuer"} <= set(forged)
    for name, token in forged.items():
        for path in (f"/dicomweb/studies/{world.a1.uid}/metadata", "/dicomweb/studies", "/api/v1/me"):
            response = get(gateway, token, path)
            assert response.status_code == 401, (name, path, response.text)
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
            assert "Traceback" not in response.text
    for header in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        response = gateway.get("/dicomweb/studies", headers=header)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


# --- Audit: one access.decided per decision ---------------------------------------------------------------


def test_every_decision_is_audited_exactly_once(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    requests = {
        "allowed": ("radiologist-a", f"/dicomweb/studies/{world.a1.uid}/metadata", "allow"),
        "denied": ("radiologist-b", f"/dicomweb/studies/{world.a1.uid}/metadata", "deny"),
        "unknown": ("radiologist-b", f"/dicomweb/studies/{generate_uid()}/metadata", "deny"),
        "search": ("nurse-a", "/dicomweb/studies?limit=1", "allow"),
        "patient": ("patient-1", f"/dicomweb/studies/{world.a1.uid}/thumbnail", "allow"),
    }
    request_ids: dict[str, str] = {}
    for name, (user, path, _) in requests.items():
        response = get(gateway, tokens(user), path)
        request_ids[name] = response.headers["x-request-id"]
    found = decisions_for(services.kafka.bootstrap_servers, set(request_ids.values()))
    counts = {name: len(found.get(request_id, [])) for name, request_id in request_ids.items()}
    assert counts == dict.fromkeys(requests, 1)
    decisions = {name: found[request_id][0].decision for name, request_id in request_ids.items()}
    assert decisions == {name: expected for name, (_, _, expected) in requests.items()}


def test_decisions_carry_who_what_why_and_from_where(
    world: World, tokens: Tokens, gateway: httpx.Client, services: Stack
) -> None:
    response = get(gateway, tokens("radiologist-b"), f"/dicomweb/studies/{world.a1.uid}/metadata")
    request_id = response.headers["x-request-id"]

    [decided] = decisions_for(services.kafka.bootstrap_servers, {request_id})[request_id]
    assert decided.decision == "deny"
    assert decided.reason == "no_relationship"
    assert decided.action == "read_metadata"
    assert decided.study_instance_uid == world.a1.uid
    assert decided.patient_key == f"pid:{FACILITY_A}:IPP-A-000001"
    assert (decided.principal.role, decided.principal.rpps, decided.principal.facility_finess) == (
        "radiologist",
        RPPS["radiologist-b"],
        FACILITY_B,
    )
    assert decided.client_address == "127.0.0.1"


# --- Records: FHIR ImagingStudy -----------------------------------------------------------------------------


def test_a_study_is_a_fhir_imaging_study_for_whoever_may_read_it(
    world: World, tokens: Tokens, gateway: httpx.Client
) -> None:
    from fhir.resources.R4B.imagingstudy import ImagingStudy

    response = get(gateway, tokens("radiologist-a"), f"/fhir/ImagingStudy/{world.a1.uid}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    resource = response.json()
    ImagingStudy.model_validate(resource)
    assert resource["identifier"][0]["value"] == f"urn:oid:{world.a1.uid}"
    assert resource["referrer"]["identifier"]["value"] == RPPS["referrer-a"]
    assert resource["contained"][0]["address"] == f"{world.gateway}/dicomweb"
    [series] = [entry for entry in resource["series"] if entry["uid"] == world.a1.series]
    assert series["instance"][0]["uid"] == world.a1.instance
    forbidden = get(gateway, tokens("radiologist-b"), f"/fhir/ImagingStudy/{world.a1.uid}")
    unknown = get(gateway, tokens("radiologist-b"), f"/fhir/ImagingStudy/{generate_uid()}")
    assert forbidden.status_code == unknown.status_code == 404
