"""A source PACS reached through DICOMweb: QIDO-RS to find and list (PS3.18 §10.6), WADO-RS to retrieve
(PS3.18 §10.4), with the credentials the settings configure for it.

Instances are retrieved as ``multipart/related; type="application/dicom"; transfer-syntax=*``: each in the
transfer syntax the origin server holds it in (PS3.18 §8.7.3.5.2, ``*`` asks for no transcoding), so what
is archived is what the source holds, byte for byte. The response is read as it arrives, each part spooled to
a file and stored before the next is read (:class:`~emage_ingest.adapters.multipart.MultipartReader`):
memory holds one network chunk whatever the size of the study.

A source that cannot be reached, times out, answers 5xx, 408 or 429, does not have the study (404), or
breaks a response off, is unavailable (:class:`SourceUnavailableError`, retried); one that refuses the
credentials (401, 403) or the request (another 4xx, a response that is not DICOM) rejects the pull
(:class:`PullRejectedError`).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx

from emage_common.events import Acquisition
from emage_ingest.adapters.multipart import MultipartError, MultipartReader, related_boundary
from emage_ingest.domain.sources import (
    DicomWebPeer,
    PullRejectedError,
    RejectionReason,
    SourceInstance,
    SourceStudy,
    SourceUnavailableError,
)
from emage_ingest.pull import StoreCallback

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
ORIGINAL_TRANSFER_SYNTAX: Final = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
QIDO_PAGE: Final = 1000
# DICOM JSON keys (PS3.18 §F.2) of the attributes read from QIDO-RS results.
_STUDY_INSTANCE_UID: Final = "0020000D"
_SERIES_INSTANCE_UID: Final = "0020000E"
_SOP_INSTANCE_UID: Final = "00080018"
_SOP_CLASS_UID: Final = "00080016"
_PATIENT_ID: Final = "00100020"
_ACCESSION_NUMBER: Final = "00080050"
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})


def _first(result: Any, tag: str) -> str | None:
    element = result.get(tag) if isinstance(result, dict) else None
    found = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(found, list) or not found or not isinstance(found[0], str):
        return None
    return found[0].strip(" \x00") or None


class DicomWebStudySource:
    """QIDO-RS and WADO-RS requests to one configured DICOMweb origin server."""

    def __init__(
        self,
        peer: DicomWebPeer,
        client: httpx.AsyncClient,
        *,
        spool_dir: str | None,
        max_instance_bytes: int,
    ) -> None:
        self._peer = peer
        self._client = client
        self._base = peer.normalized_url
        self._spool_dir = spool_dir
        self._max_instance_bytes = max_instance_bytes

    async def find_studies(self, acquisition: Acquisition) -> list[SourceStudy]:
        """QIDO-RS Search for Studies (PS3.18 §10.6.1.2) by Study Instance UID, else accession and patient."""
        params: list[tuple[str, str]] = [("includefield", _PATIENT_ID), ("includefield", _ACCESSION_NUMBER)]
        if acquisition.study_instance_uid is not None:
            params.append(("StudyInstanceUID", acquisition.study_instance_uid))
        else:
            params += [
                ("AccessionNumber", acquisition.accession_number),
                ("PatientID", acquisition.patient.patient_id),
            ]
        studies = []
        for result in await self._search("/studies", params):
            uid = _first(result, _STUDY_INSTANCE_UID)
            if uid is not None:
                studies.append(
                    SourceStudy(uid, _first(result, _PATIENT_ID), _first(result, _ACCESSION_NUMBER))
                )
        return studies

    async def list_instances(self, study_instance_uid: str) -> list[SourceInstance]:
        """QIDO-RS Search for the study's Instances (PS3.18 §10.6.1.2), page by page."""
        found: dict[str, SourceInstance] = {}
        offset = 0
        while True:
            page = await self._search(
                f"/studies/{study_instance_uid}/instances",
                [
                    ("includefield", _SERIES_INSTANCE_UID),
                    ("includefield", _SOP_CLASS_UID),
                    ("limit", str(QIDO_PAGE)),
                    ("offset", str(offset)),
                ],
            )
            new = 0
            for result in page:
                series, sop = _first(result, _SERIES_INSTANCE_UID), _first(result, _SOP_INSTANCE_UID)
                if series is None or sop is None or sop in found:
                    continue
                found[sop] = SourceInstance(series, sop, _first(result, _SOP_CLASS_UID))
                new += 1
            # A short page is the last; a page with nothing new means the server ignores paging.
            if len(page) < QIDO_PAGE or new == 0:
                return list(found.values())
            offset += len(page)

    async def retrieve(
        self, study_instance_uid: str, instances: Sequence[SourceInstance] | None, store: StoreCallback
    ) -> None:
        """WADO-RS Retrieve Study, or Retrieve Instance for each of ``instances`` (PS3.18 §10.4.1)."""
        if instances is None:
            await self._retrieve(f"/studies/{study_instance_uid}", store)
            return
        for instance in instances:
            await self._retrieve(
                f"/studies/{study_instance_uid}/series/{instance.series_instance_uid}"
                f"/instances/{instance.sop_instance_uid}",
                store,
            )

    async def _search(self, path: str, params: Sequence[tuple[str, str]]) -> list[Any]:
        try:
            response = await self._client.get(
                self._base + path, params=tuple(params), headers={"accept": DICOM_JSON}
            )
        except httpx.TransportError as exc:
            raise SourceUnavailableError(f"QIDO-RS {self._base}{path}: {exc!r}") from exc
        if response.status_code == 204:
            return []
        self._check(response, f"QIDO-RS {path}", not_found_is_empty=True)
        if response.status_code == 404:
            return []
        try:
            results = response.json()
        except ValueError:
            raise PullRejectedError(
                RejectionReason.SOURCE_REFUSED_REQUEST, f"QIDO-RS {path} did not answer DICOM JSON"
            ) from None
        if not isinstance(results, list):
            raise PullRejectedError(
                RejectionReason.SOURCE_REFUSED_REQUEST, f"QIDO-RS {path} did not answer a JSON array"
            )
        return results

    async def _retrieve(self, path: str, store: StoreCallback) -> None:
        spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="pull-", dir=self._spool_dir))
        try:
            async with self._client.stream(
                "GET", self._base + path, headers={"accept": ORIGINAL_TRANSFER_SYNTAX}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                self._check(response, f"WADO-RS {path}", not_found_is_empty=False)
                try:
                    boundary = related_boundary(response.headers.get("content-type"), required_type=DICOM)
                except MultipartError as invalid:
                    raise PullRejectedError(
                        RejectionReason.SOURCE_REFUSED_REQUEST, f"WADO-RS {path}: {invalid.detail}"
                    ) from None
                reader = MultipartReader(
                    response.aiter_bytes(),
                    boundary,
                    spool_dir=spool,
                    max_part_bytes=self._max_instance_bytes,
                    max_body_bytes=2**62,
                )
                async for part in reader.parts():
                    try:
                        await store(part.path)
                    finally:
                        await asyncio.to_thread(part.path.unlink, True)
        except httpx.TransportError as exc:
            raise SourceUnavailableError(f"WADO-RS {self._base}{path}: {exc!r}") from exc
        except MultipartError as broken:
            raise SourceUnavailableError(f"WADO-RS {self._base}{path}: {broken.detail}") from None
        finally:
            await asyncio.to_thread(shutil.rmtree, spool, True)

    def _check(self, response: httpx.Response, what: str, *, not_found_is_empty: bool) -> None:
        status = response.status_code
        if status < 300 or (status == 404 and not_found_is_empty):
            return
        if status < 400:
            raise PullRejectedError(
                RejectionReason.SOURCE_REFUSED_REQUEST,
                f"{what} at {self._base}: HTTP {status}; redirects are not followed (configure the target)",
            )
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise SourceUnavailableError(f"{what} at {self._base}: HTTP {status}")
        if status == 404:
            raise SourceUnavailableError(f"{what} at {self._base}: not found (HTTP 404)")
        if status in (401, 403):
            raise PullRejectedError(
                RejectionReason.SOURCE_REFUSED_CREDENTIALS,
                f"{what} at {self._base}: HTTP {status}, the configured credentials are refused",
            )
        raise PullRejectedError(
            RejectionReason.SOURCE_REFUSED_REQUEST, f"{what} at {self._base}: HTTP {status}"
        )


def _verify(peer: DicomWebPeer) -> ssl.SSLContext | bool:
    if peer.ca_file is None:
        return True
    return ssl.create_default_context(cafile=peer.ca_file)


def _authentication(peer: DicomWebPeer) -> tuple[httpx.Auth | None, dict[str, str]]:
    if peer.username is not None and peer.password is not None:
        return httpx.BasicAuth(peer.username, peer.password.get_secret_value()), {}
    if peer.bearer_token is not None:
        return None, {"authorization": f"Bearer {peer.bearer_token.get_secret_value()}"}
    return None, {}


@asynccontextmanager
async def open_dicomweb_source(
    peer: DicomWebPeer, *, timeout_s: float, spool_dir: str | None, max_instance_bytes: int
) -> AsyncIterator[DicomWebStudySource]:
    """An HTTP client of ``peer`` with its configured credentials and TLS trust, for one pull attempt.

    Redirects are not followed: a redirect could lead the credentials to a server the settings do not name.
    """
    auth, headers = _authentication(peer)
    async with httpx.AsyncClient(
        auth=auth,
        headers=headers,
        timeout=httpx.Timeout(timeout_s),
        verify=_verify(peer),
        follow_redirects=False,
        trust_env=False,
    ) as client:
        yield DicomWebStudySource(peer, client, spool_dir=spool_dir, max_instance_bytes=max_instance_bytes)
