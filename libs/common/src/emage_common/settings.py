"""Typed settings shared by every service.

Each service subclasses :class:`ServiceSettings` (plus :class:`S3Settings` / :class:`OidcSettings` when it
uses them) and sets its own ``env_prefix`` (``EMAGE_INGEST_``, ``EMAGE_CATALOG_`` ...), so one environment
can carry the configuration of all five services without collisions and a Kubernetes ConfigMap per service
stays readable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class ServiceSettings(BaseSettings):
    """What every service needs: where it listens, Kafka, its own MongoDB database, telemetry."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str
    http_host: str = "127.0.0.1"
    http_port: int = Field(ge=1, le=65535)
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies (comma-separated addresses or networks, ``*`` for any) whose ``X-Forwarded-For``/``-Proto``
    are believed: the ingress in front of the gateway, so that audit records the client's address."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_max_handler_attempts: int = Field(default=5, ge=1)

    mongo_uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017/?replicaSet=rs0")
    mongo_database: str = ""

    otel_exporter_otlp_endpoint: str | None = None
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def database_name(self) -> str:
        """The service's own MongoDB database; defaults to the service name (never another's)."""
        return self.mongo_database or self.service_name


class S3Settings(BaseSettings):
    """Any S3-compatible store (SeaweedFS locally; MinIO, Ceph RGW, Garage or a cloud S3 elsewhere)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    s3_endpoint_url: str | None = "http://127.0.0.1:8333"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_bucket: str = "emage-archive"
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"


class OidcSettings(BaseSettings):
    """Any OIDC issuer, found by discovery (``<issuer>/.well-known/openid-configuration``) and its JWKS."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    oidc_issuer: str = "http://127.0.0.1:8180/realms/emage"
    oidc_audience: str = "emage-api"
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    oidc_jwks_cache_seconds: int = Field(default=300, ge=0)
    oidc_leeway_seconds: int = Field(default=30, ge=0, le=300)
