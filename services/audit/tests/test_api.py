"""``/api/v1/audit``: who may read what, the shapes answered, and the total counts."""

from __future__ import annotations

from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from emage_audit.service import AuditService
from emage_common.access_contract import PRINCIPAL_HEADER


@pytest.fixture
async def trail(service: AuditService, audit: ModuleType) -> None:
    await service.record_event(audit.instance_event())
    await service.record_event(audit.access_event())
    await service.record_event(
        audit.access_event(audit.RADIOLOGIST_B, basis="break_glass", justification=audit.JUSTIFICATION)
    )
    await service.record_event(audit.access_event(study=audit.STUDY_2, patient=audit.PATIENT_2))


def patient_1(audit: ModuleType) -> dict[str, str]:
    return audit.principal_header(
        "patient", subject="kc-patient-1", patient_keys=[audit.PATIENT_1.patient_key]
    )


@pytest.mark.parametrize("path", ["/me", "/records", "/fhir", "/verify", "/alerts", "/checkpoints"])
def test_without_a_forwarded_principal_nothing_is_answered(client: TestClient, path: str) -> None:
    assert client.get(f"/api/v1/audit{path}").status_code == 401
    assert (
        client.get(f"/api/v1/audit{path}", headers={PRINCIPAL_HEADER: "not-a-principal"}).status_code == 401
    )


@pytest.mark.parametrize("path", ["/me", "/records", "/fhir", "/verify", "/alerts", "/checkpoints"])
def test_professionals_read_no_audit_trail(client: TestClient, audit: ModuleType, path: str) -> None:
    response = client.get(f"/api/v1/audit{path}", headers=audit.principal_header("radiologist"))
    assert response.status_code == 403
    assert response.json()["status"] == 403


@pytest.mark.usefixtures("trail")
def test_a_patient_reads_their_access_log_in_french_or_english(client: TestClient, audit: ModuleType) -> None:
    response = client.get("/api/v1/audit/me", headers=patient_1(audit))
    assert response.status_code == 200
    assert response.headers["X-Total-Count"] == "2"
    entries = response.json()["entries"]
    assert entries[0]["who"]["name"] == "Bruno Petit"
    assert entries[0]["break_glass"] is True
    assert entries[1]["text"].startswith(
        "Le 12 mars 2025 à 14:05, Alice Martin, radiologue (CHU Alpha), a ouvert"
    )
    english = client.get("/api/v1/audit/me?lang=en", headers=patient_1(audit)).json()
    assert english["entries"][1]["text"].startswith("On 12 March 2025 at 14:05 (Paris time), Alice Martin")
    assert client.get("/api/v1/audit/me?lang=de", headers=patient_1(audit)).status_code == 422


def test_the_dpo_has_no_access_log_of_their_own(client: TestClient, audit: ModuleType) -> None:
    assert client.get("/api/v1/audit/me", headers=audit.principal_header("dpo")).status_code == 403


@pytest.mark.usefixtures("trail")
def test_a_patient_searches_their_own_records_only(client: TestClient, audit: ModuleType) -> None:
    response = client.get("/api/v1/audit/records", headers=patient_1(audit))
    assert response.headers["X-Total-Count"] == "3"
    assert {r["data"].get("patient_key", audit.PATIENT_1.patient_key) for r in response.json()} == {
        audit.PATIENT_1.patient_key
    }
    other = client.get(
        f"/api/v1/audit/records?patient_key={audit.PATIENT_2.patient_key}", headers=patient_1(audit)
    )
    assert (other.status_code, other.json(), other.headers["X-Total-Count"]) == (200, [], "0")


@pytest.mark.usefixtures("trail")
def test_the_dpo_filters_and_pages_with_counts(client: TestClient, audit: ModuleType) -> None:
    dpo = audit.principal_header("dpo")
    everything = client.get("/api/v1/audit/records", headers=dpo)
    assert everything.headers["X-Total-Count"] == "4"
    assert [r["seq"] for r in everything.json()] == [4, 3, 2, 1]
    page = client.get("/api/v1/audit/records?limit=2&offset=1", headers=dpo)
    assert ([r["seq"] for r in page.json()], page.headers["X-Total-Count"]) == ([3, 2], "4")
    by_facility = client.get(f"/api/v1/audit/records?facility={audit.CLINIQUE_BETA}", headers=dpo)
    assert [r["seq"] for r in by_facility.json()] == [3]
    by_study = client.get(f"/api/v1/audit/records?study={audit.STUDY_2}&decision=allow", headers=dpo)
    assert [r["seq"] for r in by_study.json()] == [4]
    by_time = client.get(
        "/api/v1/audit/records?from=2025-03-12T13:05:00Z&to=2025-03-12T13:06:00Z", headers=dpo
    )
    assert by_time.headers["X-Total-Count"] == "4"
    assert client.get("/api/v1/audit/records?from=2025-03-12T13:05:00", headers=dpo).status_code == 422


@pytest.mark.usefixtures("trail")
def test_the_dpo_verifies_the_chain(client: TestClient, audit: ModuleType) -> None:
    for method in ("GET", "POST"):
        response = client.request(method, "/api/v1/audit/verify", headers=audit.principal_header("dpo"))
        assert response.status_code == 200
        assert response.json()["valid"] is True
        assert response.json()["records_checked"] == 4
    assert client.post("/api/v1/audit/verify", headers=patient_1(audit)).status_code == 403


@pytest.mark.usefixtures("trail")
def test_fhir_export(client: TestClient, audit: ModuleType) -> None:
    response = client.get("/api/v1/audit/fhir?limit=2", headers=audit.principal_header("dpo"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    bundle = response.json()
    assert (bundle["resourceType"], bundle["total"], len(bundle["entry"])) == ("Bundle", 4, 2)
    own = client.get("/api/v1/audit/fhir", headers=patient_1(audit)).json()
    assert own["total"] == 3


@pytest.mark.usefixtures("trail")
def test_alerts_for_the_patient_and_the_dpo(client: TestClient, audit: ModuleType) -> None:
    mine = client.get("/api/v1/audit/alerts?lang=en", headers=patient_1(audit))
    assert mine.headers["X-Total-Count"] == "1"
    assert mine.json()["alerts"][0]["text"].startswith("Emergency access (break-the-glass) to your exam")
    other = audit.principal_header(
        "patient", subject="kc-patient-2", patient_keys=[audit.PATIENT_2.patient_key]
    )
    assert client.get("/api/v1/audit/alerts", headers=other).json()["total"] == 0
    assert client.get("/api/v1/audit/alerts", headers=audit.principal_header("dpo")).json()["total"] == 1


async def test_checkpoints_and_purge_are_the_dpos(
    client: TestClient, service: AuditService, audit: ModuleType
) -> None:
    await service.record_event(audit.access_event())
    await service.checkpoint()
    dpo = audit.principal_header("dpo", subject="kc-dpo")
    listed = client.get("/api/v1/audit/checkpoints", headers=dpo).json()
    assert [c["seq"] for c in listed["checkpoints"]] == [1]
    assert set(listed["public_keys"]) == {service.signer.key_id}
    assert client.post("/api/v1/audit/purge", headers=patient_1(audit)).status_code == 403
    purged = client.post("/api/v1/audit/purge", headers=dpo)
    assert purged.json() == {"through_seq": None, "records_purged": 0, "purge_record_seq": None}
