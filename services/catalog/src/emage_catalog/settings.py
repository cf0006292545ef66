"""Settings of the catalog service, read from ``EMAGE_CATALOG_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_CATALOG_", extra="ignore", frozen=True)

    service_name: str = "catalog"
    http_port: int = 8082
