"""Shares to professionals and break-the-glass requests: the rules for making and revoking them.

The policy (:func:`~emage_access.domain.policy.decide` with :attr:`~emage_access.domain.policy.Action.SHARE`
or :attr:`~emage_access.domain.policy.Action.BREAK_GLASS`) says whether the caller may share a study or break
the glass on it at all; the rules here say what a well-formed request is and what is recorded:

* a share names a professional by RPPS (never the sharer), lasts until an expiry that is in the future and at
  most :attr:`SharingSettings.share_max_lifetime` away; a patient shares one study or all their studies, a
  professional one study of their own facility, which the share records (``shared_by_facility``);
* a share (or share link) is revoked by its creator or by the patient whose record it shares, and revoking
  twice changes nothing;
* a break-the-glass grant carries a justification of 10 to 2,000 characters and asks for no longer than
  :attr:`~emage_access.domain.policy.PolicySettings.break_glass_max_duration`.

Every change to a share or a share link is announced as a :class:`~emage_common.events.ShareChanged` whose
``revision`` increases with each change (:func:`share_changed`, :func:`link_changed`).

Refusals are :class:`~emage_access.domain.links.GrantRequestError` (the gateway's 422) and
:class:`~emage_access.domain.links.NotRevocableError` (its 404, like an unknown share).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from emage_access.domain.links import (
    GrantRequestError,
    LinkSettings,
    Revocable,
    ShareLink,
    at_store_precision,
    check_expiry,
    revoke,
)
from emage_access.domain.policy import DEFAULT_SETTINGS, BreakGlass, PolicySettings, Share, StudyAttributes
from emage_access.domain.principal import Principal, Role
from emage_common.events import LinkRecipient, ProfessionalRecipient, ShareChanged


@dataclass(frozen=True, slots=True)
class SharingSettings:
    """The deployment's limits on shares, share links and break-the-glass requests."""

    share_max_lifetime: timedelta = timedelta(days=365)
    links: LinkSettings = field(default_factory=LinkSettings)
    policy: PolicySettings = DEFAULT_SETTINGS
    """The policy settings the decider uses; break-the-glass requests are checked against the same limit."""

    def __post_init__(self) -> None:
        if self.share_max_lifetime <= timedelta(0):
            raise ValueError("a share's maximum lifetime is positive")


# --- Shares to professionals --------------------------------------------------------------------------------

_RPPS: Final = re.compile(r"[0-9]{11}")

ShareStatus = Literal["active", "revoked", "expired"]


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """What a sharer asks for: a professional, an expiry, one study (None: all of the patient's studies)."""

    grantee_rpps: str
    expires_at: datetime
    study_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """A share as stored: the policy's :class:`~emage_access.domain.policy.Share` and who made it when."""

    share_id: str
    patient_key: str
    grantee_rpps: str
    shared_by: str
    """OIDC subject of the sharer."""
    created_at: datetime
    expires_at: datetime
    study_instance_uid: str | None = None
    shared_by_facility: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    other_patient_keys: tuple[str, ...] = ()
    """Further keys of the patient's record a patient's all-studies share covers (see ``Share``)."""
    revision: int = 1
    """Increases with each change announced on ``share.changed`` (creation, revocation)."""

    @property
    def share(self) -> Share:
        """What the policy decides with."""
        return Share(
            share_id=self.share_id,
            patient_key=self.patient_key,
            grantee_rpps=self.grantee_rpps,
            expires_at=self.expires_at,
            study_instance_uid=self.study_instance_uid,
            revoked=self.revoked_at is not None,
            shared_by_facility=self.shared_by_facility,
            other_patient_keys=frozenset(self.other_patient_keys),
        )

    def status(self, now: datetime) -> ShareStatus:
        """Revoked, else expired at ``now``, else active."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


def check_share_request(
    principal: Principal, request: ShareRequest, *, now: datetime, settings: SharingSettings
) -> None:
    """Refuse a request the sharing rules do not allow, before any decision is made about its study.

    Nothing here depends on the study, so the refusal reveals nothing about it.
    """
    if _RPPS.fullmatch(request.grantee_rpps) is None:
        raise GrantRequestError("grantee_rpps_invalid", "The grantee's RPPS number is 11 digits.")
    if principal.rpps is not None and principal.rpps == request.grantee_rpps:
        raise GrantRequestError("share_to_self", "A share names another professional than its sharer.")
    if request.study_instance_uid is None and principal.role is not Role.PATIENT:
        raise GrantRequestError(
            "study_required", "A professional shares one study: give its Study Instance UID."
        )
    check_expiry(request.expires_at, now=now, max_lifetime=settings.share_max_lifetime, what="share")


def create_share(
    principal: Principal,
    request: ShareRequest,
    study: StudyAttributes | None,
    *,
    now: datetime,
    settings: SharingSettings,
) -> ShareRecord:
    """The share ``principal`` asked for, once the policy allowed them to share ``study``.

    ``study`` is the decided study's attributes, None for a patient's share of all their studies (recorded
    under the patient's own key).
    """
    check_share_request(principal, request, now=now, settings=settings)
    other_keys: tuple[str, ...] = ()
    if request.study_instance_uid is None:
        patient_key = principal.patient_key
        if patient_key is None:
            raise ValueError("only a patient shares all their studies")
        other_keys = tuple(sorted(principal.patient_keys - {patient_key}))
    else:
        if study is None or study.study_instance_uid != request.study_instance_uid:
            raise ValueError("the study decided on is not the one the share is requested for")
        patient_key = study.patient_key
    return ShareRecord(
        share_id=secrets.token_hex(16),
        patient_key=patient_key,
        grantee_rpps=request.grantee_rpps,
        shared_by=principal.subject,
        created_at=at_store_precision(now),
        expires_at=at_store_precision(request.expires_at),
        study_instance_uid=request.study_instance_uid,
        shared_by_facility=None if principal.role is Role.PATIENT else principal.facility_finess,
        other_patient_keys=other_keys,
    )


def revoke_share(record: ShareRecord, principal: Principal, now: datetime) -> ShareRecord:
    """The share revoked by ``principal``; unchanged if already revoked (revoking twice is harmless)."""
    return revoke(record, principal, now, created_by=record.shared_by, identifier=record.share_id)


# --- share.changed ------------------------------------------------------------------------------------------


def _change_status(expires_at: datetime, revoked_at: datetime | None, changed_at: datetime) -> ShareStatus:
    if revoked_at is not None:
        return "revoked"
    return "expired" if changed_at >= expires_at else "active"


def share_changed(record: ShareRecord) -> ShareChanged:
    """The ``share.changed`` event of the share's latest change (its creation or revocation)."""
    uid = record.study_instance_uid
    return _latest_change(
        record,
        share_id=record.share_id,
        shared_by=record.shared_by,
        study_instance_uids=() if uid is None else (uid,),
        recipient=ProfessionalRecipient(rpps=record.grantee_rpps),
    )


def link_changed(link: ShareLink) -> ShareChanged:
    """The ``share.changed`` event of the link's latest change; it carries the link's id, never its secret."""
    return _latest_change(
        link,
        share_id=link.link_id,
        shared_by=link.created_by,
        study_instance_uids=(link.study_instance_uid,),
        recipient=LinkRecipient(link_id=link.link_id),
    )


def _latest_change(
    shared: Revocable,
    *,
    share_id: str,
    shared_by: str,
    study_instance_uids: tuple[str, ...],
    recipient: ProfessionalRecipient | LinkRecipient,
) -> ShareChanged:
    """The event of a share's or link's creation by ``shared_by``, or of its revocation once revoked.

    No study listed: all the patient's studies.
    """
    changed_at = shared.revoked_at or shared.created_at
    return ShareChanged(
        share_id=share_id,
        revision=shared.revision,
        patient_key=shared.patient_key,
        study_instance_uids=study_instance_uids,
        all_studies=not study_instance_uids,
        shared_by=shared_by,
        shared_by_facility=shared.shared_by_facility,
        changed_by=shared.revoked_by if shared.revoked_at is not None else shared_by,
        recipient=recipient,
        status=_change_status(shared.expires_at, shared.revoked_at, changed_at),
        expires_at=shared.expires_at,
        changed_at=changed_at,
    )


# --- Break the glass ----------------------------------------------------------------------------------------

JUSTIFICATION_MIN_LENGTH: Final = 10
JUSTIFICATION_MAX_LENGTH: Final = 2000
# What an audit event's text may not hold (emage_common.events.Text): controls, surrogates, noncharacters.
_FORBIDDEN_TEXT: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class RecordedBreakGlass:
    """A break-the-glass grant as stored, with the identifier the holder sees it by."""

    grant_id: str
    grant: BreakGlass


def normalize_justification(justification: str) -> str:
    """The justification on one line, each run of white space made one space; refused when unfit.

    Line breaks are folded rather than refused: the text goes into the audit trail, whose strings hold no
    control characters, and a justification typed on several lines is still a justification.
    """
    text = " ".join(justification.split())
    if _FORBIDDEN_TEXT.search(text):
        raise GrantRequestError("justification_invalid", "The justification contains control characters.")
    if len(text) < JUSTIFICATION_MIN_LENGTH:
        raise GrantRequestError(
            "justification_too_short",
            f"Breaking the glass needs a justification of at least {JUSTIFICATION_MIN_LENGTH} characters.",
        )
    if len(text) > JUSTIFICATION_MAX_LENGTH:
        raise GrantRequestError(
            "justification_too_long",
            f"A justification has at most {JUSTIFICATION_MAX_LENGTH} characters.",
        )
    return text


def check_break_glass_duration(duration: timedelta, settings: PolicySettings) -> None:
    """Refuse a time box that is not positive or longer than the policy's maximum."""
    if duration <= timedelta(0):
        raise GrantRequestError("duration_invalid", "A break-the-glass grant lasts a positive duration.")
    limit = settings.break_glass_max_duration
    if duration > limit:
        raise GrantRequestError(
            "duration_too_long",
            f"A break-the-glass grant lasts at most {limit // timedelta(minutes=1)} minutes.",
        )


def request_break_glass(
    holder_rpps: str,
    study_instance_uid: str,
    justification: str,
    duration: timedelta,
    *,
    now: datetime,
    settings: PolicySettings,
) -> BreakGlass:
    """The grant a professional asks for, opening at ``now``, once the request is well formed."""
    text = normalize_justification(justification)
    check_break_glass_duration(duration, settings)
    opened_at = at_store_precision(now)
    return BreakGlass(
        holder_rpps=holder_rpps,
        study_instance_uid=study_instance_uid,
        justification=text,
        opened_at=opened_at,
        expires_at=opened_at + duration,
    )
