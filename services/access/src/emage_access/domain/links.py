"""Share links: capability tokens that open one study, read-only, for whoever holds them.

A link is opened with its secret (and its second factor when it has one); opening it starts a short
:class:`LinkSession` whose bearer token a DICOMweb client or OHIF then presents. What a session may do is
decided here, as pure code, like the policy's decisions about authenticated users.

Secrets. A link's secret and a session's token are :class:`CapabilityToken` values: 32 hexadecimal digits
naming the link (or session), then 256 random bits (:func:`secrets.token_urlsafe`). Only a salted SHA-256
digest of the random part is ever stored (:class:`SecretDigest`), and digests are compared in constant time
(:func:`hmac.compare_digest`). A token has no ``.``: the gateway tells it from a JWS access token that way.

Opening. Every way a link can fail to open — unknown, wrong secret, revoked, expired, used up, locked,
throttled, second factor missing or wrong — is one :class:`LinkRefusal` kept for the audit trail, and all of
them get the same public answer (:data:`LINK_REFUSED_DETAIL`): the answer is no oracle on the link's state.
A second factor is guessed at most once per :attr:`LinkSettings.retry_delay`, the pause doubling with each
wrong factor, and :attr:`LinkSettings.max_failures` wrong factors lock the link for good.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import Field, dataclass, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, Protocol, TypeVar

from emage_access.domain.policy import CONSULTATIVE_ACTIONS, Action, Decision, Reason, StudyAttributes
from emage_access.domain.principal import Principal, Role

LINK_ACTIONS: Final = CONSULTATIVE_ACTIONS | {Action.DOWNLOAD}
"""What a link lets its holder do: see the study and take a copy of it; never write, share or audit."""


@dataclass(frozen=True, slots=True)
class LinkSession:
    """An opened share link: which link, which study, until when."""

    session_id: str
    link_id: str
    study_instance_uid: str
    patient_key: str
    expires_at: datetime

    @property
    def subject(self) -> str:
        """The audit subject of whoever holds the session: the link, since a link holder has no account."""
        return f"link:{self.link_id}"


def decide_link(
    session: LinkSession, action: Action, study_instance_uid: str | None, now: datetime
) -> Decision:
    """Whether the holder of ``session`` may do ``action`` on ``study_instance_uid`` at ``now``.

    ``study_instance_uid`` is None for a search: allowed, the search being scoped to the link's study.
    """
    if now >= session.expires_at:
        return Decision.deny(Reason.LINK_EXPIRED)
    if action not in LINK_ACTIONS:
        return Decision.deny(Reason.ACTION_NOT_PERMITTED_FOR_ROLE)
    if study_instance_uid is None:
        if action is Action.SEARCH:
            return Decision.allow("link", Reason.SHARE_LINK)
        return Decision.deny(Reason.STUDY_REQUIRED)
    if study_instance_uid != session.study_instance_uid:
        return Decision.deny(Reason.NOT_LINKED_STUDY)
    return Decision.allow("link", Reason.SHARE_LINK)


# --- Requests the sharing rules refuse ---------------------------------------------------------------------


class GrantRequestError(ValueError):
    """A request for a share, a share link or a break-the-glass grant that the rules refuse.

    ``reason`` is a machine code; ``detail`` tells the client what to change (it names no patient data).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class NotRevocableError(Exception):
    """The caller neither created the share (or link) nor is the patient whose record it shares."""


def may_revoke(created_by: str, patient_key: str, principal: Principal) -> bool:
    """Whether ``principal`` may revoke what ``created_by`` shared of ``patient_key``'s record.

    The creator may, and so may the patient, whoever shared: it is their record.
    """
    return principal.subject == created_by or patient_key in principal.patient_keys


class Revocable(Protocol):
    """What a share and a share link have alike: one patient's record, a lifetime, revocation, revisions.

    Both are frozen dataclasses (:class:`ShareLink`, :class:`~emage_access.domain.sharing.ShareRecord`).
    """

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def patient_key(self) -> str: ...
    @property
    def shared_by_facility(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def revoked_by(self) -> str | None: ...
    @property
    def revision(self) -> int: ...


_Revocable = TypeVar("_Revocable", bound=Revocable)


def revoke(
    shared: _Revocable, principal: Principal, now: datetime, *, created_by: str, identifier: str
) -> _Revocable:
    """``shared`` (made by ``created_by``) revoked by ``principal``; unchanged if already revoked.

    Raises :class:`NotRevocableError` (with ``identifier``) when :func:`may_revoke` says no. Revoking twice
    is harmless; a revocation is a change, so it takes the next revision.
    """
    if not may_revoke(created_by, shared.patient_key, principal):
        raise NotRevocableError(identifier)
    if shared.revoked_at is not None:
        return shared
    return replace(
        shared, revoked_at=at_store_precision(now), revoked_by=principal.subject, revision=shared.revision + 1
    )


def at_store_precision(instant: datetime) -> datetime:
    """``instant`` truncated to the millisecond: what MongoDB and RFC 3339 clients keep of it."""
    return instant.replace(microsecond=instant.microsecond // 1000 * 1000)


def check_expiry(expires_at: datetime, *, now: datetime, max_lifetime: timedelta, what: str) -> None:
    """Refuse an expiry that is missing its offset, not in the future, or beyond ``now + max_lifetime``."""
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise GrantRequestError("expiry_naive", "The expiry must carry a UTC offset.")
    if expires_at <= now:
        raise GrantRequestError("expiry_past", f"A {what} expires in the future.")
    if expires_at - now > max_lifetime:
        raise GrantRequestError(
            "expiry_too_far", f"A {what} lasts at most {_describe(max_lifetime)}; choose an earlier expiry."
        )


def _describe(duration: timedelta) -> str:
    if duration % timedelta(days=1) == timedelta(0):
        return f"{duration.days} days"
    if duration % timedelta(hours=1) == timedelta(0):
        return f"{duration // timedelta(hours=1)} hours"
    return f"{duration // timedelta(minutes=1)} minutes"


# --- Secrets ------------------------------------------------------------------------------------------------

TOKEN_ID_LENGTH: Final = 32
"""Hexadecimal digits of the identifier that starts every capability token."""
MAX_TOKEN_LENGTH: Final = 256
_TOKEN_ID: Final = re.compile(r"[0-9a-f]{32}")
_TOKEN_SECRET: Final = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_BYTES: Final = 32
_SALT_BYTES: Final = 16


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class SecretDigest:
    """A salted SHA-256 digest: what is stored in place of a secret, a second factor or a session token."""

    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, secret: str) -> SecretDigest:
        """The digest of ``secret`` with a fresh random salt."""
        salt = secrets.token_bytes(_SALT_BYTES)
        return cls(salt, _digest(salt, secret))

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is the one digested, compared in constant time."""
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)


@dataclass(frozen=True, slots=True)
class CapabilityToken:
    """An identifier (which link or session) and a random secret (proof of holding it)."""

    identifier: str
    secret: str

    @classmethod
    def mint(cls) -> CapabilityToken:
        """A new token: a random identifier and 256 random bits of secret."""
        return cls(secrets.token_hex(TOKEN_ID_LENGTH // 2), secrets.token_urlsafe(_SECRET_BYTES))

    @classmethod
    def parse(cls, value: str) -> CapabilityToken | None:
        """The token ``value`` spells, or None when it cannot be one."""
        if not TOKEN_ID_LENGTH < len(value) <= MAX_TOKEN_LENGTH:
            return None
        identifier, secret = value[:TOKEN_ID_LENGTH], value[TOKEN_ID_LENGTH:]
        if _TOKEN_ID.fullmatch(identifier) is None or _TOKEN_SECRET.fullmatch(secret) is None:
            return None
        return cls(identifier, secret)

    @property
    def value(self) -> str:
        """The token as its holder presents it."""
        return self.identifier + self.secret


# --- Share links --------------------------------------------------------------------------------------------


class SecondFactor(StrEnum):
    """What the holder of a link must know besides its secret."""

    NONE = "none"
    BIRTH_DATE = "birth_date"
    """The patient's birth date (DICOM Patient's Birth Date (0010,0030), ``YYYYMMDD``)."""
    ONE_TIME_CODE = "one_time_code"
    """A numeric code generated with the link, shown once to its creator, who passes it on separately."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The deployment's limits on share links."""

    max_lifetime: timedelta = timedelta(days=30)
    session_lifetime: timedelta = timedelta(hours=1)
    """How long an opened link's session lasts (never beyond the link's own expiry)."""
    max_failures: int = 5
    """Wrong second factors after which the link is locked."""
    retry_delay: timedelta = timedelta(seconds=1)
    """The least pause between two second-factor attempts; it doubles with each wrong factor."""
    max_retry_delay: timedelta = timedelta(minutes=15)
    one_time_code_digits: int = 8

    def __post_init__(self) -> None:
        if self.max_lifetime <= timedelta(0) or self.session_lifetime <= timedelta(0):
            raise ValueError("link and session lifetimes are positive")
        if self.max_failures < 1:
            raise ValueError("a link is locked after at least one wrong second factor")
        if self.retry_delay <= timedelta(0) or self.max_retry_delay < self.retry_delay:
            raise ValueError("the retry delay is positive and at most its maximum")
        if not 6 <= self.one_time_code_digits <= 12:
            raise ValueError("a one-time code has 6 to 12 digits")

    def delay_after(self, failures: int) -> timedelta:
        """The pause imposed after the ``failures``-th wrong second factor."""
        return min(self.retry_delay * (1 << min(failures, 32)), self.max_retry_delay)


class LinkRefusal(StrEnum):
    """Why a link did not open: for the audit trail only, never for the client."""

    UNKNOWN = "link_unknown"
    """No link has that identifier, or the value presented cannot be a link's secret."""
    WRONG_SECRET = "link_secret_mismatch"  # noqa: S105 - a reason code, not a secret
    REVOKED = "link_revoked"
    EXPIRED = "link_expired"
    LOCKED = "link_locked"
    EXHAUSTED = "link_exhausted"
    THROTTLED = "link_throttled"
    FACTOR_MISSING = "second_factor_missing"
    FACTOR_WRONG = "second_factor_wrong"


LINK_REFUSED_DETAIL: Final = "The link cannot be opened."
"""The one public answer to every :class:`LinkRefusal`."""

LinkStatus = Literal["active", "revoked", "expired", "locked", "exhausted"]

_BIRTH_DATE: Final = re.compile(r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})")


def normalize_birth_date(value: str) -> str | None:
    """``YYYYMMDD`` for a calendar date given as ``YYYYMMDD`` or ``YYYY-MM-DD``, else None."""
    match = _BIRTH_DATE.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    try:
        date(year, month, day)
    except ValueError:
        return None
    return f"{year:04d}{month:02d}{day:02d}"


@dataclass(frozen=True, slots=True)
class ShareLink:
    """A share link as stored: who made it, for which study, its digests, its limits and its counters."""

    link_id: str
    study_instance_uid: str
    patient_key: str
    created_by: str
    """OIDC subject of the creator."""
    created_at: datetime
    expires_at: datetime
    secret: SecretDigest
    second_factor: SecondFactor = SecondFactor.NONE
    factor: SecretDigest | None = None
    """Digest of the normalised second factor, exactly when there is one."""
    shared_by_facility: str | None = None
    """None when the patient made the link, else the creating professional's facility (FINESS)."""
    max_uses: int | None = None
    uses: int = 0
    """Successful opens."""
    failures: int = 0
    """Wrong second factors."""
    next_attempt_at: datetime | None = None
    """No second-factor attempt is considered before this instant."""
    locked_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revision: int = 1
    """Increases with each change announced on ``share.changed`` (creation, revocation)."""

    def __post_init__(self) -> None:
        if (self.second_factor is SecondFactor.NONE) != (self.factor is None):
            raise ValueError("a link has a second-factor digest exactly when it has a second factor")
        if self.max_uses is not None and self.max_uses < 1:
            raise ValueError("a link's use limit is at least one")

    def status(self, now: datetime) -> LinkStatus:
        """What the link is at ``now``; the first that applies of revoked, expired, locked, exhausted."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.locked_at is not None:
            return "locked"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "exhausted"
        return "active"

    def refusal(self, now: datetime) -> LinkRefusal | None:
        """Why no attempt may be made on the link at ``now``, or None when one may."""
        status = self.status(now)
        if status != "active":
            return _STATUS_REFUSALS[status]
        if self.next_attempt_at is not None and now < self.next_attempt_at:
            return LinkRefusal.THROTTLED
        return None

    def secret_matches(self, token: CapabilityToken) -> bool:
        """Whether ``token`` is this link's secret (constant-time comparison of digests)."""
        return token.identifier == self.link_id and self.secret.matches(token.secret)

    def presented_factor(self, *, birth_date: str | None, one_time_code: str | None) -> str | None:
        """The second factor the opener presented for this link's kind, normalised; None when absent."""
        if self.second_factor is SecondFactor.BIRTH_DATE and birth_date:
            return normalize_birth_date(birth_date) or birth_date
        if self.second_factor is SecondFactor.ONE_TIME_CODE and one_time_code:
            return one_time_code.replace(" ", "")
        return None

    def factor_matches(self, presented: str) -> bool:
        """Whether ``presented`` is the link's second factor (constant-time comparison of digests)."""
        return self.factor is not None and self.factor.matches(presented)

    def attempt_slot_until(self, now: datetime, settings: LinkSettings) -> datetime:
        """Until when a second-factor attempt made at ``now`` holds off the next one."""
        return at_store_precision(now + settings.retry_delay)

    def after_wrong_factor(self, now: datetime, settings: LinkSettings) -> ShareLink:
        """The link once a wrong second factor is counted: a longer pause, locked at the last failure."""
        failures = self.failures + 1
        pause_until = at_store_precision(now + settings.delay_after(failures))
        if self.next_attempt_at is not None and self.next_attempt_at > pause_until:
            pause_until = self.next_attempt_at
        locked_at = self.locked_at
        if locked_at is None and failures >= settings.max_failures:
            locked_at = at_store_precision(now)
        return replace(self, failures=failures, next_attempt_at=pause_until, locked_at=locked_at)


_STATUS_REFUSALS: Final[dict[LinkStatus, LinkRefusal]] = {
    "revoked": LinkRefusal.REVOKED,
    "expired": LinkRefusal.EXPIRED,
    "locked": LinkRefusal.LOCKED,
    "exhausted": LinkRefusal.EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What a creator asks for: a link to one study, until an expiry, maybe limited and with a factor."""

    study_instance_uid: str
    expires_at: datetime
    max_uses: int | None = None
    second_factor: SecondFactor = SecondFactor.NONE


@dataclass(frozen=True, slots=True)
class IssuedLink:
    """A new link and what its creator alone ever sees: the secret and the one-time code."""

    link: ShareLink
    secret: str
    one_time_code: str | None = None


def check_link_request(request: LinkRequest, *, now: datetime, settings: LinkSettings) -> None:
    """Refuse a request whose expiry or use limit the rules do not allow (:class:`GrantRequestError`)."""
    check_expiry(request.expires_at, now=now, max_lifetime=settings.max_lifetime, what="share link")
    if request.max_uses is not None and request.max_uses < 1:
        raise GrantRequestError("max_uses_invalid", "A share link's use limit is at least 1.")


def issue_link(
    principal: Principal,
    request: LinkRequest,
    study: StudyAttributes,
    *,
    patient_birth_date: str | None,
    now: datetime,
    settings: LinkSettings,
) -> IssuedLink:
    """A new link to ``study``, which ``principal`` was allowed to share.

    ``patient_birth_date`` is the study's Patient's Birth Date as the catalog holds it, needed for a
    birth-date second factor (the creator does not choose the answer: the record does).
    """
    check_link_request(request, now=now, settings=settings)
    if request.study_instance_uid != study.study_instance_uid:
        raise ValueError("the study decided on is not the one the link is requested for")
    token = CapabilityToken.mint()
    one_time_code: str | None = None
    factor: SecretDigest | None = None
    if request.second_factor is SecondFactor.BIRTH_DATE:
        expected = normalize_birth_date(patient_birth_date) if patient_birth_date else None
        if expected is None:
            raise GrantRequestError(
                "birth_date_unknown",
                "The study's patient birth date is not known; choose another second factor.",
            )
        factor = SecretDigest.of(expected)
    elif request.second_factor is SecondFactor.ONE_TIME_CODE:
        digits = settings.one_time_code_digits
        one_time_code = f"{secrets.randbelow(10**digits):0{digits}d}"
        factor = SecretDigest.of(one_time_code)
    link = ShareLink(
        link_id=token.identifier,
        study_instance_uid=study.study_instance_uid,
        patient_key=study.patient_key,
        created_by=principal.subject,
        created_at=at_store_precision(now),
        expires_at=at_store_precision(request.expires_at),
        secret=SecretDigest.of(token.secret),
        second_factor=request.second_factor,
        factor=factor,
        shared_by_facility=None if principal.role is Role.PATIENT else principal.facility_finess,
        max_uses=request.max_uses,
    )
    return IssuedLink(link=link, secret=token.value, one_time_code=one_time_code)


def revoke_link(link: ShareLink, principal: Principal, now: datetime) -> ShareLink:
    """The link revoked by ``principal``; unchanged if already revoked (revoking twice is harmless)."""
    return revoke(link, principal, now, created_by=link.created_by, identifier=link.link_id)


@dataclass(frozen=True, slots=True)
class LinkOpening:
    """The outcome of one attempt to open a link: the link as it stands after it, and why it failed."""

    link: ShareLink | None
    """None when no link has the presented identifier."""
    refusal: LinkRefusal | None = None

    def __post_init__(self) -> None:
        if self.refusal is None and self.link is None:
            raise ValueError("an opened link is known")

    @property
    def opened(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A session on an opened link, its bearer token (given once to the opener) and the token's digest."""

    session: LinkSession
    token: str
    digest: SecretDigest


def start_session(link: ShareLink, *, now: datetime, settings: LinkSettings) -> IssuedSession:
    """A new session on ``link``, for :attr:`LinkSettings.session_lifetime` and never beyond the link."""
    token = CapabilityToken.mint()
    session = LinkSession(
        session_id=token.identifier,
        link_id=link.link_id,
        study_instance_uid=link.study_instance_uid,
        patient_key=link.patient_key,
        expires_at=min(at_store_precision(now + settings.session_lifetime), link.expires_at),
    )
    return IssuedSession(session=session, token=token.value, digest=SecretDigest.of(token.secret))
