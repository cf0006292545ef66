"""The physical reference of the same run: loopback bandwidth, and the S3 store's own PUT and GET rates.

* Loopback, raw: one TCP connection on 127.0.0.1, ``sendall`` of a 1 MiB buffer against ``recv_into``.
* Loopback, HTTP: a standard-library HTTP server answering one GET with the same bytes, read by the httpx
  client the WADO-RS scenario uses (``iter_raw``, 1 MiB reads): the ceiling of that client on this machine.
* S3: the CT series' own slice files PUT to, then GET from, the stack's SeaweedFS with aiobotocore (the
  client and settings ingest uses), 1 and 4 requests in flight, in a bucket of their own. No encryption,
  no events: the store alone.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.environment import log
from bench.run import Run

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

SCENARIO = "reference"
LOOPBACK = "loopback"
S3 = "S3 (SeaweedFS)"
BLOCK = 1024 * 1024
REFERENCE_BUCKET = "bench-reference"


def run(context: Run) -> None:
    results, scale = context.results, context.scale
    total = scale.loopback_mib * BLOCK
    results.note(SCENARIO, f"Loopback: {scale.loopback_mib} MiB per transfer, one connection.")
    for _ in range(scale.repetitions):
        results.record(SCENARIO, "loopback TCP socket", "MB/s", "MB/s", LOOPBACK, socket_rate(total) / 1e6)
        results.record(SCENARIO, "loopback HTTP (httpx)", "MB/s", "MB/s", LOOPBACK, http_rate(total) / 1e6)
    files = context.series().files
    asyncio.run(_s3(context, files))


def socket_rate(total: int) -> float:
    """Bytes per second of one loopback TCP transfer of ``total`` bytes."""
    payload = memoryview(bytes(BLOCK))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def send() -> None:
            connection, _ = server.accept()
            with connection:
                sent = 0
                while sent < total:
                    connection.sendall(payload)
                    sent += len(payload)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buffer = bytearray(BLOCK)
        received = 0
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as client:
            while received < total:
                count = client.recv_into(buffer)
                if count == 0:
                    break
                received += count
        elapsed = time.perf_counter() - started
        sender.join()
    return received / elapsed


def http_rate(total: int) -> float:
    """Bytes per second of one loopback HTTP GET of ``total`` bytes, read as the WADO-RS client reads."""
    payload = bytes(BLOCK)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(total))
            self.end_headers()
            sent = 0
            while sent < total:
                self.wfile.write(payload)
                sent += len(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        received = 0
        with httpx.Client(timeout=120) as client:
            started = time.perf_counter()
            with client.stream("GET", f"http://127.0.0.1:{server.server_address[1]}/") as response:
                for block in response.iter_raw(BLOCK):
                    received += len(block)
            elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()
    return received / elapsed


async def _s3(context: Run, files: list[Path]) -> None:
    from emage_common.s3 import create_s3_client, ensure_bucket

    results, scale = context.results, context.scale
    objects = [path.read_bytes() for path in files]
    size = sum(len(body) for body in objects)
    results.note(
        SCENARIO,
        f"S3: the {len(objects)} CT slices ({size / 1e6:.1f} MB) PUT then GET, under new keys every time.",
    )
    async with create_s3_client(context.systems.stack.s3_settings()) as client:
        await ensure_bucket(client, REFERENCE_BUCKET)
        for repetition in range(scale.repetitions):
            for clients in (1, 4):
                keys = [f"r{repetition}-c{clients}/{index:05d}.dcm" for index in range(len(objects))]
                for operation, action in (("PUT", _put(client, keys, objects)), ("GET", _get(client, keys))):
                    elapsed = await _in_flight(action, len(objects), clients)
                    case = f"{operation}, {clients} in flight"
                    results.record(SCENARIO, case, "objects/s", "objects/s", S3, len(objects) / elapsed)
                    results.record(SCENARIO, case, "MB/s", "MB/s", S3, size / elapsed / 1e6)
            log(f"reference: repetition {repetition + 1}/{scale.repetitions}")


def _put(client: S3Client, keys: list[str], objects: list[bytes]) -> Callable[[int], Awaitable[None]]:
    async def put(index: int) -> None:
        await client.put_object(Bucket=REFERENCE_BUCKET, Key=keys[index], Body=objects[index])

    return put


def _get(client: S3Client, keys: list[str]) -> Callable[[int], Awaitable[None]]:
    async def get(index: int) -> None:
        answer = await client.get_object(Bucket=REFERENCE_BUCKET, Key=keys[index])
        async with answer["Body"] as body:
            await body.read()

    return get


async def _in_flight(call: Callable[[int], Awaitable[None]], count: int, clients: int) -> float:
    """Seconds to run ``call(0..count-1)`` with ``clients`` calls in flight."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            await call(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started
