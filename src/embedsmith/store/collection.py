"""Persistent named collections: SQLite is the source of truth, a faiss HNSW file is a derived cache.

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
import re
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, SettingsMismatchError, StoreError
from ..quantization import Int8Calibration
from ..search import RRF_K, best_per_group, reciprocal_rank_fusion, weighted_fusion
from ..types import Encoder, Hits, Metric, Precision, parse_enum
from .ann import AnnIndex, DamagedIndexError, IndexSpec
from .bm25 import FTS_SCHEMA, INDEX_ROWS, SEARCH_VIEW, UNINDEX_ROWS, match_expression
from .filters import Where, compile_where

if TYPE_CHECKING:
    from ..rerankers import Reranker

FORMAT_VERSION = 3  # 2: FTS5 index for bm25 and hybrid search; 3: records.index_text
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SQL_VARS = 900  # stay below SQLite's host-parameter limit
_LOSSLESS_BACKENDS = {"onnx", "torch"}

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


def default_store() -> Path:
    """``$EMBEDSMITH_HOME``, or the platform's user data folder (``~/.local/share/embedsmith`` on Linux)."""
    env = os.environ.get("EMBEDSMITH_HOME")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("embedsmith", appauthor=False))
    except ImportError:
        return Path.home() / ".local" / "share" / "embedsmith"


def fingerprints_compatible(a: str, b: str) -> bool:
    """Same weights, and either the same backend or two exact (lossless) ones."""
    if a == b:
        return True
    wa, _, ba = a.partition(":")
    wb, _, bb = b.partition(":")
    return wa == wb and ba in _LOSSLESS_BACKENDS and bb in _LOSSLESS_BACKENDS


@dataclass(frozen=True)
class CollectionSettings:
    """What a collection records at creation and checks on every open."""

    name: str
    model: str | None
    fingerprint: str | None
    prompts: dict[str, str]
    dim: int
    dims: int
    metric: Metric
    precision: Precision
    calibration: Int8Calibration | None
    hnsw_m: int
    ef_construction: int

    def to_meta(self) -> dict[str, str]:
        return {
            "format_version": str(FORMAT_VERSION),
            "name": self.name,
            "model": json.dumps(self.model),
            "fingerprint": json.dumps(self.fingerprint),
            "prompts": json.dumps(self.prompts),
            "dim": str(self.dim),
            "dims": str(self.dims),
            "metric": self.metric.value,
            "precision": self.precision.value,
            "calibration": json.dumps(self.calibration.to_dict() if self.calibration else None),
            "hnsw_m": str(self.hnsw_m),
            "ef_construction": str(self.ef_construction),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> CollectionSettings:
        cal = json.loads(meta["calibration"])
        return cls(
            name=meta["name"],
            model=json.loads(meta["model"]),
            fingerprint=json.loads(meta["fingerprint"]),
            prompts=json.loads(meta["prompts"]),
            dim=int(meta["dim"]),
            dims=int(meta["dims"]),
            metric=Metric(meta["metric"]),
            precision=Precision(meta["precision"]),
            calibration=Int8Calibration.from_dict(cal) if cal else None,
            hnsw_m=int(meta["hnsw_m"]),
            ef_construction=int(meta["ef_construction"]),
        )

    def index_spec(self) -> IndexSpec:
        return IndexSpec(self.dims, self.metric, self.precision, self.hnsw_m, self.ef_construction,
                         self.calibration)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _chunks(items: Sequence[Any], size: int = _SQL_VARS) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Collection:
    """A named, persistent set of (id, text, metadata, vector) records with exact and HNSW search.

    Open one with :func:`open_collection`. Use it as a context manager, or call :meth:`close`, so the
    ANN index is saved (nothing acknowledged is lost without it; the next open only catches up longer).
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
        self.folder = folder
        self.settings = settings
        self._conn = conn
        self._encoder = encoder
        self._lock = threading.RLock()
        self.exact_below = exact_below
        self.ef_search = ef_search
        self._save_every = save_every
        self._save_interval_s = save_interval_s
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._data_version = -1
        self._live = 0
        self._dead = 0  # deleted rows still in the ANN graph
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None
        self._index = self._load_index()
        self._sync(force=True)

    # -- properties ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def dim(self) -> int:
        return self.settings.dim

    @property
    def metric(self) -> Metric:
        return self.settings.metric

    @property
    def precision(self) -> Precision:
        return self.settings.precision

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use from the recorded model when none was given."""
        if self._encoder is None:
            if not self.settings.model:
                raise InvalidInputError(
                    f"collection {self.name!r} stores vectors without a model: pass vectors, not texts"
                )
            from ..encoders import load_encoder

            enc = load_encoder(self.settings.model)
            self._check_encoder(enc)
            self._encoder = enc
        return self._encoder

    def _check_encoder(self, enc: Encoder) -> None:
        s = self.settings
        if s.fingerprint and not fingerprints_compatible(s.fingerprint, enc.fingerprint):
            raise SettingsMismatchError(
                f"collection {s.name!r} was built with model {s.model!r} (fingerprint {s.fingerprint}); "
                f"the encoder given is {enc.name!r} (fingerprint {enc.fingerprint}). Use the same model, or "
                f"re-embed into a new collection: embedsmith reembed --collection {s.name} --to NEW --model M"
            )
        if enc.dim != s.dim:
            raise SettingsMismatchError(
                f"collection {s.name!r} stores dimension {s.dim}; encoder {enc.name!r} gives {enc.dim}"
            )

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
        spec = self.settings.index_spec()
        try:
            return AnnIndex.load(self.folder, spec)
        except DamagedIndexError as exc:
            has_rows = self._conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None
            if has_rows:
                warnings.warn(
                    f"ANN index of collection {self.name!r} is unusable ({exc}); rebuilding it from the database",
                    IndexRebuildWarning,
                    stacklevel=4,
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

    # -- input checks ---------------------------------------------------------------------------------
    def _check_vectors(self, vectors: Any, n: int | None = None) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self.settings.dim:
            got = v.shape[-1] if v.ndim >= 1 else 0
            raise InvalidInputError(
                f"vectors have dimension {got} (shape {tuple(v.shape)}), collection {self.name!r} stores "
                f"{self.settings.dim}"
            )
        if n is not None and v.shape[0] != n:
            raise InvalidInputError(f"got {v.shape[0]} vectors for {n} records")
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise InvalidInputError(f"vector {int(np.argmax(bad))} contains NaN or infinity")
        if self.settings.metric is Metric.COSINE:
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InvalidInputError(f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros (no cosine)")
            v = v / norms
        return np.ascontiguousarray(v, dtype=np.float32)

    @staticmethod
    def _check_ids(ids: Sequence[str] | None, n: int) -> list[str]:
        if ids is None:
            return [uuid.uuid4().hex for _ in range(n)]
        if isinstance(ids, str):
            raise InvalidInputError("ids must be a list of strings, not a single string")
        out = list(ids)
        if len(out) != n:
            raise InvalidInputError(f"got {len(out)} ids for {n} records")
        for i, x in enumerate(out):
            if not isinstance(x, str) or not x:
                raise InvalidInputError(f"ids[{i}] must be a non-empty string, got {x!r}")
        if len(set(out)) != n:
            dup = next(x for x in out if out.count(x) > 1)
            raise InvalidInputError(f"id {dup!r} appears more than once in this call")
        return out

    @staticmethod
    def _check_metadata(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> list[str]:
        if metadata is None:
            return ["{}"] * n
        items = list(metadata)
        if len(items) != n:
            raise InvalidInputError(f"got {len(items)} metadata entries for {n} records")
        out = []
        for i, m in enumerate(items):
            if m is None:
                m = {}
            if not isinstance(m, Mapping):
                raise InvalidInputError(f"metadata[{i}] must be a dict, got {type(m).__name__}")
            try:
                out.append(json.dumps(dict(m), allow_nan=False, ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"metadata[{i}] is not JSON-serialisable: {exc}") from None
        return out

    def _split_records(
        self,
        texts: Sequence[str] | Sequence[Mapping[str, Any]],
        ids: Sequence[str] | None,
        metadata: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[list[str], list[str] | None, list[Mapping[str, Any]] | None, list[str] | None]:
        """Texts, ids, metadata and (from records' ``index_text``) what the encoder and bm25 read instead."""
        embed: list[str] | None = None
        items: list[Any] = list(texts)
        if items and all(isinstance(r, Mapping) for r in items):
            if ids is not None or metadata is not None:
                raise InvalidInputError("pass ids and metadata inside the records, not beside them")
            recs: list[dict[str, Any]] = [dict(r) for r in items]
            for i, r in enumerate(recs):
                if "text" not in r:
                    raise InvalidInputError(f"records[{i}] has no 'text'")
            got_ids: list[Any] = [r.get("id") for r in recs]
            if any("index_text" in r for r in recs):
                # What the encoder and bm25 read may differ from what is stored and shown (e.g. a chunk
                # with its document's title in front).
                embed = [str(r.get("index_text") or r["text"]) for r in recs]
            return (
                [r["text"] for r in recs],
                None if all(x is None for x in got_ids) else got_ids,
                [r.get("metadata") or {} for r in recs],
                embed,
            )
        return (items, (list(ids) if ids is not None else None),
                (list(metadata) if metadata is not None else None), None)

    # -- writes ---------------------------------------------------------------------------------------
    def add(
        self,
        texts: Sequence[str] | Sequence[Mapping[str, Any]],
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[str]:
        """Embed and add texts (or records ``{"id", "text", "metadata"}``). Returns the ids.

        Raises:
            InvalidInputError: a bad text, id or metadata entry, or an id already present; nothing is written.
        """
        from ..encoders.base import check_texts

        t, i, m, e = self._split_records(texts, ids, metadata)
        t = check_texts(t)
        id_list = self._check_ids(i, len(t))
        meta = self._check_metadata(m, len(t))
        self._reject_existing(id_list)
        vectors = self.encoder.encode(check_texts(e) if e else t, kind="document", batch_size=batch_size,
                                      show_progress=show_progress)
        return self._insert(id_list, t, meta, self._check_vectors(vectors, len(t)), replace=False, index_texts=e)

    def add_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Add pre-computed vectors [n, dim] (for users with their own encoder). Returns the ids."""
        v = self._check_vectors(vectors)
        n = v.shape[0]
        id_list = self._check_ids(ids, n)
        t = self._check_optional_texts(texts, n)
        meta = self._check_metadata(metadata, n)
        self._reject_existing(id_list)
        return self._insert(id_list, t, meta, v, replace=False)

    def upsert(
        self,
        texts: Sequence[str] | Sequence[Mapping[str, Any]],
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[str]:
        """Like :meth:`add`, but an existing id is replaced (old row soft-deleted, in the same transaction)."""
        from ..encoders.base import check_texts

        t, i, m, e = self._split_records(texts, ids, metadata)
        t = check_texts(t)
        if i is None:
            raise InvalidInputError("upsert needs ids")
        id_list = self._check_ids(i, len(t))
        meta = self._check_metadata(m, len(t))
        vectors = self.encoder.encode(check_texts(e) if e else t, kind="document", batch_size=batch_size,
                                      show_progress=show_progress)
        return self._insert(id_list, t, meta, self._check_vectors(vectors, len(t)), replace=True, index_texts=e)

    def upsert_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Like :meth:`add_vectors`, replacing existing ids."""
        v = self._check_vectors(vectors)
        id_list = self._check_ids(ids, v.shape[0])
        t = self._check_optional_texts(texts, v.shape[0])
        return self._insert(id_list, t, self._check_metadata(metadata, v.shape[0]), v, replace=True)

    @staticmethod
    def _check_optional_texts(texts: Sequence[str | None] | None, n: int) -> list[str | None]:
        if texts is None:
            return [None] * n
        out = list(texts)
        if len(out) != n:
            raise InvalidInputError(f"got {len(out)} texts for {n} vectors")
        for i, x in enumerate(out):
            if x is not None and not isinstance(x, str):
                raise InvalidInputError(f"texts[{i}] is {type(x).__name__}, expected str or None")
        return out

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
        delete_where: tuple[str, list[Any]] | None = None, index_texts: Sequence[str] | None = None,
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

    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        """Soft-delete records by id or by filter. Returns how many were deleted."""
        if (ids is None) == (where is None):
            raise InvalidInputError("delete needs exactly one of ids= or where=")
        with self._lock:
            self._sync()
            n = 0
            with self._write() as db:
                if ids is not None:
                    if isinstance(ids, str):
                        raise InvalidInputError("ids must be a list of strings, not a single string")
                    for part in _chunks(list(ids)):
                        n += self._soft_delete(db, f"deleted = 0 AND id IN ({','.join('?' * len(part))})", part)
                else:
                    sql, params = compile_where(where)
                    n = self._soft_delete(db, f"deleted = 0 AND {sql}", params)
            self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            self._live -= n
            self._dead += n
        return n

    def compact(self) -> dict[str, int]:
        """Drop deleted rows, reclaim disk (VACUUM) and rebuild the ANN index without them."""
        with self._lock:
            self._sync()
            with self._write() as db:
                dropped = db.execute("DELETE FROM records WHERE deleted = 1").rowcount
            before = self._db_bytes()
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._index = AnnIndex(self.settings.index_spec())
            self._catch_up_all()
            self.save_index()
            self._sync(force=True)
            return {"dropped": dropped, "bytes_before": before, "bytes_after": self._db_bytes()}

    def _catch_up_all(self) -> None:
        self._index.last_seq = 0
        self._catch_up()

    # -- reads ----------------------------------------------------------------------------------------
    def count(self) -> int:
        """Live (not deleted) records, including writes by other processes."""
        with self._lock:
            self._sync()
            return int(self._live)

    def get(
        self, ids: Sequence[str] | None = None, *, where: Where | None = None, limit: int | None = None,
        include_vectors: bool = False,
    ) -> list[dict[str, Any]]:
        """Records by id (in the order asked; absent ids left out) or by filter (in write order)."""
        if (ids is None) == (where is None):
            raise InvalidInputError("get needs exactly one of ids= or where=")
        cols = "id, text, metadata, vector" if include_vectors else "id, text, metadata"

        def record(row: tuple[Any, ...]) -> dict[str, Any]:
            rec: dict[str, Any] = {"id": row[0], "text": row[1], "metadata": json.loads(row[2])}
            if include_vectors:
                rec["vector"] = np.frombuffer(row[3], dtype=np.float32).copy()
            return rec

        with self._lock:
            if where is not None:
                sql, params = compile_where(where)
                lim = f" LIMIT {_positive_int(limit, 'limit')}" if limit is not None else ""
                rows = self._conn.execute(
                    f"SELECT {cols} FROM records WHERE deleted = 0 AND {sql} ORDER BY seq{lim}", params
                ).fetchall()
                return [record(r) for r in rows]
            assert ids is not None
            if isinstance(ids, str):
                raise InvalidInputError("ids must be a list of strings, not a single string")
            found: dict[str, dict[str, Any]] = {}
            for part in _chunks(list(ids)):
                marks = ",".join("?" * len(part))
                for row in self._conn.execute(
                    f"SELECT {cols} FROM records WHERE deleted = 0 AND id IN ({marks})", tuple(part)
                ):
                    found[row[0]] = record(row)
            return [found[i] for i in ids if i in found]

    def distinct(self, *fields: str) -> set[tuple[Any, ...]]:
        """Distinct tuples of metadata values over live records (e.g. ``distinct("source", "doc_hash")``)."""
        if not fields:
            raise InvalidInputError("distinct needs at least one metadata field")
        cols = ", ".join("json_extract(metadata, ?)" for _ in fields)
        paths = tuple("$." + json.dumps(f) for f in fields)
        with self._lock:
            return {tuple(r) for r in self._conn.execute(f"SELECT DISTINCT {cols} FROM records WHERE deleted = 0",
                                                           paths)}

    def replace(
        self,
        where: Where,
        records: Sequence[Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[str]:
        """Delete the records matching ``where`` and add ``records`` in one transaction (e.g. a file's chunks).

        Readers see either the old records or the new ones, never a mix; a crash leaves the old ones.
        """
        from ..encoders.base import check_texts

        sql, params = compile_where(where)
        if not records:
            with self._lock, self._write() as db:
                n = self._soft_delete(db, f"deleted = 0 AND {sql}", params)
            self._live -= n
            self._dead += n
            return []
        t, i, m, e = self._split_records(records, None, None)
        t = check_texts(t)
        id_list = self._check_ids(i, len(t))
        meta = self._check_metadata(m, len(t))
        vectors = self.encoder.encode(check_texts(e) if e else t, kind="document", batch_size=batch_size,
                                      show_progress=show_progress)
        return self._insert(id_list, t, meta, self._check_vectors(vectors, len(t)), replace=True,
                            delete_where=(sql, params), index_texts=e)

    def _query_vector(self, query: str | np.ndarray | Sequence[float]) -> np.ndarray:
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInputError("query is empty")
            q = self.encoder.encode([query], kind="query")[0]
        else:
            q = np.asarray(query, dtype=np.float32).reshape(-1)
            if q.shape[0] != self.settings.dim:
                raise InvalidInputError(
                    f"query has dimension {q.shape[0]}, collection {self.name!r} stores {self.settings.dim}"
                )
        if not np.isfinite(q).all():
            raise InvalidInputError("query vector contains NaN or infinity")
        if self.settings.metric is Metric.COSINE:
            norm = float(np.sqrt(q @ q))
            if norm == 0:
                raise InvalidInputError("query vector is all zeros (no cosine)")
            q = q / norm
        return q.astype(np.float32)

    def _exact_scores(self, q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        m = self.settings.metric
        if m in (Metric.COSINE, Metric.DOT):
            return vectors @ q
        if m is Metric.L2:
            return -np.sqrt(((vectors - q) ** 2).sum(axis=1))
        return -np.abs(vectors - q).sum(axis=1)

    def search(
        self,
        query: str | np.ndarray | Sequence[float],
        k: int = 10,
        *,
        mode: str = "dense",
        where: Where | None = None,
        ef: int | None = None,
        exact: bool = False,
        rescore: int | None = None,
        fusion: str = "rrf",
        alpha: float = 0.5,
        rrf_k: int = RRF_K,
        candidates: int | None = None,
        rerank: Reranker | None = None,
        group_by: str | None = None,
    ) -> Hits:
        """Search the collection.

        Args:
            query: text (embedded with the collection's encoder and query prompt) or, for ``dense``, a
                vector [dim].
            k: hits to return.
            mode: 'dense' (vectors), 'bm25' (SQLite FTS5, needs texts) or 'hybrid' (both, fused).
            where: metadata filter (see :mod:`embedsmith.store.filters`), applied in every mode.
            ef: HNSW search breadth (default ``ef_search``); larger is slower and more exact.
            exact: brute-force over every stored vector instead of walking the graph.
            rescore: candidates fetched per hit and rescored with full float32 vectors when the index
                holds fewer dimensions or a lower precision (default 4, or 10 for binary).
            fusion: hybrid fusion, 'rrf' (reciprocal rank fusion with ``rrf_k``) or 'weighted'
                (``alpha * dense + (1 - alpha) * bm25`` after min-max scaling).
            alpha: dense weight for weighted fusion.
            rrf_k: the RRF constant (60).
            candidates: first-stage hits handed to the reranker (default 100). Hybrid mode fuses the top
                max(100, k, candidates) of each list.
            rerank: a :class:`~embedsmith.rerankers.Reranker`: the first stage's candidates are reranked and
                the top k returned with the reranker's probability as score (logit and first-stage score kept).
            group_by: a metadata field (e.g. 'source'): keep only the best hit per value.

        Returns:
            :class:`Hits`, best first, ties broken by id. Dense scores are higher-is-better (negated
            distances for l2 and manhattan). When k matching records exist, k hits are returned.
        """
        k = _positive_int(k, "k")
        if mode not in ("dense", "bm25", "hybrid"):
            raise InvalidInputError(f"unknown search mode {mode!r}; expected dense, bm25 or hybrid")
        if fusion not in ("rrf", "weighted"):
            raise InvalidInputError(f"unknown fusion {fusion!r}; expected rrf or weighted")
        if candidates is not None:
            candidates = _positive_int(candidates, "candidates")
        if mode != "dense" and not isinstance(query, str):
            raise InvalidInputError(f"{mode} search needs a text query, not a vector")
        if rerank is not None and not isinstance(query, str):
            raise InvalidInputError("reranking needs a text query, not a vector")
        if isinstance(query, str) and not query.strip():
            raise InvalidInputError("query is empty")
        sql, params = compile_where(where)
        first = (candidates or 100) if rerank is not None else k
        if group_by is not None:
            first *= 5  # room for several chunks of one document
        ranked: list[tuple[float, str, Any, str]]
        if mode == "dense":
            ranked = self._dense(query, first, sql, params, ef=ef, exact=exact, rescore=rescore)
        elif mode == "bm25":
            ranked = self._bm25(str(query), first, sql, params)
        else:
            pool = max(first, candidates or 0, 100)  # each list contributes its top 100 (or more) to the fusion
            # bm25 runs on its own connection in a worker thread while the query is embedded and the graph
            # searched: SQLite, onnxruntime and faiss all release the GIL, so hybrid costs max(), not sum.
            pending = self._bm25_worker().submit(self._bm25, str(query), pool, sql, params, reader=True)
            try:
                dense = self._dense(query, pool, sql, params, ef=ef, exact=exact, rescore=rescore)
            finally:
                sparse = pending.result()
            rows = {h[1]: h for h in (*sparse, *dense)}
            if fusion == "rrf":
                fused = reciprocal_rank_fusion([[h[1] for h in dense], [h[1] for h in sparse]], k=rrf_k)
            else:
                fused = weighted_fusion([(h[1], h[0]) for h in dense], [(h[1], h[0]) for h in sparse], alpha=alpha)
            ranked = sorted(((score, *rows[key][1:]) for key, score in fused), key=lambda h: (-h[0], h[1]))
        if group_by is not None:
            ranked = best_per_group(ranked, lambda h: json.loads(h[3]).get(group_by, h[1]))
        if rerank is None:
            return self._hits(ranked[:k])
        pool_hits = ranked[: candidates or 100]
        missing = [h[1] for h in pool_hits if not h[2]]
        if missing:
            raise InvalidInputError(f"record {missing[0]!r} has no text to rerank")
        order = rerank.rerank(str(query), [h[2] for h in pool_hits])
        order.sort(key=lambda o: (-o[2], pool_hits[o[0]][1]))
        top = order[:k]
        hits = self._hits([(p, *pool_hits[i][1:]) for i, p, _ in top])
        return Hits(hits.ids, hits.scores, hits.texts, hits.metadata,
                    first_stage_scores=[pool_hits[i][0] for i, _, _ in top], rerank_logits=[lg for _, _, lg in top])

    @staticmethod
    def _hits(ranked: Sequence[tuple[float, str, Any, str]]) -> Hits:
        return Hits(
            ids=[h[1] for h in ranked],
            scores=[float(h[0]) for h in ranked],
            texts=[h[2] for h in ranked],
            metadata=[{} if h[3] == "{}" else json.loads(h[3]) for h in ranked],
        )

    def _bm25_worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedsmith-bm25-{self.name}")
        return self._executor

    def _bm25(
        self, query: str, n: int, sql: str, params: list[Any], *, reader: bool = False
    ) -> list[tuple[float, str, Any, str]]:
        """Top ``n`` live rows by FTS5 BM25 (score = -bm25(), higher is better), ties by id.

        With ``reader``, runs on a second, read-only connection (from the bm25 worker thread only); a new
        statement there sees every transaction committed before it started.
        """
        expr = match_expression(query)
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

    def _dense(
        self, query: str | np.ndarray | Sequence[float], k: int, sql: str, params: list[Any], *,
        ef: int | None, exact: bool, rescore: int | None,
    ) -> list[tuple[float, str, Any, str]]:
        """Top ``k`` live rows by vector similarity: (score, id, text, metadata JSON)."""
        ef = _positive_int(ef, "ef") if ef is not None else self.ef_search
        q = self._query_vector(query)
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

    def _rank(self, q: np.ndarray, rows: Sequence[tuple[Any, ...]], k: int) -> list[tuple[float, str, Any, str]]:
        if not rows:
            return []
        scores = self._exact_scores(q, self._decode([r[3] for r in rows]))
        ranked = sorted(
            ((float(sc), r[0], r[1], r[2]) for sc, r in zip(scores, rows, strict=True)),
            key=lambda h: (-h[0], h[1]),
        )
        return ranked[:k]

    def _scan(self, q: np.ndarray, sql: str, params: list[Any], k: int) -> list[tuple[float, str, Any, str]]:
        best: list[tuple[float, str, Any, str]] = []
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

    def iter_records(self, *, batch: int = 1000) -> Iterable[list[dict[str, Any]]]:
        """Live records in write order, in lists of ``batch``, with float32 vectors."""
        cur = self._conn.execute("SELECT id, text, metadata, vector FROM records WHERE deleted = 0 ORDER BY seq")
        while rows := cur.fetchmany(batch):
            yield [{"id": r[0], "text": r[1], "metadata": json.loads(r[2]),
                    "vector": np.frombuffer(r[3], dtype=np.float32)} for r in rows]

    def close(self) -> None:
        """Save the ANN index if it changed, and close the database."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._unsaved:
                    self.save_index()
            finally:
                self._closed = True
                if self._executor is not None:
                    self._executor.shutdown(wait=True)
                if self._reader is not None:
                    self._reader.close()
                self._conn.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        return f"Collection({s.name!r}, model={s.model!r}, dim={s.dim}, metric={s.metric.value}, " \
               f"precision={s.precision.value})"


def _connect(path: Path, lock_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=lock_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def open_collection(
    name: str,
    *,
    store: str | os.PathLike[str] | None = None,
    encoder: Encoder | str | None = None,
    metric: str | Metric | None = None,
    precision: str | Precision | None = None,
    dims: int | None = None,
    dim: int | None = None,
    calibration: Int8Calibration | None = None,
    create: bool = True,
    hnsw_m: int = 32,
    ef_construction: int = 128,
    ef_search: int = 64,
    exact_below: int = 10_000,
    lock_timeout: float = 10.0,
    save_every: int = 50_000,
    save_interval_s: float = 60.0,
) -> Collection:
    """Create or open a collection.

    Args:
        name: letters, digits, ``_``, ``.``, ``-`` (up to 64).
        store: the folder holding collections (default :func:`default_store`).
        encoder: an encoder, or an alias/folder to load. For an existing collection, None means the
            model it records (loaded on first text operation).
        metric: cosine (default) | dot | l2 | manhattan.
        precision: float32 (default) | float16 | int8 | binary: what the ANN index stores. Full float32
            vectors stay in the database and rescore the shortlist.
        dims: index only the first ``dims`` dimensions (Matryoshka funnel); all are used to rescore.
        dim: vector dimension of a collection without an encoder (vectors only).
        calibration: int8 ranges (default: :meth:`Int8Calibration.default`), fixed at creation.
        create: False to fail when the collection does not exist.
        hnsw_m, ef_construction, ef_search: HNSW parameters.
        exact_below: below this many records, search is exact (brute force).
        lock_timeout: seconds a writer waits for another process's write lock.
        save_every, save_interval_s: save the ANN index after this many unsaved rows or seconds.

    Raises:
        SettingsMismatchError: an existing collection records other settings (both values named).
        StoreError: the store cannot be created or written, or has a newer format.
        InvalidInputError: a bad name or setting.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    root = Path(store).expanduser() if store is not None else default_store()
    folder = root / name
    db_path = folder / "collection.sqlite"
    enc: Encoder | None
    if isinstance(encoder, (str, os.PathLike)):
        from ..encoders import load_encoder

        enc = load_encoder(encoder)
    else:
        enc = encoder
    m = parse_enum(Metric, metric, "metric") if metric is not None else None
    p = parse_enum(Precision, precision, "precision") if precision is not None else None
    if not db_path.is_file():
        if not create:
            raise StoreError(f"no collection {name!r} in {str(root)!r}")
        return _create(folder, name, enc, m or Metric.COSINE, p or Precision.FLOAT32, dims, dim, calibration,
                       hnsw_m, ef_construction, ef_search, exact_below, lock_timeout, save_every, save_interval_s)
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
    given = {"metric": m.value if m else None, "precision": p.value if p else None, "dims": dims, "dim": dim}
    stored = {"metric": settings.metric.value, "precision": settings.precision.value, "dims": settings.dims,
              "dim": settings.dim}
    for key, value in given.items():
        if value is not None and value != stored[key]:
            conn.close()
            raise SettingsMismatchError(
                f"collection {name!r} was created with {key}={stored[key]!r}; opened with {key}={value!r}"
            )
    coll = Collection(folder, conn, settings, None, exact_below=exact_below, ef_search=ef_search,
                      save_every=save_every, save_interval_s=save_interval_s)
    if enc is not None:
        try:
            coll._check_encoder(enc)
        except SettingsMismatchError:
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


def _create(
    folder: Path, name: str, enc: Encoder | None, metric: Metric, precision: Precision, dims: int | None,
    dim: int | None, calibration: Int8Calibration | None, hnsw_m: int, ef_construction: int, ef_search: int,
    exact_below: int, lock_timeout: float, save_every: int, save_interval_s: float,
) -> Collection:
    if enc is None and dim is None:
        raise InvalidInputError(f"a new collection needs an encoder, or dim= for vectors only ({name!r})")
    full = enc.dim if enc is not None else _positive_int(dim, "dim")
    if enc is not None and dim is not None and dim != enc.dim:
        raise InvalidInputError(f"dim={dim} does not match encoder {enc.name!r} dimension {enc.dim}")
    index_dims = full if dims is None else _positive_int(dims, "dims")
    if index_dims > full:
        raise InvalidInputError(f"dims={index_dims} is larger than the vectors' dimension {full}")
    if precision is Precision.BINARY and index_dims % 8:
        raise InvalidInputError(f"binary precision needs dims divisible by 8, got {index_dims}")
    if calibration is not None and calibration.low.shape[0] < index_dims:
        raise InvalidInputError(f"calibration covers {calibration.low.shape[0]} dimensions, index has {index_dims}")
    if precision is Precision.INT8 and calibration is None:
        calibration = Int8Calibration.default(index_dims)
    settings = CollectionSettings(
        name=name, model=enc.name if enc is not None else None, fingerprint=enc.fingerprint if enc else None,
        prompts=dict(getattr(enc, "prompts", {}) or {}), dim=full, dims=index_dims, metric=metric,
        precision=precision, calibration=calibration, hnsw_m=_positive_int(hnsw_m, "hnsw_m"),
        ef_construction=_positive_int(ef_construction, "ef_construction"),
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".collection.sqlite.{os.getpid()}.tmp"
        conn = _connect(tmp, lock_timeout)
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", settings.to_meta().items())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        # Created under a temporary name and renamed, so a half-created collection is never opened.
        os.replace(tmp, folder / "collection.sqlite")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot create collection {name!r} in {str(folder.parent)!r}: {exc}") from exc
    conn = _connect(folder / "collection.sqlite", lock_timeout)
    return Collection(folder, conn, settings, enc, exact_below=exact_below, ef_search=ef_search,
                      save_every=save_every, save_interval_s=save_interval_s)


def list_collections(store: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the collections in a store."""
    root = Path(store).expanduser() if store is not None else default_store()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "collection.sqlite").is_file())


def delete_collection(name: str, *, store: str | os.PathLike[str] | None = None) -> None:
    """Remove a collection and its files."""
    import shutil

    root = Path(store).expanduser() if store is not None else default_store()
    folder = root / name
    if not (folder / "collection.sqlite").is_file():
        raise StoreError(f"no collection {name!r} in {str(root)!r}")
    shutil.rmtree(folder)


__all__ = ["Collection", "IndexRebuildWarning", "default_store", "delete_collection", "list_collections",
           "open_collection"]
