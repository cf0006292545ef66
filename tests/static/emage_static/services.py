"""What the deployment files must agree with: the five services and their typed settings.

Valid environment variable names are computed from each ``emage_<name>.settings.Settings`` class (its
``model_fields`` and ``env_prefix``), so a renamed or removed setting makes every file that still sets the
old name fail, and a new connection setting is demanded everywhere without editing the tests.
"""

from __future__ import annotations

import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings

REPO_ROOT = Path(__file__).resolve().parents[3]

SERVICE_NAMES = ("ingest", "catalog", "consent", "access", "audit")

#: The public entry: the only service published by compose and exposed by an Ingress.
GATEWAY = "access"

#: Settings a deployment must set whenever the service has them. Their defaults point at 127.0.0.1, which
#: inside a container or pod is the service itself, so leaving one unset is a broken deployment.
CONNECTION_FIELDS = (
    "http_host",
    "kafka_bootstrap_servers",
    "mongo_uri",
    "s3_endpoint_url",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_bucket",
    "oidc_issuer",
)

#: The UID the images run as (Dockerfile ``USER``) and the pods declare.
SERVICE_UID = 10001


@cache
def settings_class(service: str) -> type[BaseSettings]:
    module = importlib.import_module(f"emage_{service}.settings")
    settings: type[BaseSettings] = module.Settings
    return settings


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_secret(arg) for arg in typing.get_args(annotation))
    return False


@dataclass(frozen=True)
class ServiceSpec:
    """One e-mage service as the deployment files must describe it."""

    name: str

    @property
    def module(self) -> str:
        return f"emage_{self.name}"

    @property
    def package(self) -> str:
        return f"emage-{self.name}"

    @property
    def image(self) -> str:
        """Repository name of the image (the last path segment, without registry or tag)."""
        return f"emage-{self.name}"

    @property
    def directory(self) -> Path:
        return REPO_ROOT / "services" / self.name

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    @property
    def settings(self) -> type[BaseSettings]:
        return settings_class(self.name)

    @property
    def env_prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", ""))

    @property
    def http_port(self) -> int:
        default = self.settings.model_fields["http_port"].default
        assert isinstance(default, int), f"{self.name}: Settings.http_port has no default port"
        return default

    def env_name(self, field_name: str) -> str:
        field = self.settings.model_fields[field_name]
        alias = field.validation_alias or field.alias
        if alias is not None:
            assert isinstance(alias, str), f"{self.name}.{field_name}: only plain string aliases are handled"
            return alias.upper()
        return f"{self.env_prefix}{field_name}".upper()

    @property
    def env_names(self) -> frozenset[str]:
        return frozenset(self.env_name(field) for field in self.settings.model_fields)

    @property
    def secret_env_names(self) -> frozenset[str]:
        """Settings typed ``SecretStr``: they may only come from a secret store, never from plain config."""
        return frozenset(
            self.env_name(name)
            for name, field in self.settings.model_fields.items()
            if _is_secret(field.annotation)
        )

    @property
    def required_env_names(self) -> frozenset[str]:
        return frozenset(self.env_name(f) for f in CONNECTION_FIELDS if f in self.settings.model_fields)

    def env_problems(
        self, env: Mapping[str, str | None], where: str, *, require_connections: bool = True
    ) -> list[str]:
        """Problems of an environment meant for this service; ``None`` values are set but unknown here."""
        problems = []
        for name in sorted(env):
            if name.startswith("EMAGE_") and name not in self.env_names:
                problems.append(f"{where}: {name} is not a setting of {self.module}.settings.Settings")
        if require_connections:
            for name in sorted(self.required_env_names - set(env)):
                problems.append(f"{where}: required connection setting {name} is not set")
        host = env.get(self.env_name("http_host"))
        if host is not None and host != "0.0.0.0":  # noqa: S104 - a container must listen beyond loopback
            problems.append(f"{where}: {self.env_name('http_host')}={host}, must be 0.0.0.0 in a container")
        port = env.get(self.env_name("http_port"))
        if port is not None and str(port) != str(self.http_port):
            problems.append(
                f"{where}: {self.env_name('http_port')}={port} differs from the service port {self.http_port}"
            )
        return problems


SERVICES = tuple(ServiceSpec(name) for name in SERVICE_NAMES)


def service(name: str) -> ServiceSpec:
    return next(spec for spec in SERVICES if spec.name == name)
