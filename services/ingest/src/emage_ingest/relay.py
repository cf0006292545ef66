"""The outbox relay: publishes the events whose direct publication did not happen (Kafka was down, the
replica died between commit and publish), so every acknowledged instance is eventually announced.

Runs as a task in each ingest replica's lifespan. Entries are leased before publication
(:class:`~emage_ingest.adapters.repository.Outbox`), so replicas share the work without publishing an entry
twice at once; an entry whose publication fails is retried with exponential backoff. The mechanism is
:class:`emage_common.outbox.OutboxRelay`.
"""

from __future__ import annotations

import logging

from emage_common import outbox
from emage_common.outbox import LeasingOutbox as OutboxPort
from emage_common.outbox import backoff

__all__ = ["OutboxPort", "OutboxRelay", "backoff"]


class OutboxRelay(outbox.OutboxRelay):
    """Drains the ingest outbox into Kafka until stopped; :meth:`wake` makes it look at once."""

    task_name = "outbox-relay"
    logger = logging.getLogger(__name__)
