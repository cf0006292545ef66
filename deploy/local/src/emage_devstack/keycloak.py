"""Keycloak 26 for the native local stack: the ``emage`` realm of ``deploy/local/keycloak/realm-emage.json``.

Layout and why:

* **Distribution** (shared cache, never touched per profile): ``org.keycloak:keycloak-quarkus-dist`` fetched
  from Maven Central with ``mvn dependency:copy``, unpacked once into ``cache_dir()/keycloak-<version>`` and
  *built* once there (``kc.sh build`` with the build-time options of :data:`BUILD_OPTIONS`), so every start is
  a ``kc.sh start --optimized``: no Quarkus re-augmentation (≈25 s) at start, and no start ever rewrites
  ``lib/quarkus`` of the shared copy (``start-dev`` would re-augment whenever options differ).
* **Per-profile home** ``state_dir(profile)/keycloak``: Keycloak derives its data directory (H2 database,
  transaction logs, temporary files) from ``kc.home.dir``. The home is a small shim (``lib``, ``conf``,
  ``providers``, ``themes``, ``bin`` symlinked to the distribution, ``data/`` real) passed as
  ``-Dkc.home.dir``, so two profiles run side by side on one unpacked, read-only distribution.
* **Realm** (``dev-file`` H2 database): importing the realm into a fresh database costs ≈25 s (schema,
  master realm, then ``emage`` with its password hashes and keys). So the import runs once per *content* of
  the realm file: ``kc.sh import`` into a scratch database whose file is kept in the cache under the realm's
  hash, and a profile's database is reset by copying that snapshot (1 MB). The ``test`` profile resets at
  every start (clean sessions, events and brute-force counters each run); ``run`` keeps its data until the
  realm file changes (or ``wipe=True``). A changed realm file therefore always takes effect.

Measured on this 2-core machine (JDK 25): first provision ≈60 s (mvn + unzip + build ≈30 s, realm import
≈30 s); a start with the snapshot in place ≈9 s to the discovery document (≈13 s the very first time in a
profile, before its CDS archive exists; ≈40 s after a realm edit, which re-imports); stop <1 s; ≈330-390 MiB
RSS with a 384 MiB max heap.

Everything is bound to 127.0.0.1 (HTTP and the management interface, which inherits ``http-host``); the
issuer is pinned with ``--hostname`` so tokens carry the same ``iss`` whichever loopback name a client used.
The master realm has a bootstrap admin ``admin``/``admin``: LOCAL DEVELOPMENT ONLY, like the whole realm.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from .java import find_java_home
from .paths import cache_dir, repo_root
from .ports import Ports
from .process import ManagedProcess, NativeServer, ProcessError

KEYCLOAK_VERSION = "26.5.5"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
REALM = "emage"
REALM_FILE = repo_root() / "deploy" / "local" / "keycloak" / "realm-emage.json"
JAVA_MINIMUM = 21
JAVA_HOME_ENV = "EMAGE_KEYCLOAK_JAVA_HOME"

#: Build-time options baked into the cached distribution by ``kc.sh build``.
BUILD_OPTIONS: tuple[str, ...] = ("--db=dev-file", "--health-enabled=true")
#: Master realm admin, created with the snapshot. LOCAL DEVELOPMENT ONLY.
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
#: Heap of the server: the realm is tiny; 384 MiB leaves room for the import and a test run.
HEAP_OPTS = "-Xms64m -Xmx384m"
#: JDK 24+ refuses JBoss Threads' thread-local reset without this (it logs an IllegalAccessError).
JAVA_OPTS_APPEND = "--add-opens=java.base/java.lang=ALL-UNNAMED"
#: Server only, measured on 2 cores: C1 only (no C2 compiling during boot) 15.5 s -> 12 s and -35 MiB RSS;
#: a dynamic CDS archive of the profile (written at the first clean exit, reused after) 12 s -> 9 s.
#: Token requests stay ~250 ms either way (dominated by the argon2 password hash).
SERVER_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+AutoCreateSharedArchive -Xlog:cds=off"
#: Profiles whose Keycloak data is reset to the realm snapshot at every start.
RESET_EVERY_START = frozenset({"test"})
_SNAPSHOTS_KEPT = 4
_HOME_LINKS = ("bin", "conf", "lib", "providers", "themes")


def distribution_dir() -> Path:
    return cache_dir() / f"keycloak-{KEYCLOAK_VERSION}"


def _build_fingerprint() -> str:
    return json.dumps({"version": KEYCLOAK_VERSION, "build": BUILD_OPTIONS})


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock between processes (two checkouts or profiles provisioning at once)."""
    path = cache_dir() / f".{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _java_home() -> Path:
    """``EMAGE_KEYCLOAK_JAVA_HOME`` when set (it wins even over a newer JDK), else the newest JDK >= 21."""
    return find_java_home(JAVA_MINIMUM, JAVA_HOME_ENV)


def _kc_env(java_home: Path, extra_java_opts: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_", "QUARKUS_"))}
    for var in ("JAVA_OPTS", "JAVA_ADD_OPENS", "JAVA_LOCALE", "JAVA"):
        env.pop(var, None)  # kc.sh's defaults, plus only the heap and the options below
    env.update(
        JAVA_HOME=str(java_home),
        JAVA_OPTS_KC_HEAP=HEAP_OPTS,
        JAVA_OPTS_APPEND=f"{JAVA_OPTS_APPEND} {extra_java_opts}".strip(),
        KC_BOOTSTRAP_ADMIN_USERNAME=ADMIN_USERNAME,
        KC_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    return env


def _fetch_zip() -> Path:
    zip_path = cache_dir() / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
    if zip_path.is_file() and zipfile.is_zipfile(zip_path):
        return zip_path
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch Keycloak from Maven Central")
    subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={cache_dir()}"],
        check=True,
        cwd=cache_dir(),
    )
    if not zipfile.is_zipfile(zip_path):
        raise RuntimeError(f"mvn did not produce {zip_path}")
    return zip_path


def _unzip(zip_path: Path, target: Path) -> None:
    """Unpack keeping the Unix modes (``zipfile`` alone drops the executable bit of ``bin/kc.sh``)."""
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            extracted = Path(archive.extract(info, target))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                extracted.chmod(mode)


def ensure_distribution() -> Path:
    """The unpacked and built distribution in the shared cache (idempotent)."""
    dist = distribution_dir()
    marker = dist / ".emage-built"
    fingerprint = _build_fingerprint()
    if marker.is_file() and marker.read_text() == fingerprint:
        return dist
    with _cache_lock(f"keycloak-{KEYCLOAK_VERSION}"):
        if marker.is_file() and marker.read_text() == fingerprint:
            return dist
        if not (dist / "bin" / "kc.sh").is_file():
            zip_path = _fetch_zip()
            partial = dist.with_name(dist.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _unzip(zip_path, partial)
            (partial / f"keycloak-{KEYCLOAK_VERSION}").rename(dist)
            shutil.rmtree(partial, ignore_errors=True)
        kc_sh = dist / "bin" / "kc.sh"
        kc_sh.chmod(kc_sh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        log = cache_dir() / f"keycloak-{KEYCLOAK_VERSION}-build.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [str(kc_sh), "build", *BUILD_OPTIONS],
                env=_kc_env(_java_home()),
                cwd=dist,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"kc.sh build failed (exit {result.returncode}), see {log}:\n{tail}")
        marker.write_text(fingerprint)
    return dist


def _link_home(home: Path, dist: Path) -> None:
    """Make ``home`` a Keycloak home whose code is the distribution's and whose ``data/`` is its own."""
    home.mkdir(parents=True, exist_ok=True)
    for name in _HOME_LINKS:
        link = home / name
        if link.is_symlink() and link.readlink() == dist / name:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(dist / name)
    (home / "data").mkdir(exist_ok=True)


def _h2_url(home: Path) -> str:
    # Keycloak's default dev-file URL adds AUTO_SERVER=TRUE, which opens a TCP port for a second process:
    # not wanted, every profile has exactly one Keycloak.
    return f"jdbc:h2:file:{home / 'data' / 'h2' / 'keycloakdb'};NON_KEYWORDS=VALUE"


def realm_digest(realm_file: Path = REALM_FILE) -> str:
    """What a realm snapshot depends on: the realm file, the Keycloak build and the admin account."""
    digest = hashlib.sha256()
    digest.update(realm_file.read_bytes())
    digest.update(_build_fingerprint().encode())
    digest.update(f"{ADMIN_USERNAME}:{ADMIN_PASSWORD}".encode())
    return digest.hexdigest()[:16]


def ensure_realm_snapshot(realm_file: Path = REALM_FILE) -> Path:
    """An H2 database holding the master realm (with its admin) and the imported ``emage`` realm.

    Made once per realm content by ``kc.sh import`` (no HTTP port) and kept in the cache; a few recent
    snapshots are kept so that switching branches back and forth stays fast.
    """
    dist = ensure_distribution()
    snapshots = cache_dir() / f"keycloak-{KEYCLOAK_VERSION}-realm-db"
    snapshot = snapshots / realm_digest(realm_file) / "keycloakdb.mv.db"
    if snapshot.is_file():
        return snapshot
    with _cache_lock(f"keycloak-{KEYCLOAK_VERSION}-realm-db"):
        if snapshot.is_file():
            return snapshot
        work = snapshot.parent.with_name(snapshot.parent.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        _link_home(work, dist)
        log = work / "import.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [
                    str(dist / "bin" / "kc.sh"),
                    "import",
                    "--optimized",
                    f"-Dkc.home.dir={work}",
                    f"--db-url={_h2_url(work)}",
                    f"--file={realm_file}",
                    "--override=true",
                ],
                env=_kc_env(_java_home()),
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        produced = work / "data" / "h2" / "keycloakdb.mv.db"
        if result.returncode != 0 or not produced.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"importing {realm_file.name} failed (exit {result.returncode}):\n{tail}")
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced, snapshot.with_suffix(".partial"))
        snapshot.with_suffix(".partial").rename(snapshot)
        shutil.rmtree(work, ignore_errors=True)
        _prune_snapshots(snapshots)
    return snapshot


def _prune_snapshots(snapshots: Path) -> None:
    kept = sorted(
        (d for d in snapshots.iterdir() if d.is_dir() and not d.name.endswith(".partial")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for old in kept[_SNAPSHOTS_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class KeycloakServer(NativeServer):
    """One profile's Keycloak, started and stopped by PID (its process group), data under the profile."""

    name = "keycloak"

    def __init__(self, profile: str, ports: Ports, *, realm_file: Path | None = None) -> None:
        super().__init__(profile, ports)
        self.realm_file = realm_file or REALM_FILE
        self.log_path = self.home / "keycloak.log"
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.keycloak}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{REALM}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.keycloak_management}"

    def provision(self) -> None:
        """Fetch, unpack and build the distribution, and import the realm snapshot (all idempotent)."""
        ensure_distribution()
        ensure_realm_snapshot(self.realm_file)

    def _reset_data(self, snapshot: Path, digest: str) -> None:
        data = self.home / "data"
        shutil.rmtree(data, ignore_errors=True)
        (data / "h2").mkdir(parents=True)
        shutil.copyfile(snapshot, data / "h2" / "keycloakdb.mv.db")
        (self.home / "realm.digest").write_text(digest)

    def _prepare(self, wipe: bool) -> None:
        dist = ensure_distribution()
        _link_home(self.home, dist)
        digest = realm_digest(self.realm_file)
        current = self.home / "realm.digest"
        has_db = (self.home / "data" / "h2" / "keycloakdb.mv.db").is_file()
        if (
            wipe
            or self.profile in RESET_EVERY_START
            or not has_db
            or not current.is_file()
            or current.read_text() != digest
        ):
            self._reset_data(ensure_realm_snapshot(self.realm_file), digest)

    def argv(self) -> list[str]:
        return [
            str(self.home / "bin" / "kc.sh"),
            "start",
            "--optimized",
            f"-Dkc.home.dir={self.home}",
            f"--db-url={_h2_url(self.home)}",
            "--cache=local",
            "--http-enabled=true",
            "--http-host=127.0.0.1",
            f"--http-port={self.ports.keycloak}",
            f"--http-management-port={self.ports.keycloak_management}",
            f"--hostname={self.url}",
            "--log-console-color=false",
        ]

    def start(self, timeout: float = 180, *, wipe: bool = False) -> None:
        """Start and wait until the realm's discovery document answers; ``wipe`` resets the realm data."""
        if self._process is not None and self._process.running():
            return
        started = time.monotonic()
        # Before touching data/: a busy port may be this profile's Keycloak left running by another process.
        for port in (self.ports.keycloak, self.ports.keycloak_management):
            if not _port_free(port):
                raise ProcessError(f"keycloak ({self.profile}): port 127.0.0.1:{port} is already in use")
        self._prepare(wipe)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")  # one start per log: the tail in errors is this start's
        # The CDS archive lives beside data/, so that resetting the data keeps it.
        java_opts = f"{SERVER_JAVA_OPTS} -XX:SharedArchiveFile={self.home / 'keycloak.jsa'}"
        self._process = ManagedProcess(
            f"keycloak ({self.profile})",
            self.argv(),
            self.log_path,
            env=_kc_env(_java_home(), java_opts),
            cwd=self.home,
        )
        self._process.start()
        try:
            self._process.wait_ready(self._discovery_ready, timeout, interval=0.25)
        except ProcessError:
            self._process.stop(timeout=10)
            raise
        self.start_seconds = time.monotonic() - started

    def _discovery_ready(self) -> bool:
        response = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
        return response.status_code == 200 and response.json().get("issuer") == self.issuer
