"""Who is asking: the authenticated principal a policy decision is about, read from verified OIDC claims.

The claims are those of the dev Keycloak realm (``deploy/local/src/emage_devstack/dev_users.py``), which
mirror what Pro Santé Connect gives for professionals: ``roles`` (realm role names), ``rpps`` (11 digits),
``facility`` (FINESS), ``facility_name``, and, for patients, ``patient_id``, ``patient_id_issuer``, ``ins``,
``ins_oid``; every token carries ``amr`` (RFC 8176 methods) and ``acr`` (level of assurance, OIDC Core §2).

Turning claims into a :class:`Principal` is pure: the token's signature, issuer, audience and expiry were
checked before (:class:`emage_common.oidc.OidcValidator`). Each way claims can fail to make a usable
principal is its own :class:`NotAuthorisedError` subclass with a machine ``reason``, for the audit trail. The
gateway answers :class:`AuthenticationTooWeakError` with 401 and ``WWW-Authenticate: Bearer
error="insufficient_user_authentication"`` (RFC 9470 §3, step-up), and the others with 403: the token is
genuine, it just does not describe anyone the platform may serve.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from emage_common.events import FinessId, Ins, PatientIdentity, RppsId
from emage_common.oidc import authentication_methods, satisfies_second_factor


class Role(StrEnum):
    """The realm roles of ARCHITECTURE.md "Who may do what"; the value is the realm role name."""

    RADIOLOGIST = "radiologist"
    REFERRING_PHYSICIAN = "referring_physician"
    NURSE = "nurse"
    IMAGING_TECHNICIAN = "imaging_technician"
    PATIENT = "patient"
    DPO = "dpo"


HEALTH_PROFESSIONAL_ROLES: Final = frozenset(
    {Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN, Role.NURSE, Role.IMAGING_TECHNICIAN}
)
"""Roles that act in care for a facility, identified by RPPS and FINESS."""

STAFF_ROLES: Final = HEALTH_PROFESSIONAL_ROLES | {Role.DPO}
"""Every role but the patient: these accounts must authenticate with a second factor."""

DEFAULT_REQUIRED_AMR: Final = frozenset({"otp"})
"""``amr`` methods that make a second factor (RFC 8176 ``otp``: the realm's TOTP step)."""

DEFAULT_ACCEPTED_ACR: Final = frozenset({"eidas2"})
"""``acr`` values that vouch for a second factor: the realm's level 2 (``acr.loa.map``: eidas2 = TOTP)."""


class NotAuthorisedError(Exception):
    """Verified claims that do not make a principal the platform may serve; ``reason`` is a machine code."""

    reason: str = "not_authorised"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthenticationTooWeakError(NotAuthorisedError):
    """A staff account authenticated without the required second factor (``acr``/``amr``)."""

    reason = "second_factor_required"


class NoPlatformRoleError(NotAuthorisedError):
    """The token carries none of the platform's roles."""

    reason = "no_role"


class AmbiguousRoleError(NotAuthorisedError):
    """The token carries more than one platform role, so which one the user acts in is unknown."""

    reason = "ambiguous_role"


class MissingClaimError(NotAuthorisedError):
    """A claim the role needs is absent or empty (RPPS/facility for professionals, identity for patients)."""

    reason = "missing_claim"

    def __init__(self, claim: str, role: Role) -> None:
        super().__init__(f"a {role.value} token must carry the {claim!r} claim")
        self.claim = claim


class InvalidClaimError(NotAuthorisedError):
    """A claim is present but malformed (an RPPS that is not 11 digits, an INS with a wrong key …)."""

    reason = "invalid_claim"

    def __init__(self, claim: str, detail: str) -> None:
        super().__init__(f"claim {claim!r} is not valid: {detail}")
        self.claim = claim


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated user a decision is about, acting in exactly one :class:`Role`."""

    subject: str
    """OIDC ``sub``."""
    role: Role
    rpps: str | None = None
    """RPPS number of a health professional."""
    facility_finess: str | None = None
    """FINESS of the facility a professional acts for in this session."""
    facility_name: str | None = None
    name: str | None = None
    """Display name (OIDC ``name``), for audit trails read by people."""
    patient: PatientIdentity | None = None
    """The identity of a patient principal, as their record knows them; None for every other role."""
    authentication_methods: frozenset[str] = frozenset()
    """``amr`` values (RFC 8176)."""
    acr: str | None = None

    def __post_init__(self) -> None:
        if not self.subject:
            raise ValueError("a principal has a subject")
        if self.role in HEALTH_PROFESSIONAL_ROLES and (not self.rpps or not self.facility_finess):
            raise ValueError(f"a {self.role.value} acts with an RPPS number for a facility (FINESS)")
        if (self.role is Role.PATIENT) != (self.patient is not None):
            raise ValueError("a patient principal, and only a patient principal, carries a patient identity")

    @property
    def patient_keys(self) -> frozenset[str]:
        """Every patient key that designates this patient's own record, empty for other roles.

        Both the INS-based key and the local ``pid:`` key of the identity the token carries: a study from
        a facility that has not qualified the INS is keyed by the local identity, and both keys name the
        same person (:attr:`PatientIdentity.patient_key` never maps two identities to one key).
        """
        if self.patient is None:
            return frozenset()
        local = PatientIdentity(
            patient_id=self.patient.patient_id, issuer_of_patient_id=self.patient.issuer_of_patient_id
        )
        return frozenset({self.patient.patient_key, local.patient_key})

    @property
    def patient_key(self) -> str | None:
        """The platform key of a patient principal (the INS-based one when the INS is known)."""
        return self.patient.patient_key if self.patient is not None else None


_ROLE_NAMES: Final = frozenset(role.value for role in Role)
_RPPS: Final = TypeAdapter(RppsId)
_FINESS: Final = TypeAdapter(FinessId)


def principal_from_claims(
    claims: Mapping[str, Any],
    *,
    required_amr: Set[str] = DEFAULT_REQUIRED_AMR,
    accepted_acr: Set[str] = DEFAULT_ACCEPTED_ACR,
) -> Principal:
    """The principal that verified ``claims`` describe, or the precise :class:`NotAuthorisedError` reason.

    Staff (every role but the patient) must satisfy the second-factor requirement:
    :func:`~emage_common.oidc.satisfies_second_factor` with ``required_amr``/``accepted_acr``. Claims that
    are not strings are treated as malformed, never coerced.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidClaimError("sub", "the subject is a non-empty string")
    role = _single_role(claims)
    if role in STAFF_ROLES and not satisfies_second_factor(claims, required_amr, accepted_acr):
        raise AuthenticationTooWeakError(f"a {role.value} must authenticate with a second factor")
    acr = claims.get("acr")
    common: dict[str, Any] = {
        "subject": subject,
        "role": role,
        "authentication_methods": frozenset(authentication_methods(claims)),
        "acr": acr if isinstance(acr, str) else None,
        "name": _display_name(claims),
    }
    if role is Role.PATIENT:
        return Principal(**common, patient=_patient_identity(claims))
    if role is Role.DPO:
        # The DPO works for the platform, not a facility: RPPS and facility are kept when present.
        rpps = _optional_string(claims, "rpps")
        finess = _optional_string(claims, "facility")
        return Principal(
            **common,
            rpps=_validated(_RPPS, "rpps", rpps) if rpps is not None else None,
            facility_finess=_validated(_FINESS, "facility", finess) if finess is not None else None,
            facility_name=_optional_string(claims, "facility_name"),
        )
    return Principal(
        **common,
        rpps=_validated(_RPPS, "rpps", _required_string(claims, "rpps", role)),
        facility_finess=_validated(_FINESS, "facility", _required_string(claims, "facility", role)),
        facility_name=_optional_string(claims, "facility_name"),
    )


def _single_role(claims: Mapping[str, Any]) -> Role:
    # The realm maps realm roles to a top-level ``roles`` claim; other Keycloak set-ups only have
    # ``realm_access.roles``. Names that are not platform roles (offline_access, default-roles-…) are ignored.
    raw = claims.get("roles")
    if raw is None:
        realm_access = claims.get("realm_access")
        raw = realm_access.get("roles") if isinstance(realm_access, Mapping) else None
    if raw is None:
        raise NoPlatformRoleError("the token carries no roles")
    if not isinstance(raw, list):
        raise InvalidClaimError("roles", "roles are a list of role names")
    known = {Role(name) for name in raw if isinstance(name, str) and name in _ROLE_NAMES}
    if not known:
        raise NoPlatformRoleError("the token carries none of the platform's roles")
    if len(known) > 1:
        # Picking one would silently widen or blend rights (patient + staff, or DPO + radiologist, which
        # would join audit and images): a session acts in exactly one role.
        names = ", ".join(sorted(role.value for role in known))
        raise AmbiguousRoleError(f"the token carries several platform roles ({names})")
    return known.pop()


def _patient_identity(claims: Mapping[str, Any]) -> PatientIdentity:
    patient_id = _required_string(claims, "patient_id", Role.PATIENT)
    issuer = _required_string(claims, "patient_id_issuer", Role.PATIENT)
    ins: Ins | None = None
    matricule = _optional_string(claims, "ins")
    if matricule is not None:
        oid = _required_string(claims, "ins_oid", Role.PATIENT)
        try:
            ins = Ins.model_validate({"matricule": matricule, "oid": oid})
        except ValidationError as error:
            raise InvalidClaimError("ins", _first_message(error)) from None
    try:
        return PatientIdentity(patient_id=patient_id, issuer_of_patient_id=issuer, ins=ins)
    except ValidationError as error:
        raise InvalidClaimError("patient_id", _first_message(error)) from None


def _display_name(claims: Mapping[str, Any]) -> str | None:
    name = claims.get("name")
    return name[:256] if isinstance(name, str) and name.strip() else None


def _optional_string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidClaimError(name, "expected a string")
    return value


def _required_string(claims: Mapping[str, Any], name: str, role: Role) -> str:
    value = _optional_string(claims, name)
    if value is None:
        raise MissingClaimError(name, role)
    return value


def _validated(adapter: TypeAdapter[str], name: str, value: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise InvalidClaimError(name, _first_message(error)) from None


def _first_message(error: ValidationError) -> str:
    return str(error.errors()[0]["msg"])
