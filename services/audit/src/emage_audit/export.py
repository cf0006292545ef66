"""The DICOM audit message export: every record, in chain order, to an IHE ATNA audit record repository.

A durable cursor (the last exported sequence number, in the ``exports`` collection) makes the export resume
where it stopped: while the collector is down nothing is lost, records wait in the chain and are sent once it
answers again, retried with exponential backoff. The cursor moves only after a batch was written and flushed
to the socket, so a record is sent at least once; after a reconnection the last batch may be sent again
(collectors recognise the repeated message by its content). One instance at a time exports, holding a lease
renewed at each batch, so several instances of the service do not send everything several times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from emage_audit.domain.atna import AuditSource, audit_message
from emage_audit.domain.chain import ChainRecord
from emage_audit.domain.syslog import octet_counted, syslog_message

logger = logging.getLogger(__name__)

SYSLOG_EXPORT: Final = "syslog"
_BATCH: Final = 100
_LEASE: Final = timedelta(seconds=30)


class ExportStore(Protocol):
    async def claim_export(self, name: str, owner: str, *, now: datetime, lease: timedelta) -> int | None: ...

    async def advance_export(self, name: str, owner: str, last_seq: int) -> bool: ...

    async def records_after(self, seq: int, limit: int) -> list[ChainRecord]: ...


class SyslogConnection:
    """One TCP (RFC 6587) or TLS (RFC 5425) connection to the collector."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(
        cls, host: str, port: int, tls: ssl.SSLContext | None, *, timeout_s: float = 10.0
    ) -> SyslogConnection:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        """False once the collector closed its side: a frame written now would be lost with the socket."""
        return not (self._reader.at_eof() or self._writer.is_closing())

    async def send(self, frames: bytes) -> None:
        self._writer.write(frames)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


def tls_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """A client TLS context verifying the collector (RFC 5425 §5.1), with a client certificate for mutual
    authentication when given (IHE ATNA secure node)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


class SyslogExporter:
    """Sends the chain's records to the collector from the durable cursor on, for the life of the service."""

    def __init__(
        self,
        store: ExportStore,
        source: AuditSource,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        hostname: str | None,
        app_name: str,
        appended: asyncio.Event,
        poll_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._source = source
        self._host = host
        self._port = port
        self._tls = tls
        self._hostname = hostname or socket.gethostname()
        self._app_name = app_name
        self._procid = str(os.getpid())
        self._appended = appended
        self._poll_s = poll_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._owner = f"{self._hostname}:{self._procid}:{uuid.uuid4().hex[:8]}"
        self._connection: SyslogConnection | None = None

    def frame(self, record: ChainRecord) -> bytes:
        """The octet-counted RFC 5424 message of one record."""
        message = syslog_message(
            audit_message(record, self._source),
            timestamp=record.time,
            hostname=self._hostname,
            app_name=self._app_name,
            procid=self._procid,
        )
        return octet_counted(message)

    async def run(self) -> None:
        """Export until cancelled; connection failures are retried with exponential backoff."""
        delay = self._retry_initial_s
        try:
            while True:
                try:
                    sent = await self.export_batch()
                except (OSError, ssl.SSLError, TimeoutError) as error:
                    await self._disconnect()
                    logger.warning(
                        "syslog collector %s:%d unreachable (%s); retrying in %.1f s",
                        self._host,
                        self._port,
                        error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(self._retry_max_s, delay * 2)
                    continue
                delay = self._retry_initial_s
                if sent == 0:
                    await self._wait_for_records()
        finally:
            await self._disconnect()

    async def export_batch(self) -> int:
        """Send the records after the cursor (one batch); how many were sent (0: none waiting, or another
        instance holds the export)."""
        last_seq = await self._store.claim_export(SYSLOG_EXPORT, self._owner, now=self._clock(), lease=_LEASE)
        if last_seq is None:
            return 0
        records = await self._store.records_after(last_seq, _BATCH)
        if not records:
            return 0
        connection = await self._connected()
        await connection.send(b"".join(self.frame(record) for record in records))
        await self._store.advance_export(SYSLOG_EXPORT, self._owner, records[-1].seq)
        return len(records)

    async def _connected(self) -> SyslogConnection:
        if self._connection is not None and not self._connection.usable:
            await self._disconnect()
        if self._connection is None:
            self._connection = await SyslogConnection.open(self._host, self._port, self._tls)
            logger.info("connected to the syslog collector %s:%d", self._host, self._port)
        return self._connection

    async def _disconnect(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def _wait_for_records(self) -> None:
        try:
            await asyncio.wait_for(self._appended.wait(), timeout=self._poll_s)
        except TimeoutError:
            return
        self._appended.clear()
