"""Ingest's outbox relay and outbox store are the shared ones (:mod:`emage_common.outbox`, tested there),
under ingest's task and logger names, over ingest's ``outbox`` collection and entries."""

from __future__ import annotations

from typing import Any, cast

from emage_common import outbox
from emage_common.events import CloudEvent
from emage_ingest.adapters.repository import OUTBOX, Outbox, OutboxEntry
from emage_ingest.relay import OutboxRelay, backoff


def test_the_ingest_relay_is_the_shared_one_under_ingest_names() -> None:
    assert issubclass(OutboxRelay, outbox.OutboxRelay)
    assert (OutboxRelay.task_name, OutboxRelay.logger.name) == ("outbox-relay", "emage_ingest.relay")
    assert backoff is outbox.backoff


def test_the_ingest_outbox_keeps_ingest_entries_in_its_collection() -> None:
    collections: dict[str, object] = {OUTBOX: object()}
    store = Outbox(cast(Any, collections))
    assert isinstance(store, outbox.MongoOutbox)
    assert store._entries is collections["outbox"]
    entry = store._make_entry("e0", "topic", CloudEvent(id="e0", source="/t", type="t"), 2)
    assert isinstance(entry, OutboxEntry)
    assert (entry.event_id, entry.topic, entry.event.id, entry.attempts) == ("e0", "topic", "e0", 2)
