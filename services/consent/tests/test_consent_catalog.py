"""The catalog adapter: one scoped QIDO-RS study search, ``limit=1``, answered by ``X-Total-Count``."""

from __future__ import annotations

import httpx
import pytest

from emage_common.access_contract import SEARCH_SCOPE_HEADER, WireScopeClause, WireSearchScope
from emage_consent.adapters.catalog import CatalogPatientDirectory
from emage_consent.ports import PatientDirectoryUnavailableError

KEY = "pid:750000001:IPP-0001"


def directory(handler: httpx.MockTransport) -> CatalogPatientDirectory:
    return CatalogPatientDirectory(httpx.AsyncClient(base_url="http://catalog", transport=handler))


@pytest.mark.parametrize(("total", "expected"), [("0", False), ("1", True), ("12", True)])
async def test_the_patient_has_studies_at_the_facility_when_the_scoped_count_is_positive(
    total: str, expected: bool
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[], headers={"X-Total-Count": total})

    assert await directory(httpx.MockTransport(answer)).has_studies_at("750000001", KEY, "1.2.3") is expected
    [request] = seen
    assert (request.url.path, request.url.params["limit"]) == ("/studies", "1")
    assert WireSearchScope.decode(request.headers[SEARCH_SCOPE_HEADER]) == WireSearchScope(
        clauses=(
            WireScopeClause(facility_finess="750000001", patient_keys=(KEY,), study_instance_uids=("1.2.3",)),
        )
    )


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503),
        httpx.Response(400, json={"detail": "bad scope"}),
        httpx.Response(200, json=[]),
        httpx.Response(200, json=[], headers={"X-Total-Count": "many"}),
    ],
)
async def test_an_answer_that_says_nothing_makes_the_directory_unavailable(response: httpx.Response) -> None:
    with pytest.raises(PatientDirectoryUnavailableError):
        await directory(httpx.MockTransport(lambda _: response)).has_studies_at("750000001", KEY)


async def test_an_unreachable_catalog_makes_the_directory_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(PatientDirectoryUnavailableError):
        await directory(httpx.MockTransport(refuse)).has_studies_at("750000001", KEY)
