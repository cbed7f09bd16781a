"""The derived ANN index: faiss HNSW over a collection's vectors, keyed by write sequence number.

It is a cache of what SQLite holds. It is saved at intervals and on close (temp file, fsync, rename, under a
file lock), stamped with the collection's identity, its compaction generation, the last sequence number it
contains and a checksum; caught up from SQLite on open, and rebuilt when missing, damaged or foreign. Every
row up to the stamp is in it, deleted ones too (they stay in the graph until compaction; callers filter them
out), so the stamp can be checked against the rows with a count.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..quantization import Int8Calibration, l2_normalize
from ..types import Metric, Precision

FORMAT = 2  # 2: the stamp records the collection's identity, compaction generation and a CRC-32


class DamagedIndexError(Exception):
    """The index file is missing, truncated or does not match its stamp."""


class IndexNotSavedError(DamagedIndexError):
    """No index was ever saved in the folder (a new collection, or its writers have not saved yet)."""


_FAISS: Any = None


def _faiss() -> Any:
    global _FAISS
    if _FAISS is None:
        _FAISS = require("faiss", extra="store", what="the vector index")
    return _FAISS


@dataclass(frozen=True)
class IndexSpec:
    """What the index holds: the first ``dims`` dimensions, in ``precision``, compared by ``metric``."""

    dims: int
    metric: Metric
    precision: Precision
    m: int = 32
    ef_construction: int = 128
    calibration: Int8Calibration | None = None

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Map stored full vectors [n, dim] to what the index takes: cut, renormalised, packed if binary.

        For cosine, full vectors arrive unit-length (the collection normalises them), so only a cut
        needs renormalising.
        """
        cut = vectors.shape[1] > self.dims
        v = np.ascontiguousarray(vectors[:, : self.dims], dtype=np.float32)
        if self.metric is Metric.COSINE and cut:
            v = l2_normalize(v)
        if self.precision is Precision.BINARY:
            return np.packbits(v > 0, axis=1)
        return v


class AnnIndex:
    """faiss HNSW (flat, fp16, int8 or binary storage) wrapped in an id map of sequence numbers."""

    def __init__(self, spec: IndexSpec, index: Any = None, last_seq: int = 0) -> None:
        faiss = _faiss()
        self.spec = spec
        self.last_seq = last_seq
        self._keys: np.ndarray | None = None
        self._sorted = True
        self._ef = -1  # efSearch last set on the graph
        if index is not None:
            self.index = index  # owns the graph; ``_inner`` is a typed view of it
            binary = spec.precision is Precision.BINARY
            self._inner = (faiss.downcast_IndexBinary if binary else faiss.downcast_index)(index.index)
            return
        p = spec.precision
        if p is Precision.BINARY:
            inner = faiss.IndexBinaryHNSW(spec.dims, spec.m)
            self.index = faiss.IndexBinaryIDMap(inner)
        else:
            fm = {Metric.COSINE: faiss.METRIC_INNER_PRODUCT, Metric.DOT: faiss.METRIC_INNER_PRODUCT,
                  Metric.L2: faiss.METRIC_L2, Metric.MANHATTAN: faiss.METRIC_L1}[spec.metric]
            if p is Precision.FLOAT32:
                inner = faiss.IndexHNSWFlat(spec.dims, spec.m, fm)
            else:
                qt = faiss.ScalarQuantizer.QT_fp16 if p is Precision.FLOAT16 else faiss.ScalarQuantizer.QT_8bit
                inner = faiss.IndexHNSWSQ(spec.dims, qt, spec.m, fm)
                storage = faiss.downcast_index(inner.storage)
                if p is Precision.INT8:
                    # Fixed ranges from the collection, never trained on the data that happens to arrive first.
                    cal = spec.calibration or Int8Calibration.default(spec.dims)
                    params = np.concatenate([cal.low[: spec.dims], (cal.high - cal.low)[: spec.dims]])
                    faiss.copy_array_to_vector(params.astype(np.float32), storage.sq.trained)
                storage.is_trained = True
                inner.is_trained = True
            self.index = faiss.IndexIDMap(inner)
        self._inner = inner  # the id map does not own it: keep the Python reference alive
        inner.hnsw.efConstruction = spec.ef_construction

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add full vectors [n, dim] under int64 keys (their sequence numbers)."""
        if len(keys) == 0:
            return
        self.index.add_with_ids(self.spec.prepare(vectors), np.asarray(keys, dtype=np.int64))
        self.last_seq = max(self.last_seq, int(np.max(keys)))
        self._keys = None

    def search(self, query: np.ndarray, k: int, *, ef: int = 64, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Nearest keys to one full query vector [dim].

        Returns:
            (keys int64 [<=k], scores float32 [<=k]) best first, scores higher-is-better.
        """
        keys, scores = self.search_batch(query.reshape(1, -1), k, ef=ef, exact=exact)
        keys, d = keys[0], scores[0]
        if keys.size and keys[-1] < 0:  # fewer than k reachable: faiss pads with -1
            ok = keys >= 0
            keys, d = keys[ok], d[ok]
        return keys, d

    def search_batch(self, queries: np.ndarray, k: int, *, ef: int = 64, exact: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest keys to each full query vector [n, dim], in one faiss call (its threads share the batch).

        Returns:
            (keys int64 [n, k'], scores float32 [n, k']) with k' = min(k, ntotal), best first, padded with
            key -1 where fewer were reachable.
        """
        faiss = _faiss()
        n = len(queries)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)
        q = self.spec.prepare(queries)
        inner = self._inner
        if exact:
            if self.spec.precision is Precision.BINARY:
                storage = faiss.downcast_IndexBinary(inner.storage)
            else:
                storage = faiss.downcast_index(inner.storage)
            dist, pos = storage.search(q, k)
            keys = np.where(pos >= 0, self.keys()[np.maximum(pos, 0)], -1)
        else:
            if max(ef, k) != self._ef:  # a swig attribute write costs as much as the rest of this wrapper
                inner.hnsw.efSearch = self._ef = max(ef, k)
            # search_c with our own output arrays: faiss's Python wrapper re-checks and converts what
            # prepare() already made contiguous, a measurable part of a 0.25 ms search.
            dist = np.empty((n, k), np.float32 if self.spec.precision is not Precision.BINARY else np.int32)
            keys = np.empty((n, k), np.int64)
            self.index.search_c(n, faiss.swig_ptr(q), k, faiss.swig_ptr(dist), faiss.swig_ptr(keys))
        return keys, self._scores(dist.astype(np.float32, copy=False))

    def keys(self) -> np.ndarray:
        """The key of each stored vector, in storage order (a cached copy of faiss's id map)."""
        if self._keys is None:
            self._keys = _faiss().vector_to_array(self.index.id_map)
            self._sorted = bool(np.all(self._keys[1:] > self._keys[:-1]))
        return self._keys

    def vectors(self, keys: np.ndarray) -> np.ndarray | None:
        """The stored float32 vectors [len(keys), dims] of ``keys`` (all held), or None when the index keeps
        codes (fp16, int8, binary) rather than the vectors."""
        if self.spec.precision is not Precision.FLOAT32:
            return None
        if len(keys) == 0:
            return np.empty((0, self.spec.dims), np.float32)
        faiss = _faiss()
        held = self.keys()
        if self._sorted:  # keys are added in increasing order; only a legacy adopt leaves the id map unsorted
            pos = np.minimum(np.searchsorted(held, keys), len(held) - 1)
        else:
            sorter = np.argsort(held)
            pos = sorter[np.minimum(np.searchsorted(held, keys, sorter=sorter), len(held) - 1)]
        if not np.array_equal(held[pos], keys):
            raise DamagedIndexError("the index lacks vectors for some of the rows asked for")
        storage = faiss.downcast_index(self._inner.storage)
        # A view of faiss's own buffer (valid until the next add, which callers exclude by their lock).
        xb = faiss.rev_swig_ptr(storage.get_xb(), self.ntotal * self.spec.dims).reshape(self.ntotal, self.spec.dims)
        order = np.argsort(pos)  # read storage in order: far fewer cache misses on a large index
        out = np.empty((len(keys), self.spec.dims), np.float32)
        out[order] = xb[pos[order]]
        return out

    def _scores(self, d: np.ndarray) -> np.ndarray:
        if self.spec.precision is Precision.BINARY:
            return -d  # Hamming distance, only used for the shortlist
        if self.spec.metric is Metric.L2:
            return -np.sqrt(np.maximum(d, 0))
        if self.spec.metric is Metric.MANHATTAN:
            return -d
        return d

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, folder: Path, *, identity: str, generation: int, force: bool = False) -> bool:
        """Write ``ann-<seq>.faiss`` and then the stamp ``ann.json`` that names it, both atomically.

        Call it holding :func:`locked` on ``folder / "ann.lock"``, so two processes saving at once cannot
        interleave. An index already there of the same collection and generation that holds as much (a stamp at
        or past ours) is kept, and nothing is written, unless ``force`` (a rebuild replacing a damaged file).
        Returns whether this index was written.

        Raises:
            OSError, RuntimeError: the folder cannot be written (callers warn; the rows are safe in SQLite).
        """
        faiss = _faiss()
        current = read_stamp(folder)
        if (not force and current is not None and current.get("identity") == identity
                and current.get("generation") == generation and int(current.get("last_seq", -1)) >= self.last_seq
                and (folder / str(current.get("file"))).is_file()):
            return False
        name = f"ann-{self.last_seq}.faiss"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            writer = faiss.write_index_binary if self.spec.precision is Precision.BINARY else faiss.write_index
            writer(self.index, str(tmp))
            checksum = file_checksum(tmp)
            _fsync(tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        stamp = {"format": FORMAT, "file": name, "last_seq": self.last_seq, "ntotal": self.ntotal,
                 "bytes": (folder / name).stat().st_size, "identity": identity, "generation": generation,
                 "crc32": checksum}
        tmp_stamp = folder / f".ann.json.{os.getpid()}.tmp"
        try:
            tmp_stamp.write_text(json.dumps(stamp))
            _fsync(tmp_stamp)
            os.replace(tmp_stamp, folder / "ann.json")
        finally:
            tmp_stamp.unlink(missing_ok=True)
        _fsync_dir(folder)
        _remove_stale(folder, self.last_seq)
        return True

    @classmethod
    def load(cls, folder: Path, spec: IndexSpec, *, identity: str | None,
             generation: int) -> tuple[AnnIndex, dict[str, Any]]:
        """Load the stamped index and its stamp, or raise :class:`DamagedIndexError` saying what is wrong.

        The stamp must name this collection's identity and compaction generation; a stamp written before
        identities existed (format 1) is adopted once. The checksum is not read here (that reads the whole
        file): :func:`verify_file` checks it.
        """
        faiss = _faiss()
        stamp = read_stamp(folder)
        if stamp is None:
            if not (folder / "ann.json").exists() and not any(folder.glob("ann-*.faiss")):
                raise IndexNotSavedError("no index saved yet")
            raise DamagedIndexError("no index file stamp (ann.json) that loads")
        try:
            path = folder / str(stamp["file"])
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise DamagedIndexError("no index file") from exc
        except (OSError, KeyError, TypeError) as exc:
            raise DamagedIndexError(f"unreadable stamp: {exc}") from exc
        fmt = stamp.get("format")
        if fmt not in (1, FORMAT) or size != stamp.get("bytes"):
            raise DamagedIndexError(f"{path.name} has {size} bytes, its stamp says {stamp.get('bytes')}")
        if fmt == FORMAT:
            if stamp.get("identity") != identity:
                raise DamagedIndexError(f"{path.name} belongs to another collection of the same name")
            if stamp.get("generation") != generation:
                raise DamagedIndexError(f"{path.name} is older than the collection's last compaction")
        reader = faiss.read_index_binary if spec.precision is Precision.BINARY else faiss.read_index
        try:
            index = reader(str(path))
        except RuntimeError as exc:
            raise DamagedIndexError(f"{path.name} does not load: {str(exc).splitlines()[0]}") from exc
        if index.ntotal != stamp["ntotal"] or index.d != spec.dims:
            raise DamagedIndexError(f"{path.name} holds {index.ntotal} vectors, its stamp says {stamp['ntotal']}")
        return cls(spec, index=index, last_seq=int(stamp["last_seq"])), stamp


def read_stamp(folder: Path) -> dict[str, Any] | None:
    """The index stamp ``ann.json``, or None when there is none or it is unreadable."""
    try:
        stamp = json.loads((folder / "ann.json").read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def file_checksum(path: Path) -> str:
    """CRC-32 of a file (zlib's: fast, and enough to catch a flipped byte; this is not a security check)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def verify_file(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The stamp and the problems of the saved index file: missing, size or checksum not as stamped.

    No stamp at all is not a problem: the index is a cache, not saved yet (a new collection, or a writer killed
    before its first save), and it is built from the rows on open.
    """
    if not (folder / "ann.json").exists():
        return None, []
    stamp = read_stamp(folder)
    if stamp is None:
        return None, ["the ANN index stamp ann.json is unreadable; repair rebuilds the index"]
    path = folder / str(stamp.get("file"))
    if not path.is_file():
        return stamp, [f"the ANN index file {path.name} named by ann.json is missing"]
    problems = []
    if path.stat().st_size != stamp.get("bytes"):
        problems.append(f"the ANN index file {path.name} has {path.stat().st_size} bytes, its stamp says "
                        f"{stamp.get('bytes')}")
    if "crc32" not in stamp:
        problems.append(f"the ANN index file {path.name} has no checksum (saved by an older embedsmith); "
                        "repair rewrites it")
    elif file_checksum(path) != stamp["crc32"]:
        problems.append(f"the ANN index file {path.name} does not match its checksum (damaged); repair rebuilds it")
    return stamp, problems


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path``, held by this process until the block ends."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass


def _remove_stale(folder: Path, keep_seq: int) -> None:
    """Delete index files older than the one just saved, and temp files of saves killed long ago.

    A newer file (saved meanwhile by another process) is left alone; its stamp may be the current one.
    """
    for old in folder.glob("ann-*.faiss"):
        try:
            seq = int(old.stem.split("-", 1)[1])
        except ValueError:
            continue
        if seq < keep_seq:
            old.unlink(missing_ok=True)
    hour_ago = time.time() - 3600
    for tmp in folder.glob(".ann*.tmp"):
        try:
            if tmp.stat().st_mtime < hour_ago:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
