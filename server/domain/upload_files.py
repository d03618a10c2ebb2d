"""An upload's file in GridFS (bucket `imports`), written a chunk at a time.

The chunks are written here, by the GridFS layout (`imports.chunks` {files_id, n, data}, then
the `imports.files` document once complete), not with pymongo's GridIn: GridIn keeps up to
32 MB of chunks in memory before it inserts them. The workers read the file back with
pymongo's synchronous GridFS (server/worker/importing.py).
"""

from __future__ import annotations

from typing import Any

from bson import Binary, ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from server.infra.clock import utc_now

BUCKET = "imports"
CHUNK_SIZE = 255 * 1024  # GridFS's default


class GridFSWriter:
    """One GridFS file written a chunk at a time, each chunk inserted as soon as it is full."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], file_id: ObjectId, filename: str,
                 metadata: dict[str, Any]) -> None:
        self.files = db[f"{BUCKET}.files"]
        self.chunks = db[f"{BUCKET}.chunks"]
        self.file_id = file_id
        self.filename = filename
        self.metadata = metadata
        self.buffer = bytearray()
        self.chunk_number = 0
        self.length = 0
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= CHUNK_SIZE:
            await self._insert_chunk(bytes(self.buffer[:CHUNK_SIZE]))
            del self.buffer[:CHUNK_SIZE]

    async def _insert_chunk(self, data: bytes) -> None:
        await self.chunks.insert_one(
            {"files_id": self.file_id, "n": self.chunk_number, "data": Binary(data)}
        )
        self.chunk_number += 1
        self.length += len(data)

    async def close(self) -> None:
        """Write the last chunk, then the file document: only now does the file exist."""
        if self.buffer:
            await self._insert_chunk(bytes(self.buffer))
            self.buffer.clear()
        await self.files.insert_one({
            "_id": self.file_id, "length": self.length, "chunkSize": CHUNK_SIZE,
            "uploadDate": utc_now(), "filename": self.filename, "metadata": self.metadata,
        })
        self.closed = True

    async def delete(self) -> None:
        """Delete the file, or the chunks of one never closed."""
        self.buffer.clear()
        await self.files.delete_one({"_id": self.file_id})
        await self.chunks.delete_many({"files_id": self.file_id})

