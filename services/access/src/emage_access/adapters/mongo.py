"""The access service's MongoDB stores: shares, share links and their sessions, break-the-glass grants.

Collections of the service's own database:

``shares``
    shares to professionals (:class:`~emage_access.domain.sharing.ShareRecord`).
``share_links``
    share links (:class:`~emage_access.domain.links.ShareLink`): digests of the secret and second factor,
    never the values; use and failure counters.
``link_sessions``
    sessions opened on links, by token digest; a TTL index removes them once expired.
``break_glass``
    break-the-glass grants.

Opening a link is made safe against concurrent attempts with conditional updates
(``find_one_and_update``): a use is counted only while the link is still in force and under its limit, so
concurrent opens never exceed ``max_uses``; a second-factor attempt first claims the link's attempt slot
(``next_attempt_at``), so guesses are serialised and throttled however many arrive at once.

Every change to a share or a link is written with ``announced: false`` before it is published on
``emage.share.changed.v1``, and marked announced once Kafka has it: :class:`ShareAnnouncer` publishes what a
crash or an unavailable broker left unannounced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final, Generic, Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from emage_access.domain.links import (
    CapabilityToken,
    IssuedSession,
    LinkOpening,
    LinkRefusal,
    LinkSession,
    LinkSettings,
    Revocable,
    SecondFactor,
    SecretDigest,
    ShareLink,
    revoke_link,
)
from emage_access.domain.policy import BreakGlass, Share
from emage_access.domain.principal import Principal
from emage_access.domain.sharing import (
    RecordedBreakGlass,
    ShareRecord,
    link_changed,
    revoke_share,
    share_changed,
)
from emage_common.events import SHARE_CHANGED_TOPIC, CloudEvent, ShareChanged, make_event

_log = logging.getLogger(__name__)

Document = dict[str, Any]

EVENT_SOURCE: Final = "/emage/access"
SHARES: Final = "shares"
SHARE_LINKS: Final = "share_links"
LINK_SESSIONS: Final = "link_sessions"
BREAK_GLASS: Final = "break_glass"

LIST_LIMIT: Final = 500
"""Most entries a listing returns, newest first."""

_PENDING: Final = {"announced": False}
_INDEXES: Final[dict[str, list[IndexModel]]] = {
    SHARES: [
        IndexModel([("grantee_rpps", ASCENDING)], name="grantee"),
        IndexModel([("shared_by", ASCENDING), ("created_at", DESCENDING)], name="sharer"),
        IndexModel([("patient_key", ASCENDING), ("created_at", DESCENDING)], name="patient"),
        IndexModel([("announced", ASCENDING)], name="unannounced", partialFilterExpression=_PENDING),
    ],
    SHARE_LINKS: [
        IndexModel([("created_by", ASCENDING), ("created_at", DESCENDING)], name="creator"),
        IndexModel([("patient_key", ASCENDING), ("created_at", DESCENDING)], name="patient"),
        IndexModel([("announced", ASCENDING)], name="unannounced", partialFilterExpression=_PENDING),
    ],
    LINK_SESSIONS: [
        # Expired sessions are refused on read already; the TTL monitor (every 60 s) just clears them away.
        IndexModel([("expires_at", ASCENDING)], name="expiry", expireAfterSeconds=0),
    ],
    BREAK_GLASS: [
        IndexModel([("holder_rpps", ASCENDING), ("expires_at", DESCENDING)], name="holder"),
    ],
}

_MAX_CONFLICT_RETRIES: Final = 8


async def ensure_indexes(database: AsyncDatabase[Document]) -> None:
    """Create the indexes of every collection the stores use (idempotent)."""
    for collection, indexes in _INDEXES.items():
        await database[collection].create_indexes(indexes)


class EventSink(Protocol):
    """Where ``share.changed`` events go (:class:`emage_common.kafka.EventPublisher`)."""

    async def publish(self, topic: str, event: CloudEvent, key: str | None = None) -> None: ...


def _digest_document(digest: SecretDigest) -> Document:
    return {"salt": digest.salt, "digest": digest.digest}


def _digest_of(document: Document) -> SecretDigest:
    return SecretDigest(salt=bytes(document["salt"]), digest=bytes(document["digest"]))


# --- What shares and links store alike ----------------------------------------------------------------------

_Shared = TypeVar("_Shared", bound=Revocable)


class _SharedStore(Generic[_Shared]):
    """A collection of shares or of share links: creation, lookup, revocation, listings, pending changes.

    ``creator`` is the field naming who made an entry; ``to_document``, ``of_document`` and ``revoke`` are the
    kind's mapping and its domain revocation rule.
    """

    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        creator: str,
        to_document: Callable[[_Shared], Document],
        of_document: Callable[[Document], _Shared],
        revoke: Callable[[_Shared, Principal, datetime], _Shared],
    ) -> None:
        self._collection = collection
        self._creator = creator
        self._to_document = to_document
        self._of_document = of_document
        self._revoke = revoke

    async def create(self, shared: _Shared) -> None:
        """Store a new entry, to be announced."""
        await self._collection.insert_one(self._to_document(shared))

    async def get(self, identifier: str) -> _Shared | None:
        document = await self._collection.find_one({"_id": identifier})
        return None if document is None else self._of_document(document)

    async def revoke(self, identifier: str, principal: Principal, now: datetime) -> _Shared | None:
        """Revoke the entry for ``principal``: the entry as revoked, None when there is no such entry.

        Raises :class:`~emage_access.domain.links.NotRevocableError` when ``principal`` may not revoke it.
        Revoking a revoked entry returns it unchanged.
        """
        current = await self.get(identifier)
        if current is None:
            return None
        revoked = self._revoke(current, principal, now)
        if revoked is current:
            return current
        document = await self._collection.find_one_and_update(
            {"_id": identifier, "revoked_at": None, "revision": current.revision},
            {
                "$set": {
                    "revoked_at": revoked.revoked_at,
                    "revoked_by": revoked.revoked_by,
                    "revision": revoked.revision,
                    "announced": False,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            # Revoked meanwhile by someone else: the entry is revoked all the same.
            return await self.get(identifier)
        return self._of_document(document)

    async def created_by(self, subject: str) -> list[_Shared]:
        """The entries ``subject`` made, newest first."""
        return await self._find({self._creator: subject})

    async def of_patient(self, patient_keys: Iterable[str]) -> list[_Shared]:
        """The entries of the record that ``patient_keys`` designate, whoever made them, newest first."""
        return await self._find({"patient_key": {"$in": sorted(patient_keys)}})

    async def unannounced(self, limit: int) -> list[_Shared]:
        cursor = self._collection.find(_PENDING).limit(limit)
        return [self._of_document(document) async for document in cursor]

    async def mark_announced(self, identifier: str, revision: int) -> None:
        """Mark the change of ``revision`` announced, unless a later change is already waiting."""
        await self._collection.update_one(
            {"_id": identifier, "revision": revision}, {"$set": {"announced": True}}
        )

    async def _find(self, query: Document) -> list[_Shared]:
        cursor = self._collection.find(query).sort([("created_at", DESCENDING), ("_id", ASCENDING)])
        return [self._of_document(document) async for document in cursor.limit(LIST_LIMIT)]


# --- Shares -------------------------------------------------------------------------------------------------


def _share_document(record: ShareRecord) -> Document:
    return {
        "_id": record.share_id,
        "patient_key": record.patient_key,
        "grantee_rpps": record.grantee_rpps,
        "study_instance_uid": record.study_instance_uid,
        "shared_by": record.shared_by,
        "shared_by_facility": record.shared_by_facility,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "revoked_by": record.revoked_by,
        "other_patient_keys": list(record.other_patient_keys),
        "revision": record.revision,
        "announced": False,
    }


def _share_record(document: Document) -> ShareRecord:
    return ShareRecord(
        share_id=document["_id"],
        patient_key=document["patient_key"],
        grantee_rpps=document["grantee_rpps"],
        shared_by=document["shared_by"],
        created_at=document["created_at"],
        expires_at=document["expires_at"],
        study_instance_uid=document["study_instance_uid"],
        shared_by_facility=document["shared_by_facility"],
        revoked_at=document["revoked_at"],
        revoked_by=document["revoked_by"],
        other_patient_keys=tuple(document.get("other_patient_keys", ())),
        revision=document["revision"],
    )


class MongoShareStore(_SharedStore[ShareRecord]):
    """Shares to professionals; the gateway's :class:`~emage_access.ports.ShareStore`.

    Listed by sharer (:meth:`created_by`), grantee or patient (:meth:`of_patient`), newest first.
    """

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        super().__init__(
            database[SHARES],
            creator="shared_by",
            to_document=_share_document,
            of_document=_share_record,
            revoke=revoke_share,
        )

    async def granted_to(self, grantee_rpps: str) -> list[ShareRecord]:
        """The shares naming ``grantee_rpps``, newest first."""
        return await self._find({"grantee_rpps": grantee_rpps})

    async def shares_to(self, grantee_rpps: str) -> list[Share]:
        """See :meth:`emage_access.ports.ShareStore.shares_to`."""
        cursor = self._collection.find({"grantee_rpps": grantee_rpps})
        return [_share_record(document).share async for document in cursor]


# --- Share links and their sessions -------------------------------------------------------------------------


def _link_document(link: ShareLink) -> Document:
    return {
        "_id": link.link_id,
        "study_instance_uid": link.study_instance_uid,
        "patient_key": link.patient_key,
        "created_by": link.created_by,
        "shared_by_facility": link.shared_by_facility,
        "created_at": link.created_at,
        "expires_at": link.expires_at,
        "secret": _digest_document(link.secret),
        "second_factor": link.second_factor.value,
        "factor": None if link.factor is None else _digest_document(link.factor),
        "max_uses": link.max_uses,
        "uses": link.uses,
        "failures": link.failures,
        "next_attempt_at": link.next_attempt_at,
        "locked_at": link.locked_at,
        "revoked_at": link.revoked_at,
        "revoked_by": link.revoked_by,
        "revision": link.revision,
        "announced": False,
    }


def _share_link(document: Document) -> ShareLink:
    factor = document["factor"]
    return ShareLink(
        link_id=document["_id"],
        study_instance_uid=document["study_instance_uid"],
        patient_key=document["patient_key"],
        created_by=document["created_by"],
        created_at=document["created_at"],
        expires_at=document["expires_at"],
        secret=_digest_of(document["secret"]),
        second_factor=SecondFactor(document["second_factor"]),
        factor=None if factor is None else _digest_of(factor),
        shared_by_facility=document["shared_by_facility"],
        max_uses=document["max_uses"],
        uses=document["uses"],
        failures=document["failures"],
        next_attempt_at=document["next_attempt_at"],
        locked_at=document["locked_at"],
        revoked_at=document["revoked_at"],
        revoked_by=document["revoked_by"],
        revision=document["revision"],
    )


def _in_force(now: datetime) -> Document:
    """A link that may still be opened at ``now``, whatever its counters say."""
    return {"revoked_at": None, "locked_at": None, "expires_at": {"$gt": now}}


class MongoLinkStore(_SharedStore[ShareLink]):
    """Share links and the sessions opened on them.

    The gateway's :class:`~emage_access.ports.LinkSessionStore`. Links are listed by creator
    (:meth:`created_by`) or patient (:meth:`of_patient`), newest first. Sessions opened on a revoked link stop
    working at once: :meth:`session` checks the link.
    """

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        super().__init__(
            database[SHARE_LINKS],
            creator="created_by",
            to_document=_link_document,
            of_document=_share_link,
            revoke=revoke_link,
        )
        self._sessions: AsyncCollection[Document] = database[LINK_SESSIONS]

    async def open(
        self,
        secret: str,
        *,
        birth_date: str | None,
        one_time_code: str | None,
        now: datetime,
        settings: LinkSettings,
    ) -> LinkOpening:
        """Try to open the link ``secret`` names; count the use, or the wrong second factor.

        Steps: the link must be in force and the secret must match (nothing is recorded otherwise); a link
        with a second factor then claims its attempt slot — one attempt per
        :attr:`~emage_access.domain.links.LinkSettings.retry_delay`, concurrent ones are throttled — and a
        wrong factor is counted (longer pause, lock at the last allowed failure); finally the use is counted
        only if the link is still in force and under its limit at that instant.
        """
        token = CapabilityToken.parse(secret)
        if token is None:
            return LinkOpening(None, LinkRefusal.UNKNOWN)
        link = await self.get(token.identifier)
        if link is None:
            return LinkOpening(None, LinkRefusal.UNKNOWN)
        refusal = link.refusal(now)
        if refusal is not None:
            return LinkOpening(link, refusal)
        if not link.secret_matches(token):
            return LinkOpening(link, LinkRefusal.WRONG_SECRET)
        if link.second_factor is not SecondFactor.NONE:
            presented = link.presented_factor(birth_date=birth_date, one_time_code=one_time_code)
            if presented is None:
                return LinkOpening(link, LinkRefusal.FACTOR_MISSING)
            claimed = await self._claim_attempt(link, now, settings)
            if claimed.refusal is not None or claimed.link is None:
                return claimed
            link = claimed.link
            if not link.factor_matches(presented):
                return await self._count_wrong_factor(link, now, settings)
        return await self._count_use(link, now)

    async def save_session(self, issued: IssuedSession) -> None:
        """Store an opened link's session, by its token's digest."""
        session = issued.session
        await self._sessions.insert_one(
            {
                "_id": session.session_id,
                "token": _digest_document(issued.digest),
                "link_id": session.link_id,
                "study_instance_uid": session.study_instance_uid,
                "patient_key": session.patient_key,
                "expires_at": session.expires_at,
            }
        )

    async def session(self, token: str, *, now: datetime) -> LinkSession | None:
        """See :meth:`emage_access.ports.LinkSessionStore.session`."""
        parsed = CapabilityToken.parse(token)
        if parsed is None:
            return None
        document = await self._sessions.find_one({"_id": parsed.identifier})
        if document is None or not _digest_of(document["token"]).matches(parsed.secret):
            return None
        if now >= document["expires_at"]:
            return None
        link = await self._collection.find_one(
            {"_id": document["link_id"], "revoked_at": None, "expires_at": {"$gt": now}}, {"_id": 1}
        )
        if link is None:
            return None
        return LinkSession(
            session_id=document["_id"],
            link_id=document["link_id"],
            study_instance_uid=document["study_instance_uid"],
            patient_key=document["patient_key"],
            expires_at=document["expires_at"],
        )

    async def _refusal_now(self, link_id: str, now: datetime, otherwise: LinkRefusal) -> LinkOpening:
        """Why the link cannot be opened as it stands now (after a conditional update missed)."""
        link = await self.get(link_id)
        if link is None:
            return LinkOpening(None, LinkRefusal.UNKNOWN)
        return LinkOpening(link, link.refusal(now) or otherwise)

    async def _claim_attempt(self, link: ShareLink, now: datetime, settings: LinkSettings) -> LinkOpening:
        document = await self._collection.find_one_and_update(
            {
                "_id": link.link_id,
                **_in_force(now),
                "$or": [{"next_attempt_at": None}, {"next_attempt_at": {"$lte": now}}],
            },
            {"$set": {"next_attempt_at": link.attempt_slot_until(now, settings)}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            return await self._refusal_now(link.link_id, now, LinkRefusal.THROTTLED)
        return LinkOpening(_share_link(document))

    async def _count_wrong_factor(
        self, link: ShareLink, now: datetime, settings: LinkSettings
    ) -> LinkOpening:
        current = link
        for _ in range(_MAX_CONFLICT_RETRIES):
            failed = current.after_wrong_factor(now, settings)
            document = await self._collection.find_one_and_update(
                {"_id": link.link_id, "failures": current.failures},
                {
                    "$set": {
                        "failures": failed.failures,
                        "next_attempt_at": failed.next_attempt_at,
                        "locked_at": failed.locked_at,
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
            if document is not None:
                return LinkOpening(_share_link(document), LinkRefusal.FACTOR_WRONG)
            fresh = await self.get(link.link_id)
            if fresh is None:
                break
            current = fresh
        _log.warning("could not count a wrong second factor on share link %s", link.link_id)
        return LinkOpening(current, LinkRefusal.FACTOR_WRONG)

    async def _count_use(self, link: ShareLink, now: datetime) -> LinkOpening:
        condition: Document = {"_id": link.link_id, **_in_force(now)}
        if link.max_uses is not None:
            condition["uses"] = {"$lt": link.max_uses}
        document = await self._collection.find_one_and_update(
            condition, {"$inc": {"uses": 1}}, return_document=ReturnDocument.AFTER
        )
        if document is None:
            return await self._refusal_now(link.link_id, now, LinkRefusal.EXHAUSTED)
        return LinkOpening(_share_link(document))


# --- Break the glass ----------------------------------------------------------------------------------------


def _break_glass(document: Document) -> BreakGlass:
    return BreakGlass(
        holder_rpps=document["holder_rpps"],
        study_instance_uid=document["study_instance_uid"],
        justification=document["justification"],
        opened_at=document["opened_at"],
        expires_at=document["expires_at"],
    )


class MongoBreakGlassStore:
    """Break-the-glass grants; the gateway's :class:`~emage_access.ports.BreakGlassStore`."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._grants: AsyncCollection[Document] = database[BREAK_GLASS]

    async def record(self, grant_id: str, grant: BreakGlass) -> RecordedBreakGlass:
        """Store a grant the policy allowed."""
        await self._grants.insert_one(
            {
                "_id": grant_id,
                "holder_rpps": grant.holder_rpps,
                "study_instance_uid": grant.study_instance_uid,
                "justification": grant.justification,
                "opened_at": grant.opened_at,
                "expires_at": grant.expires_at,
            }
        )
        return RecordedBreakGlass(grant_id, grant)

    async def grants_of(self, holder_rpps: str, *, now: datetime) -> list[BreakGlass]:
        """See :meth:`emage_access.ports.BreakGlassStore.grants_of`."""
        cursor = self._grants.find({"holder_rpps": holder_rpps, "expires_at": {"$gt": now}})
        return [_break_glass(document) async for document in cursor]

    async def held_by(self, holder_rpps: str) -> list[RecordedBreakGlass]:
        """Every grant of ``holder_rpps``, expired ones included, newest first."""
        cursor = self._grants.find({"holder_rpps": holder_rpps}).sort(
            [("expires_at", DESCENDING), ("_id", ASCENDING)]
        )
        return [
            RecordedBreakGlass(document["_id"], _break_glass(document))
            async for document in cursor.limit(LIST_LIMIT)
        ]


# --- share.changed ------------------------------------------------------------------------------------------


class ShareAnnouncer:
    """Publishes ``share.changed`` for every change to a share or link not yet announced, at least once.

    Events carry the share's ``revision``, so a consumer ignores one it has already applied; only the latest
    change of each share is published (a consumer needs nothing else).
    """

    BATCH: Final = 100

    def __init__(self, shares: MongoShareStore, links: MongoLinkStore, sink: EventSink) -> None:
        self._shares = shares
        self._links = links
        self._sink = sink

    async def announce_pending(self) -> int:
        """Publish every unannounced change, then mark it announced; return how many were published.

        Raises what the publisher raises (the changes stay pending, for the next call).
        """
        announced = 0
        while True:
            shares = await self._announce_batch(self._shares, share_changed)
            links = await self._announce_batch(self._links, link_changed)
            announced += shares + links
            if shares < self.BATCH and links < self.BATCH:
                return announced

    async def _announce_batch(
        self, store: _SharedStore[_Shared], changed: Callable[[_Shared], ShareChanged]
    ) -> int:
        """Publish a batch of ``store``'s unannounced changes and mark them announced; how many there were."""
        pending = await store.unannounced(self.BATCH)
        for shared in pending:
            change = changed(shared)
            event = make_event(change, EVENT_SOURCE, subject=change.share_id)
            await self._sink.publish(SHARE_CHANGED_TOPIC, event)
            # The event's share_id is the share's or the link's identifier.
            await store.mark_announced(change.share_id, change.revision)
        return len(pending)
