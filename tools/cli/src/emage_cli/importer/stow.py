"""A STOW-RS client (PS3.18 §10.5) that streams files from disk.

Each request is ``multipart/related; type="application/dicom"`` (PS3.18 §8.6.1.2, RFC 2387) with one Part 10
file per part, read in 1 MiB chunks as the request is sent; its length is known in advance, so it goes out
with a Content-Length rather than chunked. Requests run concurrently up to a limit.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from emage_cli.importer.files import Batch, DicomFile
from emage_cli.importer.outcomes import (
    FileResult,
    Outcome,
    part_details,
    results_from_problem,
    results_from_response,
)

CHUNK_BYTES: Final = 1024 * 1024
DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
FACILITY_HEADER: Final = "X-Emage-Facility"
#: Statuses after which the same request may succeed later (RFC 9110 §15.6.4, §15.5.9).
RETRYABLE_STATUS: Final = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class MultipartBody:
    """The framing of a multipart/related body around a sequence of files (RFC 2046 §5.1.1)."""

    files: Sequence[DicomFile]
    boundary: str

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{DICOM}"; boundary={self.boundary}'

    def _part_header(self, first: bool) -> bytes:
        lead = b"" if first else b"\r\n"
        return lead + f"--{self.boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode()

    def _closing(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def length(self) -> int:
        framing = sum(len(self._part_header(index == 0)) for index in range(len(self.files)))
        return framing + sum(file.size_bytes for file in self.files) + len(self._closing())

    async def chunks(self, on_bytes: Callable[[int], None]) -> AsyncIterator[bytes]:
        """The body, a file chunk at a time; ``on_bytes`` is told how many file bytes went out."""
        for index, file in enumerate(self.files):
            yield self._part_header(index == 0)
            stream = await asyncio.to_thread(file.path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                    yield chunk
                    on_bytes(len(chunk))
            finally:
                stream.close()
        yield self._closing()


class StowClient:
    """Sends batches to a DICOMweb service's ``/studies`` resource and reports each file's result."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        facility: str | None = None,
        token: str | None = None,
        attempts: int = 3,
        backoff_seconds: float = 1.0,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._headers = {"Accept": DICOM_JSON}
        if facility:
            self._headers[FACILITY_HEADER] = facility
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._attempts = attempts
        self._backoff = backoff_seconds

    async def store(self, batch: Batch, on_bytes: Callable[[int], None]) -> list[FileResult]:
        """Store ``batch``, retrying what the server could not take for now (out of resources, transport
        errors, 503…) up to ``attempts`` times; returns one result per file."""
        pending: Sequence[DicomFile] = batch.files
        settled: list[FileResult] = []
        for attempt in range(1, self._attempts + 1):
            results = await self._send(batch.study_instance_uid, pending, on_bytes)
            retry = [r for r in results if r.retryable and r.outcome is Outcome.REJECTED]
            settled += [r for r in results if not (r.retryable and r.outcome is Outcome.REJECTED)]
            if not retry or attempt == self._attempts:
                return settled + retry
            again = {r.path for r in retry}
            pending = [file for file in pending if file.path in again]
            await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        return settled

    async def _send(
        self, study: str | None, files: Sequence[DicomFile], on_bytes: Callable[[int], None]
    ) -> list[FileResult]:
        body = MultipartBody(files, f"emage-{secrets.token_hex(16)}")
        url = f"{self._base_url}/studies" + (f"/{study}" if study else "")
        headers = {**self._headers, "Content-Type": body.content_type, "Content-Length": str(body.length)}
        try:
            response = await self._client.post(url, content=body.chunks(on_bytes), headers=headers)
        except httpx.TransportError as error:
            return [
                FileResult(file.path, Outcome.REJECTED, f"transport error: {error!r}", retryable=True)
                for file in files
            ]
        payload = _json(response)
        if (
            response.status_code in (200, 202, 409)
            and isinstance(payload, dict)
            and not _is_problem(response)
        ):
            details = part_details(response.headers.get_list("warning"))
            return results_from_response(files, response.status_code, payload, details)
        problem = (
            payload
            if isinstance(payload, dict)
            else {"detail": response.text[:200] or response.reason_phrase}
        )
        return results_from_problem(
            files, response.status_code, problem, retryable=response.status_code in RETRYABLE_STATUS
        )


def _is_problem(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/problem+json")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
