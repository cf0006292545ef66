"""The machine and the versions a run measured: what the report's first tables say."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.config import repo_root


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, kernel and OS of this machine, and its load when the run started."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = _read("/proc/meminfo")
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.MULTILINE)
    load = os.getloadavg()
    return {
        "cores": f"{len(os.sched_getaffinity(0))} usable ({os.cpu_count()} online)",
        "memory": f"{int(total.group(1)) / 1024 / 1024:.1f} GiB" if total else "unknown",
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": os_release.group(1) if os_release else "unknown",
        "load average at start (1, 5, 15 min)": ", ".join(f"{value:.2f}" for value in load),
    }


def _run(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def emage_commit() -> str:
    """The checkout's commit, and how many files differ from it (other work in progress is measured too)."""
    root = str(repo_root())
    commit = _run("git", "-C", root, "rev-parse", "--short=12", "HEAD") or "unknown"
    changed = uncommitted()
    return f"{commit} + {len(changed)} uncommitted file(s)" if changed else commit


def uncommitted() -> list[str]:
    """Paths of the checkout that differ from its commit (``git status --porcelain``)."""
    lines = _run("git", "-C", str(repo_root()), "status", "--porcelain").splitlines()
    return [line[3:] for line in lines if len(line) > 3]


def measured_changes() -> list[str]:
    """The uncommitted paths that can change a measurement: everything but ``docs/`` (a run rewrites its
    own report there)."""
    return [path for path in uncommitted() if not path.startswith("docs/")]


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(context: Any) -> dict[str, str]:
    """Versions of everything measured; ``context`` is the running :class:`bench.environment.BenchStack`."""
    found: dict[str, str] = {"e-mage": emage_commit()}
    try:
        auth = context.orthanc.auth
        system = httpx.get(f"{context.orthanc.url}/system", auth=auth, timeout=10).json()
        found["Orthanc"] = (
            f"{system.get('Version')} (Debian package, database schema {system.get('DatabaseVersion')})"
        )
        plugin = httpx.get(f"{context.orthanc.url}/plugins/dicom-web", auth=auth, timeout=10).json()
        found["Orthanc DICOMweb plugin"] = str(plugin.get("Version"))
    except (httpx.HTTPError, ValueError) as error:
        found["Orthanc"] = f"unknown ({error})"
    from emage_devstack.kafka import kafka_libs
    from emage_devstack.keycloak import KEYCLOAK_VERSION

    jars = sorted(path.name for path in kafka_libs().glob("kafka_2.13-*.jar"))
    found["Apache Kafka"] = jars[0].removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "unknown"
    try:
        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]] = MongoClient(
            context.stack.mongo.uri, serverSelectionTimeoutMS=5000
        )
        try:
            found["MongoDB"] = str(client.admin.command("buildInfo")["version"])
        finally:
            client.close()
    except Exception as error:
        found["MongoDB"] = f"unknown ({error})"
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
    match = re.search(r"version\s+\S+\s+(\S+)", _run(weed, "version"))
    found["SeaweedFS"] = match.group(1) if match else "unknown"
    found["Keycloak"] = KEYCLOAK_VERSION
    found["Python"] = platform.python_version()
    storescu = re.search(r"storescu v(\S+)", _run("storescu", "--version"))
    found["dcmtk (storescu)"] = storescu.group(1) if storescu else "unknown"
    for package in ("pydicom", "fastapi", "uvicorn", "aiokafka", "pymongo", "aiobotocore", "httpx"):
        found[package] = _package(package)
    return found
