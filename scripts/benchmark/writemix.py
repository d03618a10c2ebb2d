"""The write mix row: wrk runs writemix.lua, then MongoDB is asked whether every acknowledged
write is stored (no lost write) and whether any Idempotency-Key made two todos (no duplicate).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

from scripts.benchmark import wrk
from scripts.benchmark.seeding import owner_id
from scripts.stack.config import StackConfig
from server.domain.todos import IDEMPOTENCY_KEY

SCRIPT = Path(__file__).with_name("writemix.lua")
WRITER = "bench-writer"


@dataclass
class WriteCheck:
    """What the write mixes acknowledged, and what MongoDB holds of it."""

    created: int = 0  # 201s
    finished: int = 0  # 200s of PUT /todo/<id>/finish
    reads: int = 0
    lost_creates: int = 0  # a 201 whose key and id MongoDB does not hold
    lost_finishes: int = 0  # a 200 whose todo is not finished in MongoDB
    stored: int = 0  # todos MongoDB holds under the runs' keys
    distinct_keys: int = 0

    @property
    def duplicates(self) -> int:
        return self.stored - self.distinct_keys

    @property
    def ok(self) -> bool:
        # A mix that acknowledged no create proves nothing (nor does one the script misread).
        return (self.created > 0 and self.lost_creates == 0 and self.lost_finishes == 0
                and self.duplicates == 0)

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"write mix check {verdict}: {self.created} creates acknowledged (201), "
                f"{self.lost_creates} of them not stored; {self.finished} finishes acknowledged, "
                f"{self.lost_finishes} of them not finished in MongoDB; {self.stored} todos "
                f"stored under {self.distinct_keys} distinct Idempotency-Keys "
                f"({self.duplicates} duplicates); {self.reads} reads answered 200")


class WriteMix:
    """Every run gets its own key prefix; `check` looks at all of this bench's runs at once."""

    def __init__(self, cfg: StackConfig, token: str) -> None:
        self.cfg = cfg
        self.token = token
        self.prefix = f"bench-{secrets.token_hex(6)}"
        self.runs = 0
        self.acked: dict[str, str] = {}  # key -> id
        self.finished: set[str] = set()
        self.reads = 0

    def run(self, connections: int, duration: float) -> wrk.WrkResult:
        self.runs += 1
        with tempfile.TemporaryDirectory(prefix="todo-bench-") as tmp:
            out = Path(tmp, "acked.txt")
            env = {**os.environ, "BENCH_KEY_PREFIX": f"{self.prefix}-{self.runs}",
                   "BENCH_WRITEMIX_OUT": str(out)}
            result = wrk.run(f"{self.cfg.base_url}/todo", connections=connections,
                             duration=duration, token=self.token, script=SCRIPT, env=env)
            self._collect(out.read_text() if out.exists() else "")
        return result

    def _collect(self, text: str) -> None:
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "created":
                key, _, todo_id = rest.partition(" ")
                self.acked[key] = todo_id
            elif kind == "finished":
                self.finished.add(rest)
            elif kind == "reads":
                self.reads += int(float(rest))

    def check(self) -> WriteCheck:
        client: MongoClient[dict[str, Any]] = MongoClient(self.cfg.mongo_uri)
        try:
            todos = client[self.cfg.db_name]["todos"]
            owner = owner_id(client[self.cfg.db_name], WRITER)
            ours = {"owner": owner, IDEMPOTENCY_KEY: {"$regex": f"^{re.escape(self.prefix)}-"}}
            # One query for both counts: todos of requests wrk gave up on may still be landing.
            docs = list(todos.find(ours, {IDEMPOTENCY_KEY: True}))
            stored = {doc[IDEMPOTENCY_KEY]: str(doc["_id"]) for doc in docs}
            finished_ids = [ObjectId(i) for i in self.finished]
            done = todos.count_documents({"_id": {"$in": finished_ids}, "owner": owner,
                                          "is_finished": True}) if finished_ids else 0
            return WriteCheck(
                created=len(self.acked), finished=len(self.finished), reads=self.reads,
                lost_creates=sum(1 for key, i in self.acked.items() if stored.get(key) != i),
                lost_finishes=len(finished_ids) - done,
                stored=len(docs), distinct_keys=len(stored),
            )
        finally:
            client.close()
