"""Settings of the access service, read from ``EMAGE_ACCESS_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from emage_common.settings import OidcSettings, ServiceSettings


class Settings(OidcSettings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_ACCESS_", extra="ignore", frozen=True)

    service_name: str = "access"
    http_port: int = 8080
