"""MongoDB client factory and helpers, on PyMongo's native asyncio API (``pymongo.AsyncMongoClient``).

Motor, the former async driver, is end-of-life; PyMongo's async client is its successor and implements
the same driver specifications (retryable reads/writes, sessions, the transactions convenient API).
Each service owns one database (:func:`service_database`) and never reads another's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pymongo
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from emage_common.settings import ServiceSettings

T = TypeVar("T")

Document = dict[str, Any]

# Long enough to ride out a replica-set election (~10 s is the worst case; most finish in 1-2 s) for
# retryable operations, short enough that a request fails rather than hangs when the database is gone.
_SERVER_SELECTION_TIMEOUT_MS = 5_000
_CONNECT_TIMEOUT_MS = 5_000


def create_mongo_client(settings: ServiceSettings) -> AsyncMongoClient[Document]:
    """Create the service's client from ``settings.mongo_uri`` (options in the URI take precedence).

    Datetimes come back timezone-aware (UTC); the application name shows in ``currentOp`` and server
    logs; writes are acknowledged by a majority of the replica set, so an acknowledged write survives
    the loss of the primary. No I/O happens until the first operation.
    """
    return AsyncMongoClient(
        settings.mongo_uri.get_secret_value(),
        tz_aware=True,
        appname=settings.service_name,
        serverSelectionTimeoutMS=_SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=_CONNECT_TIMEOUT_MS,
        retryWrites=True,
        retryReads=True,
        w="majority",
        uuidRepresentation="standard",
    )


def service_database(
    client: AsyncMongoClient[Document], settings: ServiceSettings
) -> AsyncDatabase[Document]:
    """The service's own database (``settings.database_name``)."""
    return client.get_database(settings.database_name)


async def mongo_ready(client: AsyncMongoClient[Document], wait_seconds: float = 1.0) -> bool:
    """Whether a ``ping`` reaches a server within ``wait_seconds`` (readiness probe; never raises)."""
    try:
        # Client-side operation timeout: bounds server selection and the command together.
        with pymongo.timeout(wait_seconds):
            await client.admin.command("ping")
    except PyMongoError:
        return False
    return True


async def in_transaction(
    client: AsyncMongoClient[Document], fn: Callable[[AsyncClientSession], Awaitable[T]]
) -> T:
    """Run ``fn(session)`` in a multi-document transaction and commit it; return what ``fn`` returned.

    Delegates to PyMongo's ``with_transaction`` (the MongoDB Transactions Convenient API specification):
    the whole transaction is retried with backoff on a ``TransientTransactionError`` label, only the
    commit on ``UnknownTransactionCommitResult``, and anything else aborts and propagates. ``fn`` may
    therefore run more than once and must confine its side effects to operations that pass ``session``.
    Snapshot read concern with majority commit gives ``fn`` a consistent, durable view.
    Wrap the call in ``pymongo.timeout(seconds)`` to bound the retries below PyMongo's 120 s default.
    """
    async with client.start_session() as session:
        return await session.with_transaction(
            fn,
            read_concern=ReadConcern("snapshot"),
            write_concern=WriteConcern("majority"),
        )
