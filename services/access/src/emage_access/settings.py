"""Settings of the access service, read from ``EMAGE_ACCESS_*`` environment variables."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emage_access.domain.policy import PolicySettings
from emage_access.domain.principal import DEFAULT_ACCEPTED_ACR, DEFAULT_REQUIRED_AMR, Role
from emage_common.settings import OidcSettings, ServiceSettings


class Settings(OidcSettings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAGE_ACCESS_", extra="ignore", frozen=True)

    service_name: str = "access"
    http_port: int = 8080

    catalog_url: str = "http://127.0.0.1:8082"
    """Internal base URL of the catalog (QIDO-RS, WADO-RS metadata, study access attributes)."""
    ingest_url: str = "http://127.0.0.1:8081"
    """Internal base URL of ingest (STOW-RS, WADO-RS bytes, rendered, thumbnails)."""
    consent_url: str = "http://127.0.0.1:8083"
    """Internal base URL of the consent service (``/api/v1/consents``)."""
    audit_url: str = "http://127.0.0.1:8084"
    """Internal base URL of the audit service (``/api/v1/audit``)."""
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_read_timeout_seconds: float = Field(default=120.0, gt=0)

    required_amr: frozenset[str] = DEFAULT_REQUIRED_AMR
    """``amr`` methods that prove a second factor (RFC 8176); staff tokens need one of them..."""
    accepted_acr: frozenset[str] = DEFAULT_ACCEPTED_ACR
    """... or one of these ``acr`` levels of assurance."""

    opposition_spares_owning_radiology: bool = True
    opposition_spares_break_glass: bool = True
    break_glass_roles: frozenset[Role] = frozenset({Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN})
    break_glass_max_minutes: int = Field(default=240, ge=1, le=24 * 60)

    study_attributes_cache_seconds: float = Field(default=1.0, ge=0, le=30)
    """How long a study's access attributes are reused between decisions (a viewer's burst of frame
    requests asks the catalog once); a change of the study reaches decisions within it. 0 disables it."""

    consent_view_ready_timeout_seconds: float = Field(default=60.0, gt=0)
    """How long startup waits for the consent view to catch up with ``consent.changed``."""

    web_oidc_issuer: str | None = None
    """The issuer browsers sign in at (viewer and portal), when it differs from the URL the gateway reaches
    (an issuer behind another host name); by default ``oidc_issuer``."""
    web_client_id: str = "emage-web"
    """Public OIDC client (authorization code + PKCE) of professionals in the viewer and the portal."""
    patient_client_id: str = "emage-patient"
    """Public OIDC client (authorization code + PKCE) of patients in the portal."""
    viewer_dir: Path | None = None
    """The OHIF viewer's static build (the ``dist/`` folder of ``npm pack @ohif/app``), served at
    ``/viewer/``; unset: the deployment has no viewer and ``/viewer/`` answers 404."""

    @property
    def browser_issuer(self) -> str:
        """The OIDC issuer as browsers reach it."""
        return self.web_oidc_issuer or self.oidc_issuer

    @property
    def policy(self) -> PolicySettings:
        """The deployment's policy choices."""
        return PolicySettings(
            opposition_spares_owning_radiology=self.opposition_spares_owning_radiology,
            opposition_spares_break_glass=self.opposition_spares_break_glass,
            break_glass_roles=self.break_glass_roles,
            break_glass_max_duration=timedelta(minutes=self.break_glass_max_minutes),
        )
