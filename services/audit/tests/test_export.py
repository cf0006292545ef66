"""The syslog export to a collector on loopback: every record, in order, none lost while it is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest

from emage_audit.domain.atna import AuditSource
from emage_audit.export import SYSLOG_EXPORT, SyslogExporter
from emage_audit.service import AuditService


class Collector:
    """A syslog receiver (RFC 6587 octet counting) on an ephemeral loopback port."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.received = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                length = await reader.readuntil(b" ")
                self.messages.append(await reader.readexactly(int(length[:-1])))
                self.received.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.received.clear()
                await self.received.wait()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    started = Collector()
    await started.start()
    yield started
    with contextlib.suppress(AssertionError):
        await started.stop()


def exporter(store: Any, service: AuditService, port: int) -> SyslogExporter:
    return SyslogExporter(
        store,
        AuditSource("emage-test"),
        host="127.0.0.1",
        port=port,
        tls=None,
        hostname="audit-test",
        app_name="emage-audit",
        appended=service.appended,
        poll_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )


async def test_records_are_sent_in_chain_order_as_atna_syslog(
    collector: Collector, store: Any, service: AuditService, audit: ModuleType
) -> None:
    for event in (audit.instance_event(), audit.access_event(), audit.consent_event()):
        await service.record_event(event)
    sender = exporter(store, service, collector.port)
    assert await sender.export_batch() == 3
    await collector.wait_for(3)
    assert all(
        m.startswith(b"<85>1 2025-03-12T13:05:00Z audit-test emage-audit ") for m in collector.messages
    )
    bom = b"\xef\xbb\xbf"
    xml = [m.partition(b" - " + bom)[2] for m in collector.messages]
    assert [m.split(b'csd-code="')[1][:6] for m in xml] == [b"110104", b"110103", b"110110"]
    assert store.exports[SYSLOG_EXPORT]["last_seq"] == 3
    assert await sender.export_batch() == 0  # nothing new


async def test_nothing_is_lost_while_the_collector_is_down(
    collector: Collector, store: Any, service: AuditService, audit: ModuleType
) -> None:
    sender = exporter(store, service, collector.port)
    running = asyncio.create_task(sender.run())
    try:
        await service.record_event(audit.access_event())
        await collector.wait_for(1)
        await collector.stop()
        await asyncio.sleep(0.1)  # the exporter sees the collector close its side
        for _ in range(3):
            await service.record_event(audit.access_event())
        await asyncio.sleep(0.3)  # several failed attempts
        assert store.exports[SYSLOG_EXPORT]["last_seq"] == 1
        await collector.start()  # the same port again
        await collector.wait_for(4)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert len(collector.messages) == 4
    assert store.exports[SYSLOG_EXPORT]["last_seq"] == 4


async def test_one_instance_exports_at_a_time(
    collector: Collector, store: Any, service: AuditService, audit: ModuleType
) -> None:
    await service.record_event(audit.access_event())
    first, second = exporter(store, service, collector.port), exporter(store, service, collector.port)
    assert await first.export_batch() == 1
    await service.record_event(audit.access_event())
    assert await second.export_batch() == 0  # the first one holds the lease
    assert await first.export_batch() == 1


async def test_a_refused_connection_moves_no_cursor(
    store: Any, service: AuditService, audit: ModuleType
) -> None:
    collector = Collector()
    await collector.start()
    port = collector.port
    await collector.stop()
    await service.record_event(audit.access_event())
    with pytest.raises(ConnectionRefusedError):
        await exporter(store, service, port).export_batch()
    assert store.exports[SYSLOG_EXPORT]["last_seq"] == 0
