"""The :class:`Collection` contract, shared by every backend, and the functions that open stores.

A store is a folder (the embedded SQLite backend, :mod:`embedsmith.store.sqlite`) or a PostgreSQL DSN
``postgresql://user@host:port/db`` (pgvector, :mod:`embedsmith.store.pgvector`). Everything a user can
observe (argument checks and their messages, how records are split, search modes, fusion, grouping and
reranking) lives here once; a backend supplies storage and the two first-stage searches.
"""

from __future__ import annotations

import abc
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, SettingsMismatchError
from ..quantization import Int8Calibration
from ..search import RRF_K, best_per_group, reciprocal_rank_fusion, weighted_fusion
from ..types import Encoder, Hits, Metric, Precision, parse_enum
from .filters import Where

if TYPE_CHECKING:
    from ..rerankers import Reranker

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOSSLESS_BACKENDS = {"onnx", "torch"}
_PG_SCHEMES = ("postgresql://", "postgres://")

# A first-stage hit: (score, id, text, metadata as JSON text). Higher scores are better.
Ranked = tuple[float, str, Any, str]
# One exported batch: ids, texts, index_texts (None where the text itself is indexed), metadata JSON, vectors.
Batch = tuple[list[str], list[str | None], list[str | None], list[str], np.ndarray]


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


def is_postgres(store: str | os.PathLike[str] | None) -> bool:
    """Whether ``store`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a folder."""
    return isinstance(store, str) and store.lower().startswith(_PG_SCHEMES)


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


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def new_settings(
    name: str, enc: Encoder | None, metric: Metric, precision: Precision, dims: int | None, dim: int | None,
    calibration: Int8Calibration | None, hnsw_m: int, ef_construction: int,
) -> CollectionSettings:
    """Check the creation arguments of a new collection and fix its settings."""
    if enc is None and dim is None:
        raise InvalidInputError(f"a new collection needs an encoder, or dim= for vectors only ({name!r})")
    full = enc.dim if enc is not None else positive_int(dim, "dim")
    if enc is not None and dim is not None and dim != enc.dim:
        raise InvalidInputError(f"dim={dim} does not match encoder {enc.name!r} dimension {enc.dim}")
    index_dims = full if dims is None else positive_int(dims, "dims")
    if index_dims > full:
        raise InvalidInputError(f"dims={index_dims} is larger than the vectors' dimension {full}")
    if precision is Precision.BINARY and index_dims % 8:
        raise InvalidInputError(f"binary precision needs dims divisible by 8, got {index_dims}")
    if calibration is not None and calibration.low.shape[0] < index_dims:
        raise InvalidInputError(f"calibration covers {calibration.low.shape[0]} dimensions, index has {index_dims}")
    if precision is Precision.INT8 and calibration is None:
        calibration = Int8Calibration.default(index_dims)
    return CollectionSettings(
        name=name, model=enc.name if enc is not None else None, fingerprint=enc.fingerprint if enc else None,
        prompts=dict(getattr(enc, "prompts", {}) or {}), dim=full, dims=index_dims, metric=metric,
        precision=precision, calibration=calibration, hnsw_m=positive_int(hnsw_m, "hnsw_m"),
        ef_construction=positive_int(ef_construction, "ef_construction"),
    )


def check_requested(settings: CollectionSettings, metric: Metric | None, precision: Precision | None,
                    dims: int | None, dim: int | None) -> None:
    """Refuse to open an existing collection with settings other than those it records (both values named)."""
    given = {"metric": metric.value if metric else None, "precision": precision.value if precision else None,
             "dims": dims, "dim": dim}
    stored = {"metric": settings.metric.value, "precision": settings.precision.value, "dims": settings.dims,
              "dim": settings.dim}
    for key, value in given.items():
        if value is not None and value != stored[key]:
            raise SettingsMismatchError(
                f"collection {settings.name!r} was created with {key}={stored[key]!r}; opened with {key}={value!r}"
            )


def check_encoder(s: CollectionSettings, enc: Encoder) -> None:
    """Refuse an encoder whose weights or dimension differ from what the collection was built with."""
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


class Collection(abc.ABC):
    """A named, persistent set of (id, text, metadata, vector) records with exact and HNSW search.

    Open one with :func:`open_collection`. Use it as a context manager, or call :meth:`close`. Every
    public write is one transaction: all of it is stored, or none of it.
    """

    def __init__(self, settings: CollectionSettings, encoder: Encoder | None, *, exact_below: int,
                 ef_search: int) -> None:
        self.settings = settings
        self._encoder = encoder
        self._lock = threading.RLock()
        self.exact_below = exact_below
        self.ef_search = ef_search
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None

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
        check_encoder(self.settings, enc)

    # -- what a backend provides ------------------------------------------------------------------------
    @abc.abstractmethod
    def _compile_where(self, where: Where | None) -> Any:
        """Check a filter and translate it for this backend (an opaque value handed back to the methods below)."""

    @abc.abstractmethod
    def _reject_existing(self, ids: list[str]) -> None:
        """Raise InvalidInputError naming live ids among ``ids``."""

    @abc.abstractmethod
    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: Any = None, index_texts: Sequence[str | None] | None = None,
    ) -> list[str]:
        """In one transaction: delete ``delete_where`` matches (and, with ``replace``, live rows with these ids),
        then add the rows. ``vectors`` are checked float32 [n, dim]; ``meta`` JSON objects as text."""

    @abc.abstractmethod
    def _delete(self, ids: list[str] | None, flt: Any) -> int:
        """Delete live rows by id or by compiled filter, in one transaction; return how many."""

    @abc.abstractmethod
    def _get(self, ids: list[str] | None, flt: Any, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        """Live rows (id, text, metadata JSON[, float32 vector]); by filter in write order."""

    @abc.abstractmethod
    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        """Distinct tuples of top-level metadata values over live rows (absent fields as None)."""

    @abc.abstractmethod
    def _dense(self, q: np.ndarray, k: int, flt: Any, *, ef: int, exact: bool,
               rescore: int | None) -> list[Ranked]:
        """Top ``k`` live rows passing ``flt`` by vector similarity to the checked query vector ``q``."""

    @abc.abstractmethod
    def _bm25(self, query: str, n: int, flt: Any, *, reader: bool = False) -> list[Ranked]:
        """Top ``n`` live rows passing ``flt`` by BM25 (higher is better), ties by id. ``reader``: called from
        the hybrid worker thread, concurrently with :meth:`_dense`."""

    @abc.abstractmethod
    def _export(self, batch: int) -> Iterator[Batch]:
        """Live rows in write order, ``batch`` at a time."""

    @abc.abstractmethod
    def count(self) -> int:
        """Live (not deleted) records, including writes by other processes."""

    @abc.abstractmethod
    def compact(self, *, reindex: bool = False) -> dict[str, int]:
        """Drop deleted rows and reclaim space; returns dropped, bytes_before, bytes_after."""

    @abc.abstractmethod
    def disk_bytes(self) -> int:
        """Bytes the collection takes on disk."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Settings, count, size on disk, where it is stored and how many vectors its ANN index holds."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Save what is kept in memory and release the backend's connections (called once, under the lock)."""

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
            if "\x00" in x:
                raise InvalidInputError(f"ids[{i}] contains a NUL character: {x!r}")
        if len(set(out)) != n:
            dup = next(x for x in out if out.count(x) > 1)
            raise InvalidInputError(f"id {dup!r} appears more than once in this call")
        return out

    @staticmethod
    def _check_id_list(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            raise InvalidInputError("ids must be a list of strings, not a single string")
        return list(ids)

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

    def _embed(self, texts: list[str], index_texts: list[str] | None, batch_size: int | None,
               show_progress: bool) -> np.ndarray:
        from ..encoders.base import check_texts

        vectors = self.encoder.encode(check_texts(index_texts) if index_texts else texts, kind="document",
                                      batch_size=batch_size, show_progress=show_progress)
        return self._check_vectors(vectors, len(texts))

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
        return self._insert(id_list, t, meta, self._embed(t, e, batch_size, show_progress), replace=False,
                            index_texts=e)

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
        """Like :meth:`add`, but an existing id is replaced (old row deleted, in the same transaction)."""
        from ..encoders.base import check_texts

        t, i, m, e = self._split_records(texts, ids, metadata)
        t = check_texts(t)
        if i is None:
            raise InvalidInputError("upsert needs ids")
        id_list = self._check_ids(i, len(t))
        meta = self._check_metadata(m, len(t))
        return self._insert(id_list, t, meta, self._embed(t, e, batch_size, show_progress), replace=True,
                            index_texts=e)

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

        flt = self._compile_where(where)
        if not records:
            self._delete(None, flt)
            return []
        t, i, m, e = self._split_records(records, None, None)
        t = check_texts(t)
        id_list = self._check_ids(i, len(t))
        meta = self._check_metadata(m, len(t))
        return self._insert(id_list, t, meta, self._embed(t, e, batch_size, show_progress), replace=True,
                            delete_where=flt, index_texts=e)

    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        """Delete records by id or by filter. Returns how many were deleted."""
        if (ids is None) == (where is None):
            raise InvalidInputError("delete needs exactly one of ids= or where=")
        if ids is not None:
            return self._delete(self._check_id_list(ids), None)
        return self._delete(None, self._compile_where(where))

    # -- reads ----------------------------------------------------------------------------------------
    def get(
        self, ids: Sequence[str] | None = None, *, where: Where | None = None, limit: int | None = None,
        include_vectors: bool = False,
    ) -> list[dict[str, Any]]:
        """Records by id (in the order asked; absent ids left out) or by filter (in write order)."""
        if (ids is None) == (where is None):
            raise InvalidInputError("get needs exactly one of ids= or where=")
        lim = positive_int(limit, "limit") if limit is not None else None

        def record(row: tuple[Any, ...]) -> dict[str, Any]:
            rec: dict[str, Any] = {"id": row[0], "text": row[1], "metadata": json.loads(row[2])}
            if include_vectors:
                rec["vector"] = np.array(row[3], dtype=np.float32)
            return rec

        if ids is None:
            return [record(r) for r in self._get(None, self._compile_where(where), lim, include_vectors)]
        wanted = self._check_id_list(ids)
        found = {r[0]: record(r) for r in self._get(wanted, None, None, include_vectors)}
        return [found[i] for i in wanted if i in found]

    def distinct(self, *fields: str) -> set[tuple[Any, ...]]:
        """Distinct tuples of metadata values over live records (e.g. ``distinct("source", "doc_hash")``)."""
        if not fields:
            raise InvalidInputError("distinct needs at least one metadata field")
        for f in fields:
            if not isinstance(f, str) or not f:
                raise InvalidInputError(f"metadata field names must be non-empty strings, got {f!r}")
        return self._distinct(tuple(fields))

    def iter_records(self, *, batch: int = 1000) -> Iterable[list[dict[str, Any]]]:
        """Live records in write order, in lists of ``batch``, with float32 vectors."""
        for ids, texts, _, metas, vectors in self._export(positive_int(batch, "batch")):
            yield [{"id": i, "text": t, "metadata": json.loads(m), "vector": v}
                   for i, t, m, v in zip(ids, texts, metas, vectors, strict=True)]

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
            mode: 'dense' (vectors), 'bm25' (Okapi BM25, needs texts) or 'hybrid' (both, fused).
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
        k = positive_int(k, "k")
        if mode not in ("dense", "bm25", "hybrid"):
            raise InvalidInputError(f"unknown search mode {mode!r}; expected dense, bm25 or hybrid")
        if fusion not in ("rrf", "weighted"):
            raise InvalidInputError(f"unknown fusion {fusion!r}; expected rrf or weighted")
        if candidates is not None:
            candidates = positive_int(candidates, "candidates")
        if rescore is not None:
            rescore = positive_int(rescore, "rescore")
        ef = positive_int(ef, "ef") if ef is not None else self.ef_search
        if mode != "dense" and not isinstance(query, str):
            raise InvalidInputError(f"{mode} search needs a text query, not a vector")
        if rerank is not None and not isinstance(query, str):
            raise InvalidInputError("reranking needs a text query, not a vector")
        if isinstance(query, str) and not query.strip():
            raise InvalidInputError("query is empty")
        flt = self._compile_where(where)
        first = (candidates or 100) if rerank is not None else k
        if group_by is not None:
            first *= 5  # room for several chunks of one document
        ranked: list[Ranked]
        if mode == "dense":
            ranked = self._dense(self._query_vector(query), first, flt, ef=ef, exact=exact, rescore=rescore)
        elif mode == "bm25":
            ranked = self._bm25(str(query), first, flt)
        else:
            pool = max(first, candidates or 0, 100)  # each list contributes its top 100 (or more) to the fusion
            # bm25 runs in a worker thread (on its own connection) while the query is embedded and the
            # vectors searched: the database, onnxruntime and faiss all release the GIL, so hybrid costs
            # max(), not sum.
            pending = self._bm25_worker().submit(self._bm25, str(query), pool, flt, reader=True)
            try:
                dense = self._dense(self._query_vector(query), pool, flt, ef=ef, exact=exact, rescore=rescore)
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
    def _hits(ranked: Sequence[Ranked]) -> Hits:
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

    # -- life cycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Save what the backend keeps in memory and release its connections."""
        with self._lock:
            if self._closed:
                return
            try:
                self._close()
            finally:
                self._closed = True
                if self._executor is not None:
                    self._executor.shutdown(wait=True)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        return f"{type(self).__name__}({s.name!r}, model={s.model!r}, dim={s.dim}, metric={s.metric.value}, " \
               f"precision={s.precision.value})"


def _resolve_encoder(encoder: Encoder | str | os.PathLike[str] | None) -> Encoder | None:
    if isinstance(encoder, (str, os.PathLike)):
        from ..encoders import load_encoder

        return load_encoder(encoder)
    return encoder


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
    pool_size: int = 4,
) -> Collection:
    """Create or open a collection.

    Args:
        name: letters, digits, ``_``, ``.``, ``-`` (up to 64).
        store: the folder holding collections (default :func:`default_store`), or a PostgreSQL DSN
            ``postgresql://user[:password]@host:port/db`` (with pgvector; ``?schema=NAME`` picks the schema,
            default ``embedsmith``).
        encoder: an encoder, or an alias/folder to load. For an existing collection, None means the
            model it records (loaded on first text operation).
        metric: cosine (default) | dot | l2 | manhattan.
        precision: float32 (default) | float16 | int8 | binary: what the ANN index stores. Full float32
            vectors stay in the database and rescore the shortlist. PostgreSQL has no int8 index.
        dims: index only the first ``dims`` dimensions (Matryoshka funnel); all are used to rescore.
        dim: vector dimension of a collection without an encoder (vectors only).
        calibration: int8 ranges (default: :meth:`Int8Calibration.default`), fixed at creation.
        create: False to fail when the collection does not exist.
        hnsw_m, ef_construction, ef_search: HNSW parameters.
        exact_below: below this many records, search is exact (brute force).
        lock_timeout: seconds a writer waits for another writer's lock.
        save_every, save_interval_s: (embedded store) save the ANN index after this many unsaved rows or seconds.
        pool_size: (PostgreSQL) connections in the collection's pool.

    Raises:
        SettingsMismatchError: an existing collection records other settings (both values named).
        StoreError: the store cannot be created, reached or written, or has a newer format.
        InvalidInputError: a bad name or setting.
    """
    check_name(name)
    enc = _resolve_encoder(encoder)
    m = parse_enum(Metric, metric, "metric") if metric is not None else None
    p = parse_enum(Precision, precision, "precision") if precision is not None else None
    if is_postgres(store):
        from .pgvector import open_pg_collection

        return open_pg_collection(name, str(store), enc, m, p, dims, dim, calibration, create=create, hnsw_m=hnsw_m,
                                  ef_construction=ef_construction, ef_search=ef_search, exact_below=exact_below,
                                  lock_timeout=lock_timeout, pool_size=pool_size)
    from .sqlite import open_sqlite_collection

    root = Path(store).expanduser() if store is not None else default_store()
    return open_sqlite_collection(name, root, enc, m, p, dims, dim, calibration, create=create, hnsw_m=hnsw_m,
                                  ef_construction=ef_construction, ef_search=ef_search, exact_below=exact_below,
                                  lock_timeout=lock_timeout, save_every=save_every, save_interval_s=save_interval_s)


def create_like(settings: CollectionSettings, store: str | os.PathLike[str] | None) -> Collection:
    """Create an empty collection with exactly ``settings`` (same model fingerprint, metric, precision, ...)."""
    check_name(settings.name)
    if is_postgres(store):
        from .pgvector import create_pg_collection

        return create_pg_collection(str(store), settings)
    from .sqlite import create_sqlite_collection

    root = Path(store).expanduser() if store is not None else default_store()
    return create_sqlite_collection(root, settings)


def migrate_collection(
    name: str,
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str] | None,
    *,
    target_name: str | None = None,
    batch: int = 2000,
    sample: int = 200,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Copy a collection to another store (e.g. SQLite -> PostgreSQL) without re-embedding.

    The copy gets the same settings (model fingerprint, prompts, metric, precision, dims, HNSW parameters),
    ids, texts, index texts, metadata and float32 vectors, in write order. Afterwards the counts are compared
    and ``sample`` records, spread over the collection, are read back from both sides and compared (vectors
    bit for bit). On any failure the half-made copy is deleted.

    Returns:
        ``{"name", "target_name", "count", "checked"}``.

    Raises:
        StoreError: the source is missing, the target already exists, or the copy does not match.
    """
    from ..errors import StoreError

    dest = check_name(target_name or name)
    batch = positive_int(batch, "batch")
    with open_collection(name, store=source, create=False) as src:
        settings = src.settings
        if dest != name:
            from dataclasses import replace

            settings = replace(settings, name=dest)
        dst = create_like(settings, target)
        try:
            with dst:
                from tqdm.auto import tqdm

                with tqdm(total=src.count(), desc=f"copying {name}", unit="rec", disable=not show_progress) as bar:
                    for ids, texts, index_texts, metas, vectors in src._export(batch):
                        dst._insert(ids, texts, metas, vectors, replace=False, index_texts=index_texts)
                        bar.update(len(ids))
                n_src, n_dst = src.count(), dst.count()
                if n_src != n_dst:
                    raise StoreError(f"copied {n_dst} records of {name!r}, the source has {n_src}")
                all_ids = [i for ids, *_ in src._export(10_000) for i in ids]
                step = max(1, len(all_ids) // max(1, sample))
                picked = all_ids[::step][:sample]
                a = src.get(picked, include_vectors=True)
                b = dst.get(picked, include_vectors=True)
                for ra, rb in zip(a, b, strict=False):
                    same = (ra["id"] == rb["id"] and ra["text"] == rb["text"] and ra["metadata"] == rb["metadata"]
                            and np.array_equal(ra["vector"], rb["vector"]))
                    if not same:
                        raise StoreError(f"record {ra['id']!r} differs after copying {name!r}")
                if len(a) != len(b):
                    raise StoreError(f"{len(a) - len(b)} sampled records of {name!r} are missing from the copy")
        except BaseException:
            delete_collection(dest, store=target)
            raise
    return {"name": name, "target_name": dest, "count": n_dst, "checked": len(a)}


def list_collections(store: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the collections in a store."""
    if is_postgres(store):
        from .pgvector import list_pg_collections

        return list_pg_collections(str(store))
    root = Path(store).expanduser() if store is not None else default_store()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "collection.sqlite").is_file())


def delete_collection(name: str, *, store: str | os.PathLike[str] | None = None) -> None:
    """Remove a collection and its data."""
    if is_postgres(store):
        from .pgvector import delete_pg_collection

        delete_pg_collection(check_name(name), str(store))
        return
    import shutil

    from ..errors import StoreError

    root = Path(store).expanduser() if store is not None else default_store()
    folder = root / check_name(name)
    if not (folder / "collection.sqlite").is_file():
        raise StoreError(f"no collection {name!r} in {str(root)!r}")
    shutil.rmtree(folder)


__all__ = ["Collection", "CollectionSettings", "create_like", "default_store", "delete_collection",
           "is_postgres", "list_collections", "migrate_collection", "open_collection"]
