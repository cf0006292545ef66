"""Settings of the ingest service, read from ``EMAGE_INGEST_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from emage_common.events import FinessId
from emage_common.settings import S3Settings, ServiceSettings
from emage_ingest.domain.conflict import ConflictPolicy
from emage_ingest.domain.sources import FacilitySources, PullRetryPolicy

GIB = 1024**3


def _check_kek(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(value.get_secret_value(), validate=True)
    except binascii.Error:
        raise ValueError("a KEK is base64 (standard alphabet, padded)") from None
    if len(raw) != 32:
        raise ValueError(f"a KEK is 32 bytes (AES-256), this one is {len(raw)}")
    return value


AeTitle = Annotated[
    str, Field(max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*$")
]
"""An Application Entity title (VR AE, PS3.5 §6.2): 1 to 16 default-repertoire characters, no backslash."""


class Settings(S3Settings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_INGEST_", extra="ignore", frozen=True)

    service_name: str = "ingest"
    http_port: int = 8081

    default_facility: FinessId = "750000001"
    """FINESS of the facility an instance belongs to when the request does not say (X-Emage-Facility)."""
    ae_title_facilities: dict[str, FinessId] = Field(default_factory=dict)
    """DIMSE calling AE title → FINESS of its facility (JSON object)."""
    dimse_enabled: bool = True
    """Serve DIMSE C-ECHO and C-STORE (PS3.7 §9.1, PS3.4 Annexes A and B) beside the HTTP API."""
    dimse_host: str = "127.0.0.1"
    dimse_port: int = Field(default=11112, ge=0, le=65535)
    """TCP port of the DIMSE SCP (11112: IANA's registered DICOM port); 0 picks a free one."""
    dimse_ae_title: AeTitle = "EMAGE"
    dimse_require_called_ae_title: bool = True
    """Refuse associations addressed to another AE title (A-ASSOCIATE-RJ, called AE title not recognized)."""
    dimse_reject_unknown_calling_ae: bool = False
    """Refuse calling AE titles absent from ``ae_title_facilities`` (else: the default facility's)."""
    dimse_max_pdu_bytes: int = Field(default=256 * 1024, ge=0)
    """Maximum PDU length the SCP receives (PS3.8 §D.1); 0 means unlimited."""
    dimse_max_associations: int = Field(default=16, ge=1)
    dimse_store_timeout_seconds: float = Field(default=300.0, gt=0)
    """How long one C-STORE may take to become durable before the SCP answers 0xA700 (out of resources)."""
    dimse_transfer_syntaxes: tuple[str, ...] = ()
    """Transfer syntaxes the SCP accepts (JSON list); empty: every one the archive accepts."""
    conflict_policy: ConflictPolicy = ConflictPolicy.REJECT
    """Same SOP Instance UID, different bytes: ``reject`` (failure 0x0111) or ``replace`` (warning 0xB00E)."""

    archive_kek: SecretStr | None = None
    """Key-encryption key wrapping the per-study data keys: base64 of 32 random bytes. Required to start."""
    archive_kek_id: str = Field(default="kek-1", min_length=1, max_length=64)
    archive_retired_keks: dict[str, SecretStr] = Field(default_factory=dict)
    """Former KEKs by id (JSON object), kept to unwrap data keys until they are re-wrapped by the current."""
    archive_segment_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)

    stow_max_part_bytes: int = Field(default=4 * GIB, ge=1)
    """Largest DICOM object accepted in one STOW-RS part."""
    stow_max_request_bytes: int = Field(default=64 * GIB, ge=1)
    """Largest STOW-RS request body."""
    stow_spool_dir: str | None = None
    """Where received parts are spooled before archiving (default: the system temporary directory)."""
    stow_parallel_stores: int = Field(default=8, ge=1, le=64)
    """Parts of one STOW-RS request archived concurrently while the next ones are received."""
    dicomweb_base_url: str | None = None
    """Public DICOMweb root for RetrieveURL in STOW-RS responses (default: the request's own base URL)."""

    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a store waits for Kafka before leaving its event to the outbox relay."""
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_lease_seconds: float = Field(default=30.0, gt=0)

    pull_enabled: bool = True
    """Consume ``emage.acquisition.v1`` and pull the announced studies from the facilities' PACS."""
    pull_consumer_group: str = Field(default="ingest-pull", min_length=1)
    pull_sources: dict[FinessId, FacilitySources] = Field(default_factory=dict)
    """FINESS → the sources its studies may be pulled from, with their credentials (JSON object, a secret):
    ``{"750000001": {"dicomweb": [{"base_url": "https://pacs/dicom-web", "username": "u", "password": "p"}],
    "dimse": [{"ae_title": "PACS", "host": "pacs", "port": 104, "retrieve": ["c-get"]}]}}``. An event naming
    any other source is dead-lettered."""
    pull_max_attempts: int = Field(default=6, ge=1, le=100)
    """Attempts of one pull while its source is unavailable, before the event is dead-lettered."""
    pull_initial_backoff_seconds: float = Field(default=2.0, gt=0)
    pull_max_backoff_seconds: float = Field(default=120.0, gt=0)
    pull_attempt_timeout_seconds: float = Field(default=900.0, gt=0)
    """Longest one attempt may take (finding, listing and retrieving the study)."""
    pull_request_timeout_seconds: float = Field(default=30.0, gt=0)
    """Connect/read timeout of one request to a source (HTTP), or ACSE/DIMSE/network timeout (DIMSE)."""

    @property
    def pull_retry_policy(self) -> PullRetryPolicy:
        return PullRetryPolicy(
            max_attempts=self.pull_max_attempts,
            initial_backoff_s=self.pull_initial_backoff_seconds,
            max_backoff_s=max(self.pull_max_backoff_seconds, self.pull_initial_backoff_seconds),
            attempt_timeout_s=self.pull_attempt_timeout_seconds,
        )

    @field_validator("archive_kek")
    @classmethod
    def _check_current(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_kek(value)

    @field_validator("archive_retired_keks")
    @classmethod
    def _check_retired(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for kek in value.values():
            _check_kek(kek)
        return value
