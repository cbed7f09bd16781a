"""The embedded store: SQLite is the source of truth, a faiss HNSW file is a derived cache.

Every public write is one SQLite transaction (WAL, ``synchronous=FULL``): once a call returns, the write
survives a crash or ``kill -9``. The ANN index lives in memory, is saved at intervals and on close, and
is caught up from SQLite on open and before each search, so a search sees every write acknowledged
before it began, in this process or any other. Deleted rows are flagged (soft delete), filtered out at
query time, and dropped by :meth:`Collection.compact`.

One writer at a time: a second process that writes while another holds the write lock waits up to
``lock_timeout`` seconds, then gets a :class:`~embedsmith.errors.StoreError`. Readers never block.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StoreError
from ..quantization import Int8Calibration
from ..types import Encoder, Metric, Precision
from .ann import AnnIndex, DamagedIndexError, IndexSpec
from .bm25 import FTS_SCHEMA, INDEX_ROWS, SEARCH_VIEW, UNINDEX_ROWS, match_expression
from .collection import Batch, Collection, CollectionSettings, Ranked, check_requested, new_settings
from .filters import Where, compile_where

FORMAT_VERSION = 3  # 2: FTS5 index for bm25 and hybrid search; 3: records.index_text
_SQL_VARS = 900  # stay below SQLite's host-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    text TEXT,
    index_text TEXT,
    vector BLOB NOT NULL  -- last: a 1.5 KB blob spills to overflow pages, which reads of the other columns skip
);
CREATE UNIQUE INDEX IF NOT EXISTS records_live_id ON records(id) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS records_dead ON records(seq) WHERE deleted = 1;
""" + SEARCH_VIEW + ";\n" + FTS_SCHEMA + ";"


class IndexRebuildWarning(RuntimeWarning):
    """The ANN index file was missing or damaged and is being rebuilt from the database."""



def index_spec(s: CollectionSettings) -> IndexSpec:
    return IndexSpec(s.dims, s.metric, s.precision, s.hnsw_m, s.ef_construction, s.calibration)


def _chunks(items: Sequence[Any], size: int = _SQL_VARS) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SqliteCollection(Collection):
    """A collection in the embedded store (a folder with ``collection.sqlite`` and the ANN index file).

    Open one with :func:`~embedsmith.store.open_collection`. Close it, so the ANN index is saved (nothing
    acknowledged is lost without it; the next open only catches up longer).
    """

    def __init__(
        self,
        folder: Path,
        conn: sqlite3.Connection,
        settings: CollectionSettings,
        encoder: Encoder | None,
        *,
        exact_below: int,
        ef_search: int,
        save_every: int,
        save_interval_s: float,
    ) -> None:
        super().__init__(settings, encoder, exact_below=exact_below, ef_search=ef_search)
        self.folder = folder
        self._conn = conn
        self._save_every = save_every
        self._save_interval_s = save_interval_s
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._data_version = -1
        self._live = 0
        self._dead = 0  # deleted rows still in the ANN graph
        self._reader: sqlite3.Connection | None = None
        self._index = self._load_index()
        self._sync(force=True)

    # -- SQLite helpers ------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: all of it is committed, or none of it."""
        if self._closed:
            raise StoreError(f"collection {self.name!r} is closed")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"collection {self.name!r} is being written by another process; waited "
                    f"{self._conn.execute('PRAGMA busy_timeout').fetchone()[0] / 1000:.0f} s for its lock"
                ) from exc
            raise StoreError(f"cannot write collection {self.name!r}: {exc}") from exc
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"cannot commit to collection {self.name!r}: {exc}") from exc

    def _max_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0

    def _sync(self, *, force: bool = False) -> None:
        """Catch up with commits made by other connections (and processes) since the last look."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if not force and version == self._data_version:
            return
        self._data_version = version
        self._catch_up()
        # Both counts read small partial indexes, not the rows (which hold the vectors).
        self._live = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_live_id WHERE deleted = 0"
        ).fetchone()[0]
        self._dead = self._conn.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_dead WHERE deleted = 1 AND seq <= ?",
            (self._index.last_seq,),
        ).fetchone()[0]

    def _catch_up(self) -> None:
        """Add rows newer than the index's stamp to the in-memory index."""
        if self._max_seq() <= self._index.last_seq:
            return
        cur = self._conn.execute(
            "SELECT seq, vector FROM records WHERE seq > ? AND deleted = 0 ORDER BY seq", (self._index.last_seq,)
        )
        added = 0
        while rows := cur.fetchmany(20_000):
            keys = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._index.add(keys, self._decode([r[1] for r in rows]))
            added += len(rows)
        # Rows that were written and deleted before we saw them still move the stamp forward.
        self._index.last_seq = max(self._index.last_seq, self._max_seq())
        self._unsaved += added

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.settings.dim)

    def _load_index(self) -> AnnIndex:
        spec = index_spec(self.settings)
        try:
            return AnnIndex.load(self.folder, spec)
        except DamagedIndexError as exc:
            has_rows = self._conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None
            if has_rows:
                warnings.warn(
                    f"ANN index of collection {self.name!r} is unusable ({exc}); rebuilding it from the database",
                    IndexRebuildWarning,
                    stacklevel=5,
                )
            return AnnIndex(spec)

    def _after_write(self) -> None:
        due = self._unsaved >= self._save_every or (
            self._unsaved and time.monotonic() - self._last_save >= self._save_interval_s
        )
        if due:
            self.save_index()

    def save_index(self) -> None:
        """Write the ANN index file now (it is also saved at intervals and on close)."""
        with self._lock:
            self._index.save(self.folder)
            self._unsaved = 0
            self._last_save = time.monotonic()

    def _compile_where(self, where: Where | None) -> tuple[str, list[Any]]:
        return compile_where(where)

    def _reject_existing(self, ids: list[str]) -> None:
        found: list[str] = []
        for part in _chunks(ids):
            marks = ",".join("?" * len(part))
            found += [r[0] for r in self._conn.execute(
                f"SELECT id FROM records WHERE deleted = 0 AND id IN ({marks})", tuple(part))]
        if found:
            shown = ", ".join(repr(x) for x in found[:5]) + (" ..." if len(found) > 5 else "")
            raise InvalidInputError(
                f"{len(found)} id(s) already in collection {self.name!r}: {shown}; use upsert to replace them"
            )

    @staticmethod
    def _soft_delete(db: sqlite3.Connection, cond: str, params: Sequence[Any]) -> int:
        """Flag rows deleted and drop them from the FTS index, inside the caller's transaction."""
        db.execute(UNINDEX_ROWS.format(where=cond), tuple(params))
        return int(db.execute(f"UPDATE records SET deleted = 1 WHERE {cond}", tuple(params)).rowcount)

    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: tuple[str, list[Any]] | None = None, index_texts: Sequence[str | None] | None = None,
    ) -> list[str]:
        if not ids and delete_where is None:
            return []
        with self._lock:
            self._sync()
            replaced = 0
            try:
                with self._write() as db:
                    if replace:
                        for part in _chunks(ids):
                            cond = f"deleted = 0 AND id IN ({','.join('?' * len(part))})"
                            replaced += self._soft_delete(db, cond, tuple(part))
                    if delete_where is not None:
                        replaced += self._soft_delete(db, f"deleted = 0 AND {delete_where[0]}", delete_where[1])
                    first = self._max_seq() + 1
                    extra = [None if x == t else x for x, t in zip(index_texts, texts, strict=True)] \
                        if index_texts is not None else [None] * len(ids)
                    db.executemany(
                        "INSERT INTO records(id, text, metadata, vector, index_text) VALUES (?, ?, ?, ?, ?)",
                        zip(ids, texts, meta, (row.tobytes() for row in vectors), extra, strict=True),
                    )
                    db.execute(INDEX_ROWS.format(where="seq >= ?"), (first,))
            except sqlite3.IntegrityError as exc:  # another process added one of these ids meanwhile
                raise InvalidInputError(f"an id is already in collection {self.name!r}: {exc}") from None
            self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if first == self._index.last_seq + 1:
                self._index.add(np.arange(first, first + len(ids), dtype=np.int64), vectors)
                self._unsaved += len(ids)
            else:
                self._catch_up()
            self._live += len(ids) - replaced
            self._dead += replaced
            self._after_write()
        return ids

    def _delete(self, ids: list[str] | None, flt: tuple[str, list[Any]] | None) -> int:
        with self._lock:
            self._sync()
            n = 0
            with self._write() as db:
                if ids is not None:
                    for part in _chunks(ids):
                        n += self._soft_delete(db, f"deleted = 0 AND id IN ({','.join('?' * len(part))})", part)
                elif flt is not None:
                    n = self._soft_delete(db, f"deleted = 0 AND {flt[0]}", flt[1])
            self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            self._live -= n
            self._dead += n
        return n

    def compact(self, *, reindex: bool = False) -> dict[str, int]:
        """Drop deleted rows, reclaim disk (VACUUM) and rebuild the ANN index without them (always: ``reindex``
        is accepted for the PostgreSQL backend's sake)."""
        with self._lock:
            self._sync()
            with self._write() as db:
                dropped = db.execute("DELETE FROM records WHERE deleted = 1").rowcount
            before = self._db_bytes()
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._index = AnnIndex(index_spec(self.settings))
            self._index.last_seq = 0
            self._catch_up()
            self.save_index()
            self._sync(force=True)
            return {"dropped": dropped, "bytes_before": before, "bytes_after": self._db_bytes()}

    # -- reads ----------------------------------------------------------------------------------------
    def count(self) -> int:
        """Live (not deleted) records, including writes by other processes."""
        with self._lock:
            self._sync()
            return int(self._live)

    def _get(self, ids: list[str] | None, flt: tuple[str, list[Any]] | None, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        cols = "id, text, metadata, vector" if include_vectors else "id, text, metadata"
        rows: list[tuple[Any, ...]] = []
        with self._lock:
            if flt is not None:
                lim = f" LIMIT {limit}" if limit is not None else ""
                rows = self._conn.execute(
                    f"SELECT {cols} FROM records WHERE deleted = 0 AND {flt[0]} ORDER BY seq{lim}", flt[1]
                ).fetchall()
            else:
                for part in _chunks(ids or []):
                    marks = ",".join("?" * len(part))
                    rows += self._conn.execute(
                        f"SELECT {cols} FROM records WHERE deleted = 0 AND id IN ({marks})", tuple(part)
                    ).fetchall()
        if include_vectors:
            return [(*r[:3], np.frombuffer(r[3], dtype=np.float32)) for r in rows]
        return rows

    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        cols = ", ".join("json_extract(metadata, ?)" for _ in fields)
        paths = tuple("$." + json.dumps(f) for f in fields)
        with self._lock:
            return {tuple(r) for r in self._conn.execute(f"SELECT DISTINCT {cols} FROM records WHERE deleted = 0",
                                                           paths)}

    def _exact_scores(self, q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        m = self.settings.metric
        if m in (Metric.COSINE, Metric.DOT):
            return vectors @ q
        if m is Metric.L2:
            return -np.sqrt(((vectors - q) ** 2).sum(axis=1))
        return -np.abs(vectors - q).sum(axis=1)

    def _bm25(self, query: str, n: int, flt: tuple[str, list[Any]], *, reader: bool = False) -> list[Ranked]:
        """Top ``n`` live rows by FTS5 BM25 (score = -bm25(), higher is better), ties by id.

        With ``reader``, runs on a second, read-only connection (from the bm25 worker thread only); a new
        statement there sees every transaction committed before it started.
        """
        expr = match_expression(query)
        sql, params = flt
        if sql == "1":
            # Unfiltered: FTS5's own top-n by rank (deleted rows are already out of the FTS index).
            stmt = ("SELECT -top.rank, records.id, records.text, records.metadata FROM "
                    "(SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?) AS top "
                    "JOIN records ON records.seq = top.rowid")
            args: tuple[Any, ...] = (expr, n)
        else:
            stmt = ("SELECT -fts.rank, records.id, records.text, records.metadata FROM fts "
                    f"JOIN records ON records.seq = fts.rowid WHERE fts MATCH ? AND records.deleted = 0 AND {sql} "
                    "ORDER BY fts.rank LIMIT ?")
            args = (expr, *params, n)
        if reader:
            if self._reader is None:
                self._reader = sqlite3.connect(f"file:{self.folder / 'collection.sqlite'}?mode=ro", uri=True,
                                               check_same_thread=False)
            rows = self._reader.execute(stmt, args).fetchall()
        else:
            with self._lock:
                rows = self._conn.execute(stmt, args).fetchall()
        return sorted(rows, key=lambda h: (-h[0], h[1]))

    def _dense(self, q: np.ndarray, k: int, flt: tuple[str, list[Any]], *, ef: int, exact: bool,
               rescore: int | None) -> list[Ranked]:
        """Top ``k`` live rows by vector similarity: (score, id, text, metadata JSON)."""
        sql, params = flt
        s = self.settings
        approximate_codes = s.precision is not Precision.FLOAT32 or s.dims < s.dim
        factor = rescore or (10 if s.precision is Precision.BINARY else 4 if approximate_codes else 1)
        filtered = sql != "1"
        with self._lock:
            self._sync()
            use_exact = exact or self._live <= self.exact_below
            # Oversample for rescoring, filters and deleted rows still in the graph; beyond the cap the
            # exact scan below takes over.
            want = min(k * factor * (10 if filtered else 1) + self._dead, max(10_000, k * factor * 10))
            keys, scores = self._index.search(q, want, ef=ef, exact=use_exact)
            if approximate_codes:
                hits = self._rank(q, self._fetch(keys, sql, params, vectors=True), k)
            else:  # the graph's scores are exact: no need to read vectors back
                score_of = dict(zip(keys.tolist(), scores.tolist(), strict=True))
                rows = self._fetch(keys, sql, params, vectors=False)
                hits = sorted(((score_of[r[0]], r[1], r[2], r[3]) for r in rows), key=lambda h: (-h[0], h[1]))[:k]
            if len(hits) < k:
                matching = self._conn.execute(
                    f"SELECT COUNT(*) FROM records WHERE deleted = 0 AND {sql}", params
                ).fetchone()[0]
                if matching > len(hits):  # the graph missed some: scan the matching rows exactly
                    hits = self._scan(q, sql, params, k)
        return hits

    def _fetch(self, keys: np.ndarray, sql: str, params: list[Any], *, vectors: bool) -> list[tuple[Any, ...]]:
        """Live rows among ``keys`` that pass the filter: (id, text, metadata, vector) or (seq, id, text, metadata)."""
        rows: list[tuple[Any, ...]] = []
        cols = "id, text, metadata, vector" if vectors else "seq, id, text, metadata"
        key_list = keys.tolist()
        for part in _chunks(key_list, _SQL_VARS - len(params)):
            marks = ",".join("?" * len(part))
            rows += self._conn.execute(
                f"SELECT {cols} FROM records WHERE seq IN ({marks}) AND deleted = 0 AND {sql}", (*part, *params)
            ).fetchall()
        return rows

    def _rank(self, q: np.ndarray, rows: Sequence[tuple[Any, ...]], k: int) -> list[Ranked]:
        if not rows:
            return []
        scores = self._exact_scores(q, self._decode([r[3] for r in rows]))
        ranked = sorted(
            ((float(sc), r[0], r[1], r[2]) for sc, r in zip(scores, rows, strict=True)),
            key=lambda h: (-h[0], h[1]),
        )
        return ranked[:k]

    def _scan(self, q: np.ndarray, sql: str, params: list[Any], k: int) -> list[Ranked]:
        best: list[Ranked] = []
        cur = self._conn.execute(f"SELECT id, text, metadata, vector FROM records WHERE deleted = 0 AND {sql}", params)
        while rows := cur.fetchmany(20_000):
            best = sorted([*best, *self._rank(q, rows, k)], key=lambda h: (-h[0], h[1]))[:k]
        return best

    # -- management -----------------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes on disk: database, WAL and index files."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def _db_bytes(self) -> int:
        files = (self.folder / "collection.sqlite", self.folder / "collection.sqlite-wal")
        return sum(p.stat().st_size for p in files if p.exists())

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": s.name, "count": self.count(), "model": s.model, "fingerprint": s.fingerprint,
            "prompts": s.prompts, "dim": s.dim, "dims": s.dims, "precision": s.precision.value,
            "metric": s.metric.value, "disk_bytes": self.disk_bytes(), "path": str(self.folder),
            "index_vectors": self._index.ntotal,
        }

    def _export(self, batch: int) -> Iterator[Batch]:
        cur = self._conn.execute(
            "SELECT id, text, index_text, metadata, vector FROM records WHERE deleted = 0 ORDER BY seq")
        while rows := cur.fetchmany(batch):
            yield ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                   self._decode([r[4] for r in rows]))

    def _close(self) -> None:
        """Save the ANN index if it changed, and close the database."""
        try:
            if self._unsaved:
                self.save_index()
        finally:
            if self._reader is not None:
                self._reader.close()
            self._conn.close()


def _connect(path: Path, lock_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=lock_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def open_sqlite_collection(
    name: str, root: Path, enc: Encoder | None, metric: Metric | None, precision: Precision | None,
    dims: int | None, dim: int | None, calibration: Int8Calibration | None, *, create: bool, hnsw_m: int,
    ef_construction: int, ef_search: int, exact_below: int, lock_timeout: float, save_every: int,
    save_interval_s: float,
) -> SqliteCollection:
    """:func:`~embedsmith.store.open_collection` for a folder store."""
    folder = root / name
    db_path = folder / "collection.sqlite"
    if not db_path.is_file():
        if not create:
            raise StoreError(f"no collection {name!r} in {str(root)!r}")
        settings = new_settings(name, enc, metric or Metric.COSINE, precision or Precision.FLOAT32, dims, dim,
                                calibration, hnsw_m, ef_construction)
        return create_sqlite_collection(root, settings, enc, ef_search=ef_search, exact_below=exact_below,
                                        lock_timeout=lock_timeout, save_every=save_every,
                                        save_interval_s=save_interval_s)
    try:
        conn = _connect(db_path, lock_timeout)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open collection {name!r} at {str(db_path)!r}: {exc}") from exc
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        conn.close()
        raise StoreError(
            f"collection {name!r} has store format {version}; this embedsmith reads up to {FORMAT_VERSION}: "
            "upgrade embedsmith"
        )
    if version < FORMAT_VERSION:
        _upgrade(conn, name, version)
    settings = CollectionSettings.from_meta(meta)
    try:
        check_requested(settings, metric, precision, dims, dim)
    except Exception:
        conn.close()
        raise
    coll = SqliteCollection(folder, conn, settings, None, exact_below=exact_below, ef_search=ef_search,
                            save_every=save_every, save_interval_s=save_interval_s)
    if enc is not None:
        try:
            coll._check_encoder(enc)
        except Exception:
            coll.close()
            raise
        coll._encoder = enc
    return coll


def _upgrade(conn: sqlite3.Connection, name: str, version: int) -> None:
    """Bring an older store up to this format in one transaction.

    Format 1 had no FTS index, format 2 no ``index_text`` column; the FTS index is rebuilt from live rows.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
        if "index_text" not in columns:
            conn.execute("ALTER TABLE records ADD COLUMN index_text TEXT")
        conn.execute("DROP TABLE IF EXISTS fts")
        conn.execute(SEARCH_VIEW)
        conn.execute(FTS_SCHEMA)
        conn.execute("CREATE INDEX IF NOT EXISTS records_dead ON records(seq) WHERE deleted = 1")
        conn.execute(INDEX_ROWS.format(where="deleted = 0"))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        raise StoreError(f"cannot upgrade collection {name!r} from store format {version}: {exc}") from exc


def create_sqlite_collection(
    root: Path, settings: CollectionSettings, enc: Encoder | None = None, *, ef_search: int = 64,
    exact_below: int = 10_000, lock_timeout: float = 10.0, save_every: int = 50_000, save_interval_s: float = 60.0,
) -> SqliteCollection:
    """Create the folder and database of a new collection with ``settings``."""
    folder = root / settings.name
    if (folder / "collection.sqlite").is_file():
        raise StoreError(f"collection {settings.name!r} already exists in {str(root)!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".collection.sqlite.{os.getpid()}.tmp"
        conn = _connect(tmp, lock_timeout)
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        meta = {"format_version": str(FORMAT_VERSION), **settings.to_meta()}
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        # Created under a temporary name and renamed, so a half-created collection is never opened.
        os.replace(tmp, folder / "collection.sqlite")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot create collection {settings.name!r} in {str(root)!r}: {exc}") from exc
    conn = _connect(folder / "collection.sqlite", lock_timeout)
    return SqliteCollection(folder, conn, settings, enc, exact_below=exact_below, ef_search=ef_search,
                            save_every=save_every, save_interval_s=save_interval_s)


__all__ = ["IndexRebuildWarning", "SqliteCollection", "create_sqlite_collection", "open_sqlite_collection"]
