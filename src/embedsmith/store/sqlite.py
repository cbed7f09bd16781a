"""The embedded store: SQLite is the source of truth, a faiss HNSW file is a derived cache.

Every public write is one SQLite transaction (WAL, ``synchronous=FULL``): once a call returns, the write
survives a crash or ``kill -9``. The ANN index lives in memory, is saved at intervals and on close, and is
caught up from SQLite on open and before each search, so a search sees every write acknowledged before it
began, in this process or any other. Catching up reads the new rows and the sequence they end at in one read
transaction, so a commit landing meanwhile can never move the stamp past rows the index lacks. Deleted rows
are flagged (soft delete), filtered out at query time, and dropped by :meth:`Collection.compact`.

One writer at a time: a second process that writes while another holds the write lock waits up to
``lock_timeout`` seconds, then gets a :class:`~embedsmith.errors.CollectionBusyError`. Readers never block.

A collection deleted by another process is first marked deleted under the write lock, then its folder is
moved away; a handle notices either (the mark, or its database file being another file than the one it
opened) and raises :class:`~embedsmith.errors.CollectionNotFoundError`; it never saves its index into a folder
that now holds another collection. A store whose folder cannot be written opens read-only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import (
    CollectionBusyError,
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidInputError,
    StoreCorruptError,
    StoreError,
    StoreReadOnlyError,
)
from ..types import Encoder, Hits, Metric, Precision
from .ann import FORMAT as ANN_FORMAT
from .ann import AnnIndex, DamagedIndexError, IndexNotSavedError, IndexSpec, locked, verify_file
from .base import Candidate, Collection, RecordBatch, Store, VerifyReport, best_first, same_codec
from .bm25 import INDEXED, match_expression
from .filters import NO_FILTER, CompiledFilter, Where, compile_where, sqlite_json_path
from .lexical import FILE as LEX_FILE
from .lexical import Bm25Index, query_terms
from .settings import CollectionSettings, OpenOptions, new_identity

# 2: FTS5 index for bm25 and hybrid search; 3: records.index_text; 4: no FTS5 (bm25 is the derived matrix of
# store/lexical.py). Format 3 is read as it is (its FTS tables are ignored); opening it writable upgrades it.
FORMAT_VERSION = 4
_READABLE_FROM = 3
DB_NAME = "collection.sqlite"
_SQL_VARS = 900  # ids per statement: far below any SQLite build's host-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    text TEXT,
    index_text TEXT,
    vector BLOB NOT NULL  -- last: reads of the other columns stop before it
);
CREATE UNIQUE INDEX IF NOT EXISTS records_live_id ON records(id) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS records_dead ON records(seq) WHERE deleted = 1;
-- late interaction (collections created with late_interaction=...): each live row's token vectors in the
-- collection's TokenCodec, written, deleted and compacted in the same transactions as the row
CREATE TABLE IF NOT EXISTS tokens(seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, vectors BLOB NOT NULL);
"""
#: Tokens the first write to a collection with a PCA token codec must hold (the PCA is fitted on them).
PCA_MIN_TOKENS = 1000


class IndexRebuildWarning(RuntimeWarning):
    """The ANN index file was missing, damaged or foreign and is being rebuilt from the database."""


class IndexSaveWarning(RuntimeWarning):
    """The ANN index file could not be saved; the records are safe in the database and it is retried later."""


def translate(exc: sqlite3.Error, what: str) -> StoreError | InvalidInputError:
    """Our error for a sqlite3 error, chosen by its result code (never by its message)."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return CollectionBusyError(f"{what}: the collection is being written by another process ({exc})")
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StoreCorruptError(f"{what}: the database is damaged ({exc}); restore it from a snapshot "
                                 "(embedsmith restore) or run embedsmith verify for details")
    if code.startswith("SQLITE_READONLY"):
        return StoreReadOnlyError(f"{what}: the store cannot be written ({exc})")
    if code == "SQLITE_FULL":
        return StoreError(f"{what}: the disk is full ({exc}); nothing of this write was stored")
    if code.startswith("SQLITE_CONSTRAINT_UNIQUE"):
        return InvalidInputError(f"{what}: an id is already in the collection (added meanwhile by another "
                                 "process); use upsert to replace it")
    return StoreError(f"{what}: {exc}")


def index_spec(s: CollectionSettings) -> IndexSpec:
    return IndexSpec(s.dims, s.metric, s.precision, s.hnsw_m, s.ef_construction, s.calibration)


def _chunks(items: Sequence[Any], size: int = _SQL_VARS) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _metadata(text: str) -> dict[str, Any]:
    return {} if text == "{}" else json.loads(text)


class SqliteCollection(Collection):
    """A collection in the embedded store (a folder with ``collection.sqlite`` and the ANN index file).

    Open one with :func:`~embedsmith.store.open_collection`. Close it, so the ANN index is saved (nothing
    acknowledged is lost without it; the next open only catches up longer).
    """

    def __init__(self, folder: Path, conn: sqlite3.Connection, settings: CollectionSettings,
                 encoder: Encoder | None, options: OpenOptions, *, read_only: bool, generation: int,
                 immutable: bool = False) -> None:
        super().__init__(settings, encoder, options)
        self.folder = folder
        self.read_only = read_only
        self._immutable = immutable  # opened read-only with no WAL to read: every connection opens the same way
        self._db_path = folder / DB_NAME
        self._file = _file_id(self._db_path)
        self._conn = conn
        self._generation = generation
        self._gone = False
        self._checked_at = 0.0
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._data_version = -1
        self._live = 0
        self._dead = 0  # deleted rows still in the ANN graph
        # By sequence number, the id of each live row the ANN index holds (None: deleted, or compacted away), so
        # a search that wants ids and scores reads nothing from the database. Kept in step with the index.
        self._ids: list[str | None] = []
        self._indexed: frozenset[str] = frozenset()  # metadata fields with an index (create_index)
        self._reader: sqlite3.Connection | None = None
        self._lex: Bm25Index | None = None  # built on the first BM25 search
        self._lex_key: tuple[int, int, int] | None = None
        self._lex_generation = -1
        self._lex_unsaved = False
        self._lex_lock = threading.Lock()
        self._writes = 0  # commits through this handle (data_version counts only other connections')
        self._codec: Any = None  # the fitted TokenCodec of stored token vectors, read from meta (late interaction)
        with self._errors(), self._lock:
            with self._read():
                self._index = self._load_index()
                self._load_ids()
            self._sync(force=True)

    # -- the boundary ---------------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise translate(exc, f"collection {self.name!r}") from exc

    def _check_alive(self, *, strict: bool = True) -> None:
        """Raise when this handle's collection was closed, deleted or replaced (its file is another file).

        A deletion through this library also marks the database, which every catch-up reads; the file check
        catches a folder removed by hand. Writes always look; reads (``strict=False``) at most every 50 ms, as a
        stat per search is a measurable part of a fast search.
        """
        if self._closed:
            raise StoreError(f"collection {self.name!r} is closed")
        if not strict and not self._gone:
            now = time.monotonic()
            if now - self._checked_at < 0.05:
                return
            self._checked_at = now
        if self._gone or _file_id(self._db_path) != self._file:
            self._gone = True
            raise CollectionNotFoundError(
                f"collection {self.name!r} was deleted or replaced by another process (in {str(self.folder)!r}); "
                "open it again"
            )

    def _check_meta(self) -> None:
        """Inside a transaction: the collection is not marked deleted, and a compaction elsewhere is noticed."""
        meta = dict(self._conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('deleted', 'generation', 'indexes', 'late_codec')"))
        self._indexed = frozenset(json.loads(meta.get("indexes", "[]")))
        if self.settings.late is not None and self._codec is None and meta.get("late_codec"):
            from ..rerankers.late_interaction import TokenCodec

            self._codec = TokenCodec.from_dict(json.loads(meta["late_codec"]))
        if meta.get("deleted"):
            self._gone = True
            raise CollectionNotFoundError(f"collection {self.name!r} was deleted by another process; open it again")
        generation = int(meta.get("generation", 0))
        if generation != self._generation:  # compacted by another process: its rows and index file changed
            self._generation = generation
            self._index = self._load_index()
            self._load_ids()
            self._data_version = -1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the same snapshot."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction holding the write lock, caught up first: all of it commits, or none."""
        self._check_alive()
        if self.read_only:
            raise StoreReadOnlyError(
                f"collection {self.name!r} is open read-only: {str(self.folder)!r} cannot be written by this user"
            )
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise CollectionBusyError(
                    f"collection {self.name!r} is being written by another process; waited "
                    f"{self._options.lock_timeout:g} s for its lock"
                ) from exc
            raise
        try:
            # Holding the write lock, nobody else can commit until we do: catching up here makes the
            # in-memory index and counts exactly "synced + this write" after the commit.
            self._check_meta()
            self._refresh()
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error being raised says what went wrong
            raise

    # -- catching up ----------------------------------------------------------------------------------
    def _max_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0

    def _rows_through(self, seq: int) -> int:
        """Rows (live and deleted) with sequence numbers up to ``seq``: what an index stamped ``seq`` holds.
        Both counts read small partial indexes, not the rows (which hold the vectors)."""
        live = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_live_id WHERE deleted = 0 AND seq <= ?", (seq,)
        ).fetchone()[0]
        dead = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_dead WHERE deleted = 1 AND seq <= ?", (seq,)
        ).fetchone()[0]
        return int(live) + int(dead)

    def _sync(self, *, force: bool = False) -> None:
        """Catch up with commits made by other connections (and processes) since the last look."""
        self._check_alive(strict=force)
        if not force and self._conn.execute("PRAGMA data_version").fetchone()[0] == self._data_version:
            return
        with self._read():
            self._check_meta()
            self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> None:
        """Inside a transaction: add rows past the index's stamp, and recount, when others committed."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if not force and version == self._data_version:
            return
        self._catch_up()
        self._live = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_live_id WHERE deleted = 0").fetchone()[0]
        dead = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_dead WHERE deleted = 1 AND seq <= ?",
            (self._index.last_seq,)).fetchone()[0]
        if dead != self._dead:  # rows only ever become deleted (until a compaction): another process deleted some
            self._forget(r[0] for r in self._conn.execute(
                "SELECT seq FROM records INDEXED BY records_dead WHERE deleted = 1 AND seq <= ?",
                (self._index.last_seq,)))
        self._dead = dead
        self._data_version = version

    def _load_ids(self) -> None:
        """Inside a read transaction: the ids of the live rows the index holds (from the covering index of ids)."""
        ids: list[str | None] = [None] * (self._index.last_seq + 1)
        for seq, rid in self._conn.execute("SELECT seq, id FROM records INDEXED BY records_live_id "
                                           "WHERE deleted = 0 AND seq <= ?", (self._index.last_seq,)):
            ids[seq] = rid
        self._ids = ids

    def _remember(self, seqs: Sequence[int], ids: Sequence[str | None]) -> None:
        """Rows just added to the index (None for one already deleted)."""
        table = self._ids
        if seqs and seqs[-1] >= len(table):
            table.extend([None] * (seqs[-1] + 1 - len(table)))
        for seq, rid in zip(seqs, ids, strict=True):
            table[seq] = rid

    def _forget(self, seqs: Iterable[int]) -> None:
        table = self._ids
        for seq in seqs:
            if seq < len(table):
                table[seq] = None

    def _catch_up(self) -> None:
        """Inside a transaction: add every row newer than the index's stamp (deleted ones too, so the stamp
        can be checked with a count), and stamp it with the last sequence number of the same snapshot."""
        top = self._max_seq()
        if top <= self._index.last_seq:
            return
        cur = self._conn.execute("SELECT seq, vector, id, deleted FROM records WHERE seq > ? AND seq <= ? ORDER BY seq",
                                 (self._index.last_seq, top))
        while rows := cur.fetchmany(20_000):
            seqs = [r[0] for r in rows]
            self._index.add(np.array(seqs, np.int64), self._decode([r[1] for r in rows]))
            self._remember(seqs, [None if r[3] else r[2] for r in rows])
            self._unsaved += len(rows)
        self._index.last_seq = top  # rows written and dropped by a compaction before we saw them

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.settings.dim)

    def _load_index(self) -> AnnIndex:
        """Inside a read transaction: the saved index if it is this collection's and holds exactly the rows up
        to its stamp; otherwise an empty one (caught up from the rows next), with a warning."""
        spec = index_spec(self.settings)
        try:
            index, stamp = AnnIndex.load(self.folder, spec, identity=self.settings.identity,
                                         generation=self._generation)
            if stamp.get("format") != ANN_FORMAT:
                self._adopt(index)
            elif index.last_seq > self._max_seq():
                raise DamagedIndexError(f"its stamp ({index.last_seq}) is past the database's last write")
            else:
                rows = self._rows_through(index.last_seq)
                if rows != index.ntotal:
                    raise DamagedIndexError(f"it holds {index.ntotal} vectors; the database has {rows} rows up to "
                                            f"its stamp {index.last_seq}")
            return index
        except DamagedIndexError as exc:
            # Never saved is the normal state of a collection whose writers are still at work: built quietly.
            if not isinstance(exc, IndexNotSavedError) and self._conn.execute(
                    "SELECT 1 FROM records LIMIT 1").fetchone() is not None:
                warnings.warn(f"ANN index of collection {self.name!r} is unusable ({exc}); rebuilding it from "
                              "the database", IndexRebuildWarning, stacklevel=6)
            return AnnIndex(spec)

    def _adopt(self, index: AnnIndex) -> None:
        """An index saved by an earlier format left out rows deleted before it saw them (and, through a race
        since fixed, some live ones): add whatever rows up to its stamp it lacks, once, instead of rebuilding."""
        import faiss

        held = set(faiss.vector_to_array(index.index.id_map).tolist())
        seqs = [r[0] for r in self._conn.execute("SELECT seq FROM records WHERE seq <= ?", (index.last_seq,))
                if r[0] not in held]
        for part in _chunks(seqs):
            rows = self._conn.execute(f"SELECT seq, vector FROM records WHERE seq IN ({_marks(len(part))}) "
                                      "ORDER BY seq", tuple(part)).fetchall()
            stamp = index.last_seq
            index.add(np.array([r[0] for r in rows], np.int64), self._decode([r[1] for r in rows]))
            index.last_seq = stamp
        self._unsaved += max(1, len(seqs))  # saved again in the new format

    # -- saving the index -----------------------------------------------------------------------------
    def _still_ours(self) -> bool:
        return not self._gone and _file_id(self._db_path) == self._file

    def save_index(self, *, force: bool = False) -> None:
        """Write the ANN index file now (it is also saved at intervals and on close).

        A failure is a warning (:class:`IndexSaveWarning`), never an error: the rows are in the database, and
        the save is retried later. An equal or newer index saved by another process is kept unless ``force``.
        """
        with self._lock:
            if self.read_only or not self._still_ours():
                return
            try:
                with locked(self.folder / "ann.lock"):
                    if not self._still_ours():  # deleted or replaced meanwhile: never save into another's folder
                        self._gone = True
                        return
                    try:
                        with self._read():  # compacted elsewhere since this handle last looked: take that index
                            self._check_meta()
                    except CollectionNotFoundError:  # deleted meanwhile
                        return
                    self._index.save(self.folder, identity=str(self.settings.identity),
                                     generation=self._generation, force=force)
                self._unsaved = 0
            except (OSError, RuntimeError) as exc:
                warnings.warn(f"could not save the ANN index of collection {self.name!r} ({exc}); the records are "
                              "safe in the database, and the save is retried later", IndexSaveWarning, stacklevel=3)
            self._last_save = time.monotonic()
        self._save_lexical()

    def _after_write(self) -> None:
        due = self._unsaved >= self._options.save_every or (
            self._unsaved and time.monotonic() - self._last_save >= self._options.save_interval_s
        )
        if due:
            self.save_index()

    # -- writes ---------------------------------------------------------------------------------------
    def _compile_where(self, where: Where | None) -> CompiledFilter:
        return compile_where(where)

    def _live_ids(self, ids: list[str]) -> list[str]:
        found: list[str] = []
        with self._lock:
            self._check_alive()
            for part in _chunks(ids):
                found += [r[0] for r in self._conn.execute(
                    f"SELECT id FROM records WHERE deleted = 0 AND id IN ({_marks(len(part))})", tuple(part))]
        return found

    def _soft_delete(self, db: sqlite3.Connection, cond: str, params: Sequence[Any]) -> list[int]:
        """Flag rows deleted (and drop their token vectors), inside the caller's transaction; their sequence
        numbers."""
        seqs = [r[0] for r in db.execute(f"UPDATE records SET deleted = 1 WHERE {cond} RETURNING seq", tuple(params))]
        if self.settings.late is not None:
            for part in _chunks(seqs):
                db.execute(f"DELETE FROM tokens WHERE seq IN ({_marks(len(part))})", tuple(part))
        return seqs

    # -- stored token vectors (late interaction) ------------------------------------------------------
    def _token_codec(self) -> Any:
        if self._codec is not None:
            return self._codec
        with self._lock:
            self._sync()  # another process may have fitted the codec's PCA
        return self._codec if self._codec is not None else super()._token_codec()

    def _write_codec(self, db: sqlite3.Connection, tokens: Sequence[np.ndarray] | None) -> Any:
        """Inside the write transaction: the collection's codec, its PCA fitted now (on this first write's
        tokens) and recorded when it has none yet. The caller keeps it (``self._codec``) once it committed: a
        fit rolled back with its write must not be used by the next one."""
        if self._codec is not None:
            return self._codec
        codec = super()._token_codec()
        if not codec.fitted:
            have = [t for t in tokens or () if len(t)]
            total = sum(len(t) for t in have)
            if total < max(PCA_MIN_TOKENS, 2 * (codec.dims or 0)):
                raise InvalidInputError(
                    f"collection {self.name!r} reduces token vectors by a PCA fitted on its first write, which needs "
                    f"at least {max(PCA_MIN_TOKENS, 2 * (codec.dims or 0))} tokens; this one has {total}: write a "
                    "larger first batch")
            codec = codec.fit(np.concatenate(have))
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('late_codec', ?)", (json.dumps(codec.to_dict()),))
        return codec

    def _adopt_codec(self, codec: Any) -> None:
        with self._lock:
            with self._write() as db:
                if self._codec is not None and not same_codec(self._codec, codec):
                    raise StoreError(f"collection {self.name!r} already has another token codec")
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('late_codec', ?)",
                           (json.dumps(codec.to_dict()),))
            self._writes += 1
            self._codec = codec

    def _late_tokens(self, ids: list[str], texts: list[str]) -> tuple[Any, list[np.ndarray]]:
        codec = self._token_codec()
        width = codec.dims or self.settings.dim
        found: dict[str, np.ndarray] = {}
        with self._lock:
            self._check_alive(strict=False)
            for part in _chunks(ids):
                for rid, n, blob in self._conn.execute(
                        "SELECT r.id, t.n, t.vectors FROM records r JOIN tokens t ON t.seq = r.seq "
                        f"WHERE r.deleted = 0 AND r.id IN ({_marks(len(part))})", tuple(part)):
                    found[rid] = codec.decode(blob, n, width)
        lacking = [i for i, rid in enumerate(ids) if rid not in found]
        if lacking:  # e.g. a record written meanwhile, or deleted since it was found: from its text, as stored
            enc: Any = self.encoder
            fresh = enc.token_vectors([texts[i] for i in lacking], kind="document")
            for i, tv in zip(lacking, fresh, strict=True):
                found[ids[i]] = codec.decode(codec.encode(tv), len(tv), width)
        return codec, [found[rid] for rid in ids]

    def _late_stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_alive()
            with self._read():
                rows, tokens, size = self._conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(length(vectors)), 0) FROM tokens").fetchone()
        codec = self._token_codec()
        return {"precision": codec.precision, "dims": codec.dims, "fitted": codec.fitted, "rows": int(rows),
                "tokens": int(tokens), "bytes": int(size),
                "tokens_per_chunk": round(tokens / rows, 1) if rows else 0.0,
                "bytes_per_chunk": round(size / rows) if rows else 0}

    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: CompiledFilter | None = None, index_texts: Sequence[str | None] | None = None,
        tokens: Sequence[np.ndarray] | None = None, token_blobs: Sequence[tuple[int, bytes] | None] | None = None,
    ) -> None:
        if not ids and delete_where is None:
            return
        extra = [None if x == t else x for x, t in zip(index_texts, texts, strict=True)] \
            if index_texts is not None else [None] * len(ids)
        late = self.settings.late is not None
        if late and tokens is None and token_blobs is None and ids:
            raise InvalidInputError(f"collection {self.name!r} stores token vectors; none were given")
        with self._lock:
            replaced: list[int] = []
            codec = None
            with self._write() as db:
                if replace:
                    for part in _chunks(ids):
                        replaced += self._soft_delete(db, f"deleted = 0 AND id IN ({_marks(len(part))})", part)
                if delete_where is not None:
                    replaced += self._soft_delete(db, "deleted = 0" + delete_where.and_sql(), delete_where.params)
                first = self._max_seq() + 1
                db.executemany(
                    "INSERT INTO records(id, text, metadata, vector, index_text) VALUES (?, ?, ?, ?, ?)",
                    zip(ids, texts, meta, (row.tobytes() for row in vectors), extra, strict=True),
                )
                if late and ids:
                    blobs: list[tuple[int, bytes] | None] = \
                        list(token_blobs) if token_blobs is not None else [None] * len(ids)
                    todo = [i for i, b in enumerate(blobs) if b is None]
                    codec = self._write_codec(db, [tokens[i] for i in todo] if tokens is not None else None)
                    for i in todo:
                        if tokens is None:
                            raise InvalidInputError(f"record {ids[i]!r} has no token vectors")
                        blobs[i] = (len(tokens[i]), codec.encode(tokens[i]))
                    db.executemany("INSERT INTO tokens(seq, n, vectors) VALUES (?, ?, ?)",
                                   ((first + i, b[0], b[1]) for i, b in enumerate(blobs) if b is not None))
            # Committed. The index was caught up inside the transaction, so these rows come next.
            if codec is not None:
                self._codec = codec
            self._writes += 1
            seqs = range(first, first + len(ids))
            self._index.add(np.arange(first, first + len(ids), dtype=np.int64), vectors)
            self._forget(replaced)
            self._remember(seqs, ids)
            self._unsaved += len(ids)
            self._live += len(ids) - len(replaced)
            self._dead += len(replaced)
            self._after_write()

    def _delete(self, ids: list[str] | None, flt: CompiledFilter | None) -> int:
        with self._lock:
            gone: list[int] = []
            with self._write() as db:
                if ids is not None:
                    for part in _chunks(ids):
                        gone += self._soft_delete(db, f"deleted = 0 AND id IN ({_marks(len(part))})", part)
                elif flt is not None:
                    gone = self._soft_delete(db, "deleted = 0" + flt.and_sql(), flt.params)
            self._writes += 1
            self._forget(gone)
            self._live -= len(gone)
            self._dead += len(gone)
        return len(gone)

    def _compact(self, *, reindex: bool) -> dict[str, int]:
        """Drop deleted rows, reclaim disk (VACUUM) and rebuild the ANN index without them (always: ``reindex``
        is accepted for the PostgreSQL backend's sake). Another process's handle notices the new generation."""
        with self._lock:
            with self._write() as db:
                dropped = db.execute("DELETE FROM records WHERE deleted = 1").rowcount
                if self.settings.late is not None:  # none should be left; a row's tokens never outlive it
                    db.execute("DELETE FROM tokens WHERE seq NOT IN (SELECT seq FROM records WHERE deleted = 0)")
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('generation', ?)",
                           (str(self._generation + 1),))
            self._generation += 1
            self._writes += 1
            before = self._db_bytes()
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._rebuild_index()
            return {"dropped": dropped, "bytes_before": before, "bytes_after": self._db_bytes()}

    def _rebuild_index(self) -> int:
        self._index = AnnIndex(index_spec(self.settings))
        self._ids = []
        self._dead = 0
        self._sync(force=True)
        self.save_index(force=True)
        return self._index.ntotal

    # -- metadata indexes -----------------------------------------------------------------------------
    def _create_index(self, field: str) -> bool:
        with self._lock:
            with self._write() as db:
                if field in self._indexed:
                    return False
                db.execute(_index_sql(field))
                self._set_indexed(db, self._indexed | {field})
            self._writes += 1
            return True

    def _drop_index(self, field: str) -> bool:
        with self._lock:
            with self._write() as db:
                if field not in self._indexed:
                    return False
                db.execute(f"DROP INDEX IF EXISTS {_index_name(field)}")
                self._set_indexed(db, self._indexed - {field})
            self._writes += 1
            return True

    def _set_indexed(self, db: sqlite3.Connection, fields: frozenset[str]) -> None:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('indexes', ?)",
                   (json.dumps(sorted(fields), ensure_ascii=False),))
        self._indexed = fields

    def _indexes(self) -> list[str]:
        with self._lock:
            self._sync()
            return sorted(self._indexed)

    # -- reads ----------------------------------------------------------------------------------------
    def _count_live(self) -> int:
        with self._lock:
            self._sync()
            return int(self._live)

    def _count_estimate(self) -> int:
        return int(self._live)  # as of the last look; _ann catches up before it searches

    def _count(self, flt: CompiledFilter) -> int:
        with self._lock:
            self._sync()
            if flt.matches_all:
                return int(self._live)
            return int(self._conn.execute(f"SELECT COUNT(*) FROM records WHERE deleted = 0{flt.and_sql()}",
                                          flt.params).fetchone()[0])

    def _get(self, ids: list[str] | None, flt: CompiledFilter | None, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        cols = "id, text, metadata, vector" if include_vectors else "id, text, metadata"
        rows: list[tuple[Any, ...]] = []
        with self._lock:
            self._check_alive()
            if flt is not None:
                lim = f" LIMIT {int(limit)}" if limit is not None else ""
                rows = self._conn.execute(
                    f"SELECT {cols} FROM records WHERE deleted = 0{flt.and_sql()} ORDER BY seq{lim}", flt.params
                ).fetchall()
            else:
                for part in _chunks(ids or []):
                    rows += self._conn.execute(
                        f"SELECT {cols} FROM records WHERE deleted = 0 AND id IN ({_marks(len(part))})", tuple(part)
                    ).fetchall()
        if include_vectors:
            return [(r[0], r[1], _metadata(r[2]), np.frombuffer(r[3], dtype=np.float32)) for r in rows]
        return [(r[0], r[1], _metadata(r[2])) for r in rows]

    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        cols = ", ".join(f"json_extract(metadata, {sqlite_json_path(f)})" for f in fields)
        with self._lock:
            self._check_alive()
            return {tuple(r) for r in self._conn.execute(f"SELECT DISTINCT {cols} FROM records WHERE deleted = 0")}

    def _exact_scores(self, q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        m = self.settings.metric
        if m in (Metric.COSINE, Metric.DOT):
            return vectors @ q
        if m is Metric.L2:
            return -np.sqrt(((vectors - q) ** 2).sum(axis=1))
        return -np.abs(vectors - q).sum(axis=1)

    def _bm25(self, query: str, n: int, flt: CompiledFilter, *, reader: bool = False) -> list[Candidate]:
        """Top ``n`` live rows by BM25 from the in-memory term-document matrix (:mod:`.lexical`), ties by id.

        The matrix is built from the rows on the first BM25 search and caught up before each one (rows past
        its last sequence number, and the deleted flags when the count of deleted rows changed), so every
        commit, this handle's or another process's, is searched. With ``reader``, the rows are read on a
        second, read-only connection (from the bm25 worker thread only, beside a dense search).
        """
        match_expression(query)  # the same checks as ever: a non-empty query with words
        terms = query_terms(query)
        if reader:
            if self._reader is None:
                self._reader = _connect_read_only(self._db_path, self._options.lock_timeout,
                                                  immutable=self._immutable)
            return self._lexical_top(self._reader, terms, n, flt)
        with self._lock:
            self._check_alive()
            return self._lexical_top(self._conn, terms, n, flt)

    def _lexical_top(self, conn: sqlite3.Connection, terms: list[str], n: int, flt: CompiledFilter
                     ) -> list[Candidate]:
        with self._lex_lock:
            lex = self._lexical(conn)
            rows, scores = lex.scores(terms)
            seqs = lex.seqs(rows)
        found: list[Candidate] = []
        m = n if flt.matches_all else max(4 * n, 256)
        order, start = _best_first(scores, seqs, m), 0
        while True:
            # Read candidates best first until n pass the filter: the best m, then the next 3m, 12m, ...
            part = order[start:]
            by_seq = {int(q): float(sc) for q, sc in zip(seqs[part], scores[part], strict=True)}
            for chunk in _chunks(list(by_seq)):
                fetched = conn.execute(
                    f"SELECT seq, id, text, metadata FROM records WHERE seq IN ({_marks(len(chunk))}) "
                    f"AND deleted = 0{flt.and_sql()}", (*chunk, *flt.params)).fetchall()
                found += [Candidate(by_seq[r[0]], r[1], r[2], _metadata(r[3])) for r in fetched]
            if len(found) >= n or len(order) < m:  # enough, or every scored row was read
                break
            start, m = len(order), m * 4
            order = _best_first(scores, seqs, m)
        return best_first(found)[:n]

    def _lexical(self, conn: sqlite3.Connection) -> Bm25Index:
        """The BM25 matrix, caught up with every commit ``conn`` can see (caller holds ``_lex_lock``).

        First use loads ``bm25.npz`` when it is this collection's and of its compaction generation (a
        damaged one is rebuilt with a warning); a compaction anywhere starts it again, since the rows it
        dropped may never have been seen deleted.
        """
        key = (id(conn), conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if self._lex is not None and key == self._lex_key:
            return self._lex
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            generation = int(row[0]) if row else 0
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            top = int(row[0]) if row else 0
            if self._lex is None or self._lex_generation != generation:
                self._lex, self._lex_generation = self._load_lexical(generation, top), generation
                self._lex_unsaved = True
            lex = self._lex
            if top > lex.last_seq:
                cur = conn.execute(f"SELECT seq, {INDEXED} FROM records WHERE seq > ? AND seq <= ? AND deleted = 0 "
                                   f"AND {INDEXED} IS NOT NULL ORDER BY seq", (lex.last_seq, top))
                while batch := cur.fetchmany(20_000):
                    lex.add([r[0] for r in batch], [r[1] for r in batch])
                lex.last_seq = top
                self._lex_unsaved = True
            dead = conn.execute("SELECT COUNT(*) FROM records INDEXED BY records_dead WHERE deleted = 1").fetchone()[0]
            if dead != lex.dead_seen:
                lex.mark_dead(np.fromiter((r[0] for r in conn.execute(
                    "SELECT seq FROM records INDEXED BY records_dead WHERE deleted = 1")), np.int64))
                lex.dead_seen = dead
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        self._lex_key = key
        return lex

    def _load_lexical(self, generation: int, top: int) -> Bm25Index:
        try:
            lex = Bm25Index.load(self.folder, identity=str(self.settings.identity), generation=generation)
            if lex.last_seq > top:
                raise DamagedIndexError(f"its stamp ({lex.last_seq}) is past the database's last write ({top})")
            return lex
        except DamagedIndexError as exc:
            if not isinstance(exc, IndexNotSavedError):
                warnings.warn(f"BM25 matrix of collection {self.name!r} is unusable ({exc}); rebuilding it from "
                              "the database", IndexRebuildWarning, stacklevel=8)
            return Bm25Index()

    def _save_lexical(self) -> None:
        """Write ``bm25.npz`` if the matrix changed since it was loaded (a failure is a warning)."""
        with self._lex_lock:
            if (self._lex is None or not self._lex_unsaved or self.read_only or not self._still_ours()
                    or self._lex_generation != self._generation):  # compacted since: rebuilt when next used
                return
            try:
                with locked(self.folder / "ann.lock"):
                    self._lex.save(self.folder, identity=str(self.settings.identity),
                                   generation=self._lex_generation)
                self._lex_unsaved = False
            except OSError as exc:
                warnings.warn(f"could not save the BM25 matrix of collection {self.name!r} ({exc}); it is rebuilt "
                              "from the database when needed", IndexSaveWarning, stacklevel=4)

    def _ann(self, q: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
             factor: int, light: bool = False) -> list[Candidate]:
        return self._ann_many(q.reshape(1, -1), k, flt, ef=ef, exact=exact, factor=factor, light=light)[0]

    def _ann_many(self, qs: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
                  factor: int, light: bool = False) -> list[list[Candidate]]:
        """The plan: a filter that an index on its fields narrows to few rows is scored exactly over them
        (pre-filtering); otherwise the graph is walked and its shortlist filtered (post-filtering), widened
        while too few pass. Collection._dense scans exactly when both come up short."""
        with self._lock:
            self._sync()
            matching: int | None = self._live if flt.matches_all else None
            if flt.narrowed_by(self._indexed):
                with self._read():  # the rows found and the index caught up from one snapshot
                    self._check_meta()
                    self._refresh()
                    found, matching = self._prefiltered(qs, k, flt, light=light)
                if found is not None:
                    return found
            # Oversample for rescoring, filters (by the selectivity when an index counted it) and deleted
            # rows still in the graph; beyond the cap the exact scan takes over (Collection._dense).
            cap = max(10_000, k * factor * 10)
            share = matching / max(self._live, 1) if matching is not None else 0.1
            want = min(int(k * factor / max(share, 1e-9) * (1 if flt.matches_all else 1.5)) + self._dead, cap)
            results: list[list[Candidate]] = [[] for _ in range(len(qs))]
            wants = dict.fromkeys(range(len(qs)), want)
            while wants:  # each round searches the queries that want as many candidates in one call
                for size in sorted(set(wants.values())):
                    todo = [i for i, w in wants.items() if w == size]
                    keys, scores = self._search_checked(qs[todo], size, ef=ef, exact=exact)
                    for row, i in enumerate(todo):
                        got, sc = keys[row], scores[row]
                        complete = got.size == 0 or got[-1] >= 0  # faiss pads with -1 when fewer were reachable
                        if not complete:
                            got, sc = got[got >= 0], sc[got >= 0]
                        results[i], passed = self._shortlist(qs[i], got, sc, k, flt, light=light)
                        del wants[i]
                        # Enough when k pass (k x factor to rescore, for approximate codes), or none are left.
                        if passed < k * factor and complete and size < min(cap, self._index.ntotal):
                            # Widen: enough for k to pass at the share that passed this time, and at least 4x.
                            rate = max(passed, 1) / max(got.size, 1)
                            wants[i] = min(cap, max(size * 4, int(k * factor / rate * 1.5)))
            return results

    def _dense_ids(self, q: np.ndarray, k: int, ef: int) -> Hits | None:
        s = self.settings
        if s.precision is not Precision.FLOAT32 or s.dims < s.dim:
            return None
        with self._lock:
            self._sync()
            if self._dead or self._live <= self.exact_below:
                return None  # deleted rows in the graph want an oversample; small collections are searched exactly
            keys, scores = self._index.search_batch(q.reshape(1, -1), k, ef=ef)
            table, top = self._ids, len(self._ids)
            ids: list[str] = []
            for key in keys[0].tolist():
                rid = table[key] if 0 <= key < top else None
                if rid is None:
                    return None
                ids.append(rid)
        found = scores[0].tolist()
        # Ties (broken by id) and cosines outside [-1, 1] (a damaged index) are the general path's to handle.
        if len(ids) < min(k, self._live) or any(a <= b for a, b in itertools.pairwise(found)) or (
                found and s.metric is Metric.COSINE and not (found[0] <= 1.001 and found[-1] >= -1.001)):
            return None
        return Hits(ids, found, [None] * len(ids), [{} for _ in ids])

    def _search_checked(self, qs: np.ndarray, want: int, *, ef: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        keys, scores = self._index.search_batch(qs, want, ef=ef, exact=exact)
        found = scores[keys >= 0]  # best first per query; padding (key -1) carries no score
        if (s.precision is Precision.FLOAT32 and s.dims == s.dim and s.metric is Metric.COSINE and found.size
                and (float(found.max()) > 1.001 or float(found.min()) < -1.001)):
            # Cosines of unit vectors lie in [-1, 1]: the index file was damaged after it was checked.
            bad = float(found.max()) if float(found.max()) > 1.001 else float(found.min())
            warnings.warn(f"ANN index of collection {self.name!r} gave a cosine of {bad:.3g}; "
                          "it is damaged, rebuilding it from the database", IndexRebuildWarning, stacklevel=5)
            self._rebuild_index()
            keys, scores = self._index.search_batch(qs, want, ef=ef, exact=exact)
        return keys, scores

    def _shortlist(self, q: np.ndarray, keys: np.ndarray, scores: np.ndarray, k: int, flt: CompiledFilter, *,
                   light: bool) -> tuple[list[Candidate], int]:
        """The top ``k`` live rows passing ``flt`` among the index's best ``keys``, rescored from the stored
        vectors when the index holds approximate codes; and how many of ``keys`` passed."""
        s = self.settings
        if s.precision is not Precision.FLOAT32 or s.dims < s.dim:
            rows = self._fetch(keys, flt, vectors=True)
            if not rows:
                return [], 0
            full = (-self._exact_scores(q, self._decode([r[3] for r in rows]))).tolist()
            # Rank the shortlist as plain tuples (best first, ties by id); build candidates (and parse
            # metadata) for the top k only.
            top = sorted(zip(full, (r[0] for r in rows), range(len(rows)), strict=True))[:k]
            return [Candidate(-neg, rid, rows[i][1], _metadata(rows[i][2])) for neg, rid, i in top], len(rows)
        if light and flt.matches_all:  # ids and scores only: nothing to read from the database
            table, top_seq = self._ids, len(self._ids)
            live = [Candidate(score, rid, None, {}) for key, score in zip(keys.tolist(), scores.tolist(), strict=True)
                    if key < top_seq and (rid := table[key]) is not None]
            return best_first(live)[:k], len(live)
        score_of = dict(zip(keys.tolist(), scores.tolist(), strict=True))  # the graph's scores are exact
        rows = self._fetch(keys, flt, vectors=False, light=light)
        if light:  # ids and scores only: texts and metadata stay unread
            return best_first(Candidate(score_of[r[0]], r[1], None, {}) for r in rows)[:k], len(rows)
        return best_first(Candidate(score_of[r[0]], r[1], r[2], _metadata(r[3])) for r in rows)[:k], len(rows)

    def _prefiltered(self, qs: np.ndarray, k: int, flt: CompiledFilter, *, light: bool
                     ) -> tuple[list[list[Candidate]] | None, int]:
        """Inside a read transaction: the exact top ``k`` over the rows passing ``flt``, found through an index
        on its fields, when they are few (at most 2% of the collection, between 2,000 and 20,000 rows):
        scoring them all costs less than widening a graph walk until k of them turn up, and misses none.
        Otherwise (None, a lower bound of the rows that pass)."""
        limit = min(20_000, max(2_000, self._live // 50))
        seqs = [r[0] for r in self._conn.execute(
            f"SELECT seq FROM records WHERE deleted = 0{flt.and_sql()} LIMIT {limit + 1}", flt.params)]
        if len(seqs) > limit:
            return None, len(seqs)
        keys = np.array(seqs, np.int64)
        vectors = self._index.vectors(keys) if self.settings.dims == self.settings.dim else None
        if vectors is None:  # codes in the index: the stored vectors of the few rows, read through the index
            return [self._scan(q, k, flt) for q in qs], len(seqs)
        found = []
        for q in qs:
            scores = self._exact_scores(q, vectors)
            top = np.argsort(-scores, kind="stable")[: k + 8]  # a few more, so ties at the k-th sort by id
            cands = [Candidate(float(scores[i]), self._ids[seqs[i]] or "", None, {}) for i in top]
            if not light:
                rows = {r[0]: r for r in self._fetch(keys[top], NO_FILTER, vectors=False)}
                cands = [Candidate(c.score, c.id, rows[seqs[i]][2], _metadata(rows[seqs[i]][3]))
                         for c, i in zip(cands, top, strict=True)]
            found.append(best_first(cands)[:k])
        return found, len(seqs)

    def _fetch(self, keys: np.ndarray, flt: CompiledFilter, *, vectors: bool, light: bool = False
               ) -> list[tuple[Any, ...]]:
        """Live rows among ``keys`` that pass the filter: (id, text, metadata, vector), (seq, id, text, metadata),
        or with ``light`` (seq, id)."""
        rows: list[tuple[Any, ...]] = []
        cols = "id, text, metadata, vector" if vectors else "seq, id" if light else "seq, id, text, metadata"
        for part in _chunks(keys.tolist()):
            rows += self._conn.execute(
                f"SELECT {cols} FROM records WHERE seq IN ({_marks(len(part))}) AND deleted = 0{flt.and_sql()}",
                (*part, *flt.params),
            ).fetchall()
        return rows

    def _scan(self, q: np.ndarray, k: int, flt: CompiledFilter) -> list[Candidate]:
        best: list[Candidate] = []
        with self._lock:
            self._check_alive()
            cur = self._conn.execute(
                f"SELECT id, text, metadata, vector FROM records WHERE deleted = 0{flt.and_sql()}", flt.params)
            while rows := cur.fetchmany(20_000):
                scores = self._exact_scores(q, self._decode([r[3] for r in rows]))
                top = np.argsort(-scores, kind="stable")[: k]
                best = best_first([*best, *(Candidate(float(scores[i]), rows[i][0], rows[i][1],
                                                      _metadata(rows[i][2])) for i in top)])[:k]
        return best

    def _export(self, batch: int) -> Iterator[RecordBatch]:
        # A separate connection holds one read transaction for the whole export: a consistent snapshot that
        # neither blocks this handle's other calls nor sees writes made while it runs.
        conn = _connect_read_only(self._db_path, self._options.lock_timeout, immutable=self._immutable)
        try:
            conn.execute("BEGIN")
            yield from _live_records(conn, batch, self.settings.dim, self.settings.late is not None)
        finally:
            conn.close()

    # -- management -----------------------------------------------------------------------------------
    def _disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def _db_bytes(self) -> int:
        files = (self._db_path, Path(str(self._db_path) + "-wal"))
        return sum(p.stat().st_size for p in files if p.exists())

    def _location(self) -> str:
        return str(self.folder)

    def _index_vectors(self) -> int:
        with self._lock:
            self._sync()
            return self._index.ntotal

    def backup(self, path: Path) -> int:
        """Copy the database into ``path`` (SQLite's online backup: one consistent snapshot while writers run).
        Returns the live records it holds."""
        with self._errors(), self._lock:
            self._check_alive()
            dst = sqlite3.connect(str(path), isolation_level=None)
            try:
                self._conn.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                # The snapshot holds live records only.
                dst.execute("DELETE FROM records WHERE deleted = 1")
                if self.settings.late is not None:
                    dst.execute("DELETE FROM tokens WHERE seq NOT IN (SELECT seq FROM records)")
                dst.execute("VACUUM")
                return int(dst.execute("SELECT COUNT(*) FROM records WHERE deleted = 0").fetchone()[0])
            finally:
                dst.close()

    def _notes(self) -> dict[str, Any]:
        with self._lock:
            self._check_alive()
            return {k[5:]: json.loads(v) for k, v in self._conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'note:%' ORDER BY key")}

    def _set_notes(self, changes: dict[str, Any]) -> None:
        with self._lock, self._write() as db:
            for key, value in changes.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (f"note:{key}",))
                else:
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                               (f"note:{key}", json.dumps(value, ensure_ascii=False)))

    def _is_current(self) -> bool:
        with self._lock:
            try:
                self._sync()  # a stat, and the deleted mark when another connection committed
            except CollectionNotFoundError:
                return False
            return True

    def _verify(self, report: VerifyReport) -> None:
        with self._lock:
            self._check_alive()
            try:
                rows = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:
                rows = [str(exc)]
            report.checks["database"] = "ok" if rows == ["ok"] else "damaged"
            for line in rows[:20] if rows != ["ok"] else []:
                report.problem(f"database: {line}")
            if rows != ["ok"]:
                return  # nothing else can be trusted; restore a snapshot
            meta = dict(self._conn.execute("SELECT key, value FROM meta"))
            listed = json.loads(meta.get("indexes", "[]"))
            missing = [f for f in listed if self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_index_name(f),)).fetchone() is None]
            report.checks["metadata_indexes"] = len(listed)
            for f in missing:
                report.problem(f"the index on metadata field {f!r} is listed but missing (repair rebuilds it)")
            try:
                stored = CollectionSettings.from_meta(meta)
                if stored != self.settings:
                    report.problem("the settings in the database differ from those this handle opened with")
            except (KeyError, ValueError, TypeError) as exc:
                report.problem(f"the settings in the database do not parse: {exc!r}")
            if not meta.get("identity"):
                report.problem("the collection has no identity (written by an older embedsmith); repair adds one")
            with self._read():
                top = self._max_seq()
                live = self._conn.execute("SELECT COUNT(*) FROM records WHERE deleted = 0").fetchone()[0]
                report.checks.update(records=live, last_seq=top)
                stamp, problems = verify_file(self.folder)
                for p in problems:
                    report.problem(p)
                if stamp is None and not problems:
                    report.checks["index_file"] = "not saved yet (built from the rows on open)"
                if stamp is not None and not problems:
                    if stamp.get("identity") != self.settings.identity:
                        report.problem("the ANN index file belongs to another collection; repair rebuilds it")
                    elif stamp.get("generation") != self._generation:
                        report.problem("the ANN index file predates the last compaction; repair rebuilds it")
                    elif int(stamp.get("last_seq", 0)) > top:
                        report.problem(f"the ANN index file is stamped {stamp.get('last_seq')}, past the last "
                                       f"write {top}; repair rebuilds it")
                    else:
                        held = self._rows_through(int(stamp["last_seq"]))
                        if held != stamp.get("ntotal"):
                            report.problem(f"the ANN index file holds {stamp.get('ntotal')} vectors; the database "
                                           f"has {held} rows up to its stamp; repair rebuilds it")
                    report.checks["index_file"] = {"file": stamp.get("file"), "last_seq": stamp.get("last_seq"),
                                                   "vectors": stamp.get("ntotal")}
                try:
                    lex = Bm25Index.load(self.folder, identity=str(self.settings.identity),
                                         generation=self._generation)
                    report.checks["bm25_file"] = {"last_seq": lex.last_seq, "rows": len(lex)}
                    if lex.last_seq > top:
                        report.problem(f"the BM25 matrix file is stamped {lex.last_seq}, past the last write {top}; "
                                       "repair removes it")
                except IndexNotSavedError:
                    report.checks["bm25_file"] = "not saved yet (built from the rows on the first bm25 search)"
                except DamagedIndexError as exc:
                    report.checks["bm25_file"] = "damaged"
                    report.problem(f"{exc}; repair removes it (it is rebuilt from the rows)")
                if self.settings.late is not None:
                    lacking, extra = self._token_gaps()
                    report.checks["token_vectors"] = {"missing": lacking, "extra": extra}
                    if lacking:
                        report.problem(f"{lacking} live record(s) have no stored token vectors; repair computes them")
                    if extra:
                        report.problem(f"{extra} stored token vector row(s) belong to no live record; repair drops "
                                       "them")
                in_memory = self._rows_through(self._index.last_seq)
                if in_memory != self._index.ntotal:
                    report.problem(f"this handle's ANN index holds {self._index.ntotal} vectors; the database has "
                                   f"{in_memory} rows up to its stamp; repair rebuilds it")

    def _token_gaps(self) -> tuple[int, int]:
        """Inside a read transaction: live records without token rows, and token rows of no live record."""
        missing = self._conn.execute("SELECT COUNT(*) FROM records r WHERE r.deleted = 0 AND NOT EXISTS "
                                     "(SELECT 1 FROM tokens t WHERE t.seq = r.seq)").fetchone()[0]
        extra = self._conn.execute("SELECT COUNT(*) FROM tokens t WHERE NOT EXISTS "
                                   "(SELECT 1 FROM records r WHERE r.seq = t.seq AND r.deleted = 0)").fetchone()[0]
        return int(missing), int(extra)

    def _repair_tokens(self) -> dict[str, int]:
        """Drop token rows of no live record; compute those of live records that lack them (from their texts)."""
        with self._lock:
            with self._read():
                todo = self._conn.execute(
                    "SELECT r.seq, COALESCE(r.index_text, r.text) FROM records r WHERE r.deleted = 0 AND NOT EXISTS "
                    "(SELECT 1 FROM tokens t WHERE t.seq = r.seq)").fetchall()
        textless = [seq for seq, text in todo if not text]
        todo = [(seq, text) for seq, text in todo if text]
        # Encoded outside the write lock (it may take a while); written only where still missing.
        enc: Any = self.encoder
        fresh = enc.token_vectors([t for _, t in todo], kind="document") if todo else []
        with self._lock:
            with self._write() as db:
                dropped = db.execute("DELETE FROM tokens WHERE seq NOT IN "
                                     "(SELECT seq FROM records WHERE deleted = 0)").rowcount
                codec = self._write_codec(db, fresh) if fresh else None
                added = 0
                for (seq, _), tv in zip(todo, fresh, strict=True):
                    assert codec is not None  # set whenever there is something to add
                    added += db.execute(
                        "INSERT INTO tokens(seq, n, vectors) SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM records "
                        "WHERE seq = ? AND deleted = 0) AND NOT EXISTS (SELECT 1 FROM tokens WHERE seq = ?)",
                        (seq, len(tv), codec.encode(tv), seq, seq)).rowcount
            if codec is not None:
                self._codec = codec
            self._writes += 1
        return {"token_rows_added": added, "token_rows_dropped": int(dropped), "token_rows_textless": len(textless)}

    def _repair(self) -> dict[str, Any]:
        tokens = self._repair_tokens() if self.settings.late is not None else {}
        with self._lock:
            with self._write() as db:
                if not self.settings.identity:
                    identity = new_identity()
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('identity', ?)", (identity,))
                    from dataclasses import replace

                    self.settings = replace(self.settings, identity=identity)
                bm25_rows = db.execute("SELECT COUNT(*) FROM records WHERE deleted = 0 AND "
                                       "COALESCE(index_text, text) IS NOT NULL").fetchone()[0]
                for f in self._indexed:  # recreate any listed metadata index that went missing
                    db.execute(_index_sql(f))
            vectors = self._rebuild_index()
            with self._lex_lock:  # rebuilt from the rows on the next bm25 search, and saved on close
                (self.folder / LEX_FILE).unlink(missing_ok=True)
                self._lex, self._lex_key = None, None
            return {"ann_vectors": vectors, "bm25_rows": int(bm25_rows), **tokens}

    def _close(self) -> None:
        """Save the ANN index and the BM25 matrix if they changed (and the collection is still this handle's),
        close the database."""
        try:
            if self._unsaved and self._still_ours():
                self.save_index()
            self._save_lexical()
        finally:
            if self._reader is not None:
                self._reader.close()
            self._conn.close()


def _best_first(scores: np.ndarray, seqs: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` best positive scores (and any tied with the last), best first, ties by sequence
    number. One partition and one scan: no full sort of a large candidate set."""
    if m < len(scores):
        kth = max(float(np.partition(scores, len(scores) - m)[len(scores) - m]), np.nextafter(0, 1))
        top = np.flatnonzero(scores >= kth)
    else:
        top = np.flatnonzero(scores > 0)
    return top[np.lexsort((seqs[top], -scores[top]))]


# -- connections ---------------------------------------------------------------------------------------------
def _index_name(field: str) -> str:
    """An SQL name for the index on a metadata field (any Unicode key): a digest of it."""
    return "records_meta_" + hashlib.sha256(field.encode("utf-8")).hexdigest()[:20]


def _index_sql(field: str) -> str:
    # The expression is the one filters emit (a literal path): SQLite only uses an index whose expression
    # matches the query's. Partial on live rows, as every read asks for those.
    return (f"CREATE INDEX IF NOT EXISTS {_index_name(field)} ON records("
            f"json_extract(metadata, {sqlite_json_path(field)})) WHERE deleted = 0")


def _connect(path: Path, lock_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=lock_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _connect_read_only(path: Path, lock_timeout: float, *, immutable: bool = False) -> sqlite3.Connection:
    flag = "immutable=1" if immutable else "mode=ro"
    return sqlite3.connect(f"file:{quote(str(path))}?{flag}", uri=True, timeout=lock_timeout, isolation_level=None,
                           check_same_thread=False)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK) and os.access(folder / DB_NAME, os.W_OK)


def _open_connection(folder: Path, lock_timeout: float) -> tuple[sqlite3.Connection, bool, bool]:
    """(connection, read_only, immutable). A folder this user cannot write opens read-only; with no write-ahead
    log left to read, as immutable (SQLite cannot otherwise open a WAL database whose folder is read-only)."""
    db = folder / DB_NAME
    if _writable(folder):
        try:
            return _connect(db, lock_timeout), False, False
        except sqlite3.OperationalError as exc:
            if not getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                raise
    conn = _connect_read_only(db, lock_timeout)
    try:
        conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        return conn, True, False
    except sqlite3.OperationalError:
        conn.close()
    wal = Path(str(db) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreReadOnlyError(
            f"collection {folder.name!r} has writes in its write-ahead log that a read-only user cannot merge; "
            f"open it once as a user who can write {str(folder)!r}"
        )
    return _connect_read_only(db, lock_timeout, immutable=True), True, True


def _upgrade(conn: sqlite3.Connection, name: str, version: int) -> None:
    """Bring an older store up to this format in one transaction.

    Format 1 had no FTS index, format 2 no ``index_text`` column, formats 2 and 3 an FTS5 index, which
    BM25 no longer reads: it is dropped.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
        if "index_text" not in columns:
            conn.execute("ALTER TABLE records ADD COLUMN index_text TEXT")
        conn.execute("DROP TABLE IF EXISTS fts")
        conn.execute("CREATE TABLE IF NOT EXISTS tokens(seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
                     "vectors BLOB NOT NULL)")
        conn.execute("DROP VIEW IF EXISTS records_search")
        conn.execute("CREATE INDEX IF NOT EXISTS records_dead ON records(seq) WHERE deleted = 1")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _write_new(path: Path, settings: CollectionSettings) -> None:
    """A new, empty collection database at ``path`` (schema and settings, generation 0)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        meta = {"format_version": str(FORMAT_VERSION), "generation": "0", **settings.to_meta()}
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class FolderStore(Store):
    """Collections as folders under ``root``, each with ``collection.sqlite`` and its derived index files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def exists(self, name: str) -> bool:
        return (self.root / name / DB_NAME).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        from .settings import _NAME

        return sorted(p.name for p in self.root.iterdir()
                      if _NAME.fullmatch(p.name) and (p / DB_NAME).is_file())

    def create(self, settings: CollectionSettings, encoder: Encoder | None, options: OpenOptions) -> SqliteCollection:
        folder = self.root / settings.name
        db = folder / DB_NAME
        if db.is_file():
            raise CollectionExistsError(f"collection {settings.name!r} already exists in {self.location!r}")
        tmp = folder / f".{DB_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_new(tmp, settings)
            # Created under a temporary name and linked into place, which fails if another process created the
            # collection meanwhile (a rename would silently replace theirs): a half-made one is never opened.
            try:
                os.link(tmp, db)
            except FileExistsError:
                raise CollectionExistsError(
                    f"collection {settings.name!r} already exists in {self.location!r}") from None
            finally:
                tmp.unlink(missing_ok=True)
        except PermissionError as exc:
            raise StoreReadOnlyError(f"cannot create collection {settings.name!r} in {self.location!r}: {exc}") \
                from exc
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot create collection {settings.name!r} in {self.location!r}: {exc}") from exc
        return self.open(settings.name, options, encoder=encoder)

    def open(self, name: str, options: OpenOptions, *, encoder: Encoder | None = None) -> SqliteCollection:
        folder = self.root / name
        if not (folder / DB_NAME).is_file():
            raise self.not_found(name)
        what = f"cannot open collection {name!r} in {self.location!r}"
        try:
            conn, read_only, immutable = _open_connection(folder, options.lock_timeout)
        except sqlite3.Error as exc:
            raise translate(exc, what) from exc
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("deleted"):
                raise self.not_found(name)
            version = int(meta.get("format_version", "0"))
            if version > FORMAT_VERSION:
                raise StoreError(
                    f"collection {name!r} has store format {version}; this embedsmith reads up to {FORMAT_VERSION}: "
                    "upgrade embedsmith"
                )
            if version < FORMAT_VERSION or not meta.get("identity"):
                if read_only:
                    if version < _READABLE_FROM:
                        raise StoreReadOnlyError(f"collection {name!r} has the older store format {version}; open it "
                                                 "once as a user who can write it, to upgrade it")
                else:
                    if version < FORMAT_VERSION:
                        _upgrade(conn, name, version)
                    # A store from before identities adopts one, once (its index keeps its stamp).
                    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('identity', ?)", (new_identity(),))
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            settings = CollectionSettings.from_meta(meta)
            return SqliteCollection(folder, conn, settings, encoder, options, read_only=read_only,
                                    generation=int(meta.get("generation", "0")), immutable=immutable)
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, what) from exc
        except BaseException:
            conn.close()
            raise

    def delete(self, name: str) -> None:
        """Mark the collection deleted under its write lock (open handles notice), move its folder out of the
        store, then remove it."""
        folder = self.root / name
        db = folder / DB_NAME
        if not db.is_file():
            raise self.not_found(name)
        if not _writable(folder) or not os.access(self.root, os.W_OK):
            raise StoreReadOnlyError(f"cannot delete collection {name!r}: {self.location!r} is read-only")
        try:
            conn = sqlite3.connect(str(db), timeout=10.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('deleted', '1')")
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorname", "")
            if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise translate(exc, f"cannot delete collection {name!r}") from exc
            # A damaged database can still be deleted: its folder is moved away below all the same.
        trash = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
        with locked(folder / "ann.lock"):  # no handle saves its index into the folder while it moves
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def rename(self, old: str, new: str) -> None:
        """Give collection ``old`` the name ``new`` (which must be free): its settings and its folder."""
        if self.exists(new):
            raise CollectionExistsError(f"collection {new!r} already exists in {self.location!r}")
        conn = sqlite3.connect(str(self.root / old / DB_NAME), timeout=10.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'name'", (new,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate(exc, f"cannot rename collection {old!r}") from exc
        finally:
            conn.close()
        os.rename(self.root / old, self.root / new)


# -- snapshots -----------------------------------------------------------------------------------------------
def _live_records(conn: sqlite3.Connection, batch: int, dim: int, late: bool = False) -> Iterator[RecordBatch]:
    """Live rows of a collection database in write order, ``batch`` at a time (export and snapshots); with
    ``late``, each with its stored token vectors and the codec they are in."""
    codec = None
    if late:
        row = conn.execute("SELECT value FROM meta WHERE key = 'late_codec'").fetchone()
        codec = json.loads(row[0]) if row else None
        cur = conn.execute("SELECT r.id, r.text, r.index_text, r.metadata, r.vector, t.n, t.vectors FROM records r "
                           "LEFT JOIN tokens t ON t.seq = r.seq WHERE r.deleted = 0 ORDER BY r.seq")
    else:
        cur = conn.execute("SELECT id, text, index_text, metadata, vector FROM records WHERE deleted = 0 ORDER BY seq")
    while rows := cur.fetchmany(batch):
        vectors = np.frombuffer(b"".join(r[4] for r in rows), np.float32).reshape(len(rows), dim)
        tokens = [(r[5], r[6]) if r[6] is not None else None for r in rows] if late else None
        yield RecordBatch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                          [_metadata(r[3]) for r in rows], vectors, tokens, codec)


def write_snapshot(path: Path, settings: CollectionSettings, batches: Iterator[RecordBatch],
                   indexes: Sequence[str] = ()) -> int:
    """A snapshot file (a collection database without derived files) from exported records; returns the count.
    ``indexes``: the metadata fields indexed in the source, recreated on restore."""
    _write_new(path, settings)
    conn = sqlite3.connect(str(path), isolation_level=None)
    n = 0
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN")
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('indexes', ?)", (json.dumps(sorted(indexes)),))
        for b in batches:
            extra = [None if x == t else x for x, t in zip(b.index_texts, b.texts, strict=True)]
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            start = (int(top[0]) if top else 0) + 1
            conn.executemany(
                "INSERT INTO records(id, text, metadata, vector, index_text) VALUES (?, ?, ?, ?, ?)",
                zip(b.ids, b.texts, (json.dumps(m, ensure_ascii=False) for m in b.metadata),
                    (np.ascontiguousarray(v, np.float32).tobytes() for v in b.vectors), extra, strict=True))
            if b.tokens is not None and b.token_codec is not None:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('late_codec', ?)",
                             (json.dumps(b.token_codec),))
                conn.executemany("INSERT INTO tokens(seq, n, vectors) VALUES (?, ?, ?)",
                                 ((start + i, t[0], t[1]) for i, t in enumerate(b.tokens) if t is not None))
            n += len(b.ids)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return n


def read_snapshot(path: Path, batch: int = 2000
                  ) -> tuple[CollectionSettings, int, Iterator[RecordBatch], list[str]]:
    """The settings, live record count, records and indexed metadata fields of a snapshot file (read-only)."""
    try:
        conn = _connect_read_only(path, 10.0, immutable=True)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        settings = CollectionSettings.from_meta(meta)
        indexes = [str(f) for f in json.loads(meta.get("indexes") or "[]")]
        count = int(conn.execute("SELECT COUNT(*) FROM records WHERE deleted = 0").fetchone()[0])
    except sqlite3.Error as exc:
        raise translate(exc, f"cannot read snapshot {str(path)!r}") from exc
    except (KeyError, ValueError) as exc:
        raise StoreCorruptError(f"{str(path)!r} is not an embedsmith snapshot: {exc!r}") from exc

    def batches() -> Iterator[RecordBatch]:
        try:
            yield from _live_records(conn, batch, settings.dim, settings.late is not None)
        except sqlite3.Error as exc:
            raise translate(exc, f"cannot read snapshot {str(path)!r}") from exc
        finally:
            conn.close()

    return settings, count, batches(), indexes


__all__ = ["DB_NAME", "FolderStore", "IndexRebuildWarning", "IndexSaveWarning", "SqliteCollection",
           "read_snapshot", "translate", "write_snapshot"]
