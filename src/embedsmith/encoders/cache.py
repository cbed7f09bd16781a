"""A content-addressed vector cache on disk, shared by every process that encodes with the same model.

A text's vector is stored under sha256(namespace, text), where the namespace names everything that changes
the vector: the encoder's cache identity (weights digest, backend, quantisation, export version), the
prompt of the kind asked for, the model's max sequence length and the truncation side. Vectors are kept as
the model gives them, before the dimension cut, normalisation and precision of a call, so one entry serves
every ``dims`` and ``precision``.

The store is one SQLite file (WAL, so readers never wait on a writer; writes are short ``BEGIN IMMEDIATE``
transactions with a busy timeout, so two processes writing at once both succeed), bounded in size: when its
live pages pass ``max_bytes`` the least recently used tenth is dropped and the freed pages returned to the
file system (incremental vacuum). A cache that cannot be read or written (full disk, damaged file, a
read-only folder) never fails an encode: it warns once and the encoder works without it.

No library we use offers this: sentence-transformers and mteb cache per run in memory or per task file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger("embedsmith")

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: ~1.3M MiniLM vectors
_CHUNK = 500  # keys per SQL statement (well under SQLite's variable limit)


class VectorCacheWarning(UserWarning):
    """The vector cache could not be used; encoding went on without it."""


def default_cache_path() -> Path:
    from .base import cache_dir

    return cache_dir() / "vectors.sqlite"


def cache_namespace(encoder: Any, prompt: str, truncation: str = "right") -> bytes:
    """What, besides the text, decides a vector of ``encoder``: its identity, prompt, length limit and cut."""
    identity = getattr(encoder, "cache_id", None) or getattr(encoder, "fingerprint", None)
    if not identity:
        raise InvalidInputError(f"{type(encoder).__name__} has no fingerprint; its vectors cannot be cached")
    parts = [str(identity), prompt, int(getattr(encoder, "max_tokens", 0) or 0), truncation,
             int(getattr(encoder, "dim", 0) or 0)]
    return hashlib.sha256(json.dumps(parts).encode()).digest()


class VectorCache:
    """Vectors by (encoder namespace, text), in one SQLite file.

    Args:
        path: the cache file (default ``cache_dir()/vectors.sqlite``); created on first use.
        max_bytes: bound on the stored vectors and keys; least recently used entries go first.

    Statistics of this handle: ``hits``, ``misses``, ``writes``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise InvalidInputError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.max_bytes = max_bytes
        self.hits = self.misses = self.writes = 0
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._broken = False

    # -- the connection --------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 30000")
                # page_size and auto_vacuum take effect only on a new file (before WAL and the first table); a
                # rowid table, not WITHOUT ROWID, whose rows over ~1 kB spill to overflow pages: a MiniLM vector
                # is 1.5 kB, five to an 8 kB page.
                conn.execute("PRAGMA page_size = 8192")
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # a lost tail after a power cut is only a re-encode
                conn.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB NOT NULL UNIQUE, vec BLOB NOT NULL, "
                             "used INTEGER NOT NULL)")
                conn.execute("CREATE INDEX IF NOT EXISTS vectors_used ON vectors (used)")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _give_up(self, exc: BaseException) -> None:
        if not self._broken:
            warnings.warn(f"vector cache {str(self.path)!r} is unusable ({exc}); encoding without it. Delete the "
                          "file to start a fresh cache", VectorCacheWarning, stacklevel=4)
        self._broken = True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading and writing ---------------------------------------------------------------------------
    @staticmethod
    def keys(namespace: bytes, texts: Sequence[str]) -> list[bytes]:
        return [hashlib.sha256(namespace + t.encode("utf-8", "surrogatepass")).digest() for t in texts]

    def get(self, keys: Sequence[bytes], dim: int) -> dict[bytes, np.ndarray]:
        """The stored vectors among ``keys`` (of width ``dim``); marks them recently used."""
        if self._broken or not keys:
            return {}
        found: dict[bytes, np.ndarray] = {}
        try:
            with self._lock:
                conn = self._connect()
                unique = list(dict.fromkeys(keys))
                for i in range(0, len(unique), _CHUNK):
                    part = unique[i : i + _CHUNK]
                    marks = ",".join("?" * len(part))
                    for key, blob in conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", part):
                        vec = np.frombuffer(blob, np.float32)
                        if vec.shape[0] == dim:  # anything else is not ours to trust
                            found[bytes(key)] = vec
                if found:
                    now = time.time_ns()
                    hit = list(found)
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for i in range(0, len(hit), _CHUNK):
                            part = hit[i : i + _CHUNK]
                            conn.execute(f"UPDATE vectors SET used = ? WHERE key IN ({','.join('?' * len(part))})",
                                         [now, *part])
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
        except sqlite3.Error as exc:
            self._give_up(exc)
            return {}
        return found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors [len(keys), dim] (float32); then keep the file within ``max_bytes``."""
        if self._broken or not len(keys):
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        now = time.time_ns()
        try:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO vectors (key, vec, used) VALUES (?, ?, ?)",
                                     ((k, v.tobytes(), now) for k, v in zip(keys, vecs, strict=True)))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self.writes += len(keys)
                self._bound(conn)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def _bound(self, conn: sqlite3.Connection) -> None:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        live = (conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0])
        if live * page <= self.max_bytes:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            total = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            # Entries are about the same size: drop enough of the oldest to get back under 90% of the bound.
            drop = max(1, total - int(total * 0.9 * self.max_bytes / (live * page)))
            conn.execute("DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY used LIMIT ?)", (drop,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("PRAGMA incremental_vacuum")
        log.info("vector cache %s: dropped %d least recently used vectors", self.path, drop)

    def stats(self) -> dict[str, Any]:
        """Entries and bytes on disk (the file and its write-ahead log)."""
        try:
            with self._lock:
                count = self._connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        except sqlite3.Error as exc:
            self._give_up(exc)
            count = 0
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"path": str(self.path), "entries": count, "bytes": size, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "writes": self.writes}

    # -- what an encoder calls -------------------------------------------------------------------------
    def lookup(self, namespace: bytes, texts: Sequence[str], dim: int,
               embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors [len(texts), dim] of ``texts``: stored ones read, the rest given by ``embed`` and stored.

        ``embed`` is called once, with the distinct texts that were not found (in first-seen order)."""
        keys = self.keys(namespace, texts)
        found = self.get(keys, dim)
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in found and key not in missing:
                missing[key] = i
        self.hits += len(texts) - sum(1 for k in keys if k in missing)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(embed([texts[i] for i in missing.values()]), dtype=np.float32)
            self.put(list(missing), fresh)
            found.update(zip(missing, fresh, strict=True))
        out = np.empty((len(texts), dim), np.float32)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out


@contextlib.contextmanager
def using_cache(encoder: Any, cache: VectorCache | None) -> Iterator[None]:
    """``encoder`` reads and writes ``cache`` inside the block (None: leaves it as it is)."""
    if cache is None:
        yield
        return
    if not getattr(encoder, "fingerprint", None) or not hasattr(encoder, "_embed"):
        raise InvalidInputError(f"{type(encoder).__name__} is not an embedsmith encoder; its vectors cannot be cached")
    before = getattr(encoder, "vector_cache", None)
    encoder.vector_cache = cache
    try:
        yield
    finally:
        encoder.vector_cache = before
