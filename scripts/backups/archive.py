"""A backup on disk: one directory holding `manifest.json` and one gzipped BSON file per
collection (`<collection>.bson.gz`: the documents one after the other, as mongodump writes
them), so the files also load with `mongorestore --gzip` where that tool exists.

The manifest names the point in time the backup shows, every collection with its document
count, the SHA-256 of its file and its indexes; restore checks all of them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

MANIFEST = "manifest.json"
FORMAT = 1


class ArchiveError(Exception):
    """The backup directory is missing, incomplete or damaged; one line for the operator."""


@dataclass
class CollectionEntry:
    name: str
    documents: int
    sha256: str
    indexes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"{self.name}.bson.gz"


@dataclass
class Manifest:
    database: str
    # How the backup was made consistent: "snapshot" (a replica set's snapshot read at
    # cluster_time) or "fsync-lock" (a standalone server's writes held while it was read).
    method: str
    taken_at: str  # ISO 8601, UTC
    cluster_time: list[int] | None  # [seconds, increment] of the snapshot, on a replica set
    collections: list[CollectionEntry]
    format: int = FORMAT

    def save(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        try:
            raw = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            raise ArchiveError(f"{directory} holds no {MANIFEST}: not a backup") from None
        except json.JSONDecodeError as exc:
            raise ArchiveError(f"{directory / MANIFEST} is not JSON: {exc}") from None
        if raw.get("format") != FORMAT:
            raise ArchiveError(f"{directory}: backup format {raw.get('format')} is not {FORMAT}")
        raw["collections"] = [CollectionEntry(**entry) for entry in raw["collections"]]
        return cls(**raw)


# Documents stay the bytes MongoDB sent: nothing is decoded and encoded again on the way, so a
# restore writes back exactly what was read (an Int64 stays an Int64, key order stays).
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)


def write_collection(directory: Path, name: str, documents: Iterable[RawBSONDocument],
                     indexes: list[dict[str, Any]]) -> CollectionEntry:
    """Write `documents` to `<name>.bson.gz`; their count and checksum."""
    digest, count = hashlib.sha256(), 0
    entry = CollectionEntry(name=name, documents=0, sha256="", indexes=indexes)
    with gzip.open(directory / entry.file_name, "wb", compresslevel=6) as out:
        for document in documents:
            digest.update(document.raw)
            out.write(document.raw)
            count += 1
    entry.documents, entry.sha256 = count, digest.hexdigest()
    return entry


def read_collection(directory: Path, entry: CollectionEntry) -> Iterator[RawBSONDocument]:
    """The documents of one collection, checked against the manifest once all are read."""
    path = directory / entry.file_name
    if not path.exists():
        raise ArchiveError(f"{path} is missing")
    digest, count = hashlib.sha256(), 0
    try:
        with gzip.open(path, "rb") as source:
            for document in bson.decode_file_iter(cast(IO[bytes], source), codec_options=RAW):
                digest.update(document.raw)
                count += 1
                yield document
    except (OSError, bson.errors.BSONError) as exc:
        raise ArchiveError(f"{path} is damaged: {exc}") from None
    if count != entry.documents or digest.hexdigest() != entry.sha256:
        raise ArchiveError(f"{path} does not match the manifest ({count} documents, "
                           f"{entry.documents} expected, or another checksum)")
