"""Settings of the ingest service, read from ``EMAGE_INGEST_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from emage_common.settings import S3Settings, ServiceSettings


class Settings(S3Settings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_INGEST_", extra="ignore", frozen=True)

    service_name: str = "ingest"
    http_port: int = 8081
