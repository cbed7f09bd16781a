"""BM25 as a term-document matrix in memory, derived from the records like the ANN index.

bm25s showed that BM25 over a sparse matrix answers in about a millisecond where a full-text engine that
scores every row holding any query word (SQLite FTS5 with OR) takes tens. This index keeps, per term, the
rows that hold it and how often; document lengths per row; and which rows are live. idf and length
normalisation are computed at query time from the live rows, so deletes, upserts and other processes'
writes never leave stale weights.

The formula is FTS5's Okapi BM25 (k1=1.2, b=0.75, idf = ln((N - df + 0.5) / (df + 0.5)), at least 1e-6),
which the PostgreSQL backend computes in SQL. bm25s's ``robertson`` method with k1=1.2 gives the same
ranking (its scores are these divided by k1 + 1). Text is cut into ``\\w+`` words, lower-cased, English
stopwords dropped, and stemmed with Snowball's English stemmer (PyStemmer), as PostgreSQL's ``english``
configuration does.

It is written by hand because bm25s builds an immutable index (no appends, no deletes, no live idf), and
the store needs all three.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .ann import DamagedIndexError, IndexNotSavedError, _fsync, _fsync_dir
from .bm25 import STOPWORDS

FILE = "bm25.npz"
FORMAT = 1

K1 = 1.2
B = 0.75
_WORD = re.compile(r"\w+", re.UNICODE)


@cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """The terms BM25 counts in ``text``: lower-cased words, no stopwords, Snowball-stemmed."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return list(_stemmer().stemWords(words)) if words else []


def query_terms(query: str) -> list[str]:
    """Distinct terms of a query, in order (all its words stemmed when every one is a stopword)."""
    terms = tokenize(query)
    if not terms:
        words = _WORD.findall(query.lower())
        terms = list(_stemmer().stemWords(words)) if words else []
    return list(dict.fromkeys(terms))


class _Grow:
    """A numpy array that grows by doubling (appending one batch costs the batch, not the array)."""

    def __init__(self, dtype: Any) -> None:
        self.data = np.empty(1024, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.data):
            bigger = np.empty(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            bigger[: self.n] = self.data[: self.n]
            self.data = bigger
        self.data[self.n : need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


class _Postings:
    """Term -> (rows, term frequencies), as one CSC-like block over the terms known when it was built."""

    def __init__(self, terms: np.ndarray, rows: np.ndarray, tfs: np.ndarray, n_terms: int) -> None:
        order = np.argsort(terms, kind="stable")
        self.rows = np.ascontiguousarray(rows[order], dtype=np.int32)
        self.tfs = np.ascontiguousarray(tfs[order], dtype=np.float32)
        counts = np.bincount(terms, minlength=n_terms) if len(terms) else np.zeros(n_terms, np.int64)
        self.indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])

    @classmethod
    def saved(cls, indptr: np.ndarray, rows: np.ndarray, tfs: np.ndarray) -> _Postings:
        """A block read back from ``bm25.npz``, already in term order."""
        block = cls.__new__(cls)
        block.indptr, block.rows, block.tfs = indptr, rows, tfs
        return block

    @property
    def nnz(self) -> int:
        return len(self.rows)

    def term(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        if t + 1 >= len(self.indptr):
            return self.rows[:0], self.tfs[:0]
        a, b = self.indptr[t], self.indptr[t + 1]
        return self.rows[a:b], self.tfs[a:b]

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        terms = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        return terms, self.rows, self.tfs


_EMPTY = np.zeros(0, np.int64)
_ALL = np.zeros(0, np.int64)  # returned as the rows of a dense score array: every row
# Postings whose BM25 contributions are kept between searches (per term, until the next write): ~32 MB.
_CACHE_POSTINGS = 2_000_000


def _joined(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_terms: int) -> _Postings:
    return _Postings(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     np.concatenate([p[2] for p in parts]), n_terms)


class Bm25Index:
    """Rows (by the store's sequence number), their term counts and lengths, and which are live.

    Appends go to a small block that is merged into the main one when it grows past a quarter of it, so a
    write costs its own rows and a search after a write never rebuilds the whole matrix.

    Attributes:
        last_seq: the highest sequence number this index has read (it is caught up past it).
        dead_seen: how many deleted rows the store had when the live flags were last updated.
    """

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self._seqs = _Grow(np.int64)
        self._lengths = _Grow(np.float32)
        self._alive = _Grow(np.bool_)
        self._live_count = 0
        self._live_tokens = 0.0
        self._main = _Postings(_EMPTY, _EMPTY, _EMPTY.astype(np.float32), 0)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_nnz = 0
        self._delta: _Postings | None = None
        self.last_seq = 0
        self.dead_seen = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0
        self._norm: np.ndarray | None = None

    def __len__(self) -> int:
        return self._seqs.n

    @property
    def live(self) -> int:
        return self._live_count

    def add(self, seqs: Sequence[int], texts: Sequence[str]) -> None:
        """Append rows (sequence numbers increasing, each past every row already held)."""
        start = self._seqs.n
        terms: list[int] = []
        rows: list[int] = []
        tfs: list[int] = []
        lengths = np.zeros(len(seqs), np.float32)
        vocab = self.vocab
        for i, text in enumerate(texts):
            counts = Counter(tokenize(text))
            lengths[i] = sum(counts.values())
            for term, tf in counts.items():
                t = vocab.get(term)
                if t is None:
                    t = vocab[term] = len(vocab)
                terms.append(t)
                rows.append(start + i)
                tfs.append(tf)
        self._seqs.extend(np.asarray(seqs, np.int64))
        self._lengths.extend(lengths)
        self._alive.extend(np.ones(len(seqs), np.bool_))
        self._live_count += len(seqs)
        self._live_tokens += float(lengths.sum())
        self._changed()
        if terms:
            self._pending.append((np.asarray(terms, np.int64), np.asarray(rows, np.int64),
                                  np.asarray(tfs, np.float32)))
            self._pending_nnz += len(terms)
            self._delta = None

    def mark_dead(self, seqs: np.ndarray) -> None:
        """Flag rows deleted (sequence numbers this index may or may not hold)."""
        if not len(seqs) or not self._seqs.n:
            return
        held = self._seqs.view
        seqs = np.asarray(seqs, np.int64)
        pos = np.searchsorted(held, seqs)
        inside = pos < len(held)
        pos, seqs = pos[inside], seqs[inside]
        pos = pos[held[pos] == seqs]  # rows without text were never added
        alive = self._alive.view
        newly = pos[alive[pos]]
        alive[newly] = False
        self._live_count -= len(newly)
        self._live_tokens -= float(self._lengths.view[newly].sum())
        if len(newly):
            self._changed()

    def _blocks(self) -> list[_Postings]:
        if self._pending and self._delta is None:
            if self._pending_nnz * 4 > max(self._main.nnz, 200_000):  # merge into the main block
                self._main = _joined([self._main.triples(), *self._pending], len(self.vocab))
                self._pending, self._pending_nnz = [], 0
            else:
                self._delta = _joined(self._pending, len(self.vocab))
        return [self._main] if not self._pending else [self._main, self._delta]  # type: ignore[list-item]

    def _term(self, t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(live rows holding term ``t``, their BM25 contributions), cached until the next write."""
        hit = self._cache.get(t)
        if hit is not None:
            return hit
        parts = [b.term(t) for b in self._blocks()]
        rows = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        tfs = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if self._live_count < self._seqs.n:  # some rows are deleted
            keep = self._alive.view[rows]
            rows, tfs = rows[keep], tfs[keep]
        if self._norm is None:
            lengths = self._lengths.view.astype(np.float64)
            self._norm = K1 * (1 - B + B * lengths / (self._live_tokens / n))
        df = len(rows)
        idf = max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6) if df else 0.0
        contrib = (idf * tfs * (K1 + 1) / (tfs + self._norm[rows])).astype(np.float32)  # bm25s keeps float32 too
        if self._cached + df > _CACHE_POSTINGS:
            self._cache.clear()
            self._cached = 0
        self._cache[t] = (rows, contrib)
        self._cached += df
        return rows, contrib

    def _changed(self) -> None:
        """Live counts changed: idf, average length and the cached contributions are stale."""
        self._cache.clear()
        self._cached = 0
        self._norm = None

    def scores(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the live rows holding any of ``terms``, unordered; or (``ALL``, a score for every
        row, 0 where no term is held) when that is cheaper (several terms)."""
        n = self._live_count
        if n == 0:
            return _EMPTY, np.zeros(0)
        known = [t for t in (self.vocab.get(term) for term in terms) if t is not None]
        parts = [p for p in (self._term(t, n) for t in known) if len(p[0])]
        if not parts:
            return _EMPTY, np.zeros(0)
        if len(parts) == 1:
            return parts[0]
        total = np.zeros(self._seqs.n, np.float32)
        for rows, contrib in parts:
            total[rows] += contrib
        return _ALL, total  # dense: the caller picks the best without listing every touched row

    # -- the derived file ----------------------------------------------------------------------------
    def save(self, folder: Path, *, identity: str, generation: int) -> None:
        """Write ``bm25.npz`` atomically: the rows, their lengths, the terms and the postings, stamped with the
        collection's identity, compaction generation and last sequence number. Deleted flags are not kept:
        they are read from the database after a load.

        Raises:
            OSError: the folder cannot be written (callers warn; the rows are safe in SQLite).
        """
        if self._pending:  # one block on disk
            self._main = _joined([self._main.triples(), *self._pending], len(self.vocab))
            self._pending, self._pending_nnz, self._delta = [], 0, None
        stamp = {"format": FORMAT, "identity": identity, "generation": generation, "last_seq": self.last_seq,
                 "rows": self._seqs.n, "terms": len(self.vocab)}
        tmp = folder / f".{FILE}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, stamp=np.array(json.dumps(stamp)), seqs=self._seqs.view, lengths=self._lengths.view,
                         terms=np.array(list(self.vocab), dtype=str), indptr=self._main.indptr,
                         rows=self._main.rows, tfs=self._main.tfs)
            _fsync(tmp)
            os.replace(tmp, folder / FILE)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(folder)

    @classmethod
    def load(cls, folder: Path, *, identity: str, generation: int) -> Bm25Index:
        """The saved matrix, if it is this collection's and of this compaction generation.

        Raises:
            IndexNotSavedError: there is no file, or it predates the last compaction (both normal).
            DamagedIndexError: the file is unreadable, damaged or another collection's.
        """
        path = folder / FILE
        if not path.is_file():
            raise IndexNotSavedError("no BM25 matrix file")
        try:
            with np.load(path, allow_pickle=False) as z:
                stamp = json.loads(str(z["stamp"]))
                if stamp.get("format") != FORMAT or stamp.get("identity") != identity:
                    raise DamagedIndexError("the BM25 matrix file belongs to another collection or format")
                if stamp.get("generation") != generation:
                    raise IndexNotSavedError("the BM25 matrix file predates the last compaction")
                arrays = {k: z[k] for k in ("seqs", "lengths", "terms", "indptr", "rows", "tfs")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DamagedIndexError(f"the BM25 matrix file is unreadable ({exc})") from exc
        seqs, lengths, terms, indptr = arrays["seqs"], arrays["lengths"], arrays["terms"], arrays["indptr"]
        n = len(seqs)
        nnz = len(arrays["rows"])
        if (n != stamp.get("rows") or len(lengths) != n or len(terms) != stamp.get("terms")
                or len(indptr) != len(terms) + 1 or int(indptr[-1]) != nnz or len(arrays["tfs"]) != nnz
                or (n and (np.any(np.diff(seqs) <= 0) or seqs[-1] > int(stamp["last_seq"])))
                or (len(arrays["rows"]) and int(arrays["rows"].max()) >= n)):
            raise DamagedIndexError("the BM25 matrix file is inconsistent")
        index = cls()
        index.vocab = {str(t): i for i, t in enumerate(terms.tolist())}
        index._seqs.extend(seqs)
        index._lengths.extend(lengths)
        index._alive.extend(np.ones(n, np.bool_))
        index._live_count, index._live_tokens = n, float(lengths.astype(np.float64).sum())
        index._main = _Postings.saved(indptr, arrays["rows"], arrays["tfs"])
        index.last_seq = int(stamp["last_seq"])
        index.dead_seen = -1  # read the deleted flags from the database before the first search
        return index

    def seqs(self, rows: np.ndarray) -> np.ndarray:
        return self._seqs.view if rows is _ALL else self._seqs.view[rows]
