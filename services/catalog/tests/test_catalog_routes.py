"""The DICOMweb routes over a stub catalog: negotiation, path validation, headers, base URL, streaming."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from emage_catalog.api import create_app
from emage_catalog.domain.dicom import DicomJson
from emage_catalog.domain.query import SearchQuery
from emage_catalog.service import SearchPage
from emage_catalog.settings import Settings
from emage_common.access_contract import (
    SEARCH_SCOPE_HEADER,
    StudyAccessAttributes,
    WireScopeClause,
    WireSearchScope,
)

STUDY = "1.2.826.0.1.3680043.8.498.5"


class StubCatalog:
    def __init__(self, total: int = 3, results: int = 2) -> None:
        self.total = total
        self.results = results
        self.queries: list[tuple[SearchQuery, str]] = []

    async def search(self, query: SearchQuery, base_url: str) -> SearchPage:
        self.queries.append((query, base_url))
        return SearchPage(self.total, [{"0020000D": {"vr": "UI", "Value": [STUDY]}}] * self.results)

    async def access_attributes(self, study: str) -> StudyAccessAttributes | None:
        if study != STUDY:
            return None
        return StudyAccessAttributes(
            study_instance_uid=STUDY,
            facility_finess="750000001",
            patient_key="pid:750000001:IPP-1",
            referring_physician_rpps="10100000024",
            performing_technician_rpps=("10100000040",),
        )

    async def metadata(
        self, base_url: str, study: str, series: str | None = None, instance: str | None = None
    ) -> AsyncGenerator[DicomJson]:
        if study != STUDY:
            return
        for number in range(3):
            yield {"00200013": {"vr": "IS", "Value": [number]}, "00081190": {"vr": "UR", "Value": [base_url]}}


@pytest.fixture
def catalog() -> StubCatalog:
    return StubCatalog()


@pytest.fixture
def client(catalog: StubCatalog) -> TestClient:
    app = create_app(Settings(qido_max_limit=2))
    app.state.catalog = catalog
    return TestClient(app)  # no lifespan: no Kafka or MongoDB behind the stub


def test_search_answers_dicom_json_with_the_total_count(client: TestClient, catalog: StubCatalog) -> None:
    response = client.get("/studies", params={"PatientID": "IPP-1", "limit": "2"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert response.headers["X-Total-Count"] == "3"
    assert "Warning" not in response.headers
    assert response.json() == [{"0020000D": {"vr": "UI", "Value": [STUDY]}}] * 2
    [(query, base_url)] = catalog.queries
    assert (query.limit, base_url) == (2, "http://testserver/")


def test_a_page_cut_by_the_server_maximum_says_how_many_results_remain(client: TestClient) -> None:
    response = client.get("/studies", params={"fuzzymatching": "true"})
    warning = response.headers["Warning"]
    assert '299 http://testserver: "There are 1 additional results that can be requested"' in warning
    assert "fuzzymatching parameter is not supported" in warning


def test_no_match_is_an_empty_array(client: TestClient, catalog: StubCatalog) -> None:
    catalog.total = catalog.results = 0
    response = client.get("/instances")
    assert (response.status_code, response.json(), response.headers["X-Total-Count"]) == (200, [], "0")


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({"Accept": "application/dicom+json"}, {}, 200),
        ({"Accept": "application/json"}, {}, 200),
        ({"Accept": "*/*"}, {}, 200),
        ({"Accept": "text/html, application/*;q=0.1"}, {}, 200),
        ({}, {}, 200),
        ({"Accept": "application/dicom+xml"}, {}, 406),
        ({"Accept": 'multipart/related; type="application/dicom+xml"'}, {}, 406),
        ({"Accept": "application/dicom+json;q=0"}, {}, 406),
        ({"Accept": "application/dicom+xml"}, {"accept": "application/dicom+json"}, 200),
        ({}, {"charset": "ISO_IR 100"}, 406),
        ({}, {"charset": "utf-8"}, 200),
    ],
)
def test_content_negotiation(
    client: TestClient, headers: dict[str, str], params: dict[str, str], status: int
) -> None:
    response = client.get("/studies", headers=headers, params=params)
    assert response.status_code == status
    if status == 406:
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/studies/1.2.x/series",
        f"/studies/{STUDY}/series/01.2/instances",
        "/studies/1..2/instances",
        "/studies/1.2.3.a/metadata",
        f"/studies/{STUDY}/series/1.2/instances/9" + "1" * 64 + "/metadata",
    ],
)
def test_invalid_uids_in_the_path_are_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert "is not a UID" in response.json()["detail"]


def test_invalid_query_is_a_problem_report(client: TestClient) -> None:
    response = client.get("/studies", params={"PatientAge": "042Y"})
    assert response.status_code == 400
    body = response.json()
    assert body["title"] == "Bad Request"
    assert "matching on PatientAge is not supported" in body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("headers", "base_url"),
    [
        (
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "emage.example.fr",
                "X-Forwarded-Prefix": "/dicomweb",
            },
            "https://emage.example.fr/dicomweb/",
        ),
        ({"X-Forwarded-Host": "emage.example.fr:8443, proxy.internal"}, "http://emage.example.fr:8443/"),
        (
            {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "bad host/", "X-Forwarded-Prefix": "//evil"},
            "http://testserver/",
        ),
        ({"X-Forwarded-Prefix": "/dicomweb/"}, "http://testserver/dicomweb/"),
    ],
)
def test_urls_are_built_on_the_forwarded_base(
    client: TestClient, catalog: StubCatalog, headers: dict[str, str], base_url: str
) -> None:
    client.get("/series", headers=headers)
    assert catalog.queries[-1][1] == base_url


def test_metadata_is_streamed_as_one_array(client: TestClient) -> None:
    response = client.get(f"/studies/{STUDY}/metadata", headers={"X-Forwarded-Prefix": "/dicomweb"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    datasets: list[dict[str, Any]] = response.json()
    assert [d["00200013"]["Value"][0] for d in datasets] == [0, 1, 2]
    assert datasets[0]["00081190"]["Value"] == ["http://testserver/dicomweb/"]


def test_metadata_of_an_unknown_study_is_not_found(client: TestClient) -> None:
    response = client.get("/studies/1.2.3/metadata")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_openapi_documents_the_total_count_header(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/studies/{study}/series"]["get"]
    assert "X-Total-Count" in operation["responses"]["200"]["headers"]
    assert {p["name"] for p in operation["parameters"]} >= {"study", "includefield", "limit", "offset"}


SCOPE = WireSearchScope(
    clauses=(WireScopeClause(facility_finess="750000001"), WireScopeClause(patient_keys=("pid:1:2",)))
)


@pytest.mark.parametrize(
    "path", ["/studies", "/series", "/instances", f"/studies/{STUDY}/series", f"/studies/{STUDY}/instances"]
)
def test_the_search_scope_header_is_decoded_into_the_query(
    client: TestClient, catalog: StubCatalog, path: str
) -> None:
    response = client.get(path, headers={SEARCH_SCOPE_HEADER: SCOPE.encode()})
    assert response.status_code == 200
    assert catalog.queries[-1][0].scope == SCOPE
    client.get(path)
    assert catalog.queries[-1][0].scope is None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(SEARCH_SCOPE_HEADER, "not base64 !")], "invalid search scope"),
        ([(SEARCH_SCOPE_HEADER, "")], "invalid search scope"),
        # Deflated JSON, but {"version":2} and a facility that is no FINESS.
        ([(SEARCH_SCOPE_HEADER, "eJyrVipLLSrOzM9TsjKqBQAiOASv")], "invalid search scope"),
        (
            [(SEARCH_SCOPE_HEADER, "eJyrVkrOSSwtTi1WsoquVkpLTM7MySypjE_LzEstBoopVSjVxtYCAALVDY0")],
            "invalid search scope",
        ),
        ([(SEARCH_SCOPE_HEADER, SCOPE.encode()), (SEARCH_SCOPE_HEADER, SCOPE.encode())], "more than once"),
    ],
)
def test_an_invalid_search_scope_is_refused(
    client: TestClient, catalog: StubCatalog, headers: list[tuple[str, str]], reason: str
) -> None:
    response = client.get(f"/studies/{STUDY}/series/{STUDY}.1/instances", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert catalog.queries == []


def test_access_attributes_of_a_study(client: TestClient) -> None:
    response = client.get(f"/internal/v1/studies/{STUDY}/access-attributes")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert StudyAccessAttributes.model_validate_json(response.content).performing_technician_rpps == (
        "10100000040",
    )
    assert response.json() == {
        "study_instance_uid": STUDY,
        "facility_finess": "750000001",
        "patient_key": "pid:750000001:IPP-1",
        "referring_physician_rpps": "10100000024",
        "performing_technician_rpps": ["10100000040"],
    }


def test_access_attributes_of_an_unknown_or_invalid_study(client: TestClient) -> None:
    unknown = client.get("/internal/v1/studies/1.2.3/access-attributes")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    invalid = client.get("/internal/v1/studies/1.02.3/access-attributes")
    assert invalid.status_code == 400
    assert "is not a UID" in invalid.json()["detail"]


def test_openapi_tags_the_access_attributes_internal_and_documents_the_scope(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths["/internal/v1/studies/{study}/access-attributes"]["get"]
    assert operation["tags"] == ["internal"]
    assert {"200", "400", "404"} <= set(operation["responses"])
    search = paths["/studies"]["get"]
    assert SEARCH_SCOPE_HEADER in {p["name"] for p in search["parameters"]}
