"""The outbox relay: publishes the events whose direct publication did not happen (Kafka was down, the
replica died between commit and publish), so every acknowledged consent change is eventually announced.

Runs as a task in each consent replica's lifespan, and drains at once on start: events a stopped replica
left behind go out as soon as any replica runs. Entries are leased before publication
(:class:`~emage_consent.adapters.mongo.MongoOutbox`), so replicas share the work without publishing an entry
twice at once; an entry whose publication fails is retried with exponential backoff. The mechanism is
:class:`emage_common.outbox.OutboxRelay`.
"""

from __future__ import annotations

import logging

from emage_common import outbox
from emage_common.outbox import backoff

__all__ = ["OutboxRelay", "backoff"]


class OutboxRelay(outbox.OutboxRelay):
    """Drains the consent outbox into Kafka until stopped; :meth:`wake` makes it look at once."""

    task_name = "consent-outbox-relay"
    logger = logging.getLogger(__name__)
