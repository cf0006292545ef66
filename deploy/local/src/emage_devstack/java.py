"""Finding a JDK: Kafka runs on the machine's default (17+), Keycloak 26 needs 21+."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def _major_version(java_home: Path) -> int:
    release = java_home / "release"
    if release.is_file():
        match = re.search(r'JAVA_VERSION="(\d+)', release.read_text())
        if match:
            return int(match.group(1))
    out = subprocess.run(
        [str(java_home / "bin" / "java"), "-version"], capture_output=True, text=True, check=False
    ).stderr
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def find_java_home(minimum: int, override_env: str | None = None) -> Path:
    """The newest JDK of at least ``minimum`` major version.

    An explicit override variable wins; otherwise the newest of ``JAVA_HOME``, the JDKs under
    /usr/lib/jvm, then ``java`` on PATH.
    """
    if override_env and os.environ.get(override_env):
        explicit = Path(os.environ[override_env])
        if _major_version(explicit) < minimum:
            raise RuntimeError(f"{override_env}={explicit} is not a JDK >= {minimum}")
        return explicit
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(p for p in sorted(jvm.iterdir()) if (p / "bin" / "java").is_file())
    java = shutil.which("java")
    if java:
        candidates.append(Path(java).resolve().parent.parent)
    usable = [
        (v, p) for p in candidates if (p / "bin" / "java").is_file() and (v := _major_version(p)) >= minimum
    ]
    if not usable:
        raise RuntimeError(f"no JDK >= {minimum} found (set JAVA_HOME or install one from Debian's packages)")
    return max(usable, key=lambda vp: vp[0])[1]
