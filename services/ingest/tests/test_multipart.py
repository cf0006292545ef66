"""The streaming multipart/related reader: structure, limits, and properties under any chunking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emage_ingest.adapters.multipart import (
    MultipartError,
    MultipartReader,
    parse_media_type,
    related_boundary,
)

BOUNDARY = b"emage-boundary-7d1f"


def body(
    parts: Sequence[bytes],
    *,
    boundary: bytes = BOUNDARY,
    headers: bytes = b"Content-Type: application/dicom\r\n",
) -> bytes:
    out = b"preamble to ignore\r\n"
    for part in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


async def chunked(data: bytes, cuts: Sequence[int]) -> AsyncIterator[bytes]:
    previous = 0
    for cut in [*sorted({min(max(c, 0), len(data)) for c in cuts}), len(data)]:
        if cut > previous:
            yield data[previous:cut]
            previous = cut


async def read(
    data: bytes, cuts: Sequence[int] = (), *, max_part: int = 10**9, max_body: int = 10**9
) -> list[tuple[dict[str, str], bytes]]:
    with tempfile.TemporaryDirectory() as spool:
        reader = MultipartReader(
            chunked(data, cuts),
            BOUNDARY,
            spool_dir=Path(spool),
            max_part_bytes=max_part,
            max_body_bytes=max_body,
        )
        parts = []
        async for part in reader.parts():
            content = part.path.read_bytes()
            assert len(content) == part.size
            parts.append((dict(part.headers), content))
        return parts


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def test_parts_headers_and_content() -> None:
    parts = await read(body([b"first", b"", b"third\r\n--not-the-boundary"]))
    assert [content for _, content in parts] == [b"first", b"", b"third\r\n--not-the-boundary"]
    assert parts[0][0] == {"content-type": "application/dicom"}


async def test_a_part_without_headers_and_transport_padding() -> None:
    data = b"--" + BOUNDARY + b"  \t\r\n\r\nbare\r\n--" + BOUNDARY + b"--"
    assert await read(data) == [({}, b"bare")]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "no delimiter"),
        (b"no boundary anywhere", 400, "no delimiter"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\nhalf a part", 400, "truncated"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom", 400, "truncated"),
        (
            b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\npart\r\n--" + BOUNDARY,
            400,
            "close",
        ),
        (b"--" + BOUNDARY + b"garbage\r\n\r\n", 400, "CRLF"),
        (b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--", 400, "header"),
    ],
)
async def test_malformed_bodies(data: bytes, status: int, words: str) -> None:
    with pytest.raises(MultipartError) as raised:
        await read(data)
    assert raised.value.status == status
    assert words in raised.value.detail


async def test_size_limits_are_413() -> None:
    with pytest.raises(MultipartError) as raised:
        await read(body([b"a" * 100, b"b" * 5000]), max_part=1000)
    assert raised.value.status == 413
    assert "part 2" in raised.value.detail
    with pytest.raises(MultipartError) as raised:
        await read(body([b"a" * 5000]), max_body=1000)
    assert raised.value.status == 413


async def test_a_failed_part_leaves_no_file_behind(tmp_path: Path) -> None:
    data = body([b"ok", b"x" * 5000])
    reader = MultipartReader(
        chunked(data, [10, 20]), BOUNDARY, spool_dir=tmp_path, max_part_bytes=1000, max_body_bytes=10**6
    )
    seen: list[Path] = []

    async def consume() -> None:
        async for part in reader.parts():
            seen.append(part.path)

    with pytest.raises(MultipartError):
        await consume()
    remaining = await asyncio.to_thread(os.listdir, tmp_path)
    assert remaining == [path.name for path in seen]  # the oversized part's file is gone


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.binary(max_size=300), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40),
)
def test_any_chunking_yields_the_same_parts(parts: list[bytes], cuts: list[int]) -> None:
    # Content that contains no delimiter is returned exactly, however the stream is split.
    parts = [part.replace(b"\r\n--" + BOUNDARY, b"") for part in parts]
    data = body(parts)
    assert [content for _, content in run(read(data, cuts))] == parts  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=500),
        st.builds(lambda head, tail: head + tail, st.just(body([b"abc", b"def"])), st.binary(max_size=50)),
        st.builds(
            lambda full, cut: full[:cut],
            st.just(body([b"abc", b"defgh"])),
            st.integers(min_value=0, max_value=200),
        ),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=20),
)
def test_garbage_raises_only_multipart_errors(data: bytes, cuts: list[int]) -> None:
    statuses = []
    try:
        run(read(data, cuts, max_part=200, max_body=400))
    except MultipartError as error:
        statuses.append(error.status)
    assert set(statuses) <= {400, 413}


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', b"abc"),
        ('Multipart/Related;boundary="a b:c";type=application/dicom', b"a b:c"),
        ('multipart/related; type="application/dicom"; boundary="x\\"y"', None),
    ],
)
def test_related_boundary(content_type: str, boundary: bytes | None) -> None:
    if boundary is None:
        with pytest.raises(MultipartError):
            related_boundary(content_type, required_type="application/dicom")
    else:
        assert related_boundary(content_type, required_type="application/dicom") == boundary


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ("multipart/related; boundary=abc", 415),
        ('multipart/related; type="application/dicom+json"; boundary=abc', 415),
        ('multipart/related; type="application/dicom"', 400),
        ('multipart/related; type="application/dicom"; boundary=', 400),
        ('multipart/related; type="application/dicom"; boundary="ends with space "', 400),
        (f'multipart/related; type="application/dicom"; boundary={"x" * 71}', 400),
        ("multipart/related; type", 400),
    ],
)
def test_related_boundary_errors(content_type: str | None, status: int) -> None:
    with pytest.raises(MultipartError) as raised:
        related_boundary(content_type, required_type="application/dicom")
    assert raised.value.status == status


@given(st.text(max_size=200))
def test_media_type_parsing_fails_only_with_value_error(value: str) -> None:
    with contextlib.suppress(ValueError):
        parse_media_type(value)
