"""The few DICOMweb requests the benchmark makes, identical for both systems (PS3.18 §10.4 to §10.6).

Synchronous httpx clients, one per concurrent client thread: what is timed is the server's answer, and a
client that does nothing but send prepared bytes and read answers adds the least of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from bench.data import STOW_CONTENT_TYPE
from bench.environment import Endpoint

DICOM_JSON = "application/dicom+json"
WHOLE_STUDY_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"


class BenchRequestError(RuntimeError):
    """A request the benchmark needs answered well was not: the run is not measuring what it claims."""


#: Characters left unescaped in query values: RFC 3986 allows them in a query (§3.4), and Orthanc 1.10's
#: HTTP server matches ``%2A`` and ``%5E`` literally instead of decoding them (a wildcard finds nothing).
QUERY_SAFE = "*?^-,.:"


def query_url(root: str, path: str, params: Mapping[str, str]) -> httpx.URL:
    """``root/path?params`` with the values percent-encoded except for :data:`QUERY_SAFE`."""
    query = "&".join(
        f"{quote(name, safe='')}={quote(value, safe=QUERY_SAFE)}" for name, value in params.items()
    )
    return httpx.URL(f"{root}/{path}" + (f"?{query}" if query else ""))


def client(timeout: float = 600) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=10), limits=httpx.Limits(max_connections=8))


def stow(http: httpx.Client, endpoint: Endpoint, body: bytes | Iterable[bytes], expected: int) -> None:
    """STOW-RS ``body`` (PS3.18 §10.5); every one of its ``expected`` instances must be stored."""
    response = http.post(
        f"{endpoint.root}/studies",
        content=body,
        headers=endpoint.headers(**{"Content-Type": STOW_CONTENT_TYPE, "Accept": DICOM_JSON}),
    )
    check_stow(endpoint.system, response.status_code, response.content, expected)


def check_stow(system: str, status: int, content: bytes, expected: int) -> None:
    import json

    if status != 200:
        raise BenchRequestError(f"{system} STOW-RS answered {status}: {content[:300]!r}")
    payload: Mapping[str, Any] = json.loads(content) if content else {}
    failed = payload.get(_FAILED_SOP_SEQUENCE, {}).get("Value") or []
    stored = payload.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value") or []
    if failed or len(stored) != expected:
        raise BenchRequestError(f"{system} STOW-RS stored {len(stored)} of {expected}, {len(failed)} failed")


def search(
    http: httpx.Client, endpoint: Endpoint, path: str, params: Mapping[str, str]
) -> tuple[list[dict[str, Any]], httpx.Response]:
    """QIDO-RS (PS3.18 §10.6): the matches, and the response (for ``X-Total-Count``)."""
    response = http.get(query_url(endpoint.root, path, params), headers=endpoint.headers(Accept=DICOM_JSON))
    if response.status_code == 204:
        return [], response
    if response.status_code != 200:
        raise BenchRequestError(f"{endpoint.system} QIDO-RS {path} answered {response.status_code}")
    matches: list[dict[str, Any]] = response.json()
    return matches, response


def retrieve(http: httpx.Client, endpoint: Endpoint, path: str, accept: str) -> tuple[int, float | None]:
    """GET ``path`` under the root, reading the whole body: (bytes, seconds to the first body byte)."""
    import time

    started = time.perf_counter()
    first: float | None = None
    size = 0
    with http.stream("GET", f"{endpoint.root}/{path}", headers=endpoint.headers(Accept=accept)) as response:
        if response.status_code != 200:
            response.read()
            raise BenchRequestError(
                f"{endpoint.system} GET {path} answered {response.status_code}: {response.content[:200]!r}"
            )
        # Blocks as they arrive (a chunk size would make the first one wait for that many bytes).
        for block in response.iter_raw():
            if first is None and block:
                first = time.perf_counter() - started
            size += len(block)
    return size, first
