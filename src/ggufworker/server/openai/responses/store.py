"""Stored responses of the Responses API: one SQLite database under the ggufworker home.

A row is one response: its object (JSON) and the items its model saw (the conversation before
its output, without ``instructions``), so a ``previous_response_id`` chain resolves with one
read and survives the deletion of earlier links. The store is bounded by size and age (the
oldest rows go first). Every call runs in a worker thread (:func:`asyncio.to_thread`) on one
connection behind a lock; other processes on the same file are serialised by SQLite itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.config import ServerSettings
from ggufworker.paths import home_dir

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
IN_FLIGHT = ("queued", "in_progress")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    owner INTEGER,
    body TEXT NOT NULL,
    items TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: the response object and the items its model saw."""

    id: str
    status: str
    body: dict[str, Any]
    items: list[dict[str, Any]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResponseStore:
    """Responses kept in ``path`` (SQLite), at most ``max_bytes`` of them and none older
    than ``max_age_s`` (None: no age limit). The file is opened on first use."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ResponseStore:
        """The store under the settings' home (``<home>/state/responses.sqlite3``)."""
        home = settings.home or home_dir()
        max_age = settings.responses_max_age_days * 86400 or None
        return cls(
            home / "state" / "responses.sqlite3",
            max_bytes=int(settings.responses_max_mb * 1024 * 1024),
            max_age_s=max_age,
        )

    # --- async API (each call is one worker-thread hop) ----------------------------------

    async def put(
        self,
        body: dict[str, Any],
        items: list[dict[str, Any]],
    ) -> None:
        """Insert or replace the response ``body`` (its id, status and creation time are read
        from it); then prune to the size and age limits."""
        await asyncio.to_thread(self._put, body, items)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        """Remove a response; False when there was none."""
        return await asyncio.to_thread(self._delete, response_id)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # --- the worker-thread side ----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise RuntimeError(
                    f"{self.path} was written by a newer ggufworker (schema {version})"
                )
            with db:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db = db
            self._fail_orphans(db)
        return self._db

    def _fail_orphans(self, db: sqlite3.Connection) -> None:
        """Responses left queued or in progress by a process that is gone end as failed."""
        marks = ",".join("?" * len(IN_FLIGHT))
        rows = db.execute(
            f"SELECT id, owner, body FROM responses WHERE status IN ({marks})", IN_FLIGHT
        ).fetchall()
        for rid, owner, raw in rows:
            if owner is not None and owner != os.getpid() and _alive(int(owner)):
                continue
            body = json.loads(raw)
            body["status"] = "failed"
            body["error"] = {
                "code": "server_error",
                "message": "the server stopped before the response finished",
            }
            with db:
                db.execute(
                    "UPDATE responses SET status = 'failed', owner = NULL, body = ? WHERE id = ?",
                    (json.dumps(body), rid),
                )
            logger.info("response %s was left unfinished by a stopped server: failed", rid)

    def _put(self, body: dict[str, Any], items: list[dict[str, Any]]) -> None:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        items_text = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
        status = str(body["status"])
        owner = os.getpid() if status in IN_FLIGHT else None
        with self._lock:
            db = self._conn()
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO responses (id, created_at, status, owner, body, items,"
                    " size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        body["id"],
                        float(body["created_at"]),
                        status,
                        owner,
                        text,
                        items_text,
                        len(text) + len(items_text),
                    ),
                )
            self._prune(db, keep=str(body["id"]))

    def _prune(self, db: sqlite3.Connection, *, keep: str) -> None:
        with db:
            if self.max_age_s:
                cutoff = time.time() - self.max_age_s
                db.execute("DELETE FROM responses WHERE created_at < ? AND id != ?", (cutoff, keep))
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]
            if total <= self.max_bytes:
                return
            doomed = []
            for rid, size in db.execute(
                "SELECT id, size FROM responses WHERE id != ? ORDER BY created_at", (keep,)
            ):
                if total <= self.max_bytes:
                    break
                doomed.append((rid,))
                total -= size
            db.executemany("DELETE FROM responses WHERE id = ?", doomed)
        logger.info("response store over %d bytes: pruned %d oldest", self.max_bytes, len(doomed))

    def _get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT status, body, items FROM responses WHERE id = ?", (response_id,))
                .fetchone()
            )
        if row is None:
            return None
        return StoredResponse(response_id, row[0], json.loads(row[1]), json.loads(row[2]))

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            db = self._conn()
            with db:
                cur = db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cur.rowcount > 0

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _set_wal(db: sqlite3.Connection, *, wait_s: float = 10.0) -> None:
    """Switch to WAL, waiting for other processes' connections: the switch needs the file to
    itself, and SQLite answers "database is locked" at once instead of calling its busy
    handler when two processes open a new store together."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
