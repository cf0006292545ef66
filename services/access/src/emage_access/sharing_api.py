"""``/api/v1`` shares, share links and break-the-glass: thin routes over the domain rules and the stores.

Every creation is decided by the :class:`~emage_access.decisions.AccessDecider` (and so audited) before
anything is stored: a share and a share link as :attr:`~emage_access.domain.policy.Action.SHARE` on their
study (a patient's share of all their studies on none), a break-the-glass grant as
:attr:`~emage_access.domain.policy.Action.BREAK_GLASS` with the grant requested. A denied decision about a
study answers 404, as an unknown study does; a request the sharing rules refuse answers 422 before any
decision, and its answer never depends on the study. Unknown shares and links, and those the caller may not
revoke, answer 404 alike.

Opening a share link needs no account: ``POST /api/v1/share-links/open`` with the secret (and the second
factor) returns a short-lived bearer token for the link's study. Every refusal answers the same 403 — the
precise reason is logged with the link's identifier, never told to the client.

What the routes read from ``app.state``: ``shares`` (:class:`~emage_access.adapters.mongo.MongoShareStore`),
``links`` (:class:`~emage_access.adapters.mongo.MongoLinkStore`), ``break_glass``
(:class:`~emage_access.adapters.mongo.MongoBreakGlassStore`), ``decider``, ``runtime.publisher`` (for
``share.changed``), ``sharing_settings`` (:class:`~emage_access.domain.sharing.SharingSettings`; else the
defaults with ``settings.policy``) and ``patient_birth_date`` (:data:`PatientBirthDate`, for links whose
second factor is the patient's birth date).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeVar

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError

from emage_access.adapters.mongo import (
    EventSink,
    MongoBreakGlassStore,
    MongoLinkStore,
    MongoShareStore,
    ShareAnnouncer,
)
from emage_access.adapters.mongo import ensure_indexes as ensure_indexes
from emage_access.auth import current_principal
from emage_access.decisions import AccessDecider, get_decider, not_found
from emage_access.domain.links import (
    LINK_REFUSED_DETAIL,
    GrantRequestError,
    LinkRefusal,
    LinkRequest,
    LinkStatus,
    NotRevocableError,
    Revocable,
    SecondFactor,
    ShareLink,
    check_link_request,
    issue_link,
    start_session,
)
from emage_access.domain.policy import Action
from emage_access.domain.principal import HEALTH_PROFESSIONAL_ROLES, Principal
from emage_access.domain.sharing import (
    JUSTIFICATION_MAX_LENGTH,
    RecordedBreakGlass,
    ShareRecord,
    ShareRequest,
    ShareStatus,
    SharingSettings,
    check_break_glass_duration,
    check_share_request,
    create_share,
    normalize_justification,
    request_break_glass,
)
from emage_access.portal.qr import qr_svg_data_uri
from emage_common.events import DicomUid, RppsId

_log = logging.getLogger(__name__)

PatientBirthDate = Callable[[str], Awaitable[str | None]]
"""``app.state.patient_birth_date``: a study's Patient's Birth Date (``YYYYMMDD``) from the catalog."""

LINK_URL_PATH: Final = "/portal/link"
"""The portal page that opens a link; the secret goes in the URL fragment, which no server ever receives."""

_UID_EXAMPLE: Final = "1.2.826.0.1.3680043.8.498.12345"
_TIME_EXAMPLE: Final = "2026-03-01T12:00:00Z"

router = APIRouter(prefix="/api/v1")

_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"description": "No such study, share or link — or not yours: both look alike."}
}
_UNPROCESSABLE: Final[dict[int | str, dict[str, Any]]] = {
    422: {"description": "The request breaks a sharing rule (the detail says which)."}
}


# --- Dependencies -------------------------------------------------------------------------------------------


async def get_sharing_settings(request: Request) -> SharingSettings:
    """The deployment's sharing limits: ``app.state.sharing_settings``, else defaults with its policy."""
    configured = getattr(request.app.state, "sharing_settings", None)
    if isinstance(configured, SharingSettings):
        return configured
    return SharingSettings(policy=request.app.state.settings.policy)


async def get_event_sink(request: Request) -> EventSink:
    """Where ``share.changed`` is published: the service's Kafka publisher."""
    sink: EventSink = request.app.state.runtime.publisher
    return sink


async def _shares(request: Request) -> MongoShareStore:
    store: MongoShareStore = request.app.state.shares
    return store


async def _links(request: Request) -> MongoLinkStore:
    store: MongoLinkStore = request.app.state.links
    return store


async def _break_glass(request: Request) -> MongoBreakGlassStore:
    store: MongoBreakGlassStore = request.app.state.break_glass
    return store


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
Decider = Annotated[AccessDecider, Depends(get_decider)]
Limits = Annotated[SharingSettings, Depends(get_sharing_settings)]
Sink = Annotated[EventSink, Depends(get_event_sink)]
Shares = Annotated[MongoShareStore, Depends(_shares)]
Links = Annotated[MongoLinkStore, Depends(_links)]
BreakGlassGrants = Annotated[MongoBreakGlassStore, Depends(_break_glass)]


async def _announcer(shares: Shares, links: Links, sink: Sink) -> ShareAnnouncer:
    return ShareAnnouncer(shares, links, sink)


Announcer = Annotated[ShareAnnouncer, Depends(_announcer)]


async def announce_pending(app: FastAPI, sink: EventSink) -> int:
    """Publish the share and link changes left unannounced (call at startup, once the stores are set)."""
    return await ShareAnnouncer(app.state.shares, app.state.links, sink).announce_pending()


async def _announce(announcer: ShareAnnouncer) -> None:
    # The change is durable and marked unannounced: if Kafka cannot take it now, the next change or the next
    # start publishes it. The caller's request succeeded either way.
    try:
        await announcer.announce_pending()
    except (KafkaError, PyMongoError):
        _log.warning("share.changed not published yet; it stays pending", exc_info=True)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _unprocessable_when_refused() -> Iterator[None]:
    """Answer 422, with the rule's detail, to a request the sharing rules refuse."""
    try:
        yield
    except GrantRequestError as error:
        raise HTTPException(422, error.detail) from error


_Listed = TypeVar("_Listed", bound=Revocable)


def _newest_first(found: Iterable[_Listed], identifier: Callable[[_Listed], str]) -> list[_Listed]:
    """``found`` once each (by ``identifier``), newest first."""
    unique = {identifier(entry): entry for entry in found}
    return sorted(unique.values(), key=lambda entry: (entry.created_at, identifier(entry)), reverse=True)


async def _revoke(
    store: MongoShareStore | MongoLinkStore, identifier: str, principal: Principal, announcer: ShareAnnouncer
) -> Response:
    """Revoke a share or link and announce it; 404 when unknown or not the caller's to revoke."""
    try:
        revoked = await store.revoke(identifier, principal, _now())
    except NotRevocableError as error:
        raise not_found() from error
    if revoked is None:
        raise not_found()
    await _announce(announcer)
    return Response(status_code=204)


# --- Shares -------------------------------------------------------------------------------------------------


class ShareCreate(BaseModel):
    """A share of one study (or, for a patient, of all their studies) with a professional, until an expiry."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "study_instance_uid": _UID_EXAMPLE,
                    "grantee_rpps": "10000000002",
                    "expires_at": _TIME_EXAMPLE,
                },
                {"study_instance_uid": None, "grantee_rpps": "10000000002", "expires_at": _TIME_EXAMPLE},
            ]
        },
    )

    study_instance_uid: DicomUid | None = None
    """The study shared; null (a patient only) for every study of the patient's record."""
    grantee_rpps: RppsId
    expires_at: AwareDatetime


class ShareOut(BaseModel):
    """A share, as its sharer, its grantee and the patient see it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "share_id": "5f0c6a9e4b1d2c3e8f7a6b5c4d3e2f10",
                    "study_instance_uid": _UID_EXAMPLE,
                    "all_studies": False,
                    "grantee_rpps": "10000000002",
                    "shared_by": "6c1d8e0a-radiologist",
                    "shared_by_facility": "750000001",
                    "created_at": "2026-01-05T09:30:00Z",
                    "expires_at": _TIME_EXAMPLE,
                    "revoked_at": None,
                    "status": "active",
                }
            ]
        }
    )

    share_id: str
    study_instance_uid: str | None
    all_studies: bool
    grantee_rpps: str
    shared_by: str
    """OIDC subject of the sharer."""
    shared_by_facility: str | None
    """FINESS of the sharing professional's facility; null when the patient shared."""
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    status: ShareStatus

    @classmethod
    def of(cls, record: ShareRecord, now: datetime) -> ShareOut:
        return cls(
            share_id=record.share_id,
            study_instance_uid=record.study_instance_uid,
            all_studies=record.study_instance_uid is None,
            grantee_rpps=record.grantee_rpps,
            shared_by=record.shared_by,
            shared_by_facility=record.shared_by_facility,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            status=record.status(now),
        )


class ShareList(BaseModel):
    """Shares the caller made, shares granted to them, shares of their record; newest first."""

    shares: list[ShareOut]


@router.post(
    "/shares",
    status_code=201,
    response_model=ShareOut,
    tags=["shares"],
    summary="Share a study, or all of one's studies, with a professional",
    responses={
        **_NOT_FOUND,
        403: {"description": "The caller may not share these studies."},
        **_UNPROCESSABLE,
    },
)
async def post_share(
    body: ShareCreate,
    request: Request,
    principal: CurrentPrincipal,
    decider: Decider,
    settings: Limits,
    shares: Shares,
    announcer: Announcer,
) -> ShareOut:
    now = _now()
    share_request = ShareRequest(
        grantee_rpps=body.grantee_rpps, expires_at=body.expires_at, study_instance_uid=body.study_instance_uid
    )
    with _unprocessable_when_refused():
        check_share_request(principal, share_request, now=now, settings=settings)
    decided = await decider.decide(principal, Action.SHARE, body.study_instance_uid, request=request)
    if not decided.allowed:
        if body.study_instance_uid is not None:
            raise not_found()
        raise HTTPException(403, "You may not share these studies.")
    record = create_share(principal, share_request, decided.study, now=now, settings=settings)
    await shares.create(record)
    await _announce(announcer)
    return ShareOut.of(record, now)


@router.get("/shares", response_model=ShareList, tags=["shares"], summary="My shares")
async def get_shares(principal: CurrentPrincipal, shares: Shares) -> ShareList:
    found = await shares.created_by(principal.subject)
    if principal.rpps is not None and principal.role in HEALTH_PROFESSIONAL_ROLES:
        found += await shares.granted_to(principal.rpps)
    if principal.patient_keys:
        found += await shares.of_patient(principal.patient_keys)
    now = _now()
    ordered = _newest_first(found, lambda record: record.share_id)
    return ShareList(shares=[ShareOut.of(record, now) for record in ordered])


@router.delete(
    "/shares/{share_id}",
    status_code=204,
    response_class=Response,
    tags=["shares"],
    summary="Revoke a share (its sharer, or the patient)",
    responses=_NOT_FOUND,
)
async def delete_share(
    share_id: Annotated[str, Path(max_length=128)],
    principal: CurrentPrincipal,
    shares: Shares,
    announcer: Announcer,
) -> Response:
    return await _revoke(shares, share_id, principal, announcer)


# --- Share links --------------------------------------------------------------------------------------------


class ShareLinkCreate(BaseModel):
    """A link to one study, until an expiry, perhaps for a limited number of opens, perhaps with a factor."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "study_instance_uid": _UID_EXAMPLE,
                    "expires_at": _TIME_EXAMPLE,
                    "max_uses": 3,
                    "second_factor": "one_time_code",
                }
            ]
        },
    )

    study_instance_uid: DicomUid
    expires_at: AwareDatetime
    max_uses: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """How many times the link may be opened; null for no limit before its expiry."""
    second_factor: SecondFactor = SecondFactor.NONE
    """``birth_date``: the opener gives the patient's birth date; ``one_time_code``: a code returned once
    here, to pass on separately from the link."""


class ShareLinkOut(BaseModel):
    """A share link as its creator and the patient see it; never its secret."""

    link_id: str
    study_instance_uid: str
    created_by: str
    shared_by_facility: str | None
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    second_factor: SecondFactor
    revoked_at: datetime | None
    status: LinkStatus

    @classmethod
    def of(cls, link: ShareLink, now: datetime) -> ShareLinkOut:
        return cls(
            link_id=link.link_id,
            study_instance_uid=link.study_instance_uid,
            created_by=link.created_by,
            shared_by_facility=link.shared_by_facility,
            created_at=link.created_at,
            expires_at=link.expires_at,
            max_uses=link.max_uses,
            uses=link.uses,
            second_factor=link.second_factor,
            revoked_at=link.revoked_at,
            status=link.status(now),
        )


class ShareLinkCreated(ShareLinkOut):
    """A new link, with what is shown only this once: its secret, its URL, its one-time code."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "link_id": "9b2f0e7c1a3d4b5e6f708192a3b4c5d6",
                    "study_instance_uid": _UID_EXAMPLE,
                    "created_by": "0e3b6f2a-patient",
                    "shared_by_facility": None,
                    "created_at": "2026-02-01T12:00:00Z",
                    "expires_at": _TIME_EXAMPLE,
                    "max_uses": 3,
                    "uses": 0,
                    "second_factor": "one_time_code",
                    "revoked_at": None,
                    "status": "active",
                    "url": "/portal/link#9b2f0e7c1a3d4b5e6f708192a3b4c5d6Zr8x…",
                    "secret": "9b2f0e7c1a3d4b5e6f708192a3b4c5d6Zr8x…",
                    "one_time_code": "48213067",
                    "qr_code": "data:image/svg+xml;charset=utf-8,%3Csvg…",
                }
            ]
        }
    )

    url: str
    """Gateway-relative URL of the portal page opening the link; the secret is in its fragment."""
    secret: str
    one_time_code: str | None
    """The code the opener must give, for a ``one_time_code`` link; it cannot be shown again."""
    qr_code: str
    """A QR code of the link's absolute URL (secret included) as an SVG ``data:`` URI, to scan with a
    phone; made here so that the secret is never sent anywhere to draw it. Never pass it on with the one-time
    code."""


class ShareLinkList(BaseModel):
    """Links the caller made and links to studies of their record; newest first."""

    links: list[ShareLinkOut]


class ShareLinkOpen(BaseModel):
    """What the holder of a link presents: its secret, and its second factor when it has one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"secret": "9b2f0e7c1a3d4b5e6f708192a3b4c5d6Zr8x…", "birth_date": "19800521"}]
        },
    )

    secret: Annotated[str, Field(min_length=1, max_length=256)]
    birth_date: Annotated[str, Field(max_length=10)] | None = None
    """``YYYYMMDD`` or ``YYYY-MM-DD``."""
    one_time_code: Annotated[str, Field(max_length=16)] | None = None


class LinkSessionOut(BaseModel):
    """A bearer token for the link's study, read-only, for ``expires_in`` seconds (RFC 6749 §5.1 names)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "4d5e6f708192a3b4c5d69b2f0e7c1a3dq8Lk…",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "study_instance_uid": _UID_EXAMPLE,
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - RFC 6750 token type
    expires_in: int
    study_instance_uid: str


@router.post(
    "/share-links",
    status_code=201,
    response_model=ShareLinkCreated,
    tags=["share links"],
    summary="Make a link that opens one study",
    responses={**_NOT_FOUND, **_UNPROCESSABLE},
)
async def post_share_link(
    body: ShareLinkCreate,
    request: Request,
    principal: CurrentPrincipal,
    decider: Decider,
    settings: Limits,
    links: Links,
    announcer: Announcer,
) -> ShareLinkCreated:
    now = _now()
    link_request = LinkRequest(
        study_instance_uid=body.study_instance_uid,
        expires_at=body.expires_at,
        max_uses=body.max_uses,
        second_factor=body.second_factor,
    )
    with _unprocessable_when_refused():
        check_link_request(link_request, now=now, settings=settings.links)
    decided = await decider.decide(
        principal, Action.SHARE, body.study_instance_uid, request=request, audit_action="create_link"
    )
    if not decided.allowed or decided.study is None:
        raise not_found()
    birth_date: str | None = None
    if body.second_factor is SecondFactor.BIRTH_DATE:
        lookup: PatientBirthDate | None = getattr(request.app.state, "patient_birth_date", None)
        birth_date = await lookup(body.study_instance_uid) if lookup is not None else None
    with _unprocessable_when_refused():
        issued = issue_link(
            principal,
            link_request,
            decided.study,
            patient_birth_date=birth_date,
            now=now,
            settings=settings.links,
        )
    await links.create(issued.link)
    await _announce(announcer)
    url = f"{LINK_URL_PATH}#{issued.secret}"
    return ShareLinkCreated(
        **ShareLinkOut.of(issued.link, now).model_dump(),
        url=url,
        secret=issued.secret,
        one_time_code=issued.one_time_code,
        qr_code=qr_svg_data_uri(str(request.base_url).rstrip("/") + url),
    )


@router.get("/share-links", response_model=ShareLinkList, tags=["share links"], summary="My share links")
async def get_share_links(principal: CurrentPrincipal, links: Links) -> ShareLinkList:
    found = await links.created_by(principal.subject)
    if principal.patient_keys:
        found += await links.of_patient(principal.patient_keys)
    now = _now()
    ordered = _newest_first(found, lambda link: link.link_id)
    return ShareLinkList(links=[ShareLinkOut.of(link, now) for link in ordered])


@router.delete(
    "/share-links/{link_id}",
    status_code=204,
    response_class=Response,
    tags=["share links"],
    summary="Revoke a share link (its creator, or the patient); its sessions end at once",
    responses=_NOT_FOUND,
)
async def delete_share_link(
    link_id: Annotated[str, Path(max_length=128)],
    principal: CurrentPrincipal,
    links: Links,
    announcer: Announcer,
) -> Response:
    return await _revoke(links, link_id, principal, announcer)


@router.post(
    "/share-links/open",
    response_model=LinkSessionOut,
    tags=["share links"],
    summary="Open a share link (no account needed)",
    responses={403: {"description": "The link cannot be opened — whatever the reason, the same answer."}},
)
async def open_share_link(
    body: ShareLinkOpen, request: Request, decider: Decider, settings: Limits, links: Links
) -> LinkSessionOut:
    now = _now()
    opening = await links.open(
        body.secret,
        birth_date=body.birth_date,
        one_time_code=body.one_time_code,
        now=now,
        settings=settings.links,
    )
    link = opening.link
    if opening.refusal is not None or link is None:
        await decider.refuse_link(
            link_id=link.link_id if link is not None else None,
            study_instance_uid=link.study_instance_uid if link is not None else None,
            patient_key=link.patient_key if link is not None else None,
            reason=str(opening.refusal or LinkRefusal.UNKNOWN),
            request=request,
        )
        raise HTTPException(403, LINK_REFUSED_DETAIL)
    issued = start_session(link, now=now, settings=settings.links)
    decided = await decider.decide(
        issued.session, Action.RETRIEVE, link.study_instance_uid, request=request, audit_action="open_link"
    )
    if not decided.allowed:
        _log.info("share link %s not opened: %s", link.link_id, decided.decision.reason)
        raise HTTPException(403, LINK_REFUSED_DETAIL)
    await links.save_session(issued)
    return LinkSessionOut(
        access_token=issued.token,
        expires_in=max(1, int((issued.session.expires_at - now).total_seconds())),
        study_instance_uid=link.study_instance_uid,
    )


# --- Break the glass ----------------------------------------------------------------------------------------


class BreakGlassCreate(BaseModel):
    """An emergency access to one study without consent: justified, time-boxed, flagged to the patient."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "study_instance_uid": _UID_EXAMPLE,
                    "justification": "Unconscious patient admitted to the emergency room, prior CT needed.",
                    "duration_minutes": 60,
                }
            ]
        },
    )

    study_instance_uid: DicomUid
    justification: Annotated[str, Field(max_length=2 * JUSTIFICATION_MAX_LENGTH)]
    """10 to 2,000 characters once white space is folded."""
    duration_minutes: Annotated[int, Field(ge=1, le=24 * 60)]
    """At most the deployment's break-the-glass time box (4 hours by default)."""


class BreakGlassOut(BaseModel):
    """A break-the-glass grant."""

    grant_id: str
    study_instance_uid: str
    justification: str
    opened_at: datetime
    expires_at: datetime
    in_force: bool

    @classmethod
    def of(cls, recorded: RecordedBreakGlass, now: datetime) -> BreakGlassOut:
        grant = recorded.grant
        return cls(
            grant_id=recorded.grant_id,
            study_instance_uid=grant.study_instance_uid,
            justification=grant.justification,
            opened_at=grant.opened_at,
            expires_at=grant.expires_at,
            in_force=grant.in_force(now),
        )


class BreakGlassList(BaseModel):
    """The caller's break-the-glass grants, latest expiry first."""

    grants: list[BreakGlassOut]


@router.post(
    "/break-glass",
    status_code=201,
    response_model=BreakGlassOut,
    tags=["break the glass"],
    summary="Break the glass on a study",
    responses={**_NOT_FOUND, **_UNPROCESSABLE},
)
async def post_break_glass(
    body: BreakGlassCreate,
    request: Request,
    principal: CurrentPrincipal,
    decider: Decider,
    settings: Limits,
    grants: BreakGlassGrants,
) -> BreakGlassOut:
    now = _now()
    duration = timedelta(minutes=body.duration_minutes)
    with _unprocessable_when_refused():
        justification = normalize_justification(body.justification)
        check_break_glass_duration(duration, settings.policy)
    requested = None
    if principal.rpps is not None:
        requested = request_break_glass(
            principal.rpps,
            body.study_instance_uid,
            justification,
            duration,
            now=now,
            settings=settings.policy,
        )
    decided = await decider.decide(
        principal,
        Action.BREAK_GLASS,
        body.study_instance_uid,
        request=request,
        requested_break_glass=requested,
        justification=justification,
    )
    if not decided.allowed or requested is None:
        raise not_found()
    recorded = await grants.record(secrets.token_hex(16), requested)
    return BreakGlassOut.of(recorded, now)


@router.get(
    "/break-glass",
    response_model=BreakGlassList,
    tags=["break the glass"],
    summary="My break-the-glass grants",
)
async def get_break_glass(principal: CurrentPrincipal, grants: BreakGlassGrants) -> BreakGlassList:
    if principal.rpps is None:
        return BreakGlassList(grants=[])
    now = _now()
    return BreakGlassList(
        grants=[BreakGlassOut.of(recorded, now) for recorded in await grants.held_by(principal.rpps)]
    )
