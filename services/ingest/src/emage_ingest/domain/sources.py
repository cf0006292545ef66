"""The PACS a facility's studies may be pulled from, and which of them an acquisition event designates.

An ``emage.acquisition.v1`` event names where its study is (a DICOMweb base URL, or a DIMSE peer), but an
event is only data published on a topic: it is never trusted to choose where e-mage connects, nor with which
credentials. The settings configure, per facility (FINESS), the sources ingest may pull from and the
credentials to use there; an event is pulled only if it names one of its own facility's sources
(:func:`resolve_source`). Everything here is pure: no I/O.

Errors say whether retrying can help. :class:`PullRejectedError` is an
:class:`~emage_common.events.InvalidEventDataError`, so the consumer dead-letters the event at once, its
message starting with a :class:`RejectionReason` code operators can filter on. :class:`SourceUnavailableError`
is transient: the consumer retries with backoff, within the budget of :class:`PullRetryPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator

from emage_common.events import Acquisition, AeTitle, DicomWebSource, DimseSource, InvalidEventDataError

RetrieveMethod = Literal["c-get", "c-move"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class RejectionReason(StrEnum):
    """Why an acquisition event cannot be pulled, whatever the number of attempts."""

    UNKNOWN_FACILITY = "unknown-facility"
    """No source is configured for the event's facility."""
    SOURCE_NOT_CONFIGURED = "source-not-configured"
    """The event names a source that is not one of its facility's."""
    RETRIEVE_NOT_ALLOWED = "retrieve-not-allowed"
    """The DIMSE peer is configured, but not for the retrieve method (C-GET/C-MOVE) the event asks for."""
    SOURCE_REFUSED_CREDENTIALS = "source-refused-credentials"
    """The source answers, but refuses e-mage's configured credentials (HTTP 401/403)."""
    SOURCE_REFUSED_REQUEST = "source-refused-request"
    """The source answers the request with an error that retrying cannot change."""
    AMBIGUOUS_STUDY = "ambiguous-study"
    """The accession number (and Patient ID) match several studies at the source."""
    PATIENT_MISMATCH = "patient-mismatch"
    """The study at the source has another Patient ID than the event's patient."""
    ACCESSION_MISMATCH = "accession-mismatch"
    """The study at the source has another Accession Number than the event's."""
    INSTANCE_REJECTED = "instance-rejected"
    """The archive refused instances of the study (e.g. a SOP class it does not accept)."""


class PullRejectedError(InvalidEventDataError):
    """An acquisition that cannot be pulled: dead-lettered at once, its message led by its reason code."""

    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceUnavailableError(RuntimeError):
    """The source cannot be reached, or does not have the whole study yet: try again later."""


# --- Configured sources (settings) --------------------------------------------------------------------------


class DicomWebPeer(BaseModel):
    """A DICOMweb origin server of a facility, and how ingest authenticates to it.

    HTTP Basic (``username`` + ``password``) or a bearer token (``bearer_token``), or neither for a server
    that needs no authentication on a private network. ``ca_file`` verifies the server's TLS certificate
    against a private CA bundle (the system trust store otherwise).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: HttpUrl
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    ca_file: str | None = None

    @field_validator("base_url")
    @classmethod
    def _plain_base_url(cls, value: HttpUrl) -> HttpUrl:
        if value.query or value.fragment or value.username or value.password:
            raise ValueError("a DICOMweb base URL has no user information, query or fragment (PS3.18 §8.2)")
        return value

    @model_validator(mode="after")
    def _one_authentication(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("HTTP Basic needs both username and password")
        if self.username is not None and self.bearer_token is not None:
            raise ValueError("configure HTTP Basic or a bearer token, not both")
        return self

    @property
    def normalized_url(self) -> str:
        return normalized_base_url(str(self.base_url))


class DimsePeer(BaseModel):
    """A DIMSE Query/Retrieve SCP of a facility (PS3.4 Annex C).

    ``calling_ae_title`` is the AE title ingest presents to it (default: the ingest DIMSE AE title), which
    the PACS must know. ``retrieve`` lists the methods events may ask for: C-GET brings instances back on
    ingest's own association; C-MOVE has the PACS send them to ingest's C-STORE SCP, so it also needs the
    PACS' AE title mapped to the facility in ``EMAGE_INGEST_AE_TITLE_FACILITIES``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: AeTitle
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\-]+$")
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AeTitle | None = None
    retrieve: frozenset[RetrieveMethod] = frozenset({"c-get"})

    def names(self, source: DimseSource) -> bool:
        """Whether an event's DIMSE source is this peer (AE titles without padding, host names caseless)."""
        return (
            source.ae_title.strip() == self.ae_title.strip()
            and source.host.lower() == self.host.lower()
            and source.port == self.port
        )


class FacilitySources(BaseModel):
    """Every source one facility's studies may be pulled from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dicomweb: tuple[DicomWebPeer, ...] = ()
    dimse: tuple[DimsePeer, ...] = ()


def normalized_base_url(url: str) -> str:
    """A base URL in the form two spellings of the same service compare equal in.

    Scheme and host are case-insensitive (RFC 3986 §6.2.2.1), the default port may be omitted (§6.2.3) and a
    trailing slash of the path is not significant for a DICOMweb base URL (resources are appended to it).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


# --- Resolution ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedDimse:
    """The configured DIMSE peer an event designates, with the retrieve method it asks for."""

    peer: DimsePeer
    retrieve: RetrieveMethod


ResolvedSource = DicomWebPeer | ResolvedDimse


def resolve_source(
    acquisition: Acquisition,
    sources: Mapping[str, FacilitySources],
    *,
    ae_title_facilities: Mapping[str, str] | None = None,
) -> ResolvedSource:
    """The configured source (with its credentials) an acquisition event designates.

    Raises :class:`PullRejectedError` when the facility has no configured source, when the event names a
    source not configured for its facility, or a retrieve method the peer is not configured for. A C-MOVE
    also needs the PACS' AE title mapped to the event's facility in ``ae_title_facilities`` (the calling AE
    title of the C-STOREs it sends decides their facility).
    """
    facility = acquisition.facility_finess
    configured = sources.get(facility)
    if configured is None:
        raise PullRejectedError(
            RejectionReason.UNKNOWN_FACILITY, f"no pull source is configured for facility {facility}"
        )
    source = acquisition.source
    if isinstance(source, DicomWebSource):
        wanted = normalized_base_url(str(source.base_url))
        for peer in configured.dicomweb:
            if peer.normalized_url == wanted:
                return peer
        raise PullRejectedError(
            RejectionReason.SOURCE_NOT_CONFIGURED,
            f"the DICOMweb source {wanted} is not configured for facility {facility}",
        )
    for dimse_peer in configured.dimse:
        if not dimse_peer.names(source):
            continue
        if source.retrieve not in dimse_peer.retrieve:
            raise PullRejectedError(
                RejectionReason.RETRIEVE_NOT_ALLOWED,
                f"{source.retrieve.upper()} from {source.ae_title}@{source.host}:{source.port} is not "
                f"configured for facility {facility}",
            )
        if source.retrieve == "c-move":
            mapped = {title.strip(): finess for title, finess in (ae_title_facilities or {}).items()}
            if mapped.get(dimse_peer.ae_title.strip()) != facility:
                raise PullRejectedError(
                    RejectionReason.RETRIEVE_NOT_ALLOWED,
                    f"C-MOVE from {dimse_peer.ae_title} needs its AE title mapped to facility {facility} "
                    "(EMAGE_INGEST_AE_TITLE_FACILITIES)",
                )
        return ResolvedDimse(dimse_peer, source.retrieve)
    raise PullRejectedError(
        RejectionReason.SOURCE_NOT_CONFIGURED,
        f"the DIMSE source {source.ae_title}@{source.host}:{source.port} is not configured for facility "
        f"{facility}",
    )


# --- What is found at the source ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceStudy:
    """A study as the source's query service (QIDO-RS or C-FIND) describes it."""

    study_instance_uid: str
    patient_id: str | None = None
    accession_number: str | None = None


@dataclass(frozen=True, slots=True)
class SourceInstance:
    """An instance the source holds (QIDO-RS or C-FIND at instance level)."""

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None


def the_study(acquisition: Acquisition, found: list[SourceStudy]) -> SourceStudy:
    """The one study of ``found`` the event is about, checked against the event's patient and order.

    None found: the source may not have it yet (:class:`SourceUnavailableError`, retried). Several: the
    accession number is ambiguous there. A Patient ID or Accession Number the source reports that differs
    from the event's means the event and the study are not about the same exam: pulling it would file one
    patient's images under another's care relationships.
    """
    wanted = acquisition.study_instance_uid
    candidates = [study for study in found if wanted is None or study.study_instance_uid == wanted]
    if not candidates:
        what = wanted or f"accession number {acquisition.accession_number}"
        raise SourceUnavailableError(f"the source has no study {what} (yet)")
    if len(candidates) > 1:
        uids = ", ".join(sorted(study.study_instance_uid for study in candidates))
        raise PullRejectedError(
            RejectionReason.AMBIGUOUS_STUDY,
            f"accession number {acquisition.accession_number} matches several studies at the source: {uids}",
        )
    study = candidates[0]
    patient_id = acquisition.patient.patient_id
    if study.patient_id and study.patient_id.strip(" ") != patient_id:
        raise PullRejectedError(
            RejectionReason.PATIENT_MISMATCH,
            f"study {study.study_instance_uid} is of Patient ID {study.patient_id!r} at the source, "
            f"the event says {patient_id!r}",
        )
    accession = acquisition.accession_number
    if study.accession_number and study.accession_number.strip(" ") != accession:
        raise PullRejectedError(
            RejectionReason.ACCESSION_MISMATCH,
            f"study {study.study_instance_uid} has Accession Number {study.accession_number!r} at the "
            f"source, the event says {accession!r}",
        )
    return study


# --- Retries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullRetryPolicy:
    """How long a pull is retried while its source is unavailable: ``max_attempts`` attempts, each bounded
    by ``attempt_timeout_s``, separated by exponential backoff from ``initial_backoff_s`` up to
    ``max_backoff_s`` (the backoff of :class:`~emage_common.kafka.ConsumerRunner`, which runs them)."""

    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float
    attempt_timeout_s: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("a pull has at least one attempt")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoff: 0 < initial <= maximum")
        if self.attempt_timeout_s <= 0:
            raise ValueError("an attempt needs a positive timeout")

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (attempt - 1))

    @property
    def total_backoff_s(self) -> float:
        """The waits between the attempts, added up."""
        return sum(self.backoff_s(attempt) for attempt in range(1, self.max_attempts))

    @property
    def budget_s(self) -> float:
        """The longest an event can take from its first attempt to its dead-lettering."""
        return self.max_attempts * self.attempt_timeout_s + self.total_backoff_s

    @property
    def max_poll_interval_ms(self) -> int:
        """The consumer's ``max.poll.interval.ms``: an event's whole budget, plus a minute for the commit.

        The consumer fetches one event per poll, so a slow pull never makes the broker hand its partition
        to another member (which would pull the same study twice at once).
        """
        return int((self.budget_s + 60) * 1000)
