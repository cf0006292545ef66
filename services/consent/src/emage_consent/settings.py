"""Settings of the consent service, read from ``EMAGE_CONSENT_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_CONSENT_", extra="ignore", frozen=True)

    service_name: str = "consent"
    http_port: int = 8083
