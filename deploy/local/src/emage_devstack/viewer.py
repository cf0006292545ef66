"""The OHIF viewer's static build for the gateway: ``@ohif/app`` from npm, fetched once into the shared cache.

The npm package holds a complete production build in ``package/dist/``; the gateway serves it at
``/viewer/`` (``EMAGE_ACCESS_VIEWER_DIR``) and adapts it to that sub-path and to the platform as it serves
it, so the tarball is used exactly as published. ``npm pack`` fetches it (the registry's own client); its
SHA-512 is then checked against the integrity the registry publishes for the version (``npm view … dist``)
and against the one pinned here, so that neither a corrupt download nor a re-published version goes
unnoticed. Unpacked once into ``cache_dir()/ohif-app-<version>`` (about 200 MB), marked complete with the
integrity it was checked against; later calls only look at the marker.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .paths import cache_dir

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: ``dist.integrity`` of the version on registry.npmjs.org (Subresource Integrity form of its SHA-512).
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
_MARKER = ".emage-complete"


class ViewerProvisioningError(RuntimeError):
    """The viewer could not be fetched, or what was fetched is not the published package."""


def viewer_home() -> Path:
    return cache_dir() / f"ohif-app-{OHIF_VERSION}"


def viewer_dir() -> Path:
    """The static build the gateway serves (``index.html``, ``app-config.js``, bundles, WebAssembly)."""
    return viewer_home() / "dist"


def tarball_integrity(path: Path) -> str:
    """``sha512-<base64>``: a file's integrity string as npm writes it (Subresource Integrity)."""
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Two checkouts or profiles provisioning at once: one fetches, the other waits and reuses."""
    with (cache_dir() / f".ohif-app-{OHIF_VERSION}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npm(*args: str, cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerProvisioningError(
            "npm is needed to fetch the OHIF viewer from the npm registry (Debian: apt-get install npm)"
        )
    result = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise ViewerProvisioningError(f"npm {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _published_integrity(workdir: Path) -> str:
    """What the registry publishes as the version's ``dist.integrity``."""
    published = json.loads(_npm("view", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "dist", "--json", cwd=workdir))
    integrity = published.get("integrity") if isinstance(published, dict) else None
    if not isinstance(integrity, str):
        raise ViewerProvisioningError(
            f"the registry publishes no integrity for {OHIF_PACKAGE}@{OHIF_VERSION}"
        )
    return integrity


def _unpack(tarball: Path, target: Path) -> None:
    """Extract ``package/dist`` of ``tarball`` into ``target/dist`` (the ``data`` filter refuses links out,
    absolute paths and device files)."""
    with tarfile.open(tarball, "r:gz") as archive:
        members = [member for member in archive.getmembers() if member.name.startswith("package/dist/")]
        archive.extractall(target, members=members, filter="data")
    (target / "package" / "dist").rename(target / "dist")
    shutil.rmtree(target / "package")


def is_provisioned() -> bool:
    marker = viewer_home() / _MARKER
    return marker.is_file() and marker.read_text().strip() == OHIF_INTEGRITY


def ensure_viewer() -> Path:
    """The verified, unpacked OHIF build in the shared cache (idempotent); returns :func:`viewer_dir`."""
    if is_provisioned():
        return viewer_dir()
    with _cache_lock():
        if is_provisioned():
            return viewer_dir()
        home = viewer_home()
        with tempfile.TemporaryDirectory(prefix="ohif-", dir=cache_dir()) as scratch:
            workdir = Path(scratch)
            published = _published_integrity(workdir)
            if published != OHIF_INTEGRITY:
                raise ViewerProvisioningError(
                    f"{OHIF_PACKAGE}@{OHIF_VERSION} on the registry has integrity {published}, not the "
                    f"pinned {OHIF_INTEGRITY}: refusing a package that changed since it was reviewed"
                )
            packed = json.loads(_npm("pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--json", cwd=workdir))
            tarball = workdir / packed[0]["filename"]
            fetched = tarball_integrity(tarball)
            if fetched != published:
                raise ViewerProvisioningError(
                    f"the downloaded {tarball.name} has integrity {fetched}, the registry says {published}"
                )
            partial = workdir / "unpacked"
            _unpack(tarball, partial)
            if not (partial / "dist" / "index.html").is_file():
                raise ViewerProvisioningError(f"{tarball.name} holds no dist/index.html")
            shutil.rmtree(home, ignore_errors=True)
            partial.rename(home)
        (home / _MARKER).write_text(OHIF_INTEGRITY + "\n")
    return viewer_dir()
