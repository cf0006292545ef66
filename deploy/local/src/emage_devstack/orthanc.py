"""Orthanc from Debian as a hospital PACS for the integration tests: its own configuration, loopback only.

A hospital's PACS is what e-mage pulls studies from when an acquisition event announces them (WADO-RS through
the DICOMweb plugin, or DIMSE C-FIND/C-GET). The Debian packages ``orthanc`` (1.10) and ``orthanc-dicomweb``
(1.7) provide a real one; the system service is never used: each profile starts its own ``Orthanc`` process
with a configuration written here, its storage under ``.local/<profile>/orthanc``, stopped by its PID.

* HTTP (REST and DICOMweb under ``/dicom-web/``) requires HTTP Basic credentials and, with
  ``RemoteAccessAllowed`` off, answers loopback clients only.
* DIMSE: C-ECHO and C-STORE from any AE, C-FIND, C-GET and C-MOVE only from the modalities of the
  configuration, whose host is checked (``DicomCheckModalityHost``): e-mage's AE on 127.0.0.1.
* Ports: Orthanc 1.10 has no listen-address option, so both ports sit in the profile's block, above its
  last port (the DIMSE one) by :data:`HTTP_PORT_OFFSET` and :data:`DICOM_PORT_OFFSET`.
* Files are stored as received (``StorageCompression`` off, no ingest transcoding), so what Orthanc
  returns through ``/instances/{id}/file`` is what it was sent, and a pull can be compared byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Final

import httpx

from .ports import Ports
from .process import ManagedProcess, NativeServer

ORTHANC_BINARY: Final = Path("/usr/sbin/Orthanc")
#: Where the Debian package ``orthanc-dicomweb`` puts the plugin (the versioned library links to it).
DICOMWEB_PLUGIN: Final = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
HTTP_PORT_OFFSET: Final = 30
DICOM_PORT_OFFSET: Final = 31
AE_TITLE: Final = "ORTHANC"
#: The HTTP Basic credentials of the test PACS. LOCAL TESTS ONLY.
USERNAME: Final = "emage-puller"
PASSWORD: Final = "orthanc-test-password-not-secret"


class OrthancServer(NativeServer):
    """One Orthanc of a profile, with DICOMweb, HTTP Basic authentication and known DIMSE peers."""

    name = "orthanc"
    stop_timeout = 20.0

    def __init__(
        self, profile: str, ports: Ports, *, peers: dict[str, tuple[str, int]] | None = None
    ) -> None:
        super().__init__(profile, ports)
        self.http_port = ports.dimse + HTTP_PORT_OFFSET
        self.dicom_port = ports.dimse + DICOM_PORT_OFFSET
        #: AE title → (host, port) of the modalities allowed to query and retrieve.
        self.peers = dict(peers or {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (PS3.18 §8.2), without a trailing slash."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (USERNAME, PASSWORD)

    @staticmethod
    def installed() -> bool:
        """Whether the Debian packages ``orthanc`` and ``orthanc-dicomweb`` are installed."""
        return ORTHANC_BINARY.is_file() and DICOMWEB_PLUGIN.exists()

    def provision(self) -> None:
        if not self.installed():
            raise RuntimeError(
                "Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb (make dicom-tools)"
            )

    def configuration(self) -> dict[str, object]:
        """The Orthanc configuration of this profile (Orthanc Book, "Configuration of Orthanc")."""
        storage = str((self.home / "storage").resolve())
        return {
            "Name": f"emage-{self.profile}-pacs",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "OverwriteInstances": False,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USERNAME: PASSWORD},
            "HttpThreadsCount": 8,
            "DicomServerEnabled": True,
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {
                title.lower(): {"AET": title, "Host": host, "Port": port, "AllowTranscoding": False}
                for title, (host, port) in self.peers.items()
            },
            "DicomAssociationCloseDelay": 0,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Host": f"127.0.0.1:{self.http_port}",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }

    def start(self, *, wipe: bool = False, timeout: float = 60) -> None:
        """Start Orthanc (``wipe``: from an empty storage); return once its REST API answers."""
        self.provision()
        if wipe:
            shutil.rmtree(self.home, ignore_errors=True)
        (self.home / "storage").mkdir(parents=True, exist_ok=True)
        config = self.home / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=2))
        config.chmod(0o600)
        self._process = ManagedProcess(
            "orthanc", [str(ORTHANC_BINARY), str(config.resolve())], self.home / "orthanc.log"
        )
        self._process.start()
        self._process.wait_ready(self._answers, timeout)

    def _answers(self) -> bool:
        return httpx.get(f"{self.url}/system", auth=self.auth, timeout=1).status_code == 200
