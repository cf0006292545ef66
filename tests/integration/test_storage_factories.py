"""The MongoDB and S3 factories of ``emage_common`` against the real servers of the test stack.

Fixtures ``mongo_uri`` and ``s3_config`` come from this directory's conftest. Each test works in a
database or bucket of its own and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError
from types_aiobotocore_s3.client import S3Client

from emage_common.mongo import create_mongo_client, in_transaction, mongo_ready, service_database
from emage_common.s3 import (
    MIB,
    ObjectNotFoundError,
    create_s3_client,
    ensure_bucket,
    open_object,
    put_object_stream,
    s3_ready,
)
from emage_common.settings import S3Settings, ServiceSettings


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mongo_settings(uri: str) -> ServiceSettings:
    return ServiceSettings(
        service_name="storage-factories-test",
        http_port=8000,
        mongo_uri=SecretStr(uri),
        mongo_database=f"it_storage_{uuid.uuid4().hex[:12]}",
    )


def _s3_settings(s3_config: dict[str, str], endpoint_url: str | None = None) -> S3Settings:
    return S3Settings(
        s3_endpoint_url=endpoint_url or s3_config["endpoint_url"],
        s3_region=s3_config["region"],
        s3_access_key_id=SecretStr(s3_config["access_key_id"]),
        s3_secret_access_key=SecretStr(s3_config["secret_access_key"]),
    )


async def _chunks(data: bytes, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), chunk_size):
        yield data[offset : offset + chunk_size]


async def _read_all(client: S3Client, bucket: str, key: str) -> bytes:
    stream = await open_object(client, bucket, key)
    return b"".join([chunk async for chunk in stream.chunks(256 * 1024)])


# --- MongoDB ---------------------------------------------------------------------------------------------


async def test_transaction_commit_is_visible_and_abort_leaves_nothing(mongo_uri: str) -> None:
    settings = _mongo_settings(mongo_uri)
    client = create_mongo_client(settings)
    database = service_database(client, settings)
    try:
        assert database.name == settings.database_name
        studies, outbox = database["studies"], database["outbox"]
        # Collections exist before the transactions, as production code creates them (with indexes) at start.
        await database.create_collection("studies")
        await database.create_collection("outbox")
        received_at = datetime.now(UTC)

        async def record_study(session: AsyncClientSession) -> str:
            await studies.insert_one({"_id": "1.2.3.4", "received_at": received_at}, session=session)
            await outbox.insert_one({"_id": "evt-1", "study": "1.2.3.4"}, session=session)
            return "committed"

        assert await in_transaction(client, record_study) == "committed"
        stored = await studies.find_one({"_id": "1.2.3.4"})
        assert stored is not None
        assert stored["received_at"].tzinfo is not None  # tz_aware client
        assert stored["received_at"] == received_at.replace(
            microsecond=received_at.microsecond // 1000 * 1000
        )
        assert await outbox.count_documents({}) == 1

        async def fail_midway(session: AsyncClientSession) -> None:
            await studies.insert_one({"_id": "5.6.7.8"}, session=session)
            await outbox.insert_one({"_id": "evt-2", "study": "5.6.7.8"}, session=session)
            raise RuntimeError("publisher unavailable")

        with pytest.raises(RuntimeError, match="publisher unavailable"):
            await in_transaction(client, fail_midway)
        assert await studies.count_documents({"_id": "5.6.7.8"}) == 0
        assert await outbox.count_documents({"_id": "evt-2"}) == 0
    finally:
        await client.drop_database(settings.database_name)
        await client.close()


async def test_transient_transaction_error_is_retried(mongo_uri: str) -> None:
    settings = _mongo_settings(mongo_uri)
    client = create_mongo_client(settings)
    database = service_database(client, settings)
    try:
        await database.create_collection("consents")
        attempts = 0

        async def flaky(session: AsyncClientSession) -> int:
            nonlocal attempts
            attempts += 1
            await database["consents"].insert_one({"_id": f"attempt-{attempts}"}, session=session)
            if attempts == 1:
                raise PyMongoError("write conflict", error_labels=["TransientTransactionError"])
            return attempts

        assert await in_transaction(client, flaky) == 2
        # The first attempt was rolled back, the second committed.
        assert [doc["_id"] async for doc in database["consents"].find({})] == ["attempt-2"]
    finally:
        await client.drop_database(settings.database_name)
        await client.close()


async def test_mongo_ready(mongo_uri: str) -> None:
    live = create_mongo_client(_mongo_settings(mongo_uri))
    dead = create_mongo_client(
        _mongo_settings(f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true")
    )
    try:
        assert await mongo_ready(live) is True
        started = asyncio.get_running_loop().time()
        assert await mongo_ready(dead, wait_seconds=0.5) is False
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        await live.close()
        await dead.close()


# --- S3 --------------------------------------------------------------------------------------------------


@pytest.fixture
async def s3(s3_config: dict[str, str]) -> AsyncIterator[tuple[S3Client, str]]:
    """A client and a fresh bucket, emptied and deleted afterwards."""
    bucket = f"it-storage-{uuid.uuid4().hex[:12]}"
    async with create_s3_client(_s3_settings(s3_config)) as client:
        await ensure_bucket(client, bucket)
        try:
            yield client, bucket
        finally:
            listing = await client.list_objects_v2(Bucket=bucket)
            for item in listing.get("Contents", []):
                await client.delete_object(Bucket=bucket, Key=item["Key"])
            uploads = await client.list_multipart_uploads(Bucket=bucket)
            for upload in uploads.get("Uploads", []):
                await client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            await client.delete_bucket(Bucket=bucket)


async def _open_uploads(client: S3Client, bucket: str) -> list[Any]:
    return list((await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", []))


async def test_ensure_bucket_is_idempotent(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    await ensure_bucket(client, bucket)
    await ensure_bucket(client, bucket)
    await client.head_bucket(Bucket=bucket)
    # Replicas starting together race to create the same bucket; all of them succeed.
    raced = f"{bucket}-raced"
    try:
        await asyncio.gather(*(ensure_bucket(client, raced) for _ in range(4)))
        await client.head_bucket(Bucket=raced)
    finally:
        await client.delete_bucket(Bucket=raced)


async def test_small_object_round_trip(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    body = os.urandom(300_000)
    stored = await put_object_stream(
        client, bucket, "studies/1.2.3/instance.dcm", _chunks(body), content_type="application/dicom"
    )
    assert stored.size == len(body)
    stream = await open_object(client, bucket, "studies/1.2.3/instance.dcm")
    assert stream.size == len(body)
    assert stream.content_type == "application/dicom"
    assert stream.etag == stored.etag
    received = b"".join([chunk async for chunk in stream.chunks()])
    assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()


async def test_multipart_stream_round_trip(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    body = os.urandom(20 * MIB + 12_345)  # four full 5 MiB parts and a short last one
    stored = await put_object_stream(client, bucket, "studies/big.mp4", _chunks(body), part_size=5 * MIB)
    assert stored.size == len(body)
    assert stored.etag.endswith("-5")  # a multipart ETag names its part count
    digest = hashlib.sha256()
    size = 0
    stream = await open_object(client, bucket, "studies/big.mp4")
    async for chunk in stream.chunks(1 * MIB):
        assert len(chunk) <= 1 * MIB
        digest.update(chunk)
        size += len(chunk)
    assert size == len(body)
    assert digest.digest() == hashlib.sha256(body).digest()
    assert await _open_uploads(client, bucket) == []


async def test_byte_range_read(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    body = bytes(range(256)) * 64
    await put_object_stream(client, bucket, "frames", _chunks(body))
    async with await open_object(client, bucket, "frames", byte_range="bytes=1000-1099") as stream:
        assert stream.size == 100
        assert stream.content_range == f"bytes 1000-1099/{len(body)}"
        assert b"".join([chunk async for chunk in stream.chunks()]) == body[1000:1100]


async def test_failed_stream_leaves_no_object(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3

    async def truncated() -> AsyncIterator[bytes]:
        yield os.urandom(6 * MIB)  # enough for one uploaded part
        raise ConnectionResetError("sender went away")

    with pytest.raises(ConnectionResetError):
        await put_object_stream(client, bucket, "partial.dcm", truncated(), part_size=5 * MIB)
    with pytest.raises(ObjectNotFoundError):
        await open_object(client, bucket, "partial.dcm")
    assert await _open_uploads(client, bucket) == []


async def test_cancelled_stream_leaves_no_object(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    first_part_sent = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield os.urandom(5 * MIB)
        yield b"next"  # the buffer reaches the part size only now: part 1 is uploaded
        first_part_sent.set()
        await asyncio.Event().wait()
        yield b"never"

    upload = asyncio.create_task(
        put_object_stream(client, bucket, "cancelled.dcm", stalled(), part_size=5 * MIB)
    )
    await asyncio.wait_for(first_part_sent.wait(), timeout=30)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    with pytest.raises(ObjectNotFoundError):
        await open_object(client, bucket, "cancelled.dcm")
    assert await _open_uploads(client, bucket) == []


async def test_missing_object_is_not_found(s3: tuple[S3Client, str]) -> None:
    client, bucket = s3
    with pytest.raises(ObjectNotFoundError):
        await open_object(client, bucket, "no/such/key")


async def test_s3_ready(s3: tuple[S3Client, str], s3_config: dict[str, str]) -> None:
    client, bucket = s3
    assert await s3_ready(client, bucket) is True
    assert await s3_ready(client, f"{bucket}-absent") is False
    closed = f"http://127.0.0.1:{_closed_port()}"
    async with create_s3_client(_s3_settings(s3_config, endpoint_url=closed), max_attempts=1) as dead:
        started = asyncio.get_running_loop().time()
        assert await s3_ready(dead, bucket, wait_seconds=1.0) is False
        assert asyncio.get_running_loop().time() - started < 2.0
