"""The policy decision point: may this principal do this action on this study, and on what basis.

Pure domain code: :func:`decide` and :func:`search_scope` read values (the principal, the study's attributes,
the consent view, shares, break-the-glass grants, the clock) and return values; they never do I/O. The role
table is ARCHITECTURE.md "Who may do what"; everything it does not grant is denied.

Bases of an allowed decision, in the order they are tried (the first that permits the action is recorded):

``own_record``
    a patient, on a study of their own record (patient key equality).
``care``
    a professional inside the owning facility: a radiologist or nurse on any study of their facility, a
    referring physician on a study they ordered there, an imaging technician on a study they acquired there.
    No explicit consent is needed, but an opposition of the patient removes it, except for the owning
    facility's radiology (radiologists and imaging technicians) when :class:`PolicySettings` says so.
``consent``
    an active consent of the patient naming the professional (RPPS) or their facility (FINESS).
``share``
    a share in force naming the professional (RPPS). A share made by the patient is their consent; one made
    by a professional covers only their own facility's studies and, for a grantee outside that facility,
    needs the patient's consent to that share (a consent whose grantee is the share).
``break_glass``
    a justified, time-boxed emergency grant for one study, flagged in audit and shown to the patient.
``audit_role``
    the DPO, on the audit trail only.
``link``
    reserved for share links (capability tokens), decided where the link is verified, not here.

Forbidden and unknown look alike: the gateway answers every denied decision about a study with 404 Not
Found, exactly as for a study the catalog does not hold, so that Study Instance UIDs cannot be probed. The
:class:`Decision` keeps the precise machine ``reason`` for the ``access.decided`` audit event only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from emage_access.domain.consent_view import ConsentView, PatientConsents
from emage_access.domain.principal import HEALTH_PROFESSIONAL_ROLES, Principal, Role
from emage_common.events import ProfessionalGrantee


class Action(StrEnum):
    """What a request does to patient data or to the audit trail."""

    SEARCH = "search"
    """QIDO-RS (PS3.18 §10.6): find studies, series or instances."""
    READ_METADATA = "read_metadata"
    """WADO-RS metadata (PS3.18 §10.4.1.1.2)."""
    RETRIEVE = "retrieve"
    """WADO-RS instances and frames, to view them (PS3.18 §10.4)."""
    RENDERED = "rendered"
    """WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4)."""
    DOWNLOAD = "download"
    """Export of the whole study (archive download)."""
    STORE = "store"
    """STOW-RS (PS3.18 §10.5): upload, transfer, and a radiologist's reports and annotations (SR, PR)."""
    CORRECT_METADATA = "correct_metadata"
    """An imaging technician's correction of a study's metadata before it is released."""
    SHARE = "share"
    """Create a share of a study (or, for a patient, of all their studies) with a professional."""
    BREAK_GLASS = "break_glass"
    """Open an emergency grant on a study without consent."""
    READ_AUDIT = "read_audit"
    """Read audit records: the DPO any, a patient those of their own record ("who saw my exams")."""
    VERIFY_AUDIT = "verify_audit"
    """Verify the hash chain of the audit log."""


CONSULTATIVE_ACTIONS: Final = frozenset(
    {Action.SEARCH, Action.READ_METADATA, Action.RETRIEVE, Action.RENDERED}
)
"""Seeing a study without taking it away: what a nurse and a break-the-glass grant may do."""

IMAGE_ACTIONS: Final = CONSULTATIVE_ACTIONS | {
    Action.DOWNLOAD,
    Action.STORE,
    Action.CORRECT_METADATA,
    Action.SHARE,
    Action.BREAK_GLASS,
}
"""Every action that reaches a study's images or metadata."""

AUDIT_ACTIONS: Final = frozenset({Action.READ_AUDIT, Action.VERIFY_AUDIT})

Basis = Literal["care", "consent", "share", "link", "break_glass", "own_record", "audit_role"]

_ROLE_ACTIONS: Final[dict[Role, frozenset[Action]]] = {
    Role.RADIOLOGIST: CONSULTATIVE_ACTIONS | {Action.DOWNLOAD, Action.STORE, Action.SHARE},
    Role.REFERRING_PHYSICIAN: CONSULTATIVE_ACTIONS | {Action.DOWNLOAD},
    Role.NURSE: CONSULTATIVE_ACTIONS,
    Role.IMAGING_TECHNICIAN: CONSULTATIVE_ACTIONS | {Action.STORE, Action.CORRECT_METADATA},
    Role.PATIENT: CONSULTATIVE_ACTIONS | {Action.DOWNLOAD, Action.SHARE, Action.READ_AUDIT},
    Role.DPO: AUDIT_ACTIONS,
}
"""What each role may ever do (ARCHITECTURE.md "may" column); break-the-glass comes from the settings."""

_GRANTED_ACTIONS: Final = CONSULTATIVE_ACTIONS | {Action.DOWNLOAD}
"""What a consent or a share lets a professional do: see and export, never re-share or write."""

_BREAK_GLASS_ACTIONS: Final = CONSULTATIVE_ACTIONS | {Action.BREAK_GLASS}
"""What a break-the-glass grant lets its holder do: least privilege for an access nobody consented to."""

_OWN_RECORD_ACTIONS: Final = CONSULTATIVE_ACTIONS | {Action.DOWNLOAD, Action.SHARE, Action.READ_AUDIT}

_RADIOLOGY_ROLES: Final = frozenset({Role.RADIOLOGIST, Role.IMAGING_TECHNICIAN})
"""The owning facility's radiology: who an opposition may spare."""

_GRANT_ROLES: Final = frozenset({Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN, Role.NURSE})
"""Roles a consent or a share can reach; an imaging technician only ever sees what they acquired."""


class StudyStatus(StrEnum):
    """Whether the owning facility has released the study; only technicians' writes depend on it."""

    UNRELEASED = "unreleased"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class StudyAttributes:
    """What the policy needs to know about a study, as the catalog holds it."""

    study_instance_uid: str
    facility_finess: str
    """The owning facility: the one that published the study."""
    patient_key: str
    """:attr:`emage_common.events.PatientIdentity.patient_key` of the study's patient."""
    referring_physician_rpps: str | None = None
    """RPPS of the physician who ordered the exam."""
    performing_technician_rpps: frozenset[str] = frozenset()
    """RPPS of the imaging technicians who acquired the study's series."""
    status: StudyStatus = StudyStatus.RELEASED
    """Unknown counts as released: the restrictive choice for corrections."""


@dataclass(frozen=True, slots=True)
class Share:
    """A grant of one study, or all studies of a patient, to one professional by RPPS, until an expiry."""

    share_id: str
    patient_key: str
    grantee_rpps: str
    expires_at: datetime
    study_instance_uid: str | None = None
    """The one study shared, or None for every study of the patient."""
    revoked: bool = False
    shared_by_facility: str | None = None
    """None when the patient shared; else the FINESS of the sharing professional's facility, whose studies
    alone the share can cover (a professional cannot share what their facility does not own)."""
    other_patient_keys: frozenset[str] = frozenset()
    """Further keys of the same patient's record: a patient sharing all their studies shares those their
    facilities catalogued under their local identity as well as under their INS."""

    @property
    def patient_keys(self) -> frozenset[str]:
        """Every key of the patient record the share is about."""
        return self.other_patient_keys | {self.patient_key}

    def covers(self, study: StudyAttributes) -> bool:
        """Whether the share is about ``study``."""
        return (
            study.patient_key in self.patient_keys
            and (self.study_instance_uid is None or self.study_instance_uid == study.study_instance_uid)
            and (self.shared_by_facility is None or self.shared_by_facility == study.facility_finess)
        )

    def in_force(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        return not self.revoked and now < self.expires_at


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """An emergency grant: one professional, one study, a justification, a time box."""

    holder_rpps: str
    study_instance_uid: str
    justification: str
    opened_at: datetime
    expires_at: datetime

    @property
    def justified(self) -> bool:
        """Whether a justification was given (blank text is none)."""
        return bool(self.justification.strip())

    def within_time_box(self, max_duration: timedelta) -> bool:
        """Whether the grant asks for no longer than ``max_duration``."""
        return self.opened_at < self.expires_at and self.expires_at - self.opened_at <= max_duration

    def in_force(self, now: datetime) -> bool:
        """Opened and not expired at ``now``."""
        return self.opened_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The choices the product leaves to each deployment."""

    opposition_spares_owning_radiology: bool = True
    """An opposition leaves the owning facility's radiologists and imaging technicians their care access."""
    opposition_spares_break_glass: bool = True
    """An opposition does not stop break-the-glass (a life may be at stake; the access is flagged)."""
    break_glass_roles: frozenset[Role] = frozenset({Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN})
    """Who may break the glass: the physicians, who carry the medical decision in an emergency."""
    break_glass_max_duration: timedelta = timedelta(hours=4)
    """The longest time box a break-the-glass grant may ask for; it is reopened, and re-justified, after."""

    def __post_init__(self) -> None:
        if not self.break_glass_roles <= HEALTH_PROFESSIONAL_ROLES:
            raise ValueError("only health professionals may break the glass")
        if self.break_glass_max_duration <= timedelta(0):
            raise ValueError("a break-the-glass time box is positive")


class Reason(StrEnum):
    """Machine codes of decisions, for the ``access.decided`` audit event."""

    OWN_RECORD = "own_record"
    CARE_OWNING_FACILITY = "care_owning_facility"
    CARE_ORDERING_PHYSICIAN = "care_ordering_physician"
    CARE_PERFORMING_TECHNICIAN = "care_performing_technician"
    NEW_STUDY_AT_OWN_FACILITY = "new_study_at_own_facility"
    CONSENT_TO_PROFESSIONAL = "consent_to_professional"
    CONSENT_TO_FACILITY = "consent_to_facility"
    SHARE_BY_PATIENT = "share_by_patient"
    SHARE_WITHIN_FACILITY = "share_within_facility"
    SHARE_CONSENTED = "share_consented"
    BREAK_GLASS = "break_glass"
    AUDIT_ROLE = "audit_role"
    QUERY_SCOPED = "query_scoped"
    SHARE_LINK = "share_link"

    ACTION_NOT_PERMITTED_FOR_ROLE = "action_not_permitted_for_role"
    ACTION_NOT_PERMITTED_ON_BASIS = "action_not_permitted_on_basis"
    STUDY_REQUIRED = "study_required"
    NOT_OWN_RECORD = "not_own_record"
    NO_RELATIONSHIP = "no_relationship"
    PATIENT_OPPOSITION = "patient_opposition"
    STUDY_RELEASED = "study_released"
    CONSENT_REVOKED = "consent_revoked"
    CONSENT_EXPIRED = "consent_expired"
    CONSENT_NOT_YET_VALID = "consent_not_yet_valid"
    SHARE_REVOKED = "share_revoked"
    SHARE_EXPIRED = "share_expired"
    SHARE_WITHOUT_CONSENT = "share_without_consent"
    BREAK_GLASS_NOT_REQUESTED = "break_glass_not_requested"
    BREAK_GLASS_UNJUSTIFIED = "break_glass_unjustified"
    BREAK_GLASS_TIME_BOX_EXCEEDED = "break_glass_time_box_exceeded"
    BREAK_GLASS_EXPIRED = "break_glass_expired"
    BREAK_GLASS_NOT_YET_OPEN = "break_glass_not_yet_open"
    LINK_EXPIRED = "link_expired"
    NOT_LINKED_STUDY = "not_linked_study"
    STUDY_UNKNOWN = "study_unknown"


@dataclass(frozen=True, slots=True)
class Decision:
    """Allowed or not, why (a :class:`Reason` code), and on what basis (exactly when allowed)."""

    allowed: bool
    reason: str
    basis: Basis | None = None

    def __post_init__(self) -> None:
        if self.allowed != (self.basis is not None):
            raise ValueError("an allowed decision has a basis and a denied one has none")

    @classmethod
    def allow(cls, basis: Basis, reason: Reason) -> Decision:
        return cls(allowed=True, reason=reason, basis=basis)

    @classmethod
    def deny(cls, reason: Reason) -> Decision:
        return cls(allowed=False, reason=reason)


DEFAULT_SETTINGS: Final = PolicySettings()


def decide(
    principal: Principal,
    action: Action,
    study: StudyAttributes | None,
    *,
    consent: ConsentView,
    shares: Iterable[Share] = (),
    break_glass: Iterable[BreakGlass] = (),
    now: datetime,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> Decision:
    """Decide whether ``principal`` may do ``action`` on ``study`` at ``now``; deny unless a rule allows.

    ``study`` is None for requests that target no single study: a QIDO search over the catalog (whose
    results :func:`search_scope` constrains), an imaging technician's upload of a new study, a patient's
    share of all their studies, audit reads and chain verification. For :attr:`Action.BREAK_GLASS`,
    ``break_glass`` holds the grant being requested.
    """
    _require_aware(now)
    if action not in _role_actions(principal.role, settings):
        return Decision.deny(Reason.ACTION_NOT_PERMITTED_FOR_ROLE)
    if principal.role is Role.DPO:
        return Decision.allow("audit_role", Reason.AUDIT_ROLE)
    if study is None:
        return _decide_without_study(principal, action)
    if principal.role is Role.PATIENT:
        if study.patient_key not in principal.patient_keys:
            return Decision.deny(Reason.NOT_OWN_RECORD)
        return Decision.allow("own_record", Reason.OWN_RECORD)
    return _decide_professional(
        principal,
        action,
        study,
        consents=consent.consents_of(study.patient_key),
        shares=shares,
        break_glass=break_glass,
        now=now,
        settings=settings,
    )


def _role_actions(role: Role, settings: PolicySettings) -> frozenset[Action]:
    actions = _ROLE_ACTIONS[role]
    return actions | {Action.BREAK_GLASS} if role in settings.break_glass_roles else actions


def _decide_without_study(principal: Principal, action: Action) -> Decision:
    role = principal.role
    if action is Action.SEARCH:
        return Decision.allow("own_record" if role is Role.PATIENT else "care", Reason.QUERY_SCOPED)
    if action is Action.STORE and role is Role.IMAGING_TECHNICIAN:
        # A new study: ingest stamps it with the technician's facility, which thereby owns it.
        return Decision.allow("care", Reason.NEW_STUDY_AT_OWN_FACILITY)
    if role is Role.PATIENT and action in {Action.SHARE, Action.READ_AUDIT}:
        return Decision.allow("own_record", Reason.OWN_RECORD)
    return Decision.deny(Reason.STUDY_REQUIRED)


@dataclass(slots=True)
class _Findings:
    """The bases a professional holds on a study, and why the ones they almost hold fail."""

    held: list[tuple[Basis, Reason, frozenset[Action]]] = field(default_factory=list)
    missed: list[Reason] = field(default_factory=list)


def _decide_professional(
    principal: Principal,
    action: Action,
    study: StudyAttributes,
    *,
    consents: PatientConsents,
    shares: Iterable[Share],
    break_glass: Iterable[BreakGlass],
    now: datetime,
    settings: PolicySettings,
) -> Decision:
    opposed = consents.opposed(study.study_instance_uid, now)
    findings = _Findings()
    _find_care(findings, principal, study, opposed=opposed, settings=settings)
    if principal.role in _GRANT_ROLES:
        _find_consent(findings, principal, study, consents, opposed=opposed, now=now)
        _find_share(findings, principal, study, consents, shares, opposed=opposed, now=now)
    if principal.role in settings.break_glass_roles:
        _find_break_glass(
            findings, principal, study, break_glass, opposed=opposed, now=now, settings=settings
        )

    for basis, reason, actions in findings.held:
        if action in actions:
            return Decision.allow(basis, reason)
    if findings.held:
        if (
            principal.role is Role.IMAGING_TECHNICIAN
            and action in {Action.STORE, Action.CORRECT_METADATA}
            and study.status is StudyStatus.RELEASED
        ):
            return Decision.deny(Reason.STUDY_RELEASED)
        if action is Action.SHARE and opposed:
            return Decision.deny(Reason.PATIENT_OPPOSITION)
        return Decision.deny(Reason.ACTION_NOT_PERMITTED_ON_BASIS)
    if action is Action.BREAK_GLASS and not findings.missed:
        return Decision.deny(Reason.BREAK_GLASS_NOT_REQUESTED)
    return Decision.deny(findings.missed[0] if findings.missed else Reason.NO_RELATIONSHIP)


def _find_care(
    findings: _Findings,
    principal: Principal,
    study: StudyAttributes,
    *,
    opposed: bool,
    settings: PolicySettings,
) -> None:
    if study.facility_finess != principal.facility_finess:
        return
    role = principal.role
    actions = _ROLE_ACTIONS[role]
    if role in {Role.RADIOLOGIST, Role.NURSE}:
        reason = Reason.CARE_OWNING_FACILITY
    elif role is Role.REFERRING_PHYSICIAN and study.referring_physician_rpps == principal.rpps:
        reason = Reason.CARE_ORDERING_PHYSICIAN
    elif role is Role.IMAGING_TECHNICIAN and principal.rpps in study.performing_technician_rpps:
        reason = Reason.CARE_PERFORMING_TECHNICIAN
        if study.status is StudyStatus.RELEASED:
            actions = CONSULTATIVE_ACTIONS
    else:
        return
    if opposed:
        if not (role in _RADIOLOGY_ROLES and settings.opposition_spares_owning_radiology):
            findings.missed.append(Reason.PATIENT_OPPOSITION)
            return
        # Spared radiology keeps caring for the patient; sharing is what the patient objected to.
        actions = actions - {Action.SHARE}
    findings.held.append(("care", reason, actions))


def _find_consent(
    findings: _Findings,
    principal: Principal,
    study: StudyAttributes,
    consents: PatientConsents,
    *,
    opposed: bool,
    now: datetime,
) -> None:
    grants = [
        grant
        for grant in consents.grants_to(principal.rpps, principal.facility_finess)
        if grant.covers(study.study_instance_uid)
    ]
    in_force = [grant for grant in grants if grant.in_force(now)]
    if in_force:
        if opposed:
            findings.missed.append(Reason.PATIENT_OPPOSITION)
            return
        personal = any(isinstance(grant.grantee, ProfessionalGrantee) for grant in in_force)
        reason = Reason.CONSENT_TO_PROFESSIONAL if personal else Reason.CONSENT_TO_FACILITY
        findings.held.append(("consent", reason, _GRANTED_ACTIONS))
        return
    for grant in grants:
        if grant.expired(now):
            findings.missed.append(Reason.CONSENT_EXPIRED)
        elif not grant.active:
            findings.missed.append(Reason.CONSENT_REVOKED)
        else:
            findings.missed.append(Reason.CONSENT_NOT_YET_VALID)


def _find_share(
    findings: _Findings,
    principal: Principal,
    study: StudyAttributes,
    consents: PatientConsents,
    shares: Iterable[Share],
    *,
    opposed: bool,
    now: datetime,
) -> None:
    effective: list[Reason] = []
    for share in shares:
        if share.grantee_rpps != principal.rpps or not share.covers(study):
            continue
        if not share.in_force(now):
            findings.missed.append(Reason.SHARE_REVOKED if share.revoked else Reason.SHARE_EXPIRED)
        elif share.shared_by_facility is None:
            effective.append(Reason.SHARE_BY_PATIENT)
        elif share.shared_by_facility == principal.facility_finess:
            effective.append(Reason.SHARE_WITHIN_FACILITY)
        elif any(
            grant.in_force(now) and grant.covers(study.study_instance_uid)
            for grant in consents.grants_to_share(share.share_id)
        ):
            effective.append(Reason.SHARE_CONSENTED)
        else:
            findings.missed.append(Reason.SHARE_WITHOUT_CONSENT)
    if not effective:
        return
    if opposed:
        findings.missed.append(Reason.PATIENT_OPPOSITION)
        return
    findings.held.append(("share", effective[0], _GRANTED_ACTIONS))


def _find_break_glass(
    findings: _Findings,
    principal: Principal,
    study: StudyAttributes,
    grants: Iterable[BreakGlass],
    *,
    opposed: bool,
    now: datetime,
    settings: PolicySettings,
) -> None:
    mine = [
        grant
        for grant in grants
        if grant.holder_rpps == principal.rpps and grant.study_instance_uid == study.study_instance_uid
    ]
    valid = [
        grant
        for grant in mine
        if grant.justified
        and grant.within_time_box(settings.break_glass_max_duration)
        and grant.in_force(now)
    ]
    if valid:
        if opposed and not settings.opposition_spares_break_glass:
            findings.missed.append(Reason.PATIENT_OPPOSITION)
            return
        findings.held.append(("break_glass", Reason.BREAK_GLASS, _BREAK_GLASS_ACTIONS))
        return
    for grant in mine:
        if not grant.justified:
            findings.missed.append(Reason.BREAK_GLASS_UNJUSTIFIED)
        elif not grant.within_time_box(settings.break_glass_max_duration):
            findings.missed.append(Reason.BREAK_GLASS_TIME_BOX_EXCEEDED)
        elif now >= grant.expires_at:
            findings.missed.append(Reason.BREAK_GLASS_EXPIRED)
        else:
            findings.missed.append(Reason.BREAK_GLASS_NOT_YET_OPEN)


# --- Search scope -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopeClause:
    """Studies that satisfy every condition given (None: no condition on that attribute).

    Maps one to one onto a catalog filter, e.g. for MongoDB ``{"facility_finess": F, "patient_key":
    {"$in": [...], "$nin": [...]}, "study_instance_uid": {"$in": [...], "$nin": [...]},
    "referring_physician_rpps": R, "performing_technician_rpps": T}``.
    """

    basis: Basis
    facility_finess: str | None = None
    patient_keys: frozenset[str] | None = None
    study_instance_uids: frozenset[str] | None = None
    referring_physician_rpps: str | None = None
    performing_technician_rpps: str | None = None
    excluded_patient_keys: frozenset[str] = frozenset()
    excluded_study_instance_uids: frozenset[str] = frozenset()

    def matches(self, study: StudyAttributes) -> bool:
        """Whether ``study`` satisfies every condition of the clause."""
        return (
            (self.facility_finess is None or study.facility_finess == self.facility_finess)
            and (self.patient_keys is None or study.patient_key in self.patient_keys)
            and (self.study_instance_uids is None or study.study_instance_uid in self.study_instance_uids)
            and (
                self.referring_physician_rpps is None
                or study.referring_physician_rpps == self.referring_physician_rpps
            )
            and (
                self.performing_technician_rpps is None
                or self.performing_technician_rpps in study.performing_technician_rpps
            )
            and study.patient_key not in self.excluded_patient_keys
            and study.study_instance_uid not in self.excluded_study_instance_uids
        )


@dataclass(frozen=True, slots=True)
class SearchScope:
    """The studies a principal's QIDO search may return: the union of its clauses (a ``$or``).

    The catalog applies it inside its query, so counts and paging see exactly the permitted studies. No
    clause means nothing: the gateway answers an empty page without asking the catalog.
    """

    clauses: tuple[ScopeClause, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether the scope matches no study at all."""
        return not self.clauses

    def matches(self, study: StudyAttributes) -> bool:
        """Whether ``study`` is within the scope."""
        return any(clause.matches(study) for clause in self.clauses)

    def bases_for(self, study: StudyAttributes) -> frozenset[Basis]:
        """The bases of the clauses that match ``study``."""
        return frozenset(clause.basis for clause in self.clauses if clause.matches(study))


def search_scope(
    principal: Principal,
    consent: ConsentView,
    shares: Iterable[Share],
    break_glass: Iterable[BreakGlass],
    now: datetime,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> SearchScope:
    """The studies ``principal`` may find at ``now``: those :func:`decide` allows :attr:`Action.SEARCH` on."""
    _require_aware(now)
    role = principal.role
    if Action.SEARCH not in _role_actions(role, settings):
        return SearchScope()
    if role is Role.PATIENT:
        return SearchScope((ScopeClause("own_record", patient_keys=principal.patient_keys),))

    opposed_patients: set[str] = set()
    opposed_studies: defaultdict[str, set[str]] = defaultdict(set)
    for patient_key, opposition in consent.oppositions():
        if opposition.in_force(now):
            if opposition.study_instance_uid is None:
                opposed_patients.add(patient_key)
            else:
                opposed_studies[patient_key].add(opposition.study_instance_uid)
    all_opposed_studies = frozenset(uid for uids in opposed_studies.values() for uid in uids)

    clauses: list[ScopeClause] = []
    spared = role in _RADIOLOGY_ROLES and settings.opposition_spares_owning_radiology
    clauses.append(
        ScopeClause(
            "care",
            facility_finess=principal.facility_finess,
            referring_physician_rpps=principal.rpps if role is Role.REFERRING_PHYSICIAN else None,
            performing_technician_rpps=principal.rpps if role is Role.IMAGING_TECHNICIAN else None,
            excluded_patient_keys=frozenset() if spared else frozenset(opposed_patients),
            excluded_study_instance_uids=frozenset() if spared else all_opposed_studies,
        )
    )
    if role in _GRANT_ROLES:
        clauses += _consent_clauses(principal, consent, now, opposed_patients, opposed_studies)
        clauses += _share_clauses(principal, consent, shares, now, opposed_patients, opposed_studies)
    if role in settings.break_glass_roles:
        uids = frozenset(
            grant.study_instance_uid
            for grant in break_glass
            if grant.holder_rpps == principal.rpps
            and grant.justified
            and grant.within_time_box(settings.break_glass_max_duration)
            and grant.in_force(now)
        )
        if uids:
            blocked = not settings.opposition_spares_break_glass
            clauses.append(
                ScopeClause(
                    "break_glass",
                    study_instance_uids=uids,
                    excluded_patient_keys=frozenset(opposed_patients) if blocked else frozenset(),
                    excluded_study_instance_uids=all_opposed_studies if blocked else frozenset(),
                )
            )
    return SearchScope(tuple(clauses))


def _consent_clauses(
    principal: Principal,
    consent: ConsentView,
    now: datetime,
    opposed_patients: set[str],
    opposed_studies: defaultdict[str, set[str]],
) -> list[ScopeClause]:
    whole_record: set[str] = set()
    some_studies: defaultdict[str, set[str]] = defaultdict(set)
    for patient_key, grant in consent.grants_to(
        rpps=principal.rpps, facility_finess=principal.facility_finess
    ):
        if not grant.in_force(now) or patient_key in opposed_patients:
            continue
        if grant.study_instance_uid is None:
            whole_record.add(patient_key)
        else:
            some_studies[patient_key].add(grant.study_instance_uid)
    clauses: list[ScopeClause] = []
    unopposed = frozenset(key for key in whole_record if not opposed_studies.get(key))
    if unopposed:
        clauses.append(ScopeClause("consent", patient_keys=unopposed))
    for patient_key in sorted(whole_record - unopposed):
        clauses.append(
            ScopeClause(
                "consent",
                patient_keys=frozenset({patient_key}),
                excluded_study_instance_uids=frozenset(opposed_studies[patient_key]),
            )
        )
    for patient_key, uids in sorted(some_studies.items()):
        if patient_key in whole_record:
            continue
        allowed = frozenset(uids - opposed_studies.get(patient_key, set()))
        if allowed:
            clauses.append(
                ScopeClause("consent", patient_keys=frozenset({patient_key}), study_instance_uids=allowed)
            )
    return clauses


def _share_clauses(
    principal: Principal,
    consent: ConsentView,
    shares: Iterable[Share],
    now: datetime,
    opposed_patients: set[str],
    opposed_studies: defaultdict[str, set[str]],
) -> list[ScopeClause]:
    clauses: list[ScopeClause] = []
    for share in shares:
        if share.grantee_rpps != principal.rpps or not share.in_force(now):
            continue
        if share.patient_key in opposed_patients:
            continue
        uids: frozenset[str] | None = (
            None if share.study_instance_uid is None else frozenset({share.study_instance_uid})
        )
        if share.shared_by_facility is not None and share.shared_by_facility != principal.facility_finess:
            backing = [
                grant
                for grant in consent.consents_of(share.patient_key).grants_to_share(share.share_id)
                if grant.in_force(now)
            ]
            if not backing:
                continue
            if all(grant.study_instance_uid is not None for grant in backing):
                consented = frozenset(
                    grant.study_instance_uid for grant in backing if grant.study_instance_uid is not None
                )
                uids = consented if uids is None else uids & consented
                if not uids:
                    continue
        clauses.append(
            ScopeClause(
                "share",
                facility_finess=share.shared_by_facility,
                patient_keys=share.patient_keys,
                study_instance_uids=uids,
                excluded_study_instance_uids=frozenset(opposed_studies.get(share.patient_key, set())),
            )
        )
    return clauses


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("decisions are made at an aware instant (a naive datetime is ambiguous)")
