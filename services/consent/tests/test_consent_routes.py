"""The HTTP surface over in-memory adapters: the principal header, statuses, problem details, bodies,
Location, FHIR media type, and that refused requests leave nothing behind."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo.errors import AutoReconnect

from emage_common.access_contract import PRINCIPAL_HEADER, ForwardedPrincipal
from emage_common.events import ConsentChanged

BASE = "/api/v1/consents"
CHU_ALPHA = "750000001"
PATIENT_1, PATIENT_2 = "pid:750000001:IPP-0001", "pid:750000001:IPP-0002"
STUDY_1 = "1.2.826.0.1.3680043.8.498.1"
TO_B = {"kind": "professional", "rpps": "10100000057"}


def as_(principal: ForwardedPrincipal) -> dict[str, str]:
    return {PRINCIPAL_HEADER: principal.encode()}


ME = as_(ForwardedPrincipal(subject="p1", role="patient", name="Jeanne", patient_keys=(PATIENT_1,)))
OTHER_PATIENT = as_(ForwardedPrincipal(subject="p2", role="patient", patient_keys=(PATIENT_2,)))
RADIOLOGIST = as_(
    ForwardedPrincipal(
        subject="r",
        role="radiologist",
        name="Dr A",
        rpps="10100000016",
        facility_finess=CHU_ALPHA,
        facility_name="CHU Alpha",
    )
)
DPO = as_(ForwardedPrincipal(subject="dpo", role="dpo"))


def is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def nothing_written(fakes: Any) -> bool:
    return fakes.store.appended == [] and fakes.store.outbox == [] and fakes.events.published == []


@pytest.mark.parametrize("value", [None, "", "not-base64!", "eyJyb2xlIjogImtpbmcifQ"])
def test_without_a_valid_forwarded_principal_the_answer_is_401(client: TestClient, value: str | None) -> None:
    headers = {} if value is None else {PRINCIPAL_HEADER: value}
    for method, path in (
        ("GET", BASE),
        ("POST", BASE),
        ("GET", f"{BASE}/x/fhir"),
        ("POST", f"{BASE}/x/revoke"),
    ):
        is_problem(client.request(method, path, headers=headers, json={"grantee": TO_B}), 401)


def test_a_patient_grants_then_reads_revokes_and_reads_the_history(client: TestClient, fakes: Any) -> None:
    created = client.post(
        BASE, headers=ME, json={"grantee": TO_B, "valid_until": "2025-06-01T00:00:00+02:00"}
    )
    assert created.status_code == 201, created.text
    consent = created.json()
    assert created.headers["Location"] == f"{BASE}/{consent['consent_id']}"
    assert consent | {"consent_id": "…", "recorded_at": "…", "updated_at": "…"} == {
        "consent_id": "…",
        "patient_key": PATIENT_1,
        "provision": "permit",
        "grantee": TO_B,
        "study_instance_uid": None,
        "valid_from": None,
        "valid_until": "2025-05-31T22:00:00Z",
        "status": "active",
        "recorded_status": "active",
        "revision": 1,
        "recorded_at": "…",
        "recorded_by": {
            "subject": "p1",
            "role": "patient",
            "name": "Jeanne",
            "rpps": None,
            "facility_finess": None,
            "facility_name": None,
            "channel": "patient_portal",
        },
        "information": None,
        "updated_at": "…",
        "ended_at": None,
        "ended_by": None,
        "end_reason": None,
    }
    url = f"{BASE}/{consent['consent_id']}"
    assert client.get(url, headers=ME).json() == consent
    revoked = client.post(f"{url}/revoke", headers=ME, json={"reason": "No longer needed."})
    assert revoked.status_code == 200
    assert (revoked.json()["status"], revoked.json()["revision"]) == ("revoked", 2)
    assert revoked.json()["end_reason"] == "No longer needed."
    again = client.post(f"{url}/revoke", headers=ME)
    assert (again.status_code, again.json()) == (200, revoked.json())

    history = client.get(f"{BASE}/history", headers=ME).json()["records"]
    assert [(r["revision"], r["action"], r["status"]) for r in history] == [
        (1, "grant", "active"),
        (2, "revoke", "inactive"),
    ]
    assert client.get(f"{url}/history", headers=ME).json()["records"] == history
    assert [e.data_as(ConsentChanged).revision for _, e in fakes.events.published] == [1, 2]


def test_a_professional_records_consent_at_the_exam_with_its_provenance(client: TestClient) -> None:
    body = {
        "patient_key": PATIENT_1,
        "rpps": "ignored?",
    }
    assert client.post(BASE, headers=RADIOLOGIST, json=body).status_code == 422
    created = client.post(
        BASE,
        headers=RADIOLOGIST,
        json={
            "patient_key": PATIENT_1,
            "grantee": {"finess": "690000002"},
            "study_instance_uid": STUDY_1,
            "information": {"notice_code": "NOTICE-SHARING-v3", "text": "Explained orally."},
        },
    )
    assert created.status_code == 201, created.text
    consent = created.json()
    assert consent["grantee"] == {"kind": "facility", "finess": "690000002"}
    assert consent["recorded_by"]["channel"] == "at_exam"
    assert consent["recorded_by"]["rpps"] == "10100000016"
    assert consent["information"] == {"notice_code": "NOTICE-SHARING-v3", "text": "Explained orally."}
    listed = client.get(BASE, headers=RADIOLOGIST, params={"patient_key": PATIENT_1}).json()
    assert (listed["total"], listed["items"][0]["consent_id"]) == (1, consent["consent_id"])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "grantee"),
        ({"grantee": {}}, "grantee"),
        ({"grantee": {"kind": "professional"}}, "rpps"),
        ({"grantee": {"rpps": "1010000005"}}, "rpps"),
        ({"grantee": {"rpps": "1010000005X"}}, "rpps"),
        ({"grantee": {"finess": "75000001"}}, "finess"),
        ({"grantee": {"finess": "2C0000001"}}, "finess"),
        ({"grantee": {"kind": "team", "name": "cardiology"}}, "grantee"),
        ({"grantee": {"name": "Dr Who"}}, "grantee"),
        ({"grantee": TO_B, "valid_until": "2030-01-01T00:00:00"}, "valid_until"),
        ({"grantee": TO_B, "valid_until": "soon"}, "valid_until"),
        ({"grantee": TO_B, "study_instance_uid": "1.2.03"}, "study_instance_uid"),
        ({"grantee": TO_B, "information": {}}, "information"),
        ({"grantee": TO_B, "scope": "everything"}, "scope"),
        ({"grantee": TO_B, "patient_key": ""}, "patient_key"),
    ],
)
def test_an_invalid_grant_is_422_and_writes_nothing(
    client: TestClient, fakes: Any, body: dict[str, Any], why: str
) -> None:
    problem = is_problem(client.post(BASE, headers=ME, json=body), 422)
    assert any(why in str(error["loc"]) for error in problem["errors"]), problem
    assert nothing_written(fakes)


@pytest.mark.parametrize(
    "period",
    [
        {"valid_from": "2030-01-02T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"},
        {"valid_from": "2030-01-01T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"},
        {"valid_until": "2020-01-01T00:00:00Z"},
    ],
)
def test_a_period_that_ends_before_it_starts_or_in_the_past_is_422(
    client: TestClient, fakes: Any, period: dict[str, str]
) -> None:
    problem = is_problem(client.post(BASE, headers=ME, json={"grantee": TO_B, **period}), 422)
    assert "valid_until" in problem["detail"]
    assert nothing_written(fakes)


def test_malformed_json_is_a_clear_4xx_and_writes_nothing(client: TestClient, fakes: Any) -> None:
    response = client.post(BASE, headers={**ME, "content-type": "application/json"}, content=b'{"grantee": ')
    problem = is_problem(response, 422)
    assert problem["errors"][0]["type"] == "json_invalid"
    assert nothing_written(fakes)


def test_refusals_by_role_and_patient(client: TestClient, fakes: Any) -> None:
    is_problem(client.post(BASE, headers=DPO, json={"patient_key": PATIENT_1, "grantee": TO_B}), 403)
    is_problem(client.post(BASE, headers=ME, json={"patient_key": PATIENT_2, "grantee": TO_B}), 404)
    at_exam = {"patient_key": "pid:750000001:UNKNOWN", "grantee": TO_B, "information": {"notice_code": "N1"}}
    is_problem(client.post(BASE, headers=RADIOLOGIST, json=at_exam), 404)
    no_information = {"patient_key": PATIENT_1, "grantee": TO_B}
    assert (
        "information"
        in is_problem(client.post(BASE, headers=RADIOLOGIST, json=no_information), 422)["detail"]
    )
    assert nothing_written(fakes)

    fakes.directory.unavailable = True
    at_exam["patient_key"] = PATIENT_1
    assert is_problem(client.post(BASE, headers=RADIOLOGIST, json=at_exam), 503)
    assert nothing_written(fakes)


def test_someone_elses_consent_answers_exactly_as_an_unknown_one(client: TestClient) -> None:
    consent_id = client.post(BASE, headers=ME, json={"grantee": TO_B}).json()["consent_id"]
    for method, suffix in (("GET", ""), ("GET", "/history"), ("GET", "/fhir"), ("POST", "/revoke")):
        theirs = is_problem(
            client.request(method, f"{BASE}/{consent_id}{suffix}", headers=OTHER_PATIENT), 404
        )
        unknown = is_problem(client.request(method, f"{BASE}/no-such-id{suffix}", headers=OTHER_PATIENT), 404)
        assert theirs["detail"] == unknown["detail"]
    is_problem(client.get(f"{BASE}/history", headers=OTHER_PATIENT, params={"patient_key": PATIENT_1}), 404)
    is_problem(client.get(BASE, headers=OTHER_PATIENT, params={"patient_key": PATIENT_1}), 404)


def test_oppositions_are_lifted_not_revoked(client: TestClient) -> None:
    opposition = client.post(f"{BASE}/oppositions", headers=ME, json={})
    assert opposition.status_code == 201, opposition.text
    body = opposition.json()
    assert (body["provision"], body["grantee"], body["status"]) == ("deny", None, "active")
    assert opposition.headers["Location"] == f"{BASE}/{body['consent_id']}"
    grant_id = client.post(BASE, headers=ME, json={"grantee": TO_B}).json()["consent_id"]

    is_problem(client.post(f"{BASE}/{body['consent_id']}/revoke", headers=ME), 409)
    is_problem(client.post(f"{BASE}/oppositions/{grant_id}/lift", headers=ME), 409)
    is_problem(client.post(f"{BASE}/oppositions/{body['consent_id']}/lift", headers=RADIOLOGIST), 403)
    is_problem(client.post(f"{BASE}/oppositions/{body['consent_id']}/lift", headers=OTHER_PATIENT), 404)

    listed = client.get(f"{BASE}/oppositions", headers=ME).json()
    assert [item["consent_id"] for item in listed["items"]] == [body["consent_id"]]
    lifted = client.post(f"{BASE}/oppositions/{body['consent_id']}/lift", headers=ME, json={"reason": "ok"})
    assert (lifted.status_code, lifted.json()["status"], lifted.json()["revision"]) == (200, "lifted", 2)
    assert client.get(BASE, headers=ME, params={"status": "lifted"}).json()["total"] == 1
    assert client.get(BASE, headers=ME, params={"provision": "permit"}).json()["total"] == 1


def test_the_dpo_reads_everything_and_writes_nothing(client: TestClient, fakes: Any) -> None:
    consent_id = client.post(BASE, headers=ME, json={"grantee": TO_B}).json()["consent_id"]
    assert client.get(f"{BASE}/{consent_id}", headers=DPO).status_code == 200
    assert client.get(BASE, headers=DPO).json()["total"] == 1
    assert client.get(f"{BASE}/history", headers=DPO, params={"patient_key": PATIENT_1}).status_code == 200
    is_problem(client.post(f"{BASE}/{consent_id}/revoke", headers=DPO), 403)
    is_problem(client.post(f"{BASE}/oppositions", headers=DPO, json={"patient_key": PATIENT_1}), 403)
    assert len(fakes.store.appended) == 1


def test_fhir_exports_are_validated_fhir_json(client: TestClient) -> None:
    consent_id = client.post(BASE, headers=ME, json={"grantee": TO_B}).json()["consent_id"]
    client.post(f"{BASE}/oppositions", headers=ME, json={"study_instance_uid": STUDY_1})
    one = client.get(f"{BASE}/{consent_id}/fhir", headers=ME)
    assert one.status_code == 200
    assert one.headers["content-type"] == "application/fhir+json"
    assert (one.json()["resourceType"], one.json()["id"], one.json()["decision"]) == (
        "Consent",
        consent_id,
        "permit",
    )

    bundle = client.get(f"{BASE}/fhir", headers=ME)
    assert bundle.headers["content-type"] == "application/fhir+json"
    assert bundle.json()["type"] == "collection"
    assert [entry["resource"]["decision"] for entry in bundle.json()["entry"]] == ["permit", "deny"]
    history = client.get(f"{BASE}/history/fhir", headers=ME).json()
    assert (history["type"], history["total"]) == ("history", 2)


def test_listing_pages(client: TestClient) -> None:
    for _ in range(3):
        client.post(BASE, headers=ME, json={"grantee": TO_B})
    page = client.get(BASE, headers=ME, params={"limit": 2, "offset": 1}).json()
    assert (page["total"], len(page["items"]), page["limit"], page["offset"]) == (3, 2, 2, 1)
    is_problem(client.get(BASE, headers=ME, params={"limit": 0}), 422)
    is_problem(client.get(BASE, headers=ME, params={"status": "sleeping"}), 422)
    is_problem(client.get(BASE, headers=RADIOLOGIST), 422)


def test_the_openapi_document_describes_the_routes_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {
        BASE,
        f"{BASE}/oppositions",
        f"{BASE}/oppositions/{{consent_id}}/lift",
        f"{BASE}/history",
        f"{BASE}/history/fhir",
        f"{BASE}/fhir",
        f"{BASE}/{{consent_id}}",
        f"{BASE}/{{consent_id}}/history",
        f"{BASE}/{{consent_id}}/fhir",
        f"{BASE}/{{consent_id}}/revoke",
    }
    grant = paths[BASE]["post"]
    assert set(grant["requestBody"]["content"]["application/json"]["examples"]) == {"patient", "at_exam"}
    assert {"201", "401", "403", "404", "422", "503"} <= set(grant["responses"])
    assert "application/fhir+json" in paths[f"{BASE}/fhir"]["get"]["responses"]["200"]["content"]
    assert spec["components"]["securitySchemes"]["ForwardedPrincipal"]["name"] == PRINCIPAL_HEADER


def test_an_unavailable_database_is_503_to_retry(client: TestClient, fakes: Any) -> None:
    async def down(*args: object, **kwargs: object) -> None:
        raise AutoReconnect("primary stepped down")

    fakes.store.append = down
    problem = is_problem(client.post(BASE, headers=ME, json={"grantee": TO_B}), 503)
    assert "retry" in problem["detail"]
    assert fakes.events.published == []


def test_a_retried_creation_with_its_idempotency_key_returns_the_first_consent(
    client: TestClient, fakes: Any
) -> None:
    retry = {**ME, "Idempotency-Key": "9f1c2e0a-portal-grant-1"}
    first = client.post(BASE, headers=retry, json={"grantee": TO_B})
    again = client.post(BASE, headers=retry, json={"grantee": TO_B})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert len(fakes.store.appended) == 1
    assert len(fakes.events.published) == 1

    opposition = {**ME, "Idempotency-Key": "9f1c2e0a-portal-oppose-1"}
    opposed = [client.post(f"{BASE}/oppositions", headers=opposition, json={}) for _ in range(2)]
    assert [response.status_code for response in opposed] == [201, 201]
    assert opposed[0].json() == opposed[1].json()
    assert len(fakes.store.appended) == 2


def test_an_idempotency_key_is_the_callers_own(client: TestClient, fakes: Any) -> None:
    key = {"Idempotency-Key": "same-key"}
    mine = client.post(BASE, headers={**ME, **key}, json={"grantee": TO_B})
    theirs = client.post(BASE, headers={**OTHER_PATIENT, **key}, json={"grantee": TO_B})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["consent_id"] != theirs.json()["consent_id"]
    assert theirs.json()["patient_key"] == PATIENT_2


def test_an_idempotency_key_reused_for_another_request_is_422_and_writes_nothing(
    client: TestClient, fakes: Any
) -> None:
    retry = {**ME, "Idempotency-Key": "k-1"}
    assert client.post(BASE, headers=retry, json={"grantee": TO_B}).status_code == 201
    written = (list(fakes.store.appended), list(fakes.events.published))
    other_grantee = {"kind": "professional", "rpps": "10100000016"}
    for path, body in ((BASE, {"grantee": other_grantee}), (f"{BASE}/oppositions", {})):
        problem = is_problem(client.post(path, headers=retry, json=body), 422)
        assert "Idempotency-Key" in problem["detail"]
    assert (fakes.store.appended, fakes.events.published) == written


@pytest.mark.parametrize("key", ["", "has space", "tab\tinside", "x" * 129])
def test_a_malformed_idempotency_key_is_422_and_writes_nothing(
    client: TestClient, fakes: Any, key: str
) -> None:
    response = client.post(BASE, headers={**ME, "Idempotency-Key": key}, json={"grantee": TO_B})
    is_problem(response, 422)
    assert nothing_written(fakes)
