"""The internal contract between the access gateway and the services behind it.

The gateway decides; the catalog and ingest only apply what it decided. Two values cross that boundary:

* :class:`StudyAccessAttributes` — what the policy needs to know about one study (owning facility, patient,
  care relationships). The catalog answers them at :data:`STUDY_ACCESS_ATTRIBUTES_PATH`; the gateway asks
  before any decision about a study.
* :class:`WireSearchScope` — the studies a QIDO-RS search may return, as an OR of AND clauses. The gateway
  sends it in the :data:`SEARCH_SCOPE_HEADER` of every search it forwards; the catalog applies it inside its
  query, so counts and pages see only the permitted studies.

These are data shapes, not rules: the rules stay in the access service's policy.
"""

from __future__ import annotations

import base64
import zlib
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emage_common.events import DicomUid, FinessId, PatientKey, RppsId

SEARCH_SCOPE_HEADER: Final = "X-Emage-Search-Scope"
"""Header carrying the :class:`WireSearchScope` of a forwarded QIDO-RS search."""

FACILITY_HEADER: Final = "X-Emage-Facility"
"""Header carrying the FINESS of the facility a forwarded STOW-RS stores for (the uploader's)."""

STUDY_ACCESS_ATTRIBUTES_PATH: Final = "/internal/v1/studies/{study}/access-attributes"
"""Catalog route answering the :class:`StudyAccessAttributes` of one study (404 when not catalogued)."""

MAX_SCOPE_HEADER_BYTES: Final = 12_000
"""Largest encoded scope the gateway sends; a larger one is a 400-class problem of the caller's grants,
kept well under the 16 KiB the HTTP servers accept for a whole header block by default."""


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class StudyAccessAttributes(_Wire):
    """What the policy needs to know about a study, as the catalog holds it."""

    study_instance_uid: DicomUid
    facility_finess: FinessId
    """The owning facility: the one that published the study."""
    patient_key: PatientKey
    """:attr:`emage_common.events.PatientIdentity.patient_key` of the study's patient."""
    referring_physician_rpps: RppsId | None = None
    """RPPS of the physician who ordered the exam."""
    performing_technician_rpps: tuple[RppsId, ...] = ()
    """RPPS of the imaging technicians who acquired the study's series."""


class WireScopeClause(_Wire):
    """Studies satisfying every condition given; ``None`` (or empty exclusions) means no condition.

    ``performing_technician_rpps`` matches when it is one of the study's performing technicians.
    """

    facility_finess: FinessId | None = None
    patient_keys: tuple[PatientKey, ...] | None = None
    study_instance_uids: tuple[DicomUid, ...] | None = None
    referring_physician_rpps: RppsId | None = None
    performing_technician_rpps: RppsId | None = None
    excluded_patient_keys: tuple[PatientKey, ...] = ()
    excluded_study_instance_uids: tuple[DicomUid, ...] = ()


class InvalidScopeError(ValueError):
    """The scope header is not a :class:`WireSearchScope` this version understands."""


class WireSearchScope(_Wire):
    """The union of its clauses; no clause matches no study."""

    version: Literal[1] = 1
    clauses: Annotated[tuple[WireScopeClause, ...], Field(max_length=1000)] = ()

    def encode(self) -> str:
        """The header value: the JSON, deflated, in base64url without padding."""
        raw = zlib.compress(self.model_dump_json(exclude_defaults=True).encode(), level=6)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, header: str) -> WireSearchScope:
        """Parse a header value; :class:`InvalidScopeError` when it is not one."""
        try:
            raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
            inflater = zlib.decompressobj()
            text = inflater.decompress(raw, 1_000_000)
            if inflater.unconsumed_tail:
                raise InvalidScopeError("search scope too large")
            return cls.model_validate_json(text)
        except (ValueError, zlib.error, ValidationError) as error:
            if isinstance(error, InvalidScopeError):
                raise
            raise InvalidScopeError(f"invalid search scope: {error}") from None


PRINCIPAL_HEADER: Final = "X-Emage-Principal"
"""Header carrying the :class:`ForwardedPrincipal` of a request the gateway authenticated and forwards to an
internal ``/api/v1`` service (consent, audit). Internal services trust it because only the gateway reaches
them (NetworkPolicies); they never see the caller's token."""


class ForwardedPrincipal(_Wire):
    """Who the gateway authenticated, as the internal services need it."""

    subject: Annotated[str, Field(min_length=1, max_length=256)]
    role: Literal["radiologist", "referring_physician", "nurse", "imaging_technician", "patient", "dpo"]
    name: Annotated[str, Field(max_length=256)] | None = None
    rpps: RppsId | None = None
    facility_finess: FinessId | None = None
    facility_name: Annotated[str, Field(max_length=256)] | None = None
    patient_keys: tuple[PatientKey, ...] = ()
    """Every key of a patient's own record (INS-based and local); empty for other roles."""

    def encode(self) -> str:
        """The header value: the JSON in base64url without padding (header-safe whatever the names hold)."""
        return (
            base64.urlsafe_b64encode(self.model_dump_json(exclude_none=True).encode()).rstrip(b"=").decode()
        )

    @classmethod
    def decode(cls, header: str) -> ForwardedPrincipal:
        """Parse a header value; :class:`ValueError` when it is not one."""
        try:
            raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
            return cls.model_validate_json(raw)
        except (ValueError, ValidationError) as error:
            raise ValueError(f"invalid forwarded principal: {error}") from None
