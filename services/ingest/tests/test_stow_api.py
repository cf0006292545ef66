"""The STOW-RS routes over the real multipart reader and store use case, with in-memory adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from emage_ingest.bootstrap import IngestComponents
from emage_ingest.settings import Settings
from emage_ingest.stow import router

BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: Sequence[bytes], part_type: str = "application/dicom") -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
async def client(ingest: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(router)
    app.state.ingest = IngestComponents(
        Settings(stow_max_request_bytes=10_000_000, stow_max_part_bytes=1_000_000),
        index=None,  # type: ignore[arg-type]
        archive=None,  # type: ignore[arg-type]
        service=ingest.service,
        relay=None,  # type: ignore[arg-type]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        yield http


async def post(
    client: httpx.AsyncClient, body: bytes, path: str = "/studies", **headers: str
) -> httpx.Response:
    return await client.post(path, content=body, headers={"content-type": CONTENT_TYPE, **headers})


def sequence(response: httpx.Response, tag: str) -> list[dict[str, Any]]:
    return list(response.json().get(tag, {}).get("Value", []))


async def test_all_stored_is_200_with_referenced_sops_and_retrieve_urls(client: Any, dicom: Any) -> None:
    study = "1.2.826.0.1.3680043.8.498.7"
    parts = [dicom.ct_slice(StudyInstanceUID=study, InstanceNumber=n) for n in range(3)]
    response = await post(client, multipart(parts), f"/studies/{study}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    referenced = sequence(response, "00081199")
    assert len(referenced) == 3
    assert referenced[0]["00081190"]["Value"][0].startswith(f"http://ingest/studies/{study}/series/")
    assert response.json()["00081190"]["Value"] == [f"http://ingest/studies/{study}"]
    assert "00081198" not in response.json()


async def test_some_failed_is_202_with_failure_reasons(client: Any, dicom: Any) -> None:
    response = await post(client, multipart([dicom.ct_slice(), b"garbage", dicom.ct_slice(Modality=None)]))
    assert response.status_code == 202
    failed = sequence(response, "00081198")
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000, 0xA900]
    assert failed[0]["00081155"] == {"vr": "UI"}
    assert any("part 2" in value for value in response.headers.get_list("warning"))


async def test_all_failed_is_409(client: Any, dicom: Any) -> None:
    response = await post(client, multipart([dicom.ct_slice()]), "/studies/1.2.3")
    assert response.status_code == 409
    assert sequence(response, "00081198")[0]["00081197"]["Value"] == [0xA900]


async def test_duplicates_succeed_and_conflicts_fail(client: Any, dicom: Any) -> None:
    data = dicom.ct_slice(SOPInstanceUID="1.2.3.4")
    assert (await post(client, multipart([data]))).status_code == 200
    assert (await post(client, multipart([data]))).status_code == 200
    response = await post(client, multipart([dicom.ct_slice(SOPInstanceUID="1.2.3.4")]))
    assert response.status_code == 409
    assert sequence(response, "00081198")[0]["00081197"]["Value"] == [0x0111]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"content-type": "application/dicom"}, b"x", 415),
        ({"content-type": 'multipart/related; type="application/dicom"'}, b"x", 400),
        ({}, b"--" + BOUNDARY.encode() + b"\r\n\r\ntruncated", 400),
        ({}, b"", 400),
        ({"accept": "application/dicom+xml"}, b"", 406),
        ({"x-emage-facility": "not-finess"}, b"", 400),
        ({"content-length": "99999999999"}, b"", 413),
    ],
)
async def test_transport_problems_are_problem_json(
    client: Any, ingest: Any, headers: dict[str, str], body: bytes, status: int
) -> None:
    response = await post(client, body, **headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert not ingest.records.instances


async def test_a_part_of_another_type_is_415(client: Any, ingest: Any) -> None:
    response = await post(client, multipart([b"{}"], part_type="application/json"))
    assert response.status_code == 415
    assert not ingest.records.instances


async def test_an_invalid_study_in_the_path_is_400(client: Any) -> None:
    assert (await post(client, multipart([b"x"]), "/studies/1.2.x")).status_code == 400


async def test_a_truncated_tail_reports_what_was_stored_before(client: Any, ingest: Any, dicom: Any) -> None:
    body = multipart([dicom.ct_slice()])[: -len(f"--{BOUNDARY}--\r\n")] + f"--{BOUNDARY}\r\n\r\nhalf".encode()
    response = await post(client, body)
    assert response.status_code == 400
    assert len(response.json()["stored"]) == 1 == len(ingest.records.instances)


async def test_an_oversized_part_is_413(client: Any, ingest: Any) -> None:
    response = await post(client, multipart([b"x" * 1_000_001]))
    assert response.status_code == 413
    assert not ingest.records.instances


async def test_the_facility_header_is_recorded(client: Any, ingest: Any, dicom: Any) -> None:
    await post(client, multipart([dicom.ct_slice()]), **{"x-emage-facility": "2A0000017"})
    (instance,) = ingest.records.instances.values()
    assert instance.facility_finess == "2A0000017"
