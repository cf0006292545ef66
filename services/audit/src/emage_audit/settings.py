"""Settings of the audit service, read from ``EMAGE_AUDIT_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_AUDIT_", extra="ignore", frozen=True)

    service_name: str = "audit"
    http_port: int = 8084
