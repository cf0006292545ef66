"""Settings of the audit service, read from ``EMAGE_AUDIT_*`` environment variables."""

from __future__ import annotations

from typing import Final

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings

DEV_ONLY_CHECKPOINT_SIGNING_KEY: Final = "ZGV2LW9ubHkgZS1tYWdlIGF1ZGl0IGtleSBwdWJsaWM="
"""DEVELOPMENT ONLY, public in this repository: the Ed25519 seed (32 bytes, base64) that signs the chain's
checkpoints in local runs and tests. Anyone can forge checkpoints with it; every real deployment sets
``EMAGE_AUDIT_CHECKPOINT_SIGNING_KEY`` from its secret store, and the service warns at start-up otherwise."""


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_AUDIT_", extra="ignore", frozen=True)

    service_name: str = "audit"
    http_port: int = 8084

    consumer_group: str = Field(default="audit", min_length=1)
    """Kafka consumer group of the domain-topic consumer."""

    checkpoint_signing_key: SecretStr = SecretStr(DEV_ONLY_CHECKPOINT_SIGNING_KEY)
    """Base64 of the 32-byte Ed25519 private key (seed) that signs checkpoints. A secret."""
    checkpoint_previous_public_keys: tuple[str, ...] = ()
    """Base64 of the raw 32-byte Ed25519 public keys of earlier signing keys, still trusted to verify the
    checkpoints they signed after a key rotation."""
    checkpoint_interval_seconds: float = Field(default=300.0, gt=0)
    """How often the head of the chain is signed, when records were appended since the last checkpoint."""
    checkpoint_every_records: int = Field(default=1000, ge=1)
    """The head is also signed as soon as this many records were appended since the last checkpoint."""

    retention_days: int = Field(default=3650, ge=1)
    """How long records are kept; older whole segments (up to a checkpoint) may then be purged, on request."""

    exports_page_limit: int = Field(default=1000, ge=1, le=10_000)
    """Most records (or FHIR AuditEvents) one page of ``/records`` or ``/fhir`` holds."""

    syslog_host: str | None = None
    """The audit record repository (IHE ATNA) DICOM audit messages are sent to; unset: no export."""
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_tls: bool = False
    """RFC 5425 (syslog over TLS) rather than plain TCP (RFC 6587)."""
    syslog_tls_cafile: str | None = None
    """CA bundle the collector's certificate is verified against (default: the system trust store)."""
    syslog_tls_certfile: str | None = None
    """Client certificate for mutual TLS (IHE ATNA secure node), with ``syslog_tls_keyfile``."""
    syslog_tls_keyfile: str | None = None
    syslog_hostname: str | None = None
    """HOSTNAME field of the syslog messages (default: this machine's name)."""
    syslog_app_name: str = "emage-audit"
    syslog_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the exporter looks for records appended by other instances of the service."""
    syslog_retry_initial_seconds: float = Field(default=0.5, gt=0)
    syslog_retry_max_seconds: float = Field(default=30.0, gt=0)
    audit_source_id: str = Field(default="emage", min_length=1)
    """AuditSourceID of the DICOM audit messages (PS3.15 A.5.2): this platform, as the repository knows it."""
    audit_enterprise_site_id: str | None = None
    """AuditEnterpriseSiteID: the organisation operating the platform."""
