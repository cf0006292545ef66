"""The systems under test, started for one run: e-mage's native stack and an Orthanc beside it.

e-mage: the stack of the :data:`~bench.config.PROFILE` profile (Kafka, MongoDB, SeaweedFS, Keycloak, the five
services) from empty data, exactly as ``make run`` starts it. Orthanc: the Debian package with its DICOMweb
plugin, configured by :class:`emage_devstack.orthanc.OrthancServer` (loopback ports of the same profile,
storage under ``.local/<profile>/orthanc``, files stored as received). Everything is stopped by its PID.
"""

from __future__ import annotations

import base64
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.config import PROFILE
from bench.results import EMAGE, ORTHANC
from emage_devstack.dev_users import TokenRequestError, password_grant
from emage_devstack.orthanc import AE_TITLE as ORTHANC_AE_TITLE
from emage_devstack.orthanc import OrthancServer
from emage_devstack.stack import Stack

#: Calling AE title of the benchmark's modality: the ingest maps it to CHU Alpha (``stack.service_env``).
MODALITY_AE_TITLE = "CHUA_MODALITY"
EMAGE_AE_TITLE = "EMAGE"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Tokens:
    """Access tokens of the dev users from the stack's Keycloak, renewed before they expire.

    Timed sections call :meth:`warm` first, so that no renewal ever falls inside a measurement.
    """

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, username: str, *, min_validity: float = 30) -> str:
        with self._lock:
            token, expires = self._tokens.get(username, ("", 0.0))
            if time.monotonic() > expires - min_validity:
                granted = self._grant(username)
                token = str(granted["access_token"])
                self._tokens[username] = (token, time.monotonic() + float(granted["expires_in"]))
            return token

    def _grant(self, username: str) -> dict[str, Any]:
        for attempt in range(3):
            try:
                return password_grant(self._issuer, username)
            except TokenRequestError:
                if attempt == 2:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def warm(self, usernames: Iterable[str], *, min_validity: float = 150) -> None:
        """Renew now every token that would expire within ``min_validity`` seconds."""
        for username in usernames:
            self(username, min_validity=min_validity)


@dataclass
class Endpoint:
    """A DICOMweb service as one user reaches it: its root URL and the headers that authenticate."""

    system: str
    root: str
    """The DICOMweb root (PS3.18 §8.2), no trailing slash."""
    user: str | None = None
    tokens: Tokens | None = None
    basic: tuple[str, str] | None = None
    fixed: dict[str, str] = field(default_factory=dict)
    """Headers sent with every request (the facility header of ingest's internal port)."""

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {**self.fixed, **extra}
        if self.tokens is not None and self.user is not None:
            headers["Authorization"] = f"Bearer {self.tokens(self.user)}"
        elif self.basic is not None:
            credentials = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        return headers


@dataclass
class BenchStack:
    """The running systems of a benchmark run, and the fixtures scenarios share (stored studies)."""

    stack: Stack
    orthanc: OrthancServer
    tokens: Tokens
    shared: dict[str, object] = field(default_factory=dict)

    @classmethod
    def start(cls, profile: str = PROFILE) -> BenchStack:
        if not OrthancServer.installed():
            raise RuntimeError("Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb")
        stack = Stack(profile, log=log)
        orthanc = OrthancServer(profile, stack.ports)
        started = time.monotonic()
        stack.provision()
        stack.start_infrastructure(wipe=True)
        try:
            stack.start_services()
            orthanc.start(wipe=True)
        except BaseException:
            orthanc.stop()
            stack.stop()
            raise
        log(f"e-mage ({profile}) and Orthanc up in {time.monotonic() - started:.0f}s")
        return cls(stack, orthanc, Tokens(stack.keycloak.issuer))

    def stop(self) -> None:
        try:
            self.orthanc.stop()
        finally:
            self.stack.stop()

    # --- Endpoints -----------------------------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        return self.stack.service_url("access")

    def emage(self, user: str) -> Endpoint:
        """e-mage's public DICOMweb service, through the gateway, as ``user`` (a Keycloak token)."""
        return Endpoint(EMAGE, f"{self.gateway}/dicomweb", user=user, tokens=self.tokens)

    def orthanc_web(self) -> Endpoint:
        """Orthanc's DICOMweb plugin, with the HTTP Basic credentials of its configuration."""
        return Endpoint(ORTHANC, self.orthanc.dicomweb_url, basic=self.orthanc.auth)

    def endpoint(self, system: str, user: str) -> Endpoint:
        return self.emage(user) if system == EMAGE else self.orthanc_web()

    def dimse_target(self, system: str) -> tuple[str, int]:
        """(called AE title, port) of the system's DIMSE storage SCP on 127.0.0.1."""
        if system == EMAGE:
            return EMAGE_AE_TITLE, self.stack.ports.dimse
        return ORTHANC_AE_TITLE, self.orthanc.dicom_port

    def pids(self) -> dict[str, int]:
        """PIDs of every process of the systems under test, by name (services first)."""
        found = {name: process.pid for name, process in self.stack.services.items() if process.pid}
        for name, server in (
            ("kafka", self.stack.kafka),
            ("mongod", self.stack.mongo),
            ("seaweedfs", self.stack.s3),
            ("keycloak", self.stack.keycloak),
            ("orthanc", self.orthanc),
        ):
            if server.pid:
                found[name] = server.pid
        return found


def interleaved(repetition: int, systems: tuple[str, ...] = (EMAGE, ORTHANC)) -> tuple[str, ...]:
    """The systems in the order repetition ``repetition`` runs them: alternated, so neither always goes first
    (a warm page cache, a compaction or a neighbour's load would otherwise favour one side)."""
    return systems if repetition % 2 == 0 else tuple(reversed(systems))
