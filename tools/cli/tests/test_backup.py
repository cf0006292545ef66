"""The backup archive of ``emage db``: layout, round trip, and every way a damaged archive is refused.

The MongoDB side (dump, drop, restore, identical QIDO answers) is drilled on the real stack in
``tests/integration/test_backup_restore.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.int64 import Int64
from bson.son import SON
from typer.testing import CliRunner

from emage_cli.__main__ import app
from emage_cli.backup import (
    FORMAT,
    ArchiveReader,
    ArchiveWriter,
    BackupError,
    iter_bson,
    restore_database,
)

STUDIES = [
    bson.encode({"_id": f"1.2.3.{n}", "n": Int64(n), "modalities": ["CT", "SR"], "nested": {"a": n}})
    for n in range(5)
]
STUDIES_METADATA = {
    "indexes": [
        {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        # Key order is the index: it must come back in the same order.
        {"v": 2, "key": SON([("patient.key", 1), ("study_date", -1)]), "name": "patient", "unique": True},
    ],
    "uuid": "0123456789abcdef0123456789abcdef",
    "collectionName": "studies",
    "type": "collection",
    "options": {},
}


def write_archive(path: Path, collections: dict[str, tuple[dict[str, Any], list[bytes]]]) -> None:
    writer = ArchiveWriter(path, "catalog", "6.0.5")
    for name, (metadata, documents) in collections.items():
        writer.add_collection(name, str(metadata["type"]), metadata, iter(documents))
    writer.close()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.tar"
    view = {
        "indexes": [],
        "uuid": "",
        "collectionName": "recent",
        "type": "view",
        "options": {"viewOn": "studies"},
    }
    write_archive(
        path,
        {
            "studies": (STUDIES_METADATA, STUDIES),
            "empty": ({**STUDIES_METADATA, "indexes": []}, []),
            "recent": (view, []),
        },
    )
    return path


def test_an_archive_has_mongodumps_layout_and_a_manifest(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("catalog/emage-backup.json").read())  # type: ignore[union-attr]
        data = gzip.decompress(tar.extractfile("catalog/studies.bson.gz").read())  # type: ignore[union-attr]
    assert set(names) == {
        "catalog/studies.bson.gz",
        "catalog/studies.metadata.json.gz",
        "catalog/empty.bson.gz",
        "catalog/empty.metadata.json.gz",
        "catalog/recent.bson.gz",
        "catalog/recent.metadata.json.gz",
        "catalog/emage-backup.json",
    }
    assert data == b"".join(STUDIES)  # a .bson file: the documents one after the other, unchanged
    assert archive.stat().st_mode & 0o777 == 0o600  # patient data: its owner's only
    assert manifest["format"] == FORMAT
    assert [(c["name"], c["type"], c["documents"]) for c in manifest["collections"]] == [
        ("studies", "collection", 5),
        ("empty", "collection", 0),
        ("recent", "view", 0),
    ]


def test_documents_and_metadata_come_back_as_they_went_in(archive: Path) -> None:
    with ArchiveReader(archive) as reader:
        reader.verify()
        studies, empty, _view = reader.manifest.collections
        assert list(reader.documents(studies)) == STUDIES
        assert list(reader.documents(empty)) == []
        metadata = reader.metadata(studies)
    patient = metadata["indexes"][1]
    assert list(patient["key"].items()) == [("patient.key", 1), ("study_date", -1)]
    assert patient["unique"] is True
    assert metadata["uuid"] == STUDIES_METADATA["uuid"]


def _rewrite(archive: Path, member: str, change: Any) -> None:
    """Replace one member of the archive by ``change(its bytes)`` (``None``: leave it out)."""
    with tarfile.open(archive) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]  # type: ignore[union-attr]
    archive.unlink()
    with tarfile.open(archive, "w") as tar:
        for info, data in members:
            if info.name == member:
                data = change(data)
                if data is None:
                    continue
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("member", "change", "message"),
    [
        ("catalog/studies.bson.gz", lambda d: d[:-1] + bytes([d[-1] ^ 1]), "does not match its SHA-256"),
        ("catalog/studies.metadata.json.gz", lambda d: gzip.compress(b"{}"), "does not match its SHA-256"),
        ("catalog/empty.bson.gz", lambda d: None, "catalog/empty.bson.gz is missing"),
        ("catalog/emage-backup.json", lambda d: None, "expected one emage-backup.json"),
        (
            "catalog/emage-backup.json",
            lambda d: d.replace(b'"documents": 5', b'"documents": 6'),
            "the manifest says 6",
        ),
        (
            "catalog/emage-backup.json",
            lambda d: d.replace(FORMAT.encode(), b"other/1"),
            "not an emage-backup/1",
        ),
        ("catalog/emage-backup.json", lambda d: b"[]", "unreadable manifest"),
    ],
)
def test_a_damaged_archive_is_refused(archive: Path, member: str, change: Any, message: str) -> None:
    _rewrite(archive, member, change)
    with pytest.raises(BackupError, match=message), ArchiveReader(archive) as reader:
        reader.verify()


def test_a_truncated_bson_stream_is_an_error() -> None:
    whole = b"".join(STUDIES)
    assert list(iter_bson(io.BytesIO(whole))) == STUDIES
    for cut in (len(whole) - 1, len(STUDIES[0]) + 2):
        with pytest.raises(BackupError, match="truncated"):
            list(iter_bson(io.BytesIO(whole[:cut])))
    with pytest.raises(BackupError, match="invalid BSON document length"):
        list(iter_bson(io.BytesIO((2**31 - 1).to_bytes(4, "little") + bytes(16))))


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.tar"
    path.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(BackupError, match="not a backup archive"):
        ArchiveReader(path)


def test_an_archive_is_never_overwritten(archive: Path) -> None:
    before = archive.read_bytes()
    with pytest.raises(FileExistsError):
        ArchiveWriter(archive, "catalog", "6.0.5")
    assert archive.read_bytes() == before
    assert [p.name for p in archive.parent.iterdir()] == [archive.name]  # no spool left behind


class _UntouchableClient:
    """A MongoDB client a restore must not even reach when the archive is bad."""

    def get_database(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the database was touched before the archive was verified")


def test_a_damaged_archive_is_refused_before_the_database_is_touched(archive: Path) -> None:
    _rewrite(archive, "catalog/studies.bson.gz", lambda d: d[:-1] + bytes([d[-1] ^ 1]))
    with pytest.raises(BackupError, match="SHA-256"):
        restore_database(_UntouchableClient(), archive, drop=True)


def test_the_command_line_verifies_an_archive(archive: Path) -> None:
    runner = CliRunner()
    intact = runner.invoke(app, ["db", "verify", "--archive", str(archive)])
    assert intact.exit_code == 0, intact.output
    assert "3 collections, 5 documents: intact" in intact.output
    _rewrite(archive, "catalog/studies.bson.gz", lambda d: d[:-1] + bytes([d[-1] ^ 1]))
    damaged = runner.invoke(app, ["db", "verify", "--archive", str(archive)])
    assert damaged.exit_code == 1
    assert "invalid backup" in damaged.output
