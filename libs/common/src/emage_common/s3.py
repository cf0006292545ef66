"""S3 client factory and streaming helpers for any S3-compatible object store.

Client choice: aiobotocore. It is botocore (the AWS SDK core) driven by aiohttp, so it speaks exactly the
S3 REST API with SigV4 signing, standard retry modes, path- or virtual-host addressing and multipart
uploads, against SeaweedFS, MinIO, Ceph RGW, Garage or AWS alike, without blocking the event loop.
The alternatives fall short: boto3 is synchronous (a thread per transfer), the ``minio`` client is
synchronous too and tied to one vendor's extensions, and ``aioboto3`` only wraps aiobotocore with a
resource layer we do not need. Bodies are streamed in parts, never held whole, so the memory of a
service stays flat however large a study is.

Checksums: botocore's default since 1.36 adds CRC trailers (``aws-chunked`` bodies) that several
S3-compatible stores reject; the client computes them only when an operation requires one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from emage_common.settings import S3Settings

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
# S3 multipart limits: every part but the last is at least 5 MiB, and an upload has at most 10,000 parts.
MIN_PART_SIZE: Final = 5 * MIB
MAX_PART_SIZE: Final = 5 * 1024 * MIB
MAX_PARTS: Final = 10_000
DEFAULT_PART_SIZE: Final = 8 * MIB
DEFAULT_CHUNK_SIZE: Final = 1 * MIB

_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchBucket", "NoSuchKey", "NotFound"})

# Aborts run in tasks of their own so that a cancelled upload still cleans up; strong references keep
# those tasks alive until they finish (the event loop only holds weak ones).
_pending_aborts: set[asyncio.Task[None]] = set()


class ObjectNotFoundError(LookupError):
    """The requested object (or its bucket) does not exist."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object durably written: where, how many bytes, and the ETag the store gave it."""

    bucket: str
    key: str
    size: int
    etag: str


@asynccontextmanager
async def create_s3_client(
    settings: S3Settings,
    *,
    max_pool_connections: int = 50,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 3,
) -> AsyncIterator[S3Client]:
    """An S3 client for ``settings`` (endpoint, region, addressing style, credentials), as a context.

    Empty credentials fall back to botocore's default chain (environment, web identity, instance role),
    which is what a cloud deployment wants. Retries use botocore's ``standard`` mode (exponential backoff
    with jitter on throttling, 5xx and connection errors) up to ``max_attempts`` tries per call.
    """
    config = AioConfig(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id.get_secret_value() or None,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
        config=config,
    ) as client:
        yield client


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


async def ensure_bucket(client: S3Client, bucket: str) -> None:
    """Create ``bucket`` unless it already exists and is ours; safe to call on every start-up."""
    try:
        await client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if _error_code(exc) not in _NOT_FOUND_CODES:
            raise
    region = client.meta.region_name
    try:
        # AWS rejects an explicit us-east-1 location constraint and requires one everywhere else.
        if region and region != "us-east-1":
            # S3-compatible stores name their regions freely (Garage's "garage"), beyond AWS's literal list.
            location = cast("BucketLocationConstraintType", region)
            await client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": location}
            )
        else:
            await client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        # Another replica of the service may have won the race.
        if _error_code(exc) != "BucketAlreadyOwnedByYou":
            raise


async def s3_ready(client: S3Client, bucket: str, wait_seconds: float = 1.5) -> bool:
    """Whether ``bucket`` answers a HEAD within ``wait_seconds`` (readiness probe; never raises)."""
    try:
        async with asyncio.timeout(wait_seconds):
            await client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError, OSError, TimeoutError):
        return False
    return True


async def put_object_stream(
    client: S3Client,
    bucket: str,
    key: str,
    chunks: AsyncIterable[bytes],
    *,
    part_size: int = DEFAULT_PART_SIZE,
    content_type: str = "application/octet-stream",
    metadata: Mapping[str, str] | None = None,
) -> StoredObject:
    """Write the bytes of ``chunks`` to ``bucket``/``key`` holding at most about one part in memory.

    A body shorter than ``part_size`` goes in one PutObject; a longer one as a multipart upload of
    ``part_size`` parts. S3 makes the object visible only when the upload completes, and any failure,
    including cancellation or an exception raised by ``chunks`` itself, aborts the multipart upload: no
    partial object is ever left under ``key``. (An abort that itself fails leaves only invisible parts,
    which a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims.)
    """
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
    user_metadata = dict(metadata or {})
    buffer = bytearray()
    size = 0
    upload_id: str | None = None
    parts: list[CompletedPartTypeDef] = []

    async def upload_part(upload_id: str, body: bytes) -> None:
        if len(parts) == MAX_PARTS:
            raise ValueError(f"object exceeds {MAX_PARTS} parts of {part_size} bytes")
        number = len(parts) + 1
        response = await client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})

    try:
        async for chunk in chunks:
            buffer += chunk
            size += len(chunk)
            if len(buffer) >= part_size:
                if upload_id is None:
                    created = await client.create_multipart_upload(
                        Bucket=bucket, Key=key, ContentType=content_type, Metadata=user_metadata
                    )
                    upload_id = created["UploadId"]
                await upload_part(upload_id, bytes(buffer))
                buffer.clear()

        if upload_id is None:
            put = await client.put_object(
                Bucket=bucket, Key=key, Body=bytes(buffer), ContentType=content_type, Metadata=user_metadata
            )
            return StoredObject(bucket=bucket, key=key, size=size, etag=put["ETag"].strip('"'))

        if buffer:
            await upload_part(upload_id, bytes(buffer))
            buffer.clear()
        completed = await client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        return StoredObject(bucket=bucket, key=key, size=size, etag=completed["ETag"].strip('"'))
    except BaseException:
        if upload_id is not None:
            task = asyncio.create_task(_abort_multipart_upload(client, bucket, key, upload_id))
            _pending_aborts.add(task)
            task.add_done_callback(_pending_aborts.discard)
            # Shielded: a second cancellation of this task must not cancel the clean-up with it.
            await asyncio.shield(task)
        raise


async def _abort_multipart_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    try:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (BotoCoreError, ClientError):
        logger.warning(
            "s3: aborting a failed multipart upload failed",
            extra={"bucket": bucket, "key": key},
            exc_info=True,
        )


class ObjectStream:
    """An object being read: its size, type and ETag, and its bytes as :meth:`chunks`.

    Close it with :meth:`aclose` (or ``async with``) if :meth:`chunks` is not consumed to the end, so the
    pooled connection is released.
    """

    def __init__(
        self, body: StreamingBody, *, size: int, content_type: str, etag: str, content_range: str | None
    ) -> None:
        self._body = body
        self.size = size
        self.content_type = content_type
        self.etag = etag
        self.content_range = content_range

    async def chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of at most ``chunk_size``; closes the stream when done or left."""
        try:
            async for chunk in self._body.iter_chunks(chunk_size):
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the underlying HTTP response."""
        await self._body.__aexit__(None, None, None)

    async def __aenter__(self) -> ObjectStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def open_object(
    client: S3Client, bucket: str, key: str, *, byte_range: str | None = None
) -> ObjectStream:
    """Start reading ``bucket``/``key`` (optionally an RFC 9110 ``Range`` such as ``bytes=0-1023``).

    The request is made here, so a missing object raises :class:`ObjectNotFoundError` before any byte of
    a response is committed; the body is then pulled chunk by chunk.
    """
    try:
        if byte_range is None:
            response = await client.get_object(Bucket=bucket, Key=key)
        else:
            response = await client.get_object(Bucket=bucket, Key=key, Range=byte_range)
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND_CODES:
            raise ObjectNotFoundError(f"{bucket}/{key}") from None
        raise
    return ObjectStream(
        response["Body"],
        size=response["ContentLength"],
        content_type=response.get("ContentType", "application/octet-stream"),
        etag=response.get("ETag", "").strip('"'),
        content_range=response.get("ContentRange"),
    )
