"""``emage db``: back up one service's MongoDB database to a single archive file, verify it, restore it.

emage db dump    --uri URI --db catalog --archive catalog-2026-11-02.tar
emage db verify  --archive catalog-2026-11-02.tar
emage db restore --uri URI --archive catalog-2026-11-02.tar [--db catalog] [--drop]

What MongoDB's own ``mongodump --db <db> --gzip`` and ``mongorestore --drop`` do for one database, in Python
with PyMongo, because the MongoDB Database Tools cannot be installed on the machines this project is built on
(docs/operations.md, "Backups and restore"). The archive is a tar file laid out like mongodump's directory
output with ``--gzip``: for each collection ``<db>/<collection>.bson.gz`` (its documents as they are stored,
one BSON document after the other, BSON 1.1 https://bsonspec.org/spec.html) and
``<db>/<collection>.metadata.json.gz`` (its type, options and index specifications, MongoDB Extended JSON
v2 canonical mode), plus ``<db>/emage-backup.json``, a manifest with each collection's document count and the
SHA-256 of each member. Documents are streamed both ways, never held whole in memory: a dump spools one
collection at a time to the archive's folder.

Consistency is mongodump's without ``--oplog``: each collection is read in ``_id`` order with read concern
``majority`` (only what cannot be rolled back), and collections one after the other, not at one instant; the
services' idempotent replay from Kafka closes the gap (docs/operations.md). A restore verifies the whole
archive before it touches the database, refuses to write over collections that hold documents unless told to
``--drop`` them, inserts documents byte for byte, recreates the indexes, and checks the counts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final, Protocol

import typer
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from rich.console import Console
from rich.table import Table

FORMAT: Final = "emage-backup/1"
MANIFEST: Final = "emage-backup.json"
_RAW: Final = CodecOptions(document_class=RawBSONDocument)
# Largest BSON document a server accepts (16 MiB) plus the 16 KiB mongodump also tolerates.
_MAX_DOCUMENT: Final = 16 * 1024 * 1024 + 16 * 1024
_INSERT_BATCH_DOCUMENTS: Final = 1000
_INSERT_BATCH_BYTES: Final = 8 * 1024 * 1024
_EXTENDED_JSON: Final = json_util.CANONICAL_JSON_OPTIONS


class BackupError(Exception):
    """The archive is not a valid backup, or does not match what it declares."""


@dataclass(frozen=True, slots=True)
class CollectionEntry:
    """One collection of a backup, as the manifest records it."""

    name: str
    type: str
    """``collection``, ``view`` or ``timeseries`` (``listCollections``)."""
    documents: int
    data_sha256: str
    metadata_sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    database: str
    started_at: str
    """When the dump began (UTC, RFC 3339): events since then may be missing from it, so a restore's replay
    (``--reset-offsets --to-datetime``) starts there."""
    server_version: str
    collections: tuple[CollectionEntry, ...]
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupError(f"not an {FORMAT} archive (format {raw.get('format')!r})")
            return cls(
                database=raw["database"],
                started_at=raw["started_at"],
                server_version=raw["server_version"],
                collections=tuple(CollectionEntry(**entry) for entry in raw["collections"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BackupError(f"unreadable manifest: {error}") from None


def _data_member(database: str, collection: str) -> str:
    return f"{database}/{collection}.bson.gz"


def _metadata_member(database: str, collection: str) -> str:
    return f"{database}/{collection}.metadata.json.gz"


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def iter_bson(stream: _Readable) -> Iterator[bytes]:
    """The BSON documents of a concatenation of them (a ``.bson`` file), each as its own bytes."""
    while header := stream.read(4):
        if len(header) < 4:
            raise BackupError("truncated BSON document length")
        length = int.from_bytes(header, "little", signed=True)
        if not 5 <= length <= _MAX_DOCUMENT:
            raise BackupError(f"invalid BSON document length {length}")
        rest = stream.read(length - 4)
        if len(rest) != length - 4 or rest[-1:] != b"\x00":
            raise BackupError("truncated BSON document")
        yield header + rest


class _HashingWriter(io.RawIOBase):
    """Writes through to ``target`` and keeps the SHA-256 of what went by."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        return self._target.write(view)


class ArchiveWriter:
    """Writes a backup archive, one collection at a time; the manifest goes in last, at :meth:`close`."""

    def __init__(self, path: Path, database: str, server_version: str) -> None:
        self._path = path
        self._database = database
        self._server_version = server_version
        self._entries: list[CollectionEntry] = []
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        # Exclusive creation (a backup never overwrites another), readable by its owner only: patient data.
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        # Kept open across add_collection calls; closed by close() or abort().
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        # Spool files next to the archive: same file system, and no tmpfs filled by a large collection.
        self._spool = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))

    def add_collection(
        self, name: str, kind: str, metadata: dict[str, Any], documents: Iterable[bytes]
    ) -> CollectionEntry:
        """Add one collection: ``metadata`` as mongodump writes it, ``documents`` as raw BSON."""
        spooled = self._spool / "data.bson.gz"
        count = 0
        with spooled.open("wb") as raw:
            hashing = _HashingWriter(raw)
            with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as out:
                for document in documents:
                    out.write(document)
                    count += 1
        metadata_gz = gzip.compress(json_util.dumps(metadata, json_options=_EXTENDED_JSON).encode(), mtime=0)
        with spooled.open("rb") as data:
            self._add(_data_member(self._database, name), spooled.stat().st_size, data)
        spooled.unlink()
        self._add(_metadata_member(self._database, name), len(metadata_gz), io.BytesIO(metadata_gz))
        entry = CollectionEntry(
            name=name,
            type=kind,
            documents=count,
            data_sha256=hashing.sha256.hexdigest(),
            metadata_sha256=hashlib.sha256(metadata_gz).hexdigest(),
        )
        self._entries.append(entry)
        return entry

    def _add(self, name: str, size: int, data: IO[bytes]) -> None:
        # Readable by the archive's owner only (it holds patient data), whoever ran the dump.
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(datetime.now(UTC).timestamp())
        info.mode = 0o600
        self._tar.addfile(info, data)

    def close(self) -> Manifest:
        manifest = Manifest(
            database=self._database,
            started_at=self._started_at,
            server_version=self._server_version,
            collections=tuple(self._entries),
        )
        manifest_json = manifest.to_json()
        self._add(f"{self._database}/{MANIFEST}", len(manifest_json), io.BytesIO(manifest_json))
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        shutil.rmtree(self._spool, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        """Leave no half-written archive behind."""
        self._tar.close()
        self._file.close()
        shutil.rmtree(self._spool, ignore_errors=True)
        self._path.unlink(missing_ok=True)


class ArchiveReader:
    """Reads a backup archive; :meth:`verify` checks every member against the manifest."""

    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close(), the context manager
        except (tarfile.TarError, OSError) as error:
            raise BackupError(f"{path}: not a backup archive ({error})") from None
        manifests = [m for m in self._tar.getmembers() if m.name.endswith(f"/{MANIFEST}")]
        if len(manifests) != 1:
            raise BackupError(f"{path}: expected one {MANIFEST}, found {len(manifests)}")
        self.manifest = Manifest.from_json(self._read(manifests[0].name))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open(self, name: str) -> IO[bytes]:
        try:
            member = self._tar.extractfile(name)
        except KeyError:
            member = None
        if member is None:
            raise BackupError(f"member {name} is missing")
        return member

    def _read(self, name: str) -> bytes:
        with self._open(name) as member:
            return member.read()

    def metadata(self, entry: CollectionEntry) -> dict[str, Any]:
        text = gzip.decompress(self._read(_metadata_member(self.manifest.database, entry.name)))
        loaded: dict[str, Any] = json_util.loads(text, json_options=_EXTENDED_JSON)
        return loaded

    def documents(self, entry: CollectionEntry) -> Iterator[bytes]:
        with (
            self._open(_data_member(self.manifest.database, entry.name)) as member,
            gzip.GzipFile(fileobj=member, mode="rb") as data,
        ):
            yield from iter_bson(data)

    def verify(self) -> None:
        """Every member present, unaltered (SHA-256) and holding the declared number of documents."""
        for entry in self.manifest.collections:
            for name, expected in (
                (_data_member(self.manifest.database, entry.name), entry.data_sha256),
                (_metadata_member(self.manifest.database, entry.name), entry.metadata_sha256),
            ):
                digest = hashlib.sha256()
                with self._open(name) as member:
                    while chunk := member.read(1024 * 1024):
                        digest.update(chunk)
                if digest.hexdigest() != expected:
                    raise BackupError(f"member {name} does not match its SHA-256 in the manifest")
            try:
                counted = sum(1 for _ in self.documents(entry))
            except (OSError, EOFError, zlib.error) as error:
                raise BackupError(f"collection {entry.name}: unreadable data ({error})") from None
            if counted != entry.documents:
                raise BackupError(
                    f"collection {entry.name}: {counted} documents, the manifest says {entry.documents}"
                )


# --- MongoDB ------------------------------------------------------------------------------------------------


def dump_database(client: Any, database: str, archive: Path) -> Manifest:
    """Write every collection and view of ``database`` (a PyMongo ``MongoClient``'s) to ``archive``."""
    from pymongo.read_concern import ReadConcern

    db = client.get_database(database, read_concern=ReadConcern("majority"))
    server_version = str(client.server_info().get("version", "unknown"))
    writer = ArchiveWriter(archive, database, server_version)
    try:
        specs = sorted(
            (spec for spec in db.list_collections() if not spec["name"].startswith("system.")),
            key=lambda spec: spec["name"],
        )
        for spec in specs:
            name, kind = spec["name"], spec.get("type", "collection")
            uuid = spec.get("info", {}).get("uuid")
            metadata = {
                "indexes": [] if kind == "view" else list(db.get_collection(name).list_indexes()),
                "uuid": bytes(uuid).hex() if uuid is not None else "",  # a Binary of subtype 4
                "collectionName": name,
                "type": kind,
                "options": spec.get("options", {}),
            }
            # Documents as the server stores them (raw codec: no decoding, no re-encoding), in _id order: a
            # document updated while the dump runs is read once, as its _id never changes.
            raw = db.get_collection(name, codec_options=_RAW)
            documents = (
                ()
                if kind == "view"
                else (document.raw for document in raw.find({}, sort=[("_id", 1)], batch_size=1000))
            )
            writer.add_collection(name, kind, metadata, documents)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


@dataclass(frozen=True, slots=True)
class RestoredCollection:
    name: str
    documents: int
    indexes: int


def restore_database(
    client: Any, archive: Path, *, target: str | None = None, drop: bool = False
) -> list[RestoredCollection]:
    """Restore ``archive`` into ``target`` (default: the database it was taken from).

    The archive is verified first. A collection of the archive that exists in the target with documents is
    an error unless ``drop``, which drops it (and only it) before restoring, as ``mongorestore --drop``.
    Documents go in unchanged, by batches, with write concern ``majority``; document validation is bypassed
    since they were valid when dumped. Raises :class:`BackupError` before any write if the archive is bad.
    """
    from pymongo.write_concern import WriteConcern

    with ArchiveReader(archive) as reader:
        reader.verify()
        manifest = reader.manifest
        db = client.get_database(
            target or manifest.database, codec_options=_RAW, write_concern=WriteConcern("majority")
        )
        existing = set(db.list_collection_names())
        occupied = [
            entry.name
            for entry in manifest.collections
            if entry.name in existing
            and (entry.type == "view" or db.get_collection(entry.name).estimated_document_count() > 0)
        ]
        if occupied and not drop:
            raise BackupError(
                f"database {db.name} already holds {', '.join(occupied)}; restore with --drop to replace them"
            )
        for entry in manifest.collections:
            if entry.name in existing:
                db.drop_collection(entry.name)
        restored = []
        # Views last: they are defined over collections.
        for entry in sorted(manifest.collections, key=lambda e: e.type == "view"):
            restored.append(_restore_collection(db, reader, entry))
        return restored


def _restore_collection(db: Any, reader: ArchiveReader, entry: CollectionEntry) -> RestoredCollection:
    metadata = reader.metadata(entry)
    db.command({"create": entry.name, **metadata.get("options", {})})
    if entry.type == "view":
        return RestoredCollection(entry.name, 0, 0)
    collection = db.get_collection(entry.name)
    batch: list[RawBSONDocument] = []
    size = 0
    for document in reader.documents(entry):
        batch.append(RawBSONDocument(document))
        size += len(document)
        if len(batch) >= _INSERT_BATCH_DOCUMENTS or size >= _INSERT_BATCH_BYTES:
            collection.insert_many(batch, ordered=True, bypass_document_validation=True)
            batch, size = [], 0
    if batch:
        collection.insert_many(batch, ordered=True, bypass_document_validation=True)
    indexes = [
        {key: value for key, value in index.items() if key != "ns"}
        for index in metadata.get("indexes", [])
        if index.get("name") != "_id_"
    ]
    if indexes:
        db.command({"createIndexes": entry.name, "indexes": indexes})
    restored = collection.count_documents({})
    if restored != entry.documents:
        raise BackupError(
            f"collection {entry.name}: {restored} documents restored, {entry.documents} archived"
        )
    return RestoredCollection(entry.name, restored, len(indexes) + 1)


# --- Command line -------------------------------------------------------------------------------------------

app = typer.Typer(
    name="db", help="Back up, verify and restore one service's MongoDB database.", no_args_is_help=True
)
console = Console(stderr=True)

UriOption = Annotated[
    str,
    typer.Option(
        envvar="EMAGE_BACKUP_MONGO_URI",
        help="MongoDB connection string (a user with the backup role; restore: backup and restore roles).",
    ),
]
ArchiveOption = Annotated[Path, typer.Option(help="The archive file (a tar of gzip members).")]


def _say(line: str) -> None:
    """One unwrapped line, paths and all taken literally (they may hold rich's markup brackets)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.callback()
def db() -> None:
    """Back up, verify and restore one service's MongoDB database (docs/operations.md, section 5)."""


def _client(uri: str) -> Any:
    from pymongo import MongoClient

    return MongoClient(uri, serverSelectionTimeoutMS=10_000)


@app.command("dump")
def dump_command(
    uri: UriOption,
    database: Annotated[
        str, typer.Option("--db", help="The database: ingest, catalog, consent, access, audit.")
    ],
    archive: ArchiveOption,
) -> None:
    """Write DATABASE to ARCHIVE: every collection's documents, options and indexes, and a manifest."""
    if archive.exists():
        _say(f"{archive} exists; a backup never overwrites one")
        raise typer.Exit(2)
    client = _client(uri)
    try:
        manifest = dump_database(client, database, archive)
    finally:
        client.close()
    table = Table(title=f"{database} → {archive}")
    table.add_column("collection")
    table.add_column("type")
    table.add_column("documents", justify="right")
    for entry in manifest.collections:
        table.add_row(entry.name, entry.type, str(entry.documents))
    console.print(table)


@app.command("verify")
def verify_command(archive: ArchiveOption) -> None:
    """Check ARCHIVE against its manifest (members, SHA-256, document counts) without a database."""
    try:
        with ArchiveReader(archive) as reader:
            reader.verify()
            manifest = reader.manifest
    except BackupError as error:
        _say(f"invalid backup: {error}")
        raise typer.Exit(1) from None
    documents = sum(entry.documents for entry in manifest.collections)
    collections = len(manifest.collections)
    _say(
        f"{archive}: database {manifest.database} dumped from {manifest.started_at} "
        f"(MongoDB {manifest.server_version}), {collections} collections, {documents} documents: intact"
    )


@app.command("restore")
def restore_command(
    uri: UriOption,
    archive: ArchiveOption,
    database: Annotated[
        str | None, typer.Option("--db", help="Restore into this database (default: the archived one).")
    ] = None,
    drop: Annotated[bool, typer.Option(help="Drop the archive's collections in the target first.")] = False,
) -> None:
    """Restore ARCHIVE (verified first) into its database, collections and indexes; counts checked."""
    client = _client(uri)
    try:
        restored = restore_database(client, archive, target=database, drop=drop)
    except BackupError as error:
        _say(f"not restored: {error}")
        raise typer.Exit(1) from None
    finally:
        client.close()
    table = Table(title=f"{archive} restored")
    table.add_column("collection")
    table.add_column("documents", justify="right")
    table.add_column("indexes", justify="right")
    for collection in restored:
        table.add_row(collection.name, str(collection.documents), str(collection.indexes))
    console.print(table)
