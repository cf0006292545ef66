"""A streaming reader of ``multipart/related`` bodies (RFC 2387, RFC 2046 §5.1), as STOW-RS sends them
(PS3.18 §8.6.1.2, §10.5.1).

Bytes are consumed as they arrive and each body part is spooled to its own file, so memory holds one
network chunk and a delimiter's worth of look-ahead whatever the size of the request. A part is handed out
only once the delimiter after it has been seen, i.e. when it is complete. Limits on the size of a part and
of the whole body are enforced while reading. Anything malformed raises :class:`MultipartError`, which
carries the HTTP status to answer; no other exception escapes for any input.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

_CRLF: Final = b"\r\n"
_MAX_HEADER_BYTES: Final = 16 * 1024
_WRITE_BATCH: Final = 1024 * 1024
# RFC 2046 §5.1.1: bcharsnospace and space, 1 to 70 characters, not ending with a space.
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 9110 §5.6.2 token and §5.6.4 quoted-string, for media type parameters (§8.3.1). An unquoted value
# may also hold "/": many STOW-RS clients send ``type=application/dicom`` unquoted.
_TCHARS: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAMETER: Final = re.compile(
    rf"\s*;\s*({_TCHARS})\s*=\s*(?:([!#$%&'*+\-.^_`|~0-9A-Za-z/]+)|\"((?:[^\"\\]|\\.)*)\")\s*", re.DOTALL
)
_MEDIA_TYPE: Final = re.compile(rf"\s*({_TCHARS})/({_TCHARS})\s*")


class MultipartError(Exception):
    """A request body that is not an acceptable ``multipart/related`` message; ``status`` is the HTTP one."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed media type (RFC 9110 §8.3.1): lowercase type/subtype and its parameters."""

    essence: str
    parameters: Mapping[str, str]


def parse_media_type(value: str) -> MediaType:
    """Parse ``type/subtype *(; name=value)``; raises :class:`ValueError` if it is not one."""
    match = _MEDIA_TYPE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a media type")
    parameters: dict[str, str] = {}
    position = match.end()
    while position < len(value):
        parameter = _PARAMETER.match(value, position)
        if parameter is None or parameter.end() == position:
            raise ValueError(f"malformed parameters in media type {value!r}")
        name, token, quoted = parameter.groups()
        parameters[name.lower()] = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
        position = parameter.end()
    return MediaType(f"{match.group(1)}/{match.group(2)}".lower(), parameters)


def related_boundary(content_type: str | None, *, required_type: str) -> bytes:
    """The boundary of a ``multipart/related`` request whose root type must be ``required_type``.

    415 when the request is not ``multipart/related; type="<required_type>"`` (PS3.18 §10.5.1.1), 400
    when its boundary is missing or invalid (RFC 2046 §5.1.1).
    """
    if not content_type:
        raise MultipartError(415, f'Content-Type must be multipart/related; type="{required_type}"')
    try:
        media_type = parse_media_type(content_type)
    except ValueError as exc:
        raise MultipartError(400, f"the Content-Type header cannot be parsed: {exc}") from None
    if media_type.essence != "multipart/related":
        raise MultipartError(
            415, f'Content-Type is {media_type.essence}; expected multipart/related; type="{required_type}"'
        )
    related_type = media_type.parameters.get("type")
    if related_type is None or related_type.lower() != required_type:
        raise MultipartError(
            415,
            f'multipart/related needs the type parameter "{required_type}" '
            f"(RFC 2387 §3.1, PS3.18 §10.5.1.1); got {related_type!r}",
        )
    boundary = media_type.parameters.get("boundary")
    if boundary is None:
        raise MultipartError(400, "the Content-Type has no boundary parameter (RFC 2046 §5.1.1)")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise MultipartError(
            400, "the boundary is not 1-70 characters of the RFC 2046 §5.1.1 set, ending with a non-space"
        )
    return boundary.encode("ascii")


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One complete body part: its headers (lowercase names) and its content, spooled at ``path``."""

    index: int
    headers: Mapping[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def _parse_headers(block: bytes, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and last is not None:
            # Obsolete line folding (RFC 5322 §2.2.3): continues the previous field.
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise MultipartError(400, f"part {index + 1} has a malformed header line")
        last = name.lower()
        headers[last] = value.strip()
    return headers


class MultipartReader:
    """Reads the body parts of a ``multipart/related`` stream into files under ``spool_dir``.

    ``async for part in reader.parts()`` yields each complete part; the caller owns its file from then on.
    Raises :class:`MultipartError` (400 malformed or truncated, 413 too large) as soon as the stream shows
    it; a part being spooled when that happens is deleted.
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        boundary: bytes,
        *,
        spool_dir: Path,
        max_part_bytes: int,
        max_body_bytes: int,
    ) -> None:
        self._chunks = aiter(chunks)
        self._delimiter = _CRLF + b"--" + boundary
        self._spool_dir = spool_dir
        self._max_part_bytes = max_part_bytes
        self._max_body_bytes = max_body_bytes
        # The body is read as if preceded by CRLF, so the first delimiter needs no special case.
        self._buffer = bytearray(_CRLF)
        self._received = 0
        self._exhausted = False

    async def _fill(self) -> bool:
        """Append the next chunk to the buffer; ``False`` at the end of the stream."""
        if self._exhausted:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._exhausted = True
            return False
        self._received += len(chunk)
        if self._received > self._max_body_bytes:
            raise MultipartError(413, f"the request body exceeds {self._max_body_bytes} bytes")
        self._buffer += chunk
        return True

    async def _find(self, needle: bytes, start: int = 0, limit: int | None = None) -> int:
        """Position of ``needle`` in the buffer, reading more as needed; -1 if the stream ends first."""
        while True:
            position = self._buffer.find(needle, start)
            if position >= 0:
                return position
            if limit is not None and len(self._buffer) > limit:
                return -1
            start = max(0, len(self._buffer) - len(needle) + 1)
            if not await self._fill():
                return -1

    async def _need(self, count: int) -> bool:
        while len(self._buffer) < count:
            if not await self._fill():
                return False
        return True

    async def parts(self) -> AsyncIterator[BodyPart]:
        # Preamble (RFC 2046 §5.1.1): everything before the first delimiter is ignored.
        position = await self._find(self._delimiter)
        if position < 0:
            raise MultipartError(400, "the body has no delimiter line with the declared boundary")
        del self._buffer[: position + len(self._delimiter)]
        index = 0
        while True:
            if not await self._need(2):
                raise MultipartError(400, "the body ends after a delimiter without the close delimiter")
            if self._buffer[:2] == b"--":
                return  # close delimiter; the epilogue is ignored
            await self._skip_delimiter_line()
            headers = await self._read_headers(index)
            part = await self._spool_body(index, headers)
            yield part
            index += 1

    async def _skip_delimiter_line(self) -> None:
        end = await self._find(_CRLF, limit=1024)
        if end < 0 or self._buffer[:end].strip(b" \t"):
            raise MultipartError(400, "a delimiter line is not followed by CRLF (RFC 2046 §5.1.1)")
        del self._buffer[: end + 2]

    async def _read_headers(self, index: int) -> dict[str, str]:
        if not await self._need(2):
            raise MultipartError(400, f"the body ends in the headers of part {index + 1} (truncated)")
        if self._buffer[:2] == _CRLF:
            del self._buffer[:2]
            return {}
        end = await self._find(_CRLF + _CRLF, limit=_MAX_HEADER_BYTES)
        if end < 0:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                raise MultipartError(400, f"the headers of part {index + 1} exceed {_MAX_HEADER_BYTES} bytes")
            raise MultipartError(400, f"the body ends in the headers of part {index + 1} (truncated)")
        headers = _parse_headers(bytes(self._buffer[:end]), index)
        del self._buffer[: end + 4]
        return headers

    async def _spool_body(self, index: int, headers: Mapping[str, str]) -> BodyPart:
        path = self._spool_dir / f"part-{index:06d}.dcm"
        file: IO[bytes] = await asyncio.to_thread(path.open, "wb")
        size = 0
        pending = bytearray()
        keep = len(self._delimiter) - 1
        try:
            while True:
                position = self._buffer.find(self._delimiter)
                if position >= 0:
                    size += position
                    pending += self._buffer[:position]
                    del self._buffer[: position + len(self._delimiter)]
                else:
                    # Everything but a possible start of the delimiter is content.
                    movable = max(0, len(self._buffer) - keep)
                    size += movable
                    pending += self._buffer[:movable]
                    del self._buffer[:movable]
                if size > self._max_part_bytes:
                    raise MultipartError(413, f"part {index + 1} exceeds {self._max_part_bytes} bytes")
                if len(pending) >= _WRITE_BATCH or (position >= 0 and pending):
                    await asyncio.to_thread(file.write, bytes(pending))
                    pending.clear()
                if position >= 0:
                    break
                if not await self._fill():
                    raise MultipartError(
                        400, f"the body ends inside part {index + 1}: no delimiter after it (truncated)"
                    )
            await asyncio.to_thread(file.close)
        except BaseException:
            await asyncio.to_thread(file.close)
            await asyncio.to_thread(path.unlink, True)
            raise
        return BodyPart(index, dict(headers), path, size)
