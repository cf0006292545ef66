"""Settings of the catalog service, read from ``EMAGE_CATALOG_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emage_common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_CATALOG_", extra="ignore", frozen=True)

    service_name: str = "catalog"
    http_port: int = 8082

    consumer_group: str = Field(default="catalog", min_length=1)
    """Kafka consumer group of the ``instance.stored`` consumer. A new group (with a new database) rebuilds
    the catalog from the start of the topic beside the running one."""

    @property
    def care_consumer_group(self) -> str:
        """Kafka consumer group of the ``acquisition`` consumer (care relationships): the instance group's
        name with ``-acquisitions``, so that a new group rebuilds both together."""
        return f"{self.consumer_group}-acquisitions"

    qido_max_limit: int = Field(default=1000, ge=1, le=100_000)
    """Most results one QIDO-RS response holds; a larger ``limit`` is reduced to it, with a ``Warning``
    header saying how many more results there are (PS3.18 §8.3.4.4)."""
    study_changed_debounce_seconds: float = Field(default=0.2, ge=0, le=60)
    """How long ``study.changed`` announcements wait after a change, so the instances of a series being
    stored make one announcement rather than one each."""
