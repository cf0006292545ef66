"""Settings of the consent service, read from ``EMAGE_CONSENT_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_CONSENT_", extra="ignore", frozen=True)

    service_name: str = "consent"
    http_port: int = 8083

    catalog_url: str = "http://127.0.0.1:8082"
    """Internal base URL of the catalog, asked whether a patient has studies at a professional's facility."""
    catalog_timeout_seconds: float = Field(default=5.0, gt=0)

    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a change waits for Kafka before leaving its event to the outbox relay."""
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_lease_seconds: float = Field(default=15.0, gt=0)
    """How long an entry is left to its publisher before the relay may publish it (a dead replica's
    events go out after this); longer than ``publish_timeout_seconds``."""
