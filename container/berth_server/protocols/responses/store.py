"""Stored responses, shared by every gunicorn worker: one SQLite file under the runtime dir, bounded, oldest out.

gunicorn runs several workers, and any of them may serve the GET that follows another's POST, so
the store cannot live in a worker's memory. SQLite (standard library) gives every process the same
file with atomic writes and locking; each call opens its own connection, so nothing is shared
across a fork. The file lives in the runtime dir, which the launcher makes for one run and removes
at exit: stored responses last as long as the server (OpenAI keeps them 30 days; a local server is
not a database). A put evicts the oldest responses until both bounds (count, bytes) hold again, in
the same transaction, so the bounds hold whichever worker writes.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_server.errors import NotFound

_SCHEMA = ("CREATE TABLE IF NOT EXISTS responses (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
           " id TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, record TEXT NOT NULL)")
# Drop every row older than the newest run that still fits in max_bytes (sizes summed newest first).
_EVICT_BYTES = ("DELETE FROM responses WHERE seq <= (SELECT max(seq) FROM (SELECT seq, SUM(size) OVER"
                " (ORDER BY seq DESC) AS total FROM responses) WHERE total > ?)")
_EVICT_COUNT = "DELETE FROM responses WHERE seq IN (SELECT seq FROM responses ORDER BY seq DESC LIMIT -1 OFFSET ?)"
BUSY_TIMEOUT_S = 10.0


class ResponseNotFound(NotFound):
    """No stored response has this id (never stored, deleted, or evicted)."""

    code = None  # type: ignore[assignment]  # OpenAI's 404 here has no code
    openai_type = "invalid_request_error"


@dataclass(frozen=True)
class StoredResponse:
    """A stored response and the conversation it answered (every input item it saw, earlier turns included)."""

    response: dict[str, Any]
    items: list[dict[str, Any]]

    def conversation(self) -> list[dict[str, Any]]:
        """What a response that continues this one starts from: its items, then its output."""
        return [*self.items, *self.response.get("output", [])]


class ResponseStore:
    """Responses by id in one SQLite file, at most max_count of them and max_bytes of JSON together."""

    def __init__(self, path: Path, max_count: int, max_bytes: int) -> None:
        self.path = path
        self.max_count = max_count
        self.max_bytes = max_bytes

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # WAL: readers never wait for a writer. No fsync: the file lives only as long as the server does.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute(_SCHEMA)
        return connection

    def put(self, stored: StoredResponse) -> None:
        """Store (or replace) a response, then evict the oldest until the bounds hold (a response larger
        than max_bytes on its own is not kept)."""
        if self.max_count <= 0:
            return
        record = json.dumps({"response": stored.response, "items": stored.items}, ensure_ascii=False,
                            separators=(",", ":"))
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM responses WHERE id = ?", (stored.response["id"],))
                db.execute("INSERT INTO responses (id, size, record) VALUES (?, ?, ?)",
                           (stored.response["id"], len(record.encode()), record))
                db.execute(_EVICT_BYTES, (self.max_bytes,))
                db.execute(_EVICT_COUNT, (self.max_count,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get(self, response_id: str) -> StoredResponse:
        """The stored response, or ResponseNotFound (a 404)."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT record FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            raise _not_found(response_id)
        record = json.loads(row[0])
        return StoredResponse(response=record["response"], items=record["items"])

    def delete(self, response_id: str) -> None:
        """Forget a response, or ResponseNotFound."""
        with closing(self._connect()) as db:
            deleted = db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
        if not deleted:
            raise _not_found(response_id)

    def ids(self) -> list[str]:
        """Stored ids, oldest first (tests and eviction checks)."""
        with closing(self._connect()) as db:
            return [row[0] for row in db.execute("SELECT id FROM responses ORDER BY seq")]


def _not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{response_id}' not found (never stored, deleted, or evicted"
                            " from the bounded store).", param="response_id")
