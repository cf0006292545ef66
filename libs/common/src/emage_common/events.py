"""CloudEvents 1.0 envelope, e-mage topics and the typed payloads they carry.

Events travel on Kafka in *structured content mode* (CloudEvents Kafka protocol binding §3.3): the record
value is the JSON event format (CloudEvents JSON format §3) and the ``content-type`` header is
:data:`STRUCTURED_CONTENT_TYPE`. Every payload is a frozen pydantic model registered against exactly one
event ``type`` and one topic, so a consumer turns bytes into a typed, validated value in two calls::

    event = CloudEvent.from_bytes(record.value)   # envelope, CloudEvents JSON format §3
    stored = event.data_as(InstanceStored)          # payload, validated

Section numbers refer to CloudEvents 1.0.2 (``spec.md``, ``formats/json-format.md``,
``bindings/kafka-protocol-binding.md``, ``extensions/distributed-tracing.md``,
``extensions/partitioning.md``) and to DICOM PS3.5 / PS3.18 (2025 editions).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import re
from abc import abstractmethod
from collections.abc import Mapping
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar
from urllib.parse import quote
from uuid import uuid4

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    JsonValue,
    PlainSerializer,
    SkipValidation,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import from_json, to_json

# --- Topics -------------------------------------------------------------------------------------------------

ACQUISITION_TOPIC: Final = "emage.acquisition.v1"
INSTANCE_STORED_TOPIC: Final = "emage.instance.stored.v1"
STUDY_CHANGED_TOPIC: Final = "emage.study.changed.v1"
CONSENT_CHANGED_TOPIC: Final = "emage.consent.changed.v1"
SHARE_CHANGED_TOPIC: Final = "emage.share.changed.v1"
ACCESS_DECIDED_TOPIC: Final = "emage.access.decided.v1"

DLQ_SUFFIX: Final = ".dlq"

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json; charset=UTF-8"
"""Kafka ``content-type`` header of a structured-mode record (Kafka protocol binding §3.3.1)."""


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``: records its consumers gave up on, byte-identical."""
    return topic + DLQ_SUFFIX


# --- Errors -------------------------------------------------------------------------------------------------


class EventDecodingError(ValueError):
    """Bytes or an envelope that cannot become a known, valid e-mage event; retrying cannot help."""


class InvalidEnvelopeError(EventDecodingError):
    """The bytes are not a CloudEvents 1.0 event in the JSON format (JSON format §3)."""


class UnknownEventTypeError(EventDecodingError):
    """The envelope is valid but its ``type`` is not one e-mage defines."""


class InvalidEventDataError(EventDecodingError):
    """The envelope is valid but its ``data`` is not a valid payload for its ``type``."""


# --- Timestamps ---------------------------------------------------------------------------------------------

# RFC 3339 §5.6 ``date-time``; Python's ``fromisoformat`` alone accepts many ISO 8601 forms RFC 3339 forbids.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 ``date-time`` (CloudEvents ``Timestamp``, spec "Type System") into aware UTC."""
    if _RFC3339.fullmatch(value) is None:
        raise ValueError(f"not an RFC 3339 date-time with offset: {value!r}")
    return datetime.fromisoformat(value.upper()).astimezone(UTC)


def format_rfc3339(value: datetime) -> str:
    """Render an aware datetime as RFC 3339 in UTC with the ``Z`` designator."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _coerce_timestamp(value: object) -> datetime:
    if isinstance(value, str):
        return parse_rfc3339(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must carry a UTC offset")
        return value.astimezone(UTC)
    raise ValueError(f"timestamp must be an RFC 3339 string or an aware datetime, not {type(value).__name__}")


UtcTimestamp = Annotated[
    datetime,
    BeforeValidator(_coerce_timestamp),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
"""An instant, normalised to UTC; serialised as RFC 3339 with ``Z``. Naive datetimes and epoch numbers are
rejected so that no producer can silently emit local time."""


# --- DICOM and French health identifiers --------------------------------------------------------------------

UID_MAX_LENGTH: Final = 64
_UID_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def uid_defect(value: str) -> str | None:
    """Why ``value`` is not a DICOM UID per PS3.5 §9.1, or ``None`` if it is one.

    PS3.5 §9.1: a UID is at most 64 characters of digits and ``.``; every component is one or more digits
    and its first digit is not ``0`` unless the component is the single digit ``0``.
    """
    if not value:
        return "a UID is not empty"
    if len(value) > UID_MAX_LENGTH:
        return f"a UID has at most {UID_MAX_LENGTH} characters, this one has {len(value)}"
    for component in value.split("."):
        if not component:
            return "a UID component is not empty"
        if _UID_COMPONENT.fullmatch(component) is None:
            if component.isascii() and component.isdigit():
                return f"UID component {component!r} has a leading zero"
            return f"UID component {component!r} is not made of the digits 0-9"
    return None


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a DICOM UID per PS3.5 §9.1."""
    return uid_defect(value) is None


def validate_uid(value: str) -> str:
    """Return ``value`` if it is a DICOM UID per PS3.5 §9.1, else raise :class:`ValueError` saying why."""
    defect = uid_defect(value)
    if defect is not None:
        raise ValueError(f"{value!r} is not a DICOM UID (PS3.5 §9.1): {defect}")
    return value


DicomUid = Annotated[StrictStr, AfterValidator(validate_uid)]
"""A DICOM Unique Identifier (VR UI), validated per PS3.5 §9.1."""

_DICOM_TEXT_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def _dicom_text(value: str) -> str:
    # PS3.5 §6.2: LO/SH/AE exclude control characters and use "\" as the value-multiplicity delimiter.
    if _DICOM_TEXT_FORBIDDEN.search(value):
        raise ValueError("DICOM LO/SH/AE values contain neither control characters nor '\\'")
    if value != value.strip(" "):
        raise ValueError("DICOM LO/SH/AE values carry no leading or trailing spaces (PS3.5 §6.2)")
    return value


LongString = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_dicom_text)]
"""A single DICOM LO value (PS3.5 §6.2: at most 64 characters), e.g. Patient ID (0010,0020)."""

ShortString = Annotated[StrictStr, Field(min_length=1, max_length=16), AfterValidator(_dicom_text)]
"""A single DICOM SH value (PS3.5 §6.2: at most 16 characters), e.g. Accession Number (0008,0050)."""

AeTitle = Annotated[StrictStr, Field(min_length=1, max_length=16), AfterValidator(_dicom_text)]
"""A DICOM Application Entity title (VR AE, PS3.5 §6.2: at most 16 characters)."""

Modality = Annotated[StrictStr, Field(pattern=r"^[A-Z0-9_]{1,16}$")]
"""A Modality (0008,0060) defined term such as ``CT``, ``MR``, ``US``, ``MG`` (VR CS, PS3.3 §C.7.3.1.1.1)."""

FinessId = Annotated[StrictStr, Field(pattern=r"^(?:[0-9]{2}|2[AB])[0-9]{7}$")]
"""A FINESS number: 9 characters, the first two the département (``2A``/``2B`` for Corse)."""

RppsId = Annotated[StrictStr, Field(pattern=r"^[0-9]{11}$")]
"""An RPPS number: the 11-digit national identifier of a health professional."""

Sha256Hex = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest in lowercase hexadecimal."""

InsOid = Literal[
    "1.2.250.1.213.1.4.8",  # INS-NIR
    "1.2.250.1.213.1.4.9",  # INS-NIA
    "1.2.250.1.213.1.4.10",  # INS-NIR, test identities
    "1.2.250.1.213.1.4.11",  # INS-NIA, test identities
]
"""OID of the authority that assigned an INS matricule."""

_TEXT_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


def _plain_text(value: str) -> str:
    # CloudEvents "Type System", String: no control characters, unpaired surrogates or noncharacters.
    if _TEXT_FORBIDDEN.search(value):
        raise ValueError("text contains control characters, surrogates or noncharacters")
    return value


Text = Annotated[StrictStr, AfterValidator(_plain_text)]
"""A string without control characters (CloudEvents String)."""

Identifier = Annotated[Text, Field(min_length=1, max_length=128)]
"""An opaque identifier minted by an e-mage service (consent, share, share link, request)."""

PrincipalSubject = Annotated[Text, Field(min_length=1, max_length=255)]
"""The OIDC ``sub`` of an authenticated user (OpenID Connect Core §2)."""

PatientKey = Annotated[Text, Field(min_length=1, max_length=512)]
"""The platform-wide key of a patient, as :attr:`PatientIdentity.patient_key` computes it."""

_OBJECT_KEY_FORBIDDEN_SEGMENTS = frozenset({"", ".", ".."})


def _object_key(value: str) -> str:
    # Keys are joined into S3 paths by every S3 client; relative segments would alias other objects.
    if any(segment in _OBJECT_KEY_FORBIDDEN_SEGMENTS for segment in value.split("/")):
        raise ValueError("an object key has no empty, '.' or '..' path segment")
    if len(value.encode()) > 1024:
        raise ValueError("an S3 object key is at most 1024 bytes of UTF-8")
    return value


ObjectKey = Annotated[Text, Field(min_length=1), AfterValidator(_object_key)]
"""The key of an object in the archive bucket."""

NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_INS_MATRICULE = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")


class Ins(_Frozen):
    """Identifiant National de Santé: a matricule (NIR or NIA) qualified by its assigning authority OID."""

    matricule: StrictStr
    oid: InsOid

    @field_validator("matricule")
    @classmethod
    def _check_matricule(cls, value: str) -> str:
        # 13 characters (sex, year, month, département, commune, order) + a 2-digit key = 97 - (n mod 97),
        # where Corse's 2A and 2B count as 19 and 18.
        if _INS_MATRICULE.fullmatch(value) is None:
            raise ValueError(
                "an INS matricule is 15 characters: 13 digits (2A/2B for Corse) and a 2-digit key"
            )
        body = value[:13].replace("2A", "19").replace("2B", "18")
        if 97 - int(body) % 97 != int(value[13:]):
            raise ValueError("INS matricule control key does not match")
        return value


class PatientIdentity(_Frozen):
    """Who the images are of, as the sending facility identifies the patient, plus the INS when qualified."""

    patient_id: LongString
    """Patient ID (0010,0020) in the facility's identity domain."""
    issuer_of_patient_id: LongString
    """Issuer of Patient ID (0010,0021): the identity domain that assigned ``patient_id``."""
    ins: Ins | None = None
    """The patient's INS, when the facility has qualified the identity against the INSi teleservice."""

    @property
    def patient_key(self) -> str:
        """The key e-mage partitions and joins patient events by: the INS when known, else the local ID.

        ``ins:<oid>:<matricule>`` or ``pid:<issuer>:<patient id>`` with the free-text parts percent-encoded,
        so that two identities map to the same key only if they are the same identity.
        """
        if self.ins is not None:
            return f"ins:{self.ins.oid}:{self.ins.matricule}"
        return f"pid:{quote(self.issuer_of_patient_id, safe='')}:{quote(self.patient_id, safe='')}"


# --- Event payloads -----------------------------------------------------------------------------------------


class EventData(_Frozen):
    """The ``data`` of an e-mage event: one model per event ``type``, published on exactly one topic."""

    event_type: ClassVar[str]
    topic: ClassVar[str]

    @abstractmethod
    def partition_key(self) -> str:
        """The Kafka record key: events with the same key are totally ordered (one partition)."""


_UID_PATTERN: Final = r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$"
"""PS3.5 §9.1 as a JSON Schema pattern, for the published schema of events carrying a UID."""


class DicomWebSource(_Frozen):
    """A PACS reachable through DICOMweb: QIDO-RS to find the study, WADO-RS to retrieve it (PS3.18 §10.4)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    kind: Literal["dicomweb"] = "dicomweb"
    base_url: HttpUrl
    """The DICOMweb service base URL (PS3.18 §8.2), e.g. ``https://pacs.example.fr/dicom-web``. e-mage
    pulls only from base URLs configured for the facility, with the credentials configured for them."""


class DimseSource(_Frozen):
    """A PACS reachable through DIMSE as an Application Entity: C-FIND to find the study, then C-GET or
    C-MOVE to retrieve it (PS3.4 Annex C, Study Root Query/Retrieve Information Model)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    kind: Literal["dimse"] = "dimse"
    ae_title: AeTitle
    """The PACS' AE title (the Called AE Title of the associations e-mage opens)."""
    host: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9.:\-]{1,253}$")]
    """Host name or IP address of the PACS."""
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    """TCP port of the PACS' DIMSE service."""
    retrieve: Literal["c-get", "c-move"] = "c-get"
    """How to retrieve: C-GET (the instances come back on e-mage's association) or C-MOVE (the PACS sends
    them to e-mage's C-STORE SCP, which it must know as a move destination)."""


class Acquisition(EventData):
    """A facility announces an acquired exam: e-mage pulls the study from the facility's PACS and records
    who ordered and who performed it (the care relationships of the access policy)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    event_type: ClassVar[str] = "fr.emage.acquisition.v1"
    topic: ClassVar[str] = ACQUISITION_TOPIC

    facility_finess: FinessId
    """FINESS of the facility that performed the exam, and owns the study in e-mage."""
    accession_number: ShortString
    """Accession Number (0008,0050) of the imaging order in the facility's RIS."""
    patient: PatientIdentity
    """The patient as the facility identifies them: the Patient ID and Issuer of Patient ID of the study's
    DICOM headers (the facility's FINESS as issuer when the headers have none), plus the INS if qualified."""
    referring_physician_rpps: RppsId | None = None
    """RPPS of the physician who ordered the exam (the referring physician may read it)."""
    performing_technician_rpps: RppsId | None = None
    """RPPS of the imaging technician who acquired the study (who may read and correct it)."""
    performing_technician: LongString | None = None
    """The technician's name as the facility displays it; informative only, never used for access."""
    study_instance_uid: (
        Annotated[
            DicomUid,
            WithJsonSchema({"type": "string", "maxLength": UID_MAX_LENGTH, "pattern": _UID_PATTERN}),
        ]
        | None
    ) = None
    """Study Instance UID (0020,000D), when the RIS already knows it; otherwise the study is found at the
    source by accession number and Patient ID."""
    source: Annotated[DicomWebSource | DimseSource, Field(discriminator="kind")]
    """Where the study is to be fetched from; it must be one of the facility's configured sources."""

    def partition_key(self) -> str:
        """The Study Instance UID, else the facility's accession number (one order, one partition)."""
        if self.study_instance_uid is not None:
            return self.study_instance_uid
        return f"{self.facility_finess}/{self.accession_number}"


_DICOM_TAG = re.compile(r"[0-9A-F]{8}")
# PS3.5 §6.2 Table 6.2-1.
_DICOM_VRS: Final = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    }
)
# Attributes whose value InstanceStored also carries as a field; both must agree.
_IDENTIFYING_TAGS: Final = {
    "0020000D": "study_instance_uid",
    "0020000E": "series_instance_uid",
    "00080018": "sop_instance_uid",
    "00080016": "sop_class_uid",
}


def _dicom_json_dataset(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # PS3.18 §F.2.2: members are named by the 8 uppercase hex digits of the tag and each carries its "vr".
    for tag, attribute in value.items():
        if _DICOM_TAG.fullmatch(tag) is None:
            raise ValueError(f"DICOM JSON attribute name {tag!r} is not 8 uppercase hex digits (PS3.18 §F.2)")
        if attribute.get("vr") not in _DICOM_VRS:
            raise ValueError(f"DICOM JSON attribute {tag} has no valid 'vr' (PS3.18 §F.2.3)")
    return value


DicomJsonDataset = Annotated[dict[str, dict[str, Any]], AfterValidator(_dicom_json_dataset)]
"""A dataset in the DICOM JSON Model (PS3.18 Annex F), bulk data referenced rather than inlined."""


class InstanceStored(EventData):
    """A SOP instance is durably archived: its bytes are in S3 and will not change under this key."""

    event_type: ClassVar[str] = "fr.emage.instance.stored.v1"
    topic: ClassVar[str] = INSTANCE_STORED_TOPIC

    study_instance_uid: DicomUid
    series_instance_uid: DicomUid
    sop_instance_uid: DicomUid
    sop_class_uid: DicomUid
    transfer_syntax_uid: DicomUid
    """Transfer Syntax UID (0002,0010) of the archived Part 10 file."""
    object_key: ObjectKey
    size_bytes: NonNegativeInt
    """Size of the archived Part 10 file, before envelope encryption."""
    sha256: Sha256Hex
    """SHA-256 of the archived Part 10 file, before envelope encryption."""
    facility_finess: FinessId
    patient: PatientIdentity
    modality: Modality
    stored_at: UtcTimestamp
    dicom_json: DicomJsonDataset
    """The instance's metadata in the DICOM JSON Model (PS3.18 Annex F), as WADO-RS metadata returns it."""

    @model_validator(mode="after")
    def _metadata_matches_identifiers(self) -> InstanceStored:
        for tag, field_name in _IDENTIFYING_TAGS.items():
            values = self.dicom_json.get(tag, {}).get("Value")
            if values is not None and values != [getattr(self, field_name)]:
                raise ValueError(f"dicom_json {tag} {values!r} contradicts {field_name}")
        return self

    def partition_key(self) -> str:
        """The Study Instance UID: instances of a study are consumed in the order they were stored."""
        return self.study_instance_uid


class StudyChanged(EventData):
    """The catalog's view of a study changed; ``revision`` orders the changes of one study."""

    event_type: ClassVar[str] = "fr.emage.study.changed.v1"
    topic: ClassVar[str] = STUDY_CHANGED_TOPIC

    study_instance_uid: DicomUid
    change: Literal["created", "updated", "deleted"]
    revision: PositiveInt
    """Strictly increasing per study, so a view can ignore a stale or replayed change."""
    facility_finess: FinessId
    patient: PatientIdentity
    accession_number: ShortString | None = None
    study_date: date | None = None
    """Study Date (0008,0020)."""
    modalities_in_study: tuple[Modality, ...] = ()
    """Modalities in Study (0008,0061)."""
    referring_physician_rpps: RppsId | None = None
    number_of_series: NonNegativeInt
    number_of_instances: NonNegativeInt
    changed_at: UtcTimestamp

    def partition_key(self) -> str:
        """The Study Instance UID."""
        return self.study_instance_uid


class ProfessionalGrantee(_Frozen):
    """One health professional, by RPPS."""

    kind: Literal["professional"] = "professional"
    rpps: RppsId


class FacilityGrantee(_Frozen):
    """Every professional acting for one facility, by FINESS."""

    kind: Literal["facility"] = "facility"
    finess: FinessId


class ShareGrantee(_Frozen):
    """Whoever holds one share (a share to a professional or a share link)."""

    kind: Literal["share"] = "share"
    share_id: Identifier


ConsentGrantee = Annotated[ProfessionalGrantee | FacilityGrantee | ShareGrantee, Field(discriminator="kind")]


class ConsentChanged(EventData):
    """A patient's consent or opposition was recorded, changed or revoked (FHIR R5 Consent, reduced).

    A grant is ``provision="permit"``; an opposition to care access is ``provision="deny"``. A revocation is
    the same consent with ``status="inactive"`` and a higher ``revision``.
    """

    event_type: ClassVar[str] = "fr.emage.consent.changed.v1"
    topic: ClassVar[str] = CONSENT_CHANGED_TOPIC

    consent_id: Identifier
    revision: PositiveInt
    """Strictly increasing per consent, so a view can ignore a stale or replayed change."""
    patient_key: PatientKey
    status: Literal["active", "inactive"]
    """FHIR Consent.status: ``inactive`` once revoked or expired."""
    provision: Literal["permit", "deny"]
    """FHIR Consent.decision: ``permit`` grants access, ``deny`` opposes it."""
    grantee: ConsentGrantee | None = None
    """FHIR Consent.provision.actor: who a grant is for. An opposition (``deny``) may name none: it is then
    against sharing altogether."""
    study_instance_uid: DicomUid | None = None
    """The one study concerned, or ``None`` for every study of the patient."""
    valid_from: UtcTimestamp | None = None
    valid_until: UtcTimestamp | None = None
    changed_at: UtcTimestamp

    @model_validator(mode="after")
    def _period_is_ordered(self) -> ConsentChanged:
        start, end = self.valid_from, self.valid_until
        if start is not None and end is not None and end <= start:
            raise ValueError("valid_until must be after valid_from")
        if self.provision == "permit" and self.grantee is None:
            raise ValueError("a permit names its grantee")
        return self

    def partition_key(self) -> str:
        """The patient key: the consents of a patient are applied in order."""
        return self.patient_key


class ProfessionalRecipient(_Frozen):
    """A share addressed to one health professional."""

    kind: Literal["professional"] = "professional"
    rpps: RppsId


class LinkRecipient(_Frozen):
    """A share link; the event carries its identifier, never its secret."""

    kind: Literal["link"] = "link"
    link_id: Identifier


class ShareChanged(EventData):
    """A share of studies was created, revoked or expired.

    It covers the listed studies, or with ``all_studies`` every study of the patient (a patient's share of
    their whole record). A share made by a professional names their facility in ``shared_by_facility``: it can
    only ever cover that facility's studies.
    """

    event_type: ClassVar[str] = "fr.emage.share.changed.v1"
    topic: ClassVar[str] = SHARE_CHANGED_TOPIC

    share_id: Identifier
    revision: PositiveInt
    """Strictly increasing per share, so a view can ignore a stale or replayed change."""
    patient_key: PatientKey
    study_instance_uids: tuple[DicomUid, ...] = ()
    all_studies: StrictBool = False
    shared_by: PrincipalSubject
    shared_by_facility: FinessId | None = None
    """``None`` when the patient shared; else the FINESS of the sharing professional's facility."""
    changed_by: PrincipalSubject | None = None
    """Who made this change: the sharer at creation, the sharer or the patient at revocation."""
    recipient: Annotated[ProfessionalRecipient | LinkRecipient, Field(discriminator="kind")]
    status: Literal["active", "revoked", "expired"]
    expires_at: UtcTimestamp | None = None
    changed_at: UtcTimestamp

    @model_validator(mode="after")
    def _names_what_is_shared(self) -> ShareChanged:
        if self.all_studies == bool(self.study_instance_uids):
            raise ValueError("a share lists its studies or covers all studies of the patient, not both")
        return self

    def partition_key(self) -> str:
        """The patient key."""
        return self.patient_key


Role = Literal[
    "radiologist",
    "referring_physician",
    "nurse",
    "imaging_technician",
    "patient",
    "dpo",
    "admin",
    "link_holder",
]
"""Platform roles, and ``link_holder``: whoever opened a share link (no account; subject ``link:<id>``)."""


class Principal(_Frozen):
    """The authenticated user a decision is about."""

    subject: PrincipalSubject
    role: Role
    rpps: RppsId | None = None
    """RPPS claim of a professional (Pro Santé Connect)."""
    facility_finess: FinessId | None = None
    """The facility the professional acts for."""
    name: Annotated[Text, Field(max_length=256)] | None = None
    """Display name, so that a patient's access log says who, not a number."""
    facility_name: Annotated[Text, Field(max_length=256)] | None = None


AccessAction = Literal[
    "search",
    "read_metadata",
    "retrieve",
    "rendered",
    "download",
    "store",
    "correct_metadata",
    "share",
    "revoke_share",
    "create_link",
    "revoke_link",
    "open_link",
    "break_glass",
    "read_audit",
    "verify_audit",
]
"""What the decided request does: the policy's actions, and the gateway's own acts on shares and links."""
AccessBasis = Literal["care", "consent", "share", "link", "break_glass", "own_record", "audit_role"]


class AccessDecided(EventData):
    """The gateway decided a request touching patient data; allow or deny, every decision is audited."""

    event_type: ClassVar[str] = "fr.emage.access.decided.v1"
    topic: ClassVar[str] = ACCESS_DECIDED_TOPIC

    request_id: Identifier
    principal: Principal
    action: AccessAction
    study_instance_uid: DicomUid | None = None
    patient_key: PatientKey | None = None
    decision: Literal["allow", "deny"]
    basis: AccessBasis | None = None
    """What allowed the access; ``None`` exactly when denied."""
    reason: Annotated[Text, Field(min_length=1, max_length=1024)]
    justification: Annotated[Text, Field(min_length=1, max_length=2048)] | None = None
    """The professional's justification, mandatory for break-the-glass."""
    client_address: Annotated[Text, Field(max_length=64)] | None = None
    """The network address the request came from, as the gateway saw it."""
    decided_at: UtcTimestamp

    @model_validator(mode="after")
    def _basis_matches_decision(self) -> AccessDecided:
        if (self.decision == "allow") != (self.basis is not None):
            raise ValueError("an allowed access has a basis and a denied one has none")
        if self.basis == "break_glass" and self.justification is None:
            raise ValueError("break-the-glass access requires a justification")
        return self

    def partition_key(self) -> str:
        """The patient key, else (resource unknown to the gateway) the principal's subject."""
        return self.patient_key if self.patient_key is not None else f"sub:{self.principal.subject}"


_DATA_MODELS: Final[tuple[type[EventData], ...]] = (
    Acquisition,
    InstanceStored,
    StudyChanged,
    ConsentChanged,
    ShareChanged,
    AccessDecided,
)

EVENT_DATA_MODELS: Final[Mapping[str, type[EventData]]] = MappingProxyType(
    {model.event_type: model for model in _DATA_MODELS}
)
"""Event ``type`` → payload model; each model's ``topic`` completes the type ↔ topic ↔ model registry."""

DOMAIN_TOPICS: Final[tuple[str, ...]] = tuple(model.topic for model in _DATA_MODELS)

_MODEL_BY_TOPIC: Final[Mapping[str, type[EventData]]] = MappingProxyType(
    {model.topic: model for model in _DATA_MODELS}
)


def data_model_for_type(event_type: str) -> type[EventData]:
    """The payload model of an event ``type``; raises :class:`UnknownEventTypeError` for foreign types."""
    try:
        return EVENT_DATA_MODELS[event_type]
    except KeyError:
        raise UnknownEventTypeError(f"unknown event type {event_type!r}") from None


def data_model_for_topic(topic: str) -> type[EventData]:
    """The payload model published on ``topic``; :class:`KeyError` for a topic e-mage does not define."""
    return _MODEL_BY_TOPIC[topic]


# --- CloudEvents envelope -----------------------------------------------------------------------------------

# RFC 3986 §4.1 URI-reference / §4.3 absolute-URI, checked by character class and percent-encoding.
_URI_CHARS = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
_URI_REFERENCE = re.compile(f"{_URI_CHARS}+")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:" + _URI_CHARS.replace("#", "") + "*")
# RFC 2046 §5.1 / RFC 9110 §8.3.1: type "/" subtype *( ";" parameter ).
_TCHARS = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"
_MEDIA_TYPE = re.compile(f'{_TCHARS}/{_TCHARS}(?:[ \\t]*;[ \\t]*{_TCHARS}=(?:{_TCHARS}|"[^"\\\\]*"))*')
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")


def _uri_reference(value: str) -> str:
    if _URI_REFERENCE.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not a URI-reference (RFC 3986 §4.1)")
    return value


def _absolute_uri(value: str) -> str:
    if _ABSOLUTE_URI.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not an absolute URI (RFC 3986 §4.3)")
    return value


def _media_type(value: str) -> str:
    if _MEDIA_TYPE.fullmatch(value) is None:
        raise ValueError(f"{value!r} is not a media type (RFC 2046)")
    return value


def is_json_media_type(datacontenttype: str | None) -> bool:
    """Whether ``datacontenttype`` declares JSON: ``*/json``, ``*/*+json`` or absent (JSON format §3.1.1)."""
    if datacontenttype is None:
        return True
    subtype = datacontenttype.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


NonEmptyText = Annotated[Text, Field(min_length=1)]
ExtensionValue = bool | int | str
"""An extension attribute value as the JSON format maps the CloudEvents type system (JSON format §2.2):
Boolean, Integer, or a string for String, Binary, URI, URI-reference and Timestamp."""

_INTEGER_RANGE: Final = range(-(2**31), 2**31)
# Context attributes of the core specification (spec "REQUIRED Attributes", "OPTIONAL Attributes").
_CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
)
_TYPED_EXTENSIONS: Final = frozenset({"traceparent", "tracestate", "partitionkey"})
# Members that carry the payload, never an attribute (spec "Attribute Naming Convention", JSON format §3.1).
_RESERVED_MEMBERS: Final = frozenset({"data", "data_base64"})


def _now() -> datetime:
    return datetime.now(UTC)


def _new_event_id() -> str:
    return str(uuid4())


M = TypeVar("M", bound=EventData)


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event (spec "Context Attributes", "Event Data").

    The distributed-tracing extension attributes ``traceparent``/``tracestate`` (W3C Trace Context) and the
    partitioning extension attribute ``partitionkey`` are typed fields; any other extension attribute is in
    ``extensions``. ``data`` is a JSON value, or :class:`bytes` for binary data (``data_base64``); whether the
    ``data`` member is present at all is tracked separately from its value, as JSON format §3.1.1 requires
    (an explicit ``null`` payload is not an absent payload).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: NonEmptyText = Field(default_factory=_new_event_id)
    source: Annotated[StrictStr, AfterValidator(_uri_reference)]
    type: NonEmptyText
    subject: NonEmptyText | None = None
    time: UtcTimestamp | None = Field(default_factory=_now)
    datacontenttype: Annotated[StrictStr, AfterValidator(_media_type)] | None = "application/json"
    dataschema: Annotated[StrictStr, AfterValidator(_absolute_uri)] | None = None
    traceparent: Text | None = None
    """W3C ``traceparent`` of the producing span (distributed-tracing extension)."""
    tracestate: Text | None = None
    """W3C ``tracestate`` accompanying ``traceparent`` (distributed-tracing extension)."""
    partitionkey: Text | None = None
    """The key the event was partitioned by (partitioning extension; Kafka binding §3.1)."""
    extensions: Mapping[str, ExtensionValue] = Field(default_factory=dict)
    # Not re-validated: it is parser output or a payload model's JSON dump, and walking a DICOM JSON tree
    # again would cost more than parsing it.
    data: SkipValidation[JsonValue | bytes] = None

    @field_validator("extensions")
    @classmethod
    def _check_extensions(cls, value: Mapping[str, ExtensionValue]) -> Mapping[str, ExtensionValue]:
        for name, attribute in value.items():
            # Spec "Attribute Naming Convention": lower-case ASCII letters and digits; "data" is reserved.
            if _ATTRIBUTE_NAME.fullmatch(name) is None:
                raise ValueError(f"extension attribute name {name!r} is not lower-case ASCII letters/digits")
            if name in _CORE_ATTRIBUTES or name in _TYPED_EXTENSIONS or name in _RESERVED_MEMBERS:
                raise ValueError(f"{name!r} is not an extension attribute")
            if isinstance(attribute, bool):
                continue
            if isinstance(attribute, int) and attribute not in _INTEGER_RANGE:
                raise ValueError(f"extension attribute {name!r} is outside the CloudEvents Integer range")
            if isinstance(attribute, str):
                _plain_text(attribute)
        return value

    @model_validator(mode="after")
    def _data_matches_content_type(self) -> CloudEvent:
        # JSON format §3.1.1: data that is neither binary nor JSON-formatted travels as a string.
        if not is_json_media_type(self.datacontenttype) and not isinstance(self.data, str | bytes | None):
            raise ValueError(f"data of content type {self.datacontenttype!r} must be a string or bytes")
        return self

    @property
    def has_data(self) -> bool:
        """Whether the event carries a ``data`` member (possibly ``null``)."""
        return "data" in self.model_fields_set

    def to_json_object(self) -> dict[str, Any]:
        """The event as a JSON object per JSON format §3: attributes and extensions as top-level members."""
        members: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        optional: dict[str, str | None] = {
            "subject": self.subject,
            "time": format_rfc3339(self.time) if self.time is not None else None,
            "datacontenttype": self.datacontenttype,
            "dataschema": self.dataschema,
            "traceparent": self.traceparent,
            "tracestate": self.tracestate,
            "partitionkey": self.partitionkey,
        }
        members.update((name, value) for name, value in optional.items() if value is not None)
        members.update(self.extensions)
        if self.has_data:
            if isinstance(self.data, bytes):
                members["data_base64"] = base64.b64encode(self.data).decode("ascii")
            else:
                members["data"] = self.data
        return members

    def to_bytes(self) -> bytes:
        """UTF-8 JSON of :meth:`to_json_object`, the value of a structured-mode Kafka record.

        JSON has no NaN or infinity (RFC 8259 §6); like pydantic's JSON mode, such floats become ``null``.
        """
        return to_json(self.to_json_object(), inf_nan_mode="null")

    @classmethod
    def from_bytes(cls, raw: bytes) -> CloudEvent:
        """Decode a CloudEvents JSON envelope (JSON format §3); :class:`InvalidEnvelopeError` says why not.

        A ``null`` attribute is treated as absent (JSON format §2.2); ``data_base64`` is decoded to bytes
        (§3.1.2). The event ``type`` is not checked against the registry: see :meth:`data_as`.
        """
        try:
            members = from_json(raw, allow_inf_nan=False)
        except ValueError as exc:
            raise InvalidEnvelopeError(f"not a JSON document: {exc}") from exc
        if not isinstance(members, dict):
            raise InvalidEnvelopeError(f"a CloudEvent is a JSON object, not {type(members).__name__}")
        if members.get("specversion") != "1.0":
            version = members.get("specversion")
            raise InvalidEnvelopeError(f"unsupported specversion {version!r}, expected '1.0'")
        missing = [name for name in ("id", "source", "type") if members.get(name) is None]
        if missing:
            raise InvalidEnvelopeError(f"missing required attributes: {', '.join(missing)}")
        if members.get("data") is not None and members.get("data_base64") is not None:
            raise InvalidEnvelopeError("'data' and 'data_base64' are mutually exclusive (JSON format §3.1.1)")

        fields: dict[str, Any] = {"time": None, "datacontenttype": None}
        extensions: dict[str, Any] = {}
        for name, value in members.items():
            if name == "data":
                if "data" not in fields:
                    fields["data"] = value
            elif value is None:
                continue
            elif name == "data_base64":
                fields["data"] = _decode_base64(value)
            elif name in _CORE_ATTRIBUTES or name in _TYPED_EXTENSIONS:
                fields[name] = value
            else:
                extensions[name] = value
        fields["extensions"] = extensions
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidEnvelopeError(f"invalid CloudEvent attributes: {exc}") from exc

    def data_as(self, model: builtins.type[M]) -> M:
        """The payload validated as ``model``; the event ``type`` must be the one ``model`` is registered for.

        Raises :class:`InvalidEventDataError` when the type does not match or the data is invalid.
        """
        if self.type != model.event_type:
            raise InvalidEventDataError(f"event type {self.type!r} does not carry {model.__name__}")
        if not is_json_media_type(self.datacontenttype) or isinstance(self.data, bytes):
            raise InvalidEventDataError(f"{model.__name__} is carried as JSON data")
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise InvalidEventDataError(f"invalid {model.__name__} in event {self.id}: {exc}") from exc


def _decode_base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise InvalidEnvelopeError("'data_base64' is a Base64 string (JSON format §3.1.2)")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise InvalidEnvelopeError(f"'data_base64' is not valid Base64: {exc}") from exc


def decode_data(event: CloudEvent) -> EventData:
    """The payload of an e-mage event, validated by the model its ``type`` is registered with.

    Raises :class:`UnknownEventTypeError` or :class:`InvalidEventDataError`.
    """
    return event.data_as(data_model_for_type(event.type))


def make_event(
    data: EventData,
    source: str,
    *,
    subject: str | None = None,
    key: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """Wrap a payload in a new CloudEvent of its registered ``type``.

    ``source`` names the producing service as a URI-reference, e.g. ``/emage/ingest``. ``key`` overrides
    the payload's :meth:`EventData.partition_key` and is recorded as the ``partitionkey`` extension
    attribute, which :meth:`emage_common.kafka.EventPublisher.publish` uses as the record key (Kafka binding
    §3.1).
    """
    return CloudEvent(
        source=source,
        type=data.event_type,
        subject=subject,
        time=time if time is not None else _now(),
        partitionkey=key if key is not None else data.partition_key(),
        data=data.model_dump(mode="json"),
    )
