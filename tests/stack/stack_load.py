"""A steady, bounded load of reads and writes through nginx, remembering what it saw."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid

from tests.conftest import Api


class Load:
    def __init__(self, api: Api, token: str, *, writers: int = 4, readers: int = 6) -> None:
        self.api = api
        self.token = token
        self.writers = writers
        self.readers = readers
        self.reads = 0
        self.failed_reads: list[str] = []
        self.acknowledged: dict[str, str] = {}  # content -> id, for every 201 the client saw
        self.acknowledged_at: list[float] = []  # time.monotonic() of each 201, in order
        self.failed_writes: dict[str, str] = {}  # content -> Idempotency-Key, reported failed
        self.failed_updates: list[str] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, seconds: float, until_stopped: bool = False) -> None:
        """Run for `seconds` (or until stop(), bounded by `seconds`)."""
        deadline = time.monotonic() + seconds
        workers = [self._reader(deadline) for _ in range(self.readers)]
        workers += [self._writer(deadline) for _ in range(self.writers)]
        del until_stopped  # the deadline bounds both modes; stop() ends earlier
        await asyncio.gather(*workers)

    def _running(self, deadline: float) -> bool:
        return not self._stop.is_set() and time.monotonic() < deadline

    async def _reader(self, deadline: float) -> None:
        while self._running(deadline):
            ids = list(self.acknowledged.values())
            path = f"/todo/{random.choice(ids)}" if ids and random.random() < 0.5 else "/todo"
            try:
                reply = await self.api.get(path, token=self.token)
                status = reply.status
            except ConnectionError as exc:
                status = f"connection error {exc}"
            self.reads += 1
            if status != 200:
                self.failed_reads.append(f"GET {path}: {status}")
            await asyncio.sleep(0.005)

    async def _writer(self, deadline: float) -> None:
        while self._running(deadline):
            content, key = f"load {uuid.uuid4().hex}", uuid.uuid4().hex
            created = await self._post(content, key)
            if created is None:
                self.failed_writes[content] = key
                continue
            self.acknowledged[content] = created
            self.acknowledged_at.append(time.monotonic())
            if random.random() < 0.3:
                await self._finish(created)

    async def _post(self, content: str, key: str) -> str | None:
        try:
            reply = await self.api.post("/todo", token=self.token, json_body={"content": content},
                                        headers={"Idempotency-Key": key})
        except ConnectionError:
            return None
        return str(reply.json["id"]) if reply.status == 201 else None

    async def _finish(self, todo_id: str) -> None:
        try:
            reply = await self.api.put(f"/todo/{todo_id}/finish", token=self.token)
            status = reply.status
        except ConnectionError as exc:
            status = f"connection error {exc}"
        if status != 200:
            self.failed_updates.append(f"PUT finish {todo_id}: {status}")

    def longest_write_pause(self) -> float:
        """The longest time between two acknowledged writes (how long writes stopped)."""
        times = self.acknowledged_at
        return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0)

    async def retry_failed_writes(self, attempts: int = 20) -> None:
        """Retry each failed write with its Idempotency-Key until it is acknowledged."""
        for content, key in self.failed_writes.items():
            for _ in range(attempts):
                created = await self._post(content, key)
                if created is not None:
                    self.acknowledged[content] = created
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"write {content!r} never succeeded")
