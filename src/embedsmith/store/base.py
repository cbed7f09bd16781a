"""The :class:`Collection` contract shared by every backend, and the :class:`Store` a backend provides.

Everything a user can observe (argument checks and their messages, how records are split, the dense search
plan with its rescore factor and exact fallback, the open sequence) lives here once; a backend supplies
storage through the hooks marked abstract, and translates its own database errors into
:mod:`embedsmith.errors` in :meth:`Collection._errors`. This module imports no backend.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from ..errors import CollectionExistsError, CollectionNotFoundError, InvalidInputError, StoreError
from ..quantization import Int8Calibration
from ..search import RRF_K
from ..types import Encoder, Hits, Metric, Precision
from .filters import CompiledFilter, Where
from .settings import (
    CollectionSettings,
    OpenOptions,
    check_encoder,
    check_requested,
    late_request,
    new_settings,
    positive_int,
)
from .validate import (
    check_id_list,
    check_ids,
    check_metadata,
    check_metadata_key,
    check_optional_texts,
    check_texts,
    check_vectors,
)

if TYPE_CHECKING:
    from ..context import Context
    from ..rerankers import Reranker
    from ..rerankers.late_interaction import TokenCodec


class Candidate(NamedTuple):
    """One first-stage hit handed between search stages. Higher scores are better. (A NamedTuple: search builds
    one per shortlisted row, and tuples are the cheapest typed value Python makes.)"""

    score: float
    id: str
    text: str | None
    metadata: dict[str, Any]

    def rescored(self, score: float) -> Candidate:
        return self._replace(score=score)


def _index_field(field: Any, what: str) -> str:
    """A metadata field that filters can name (a non-empty key, not an operator)."""
    if not isinstance(field, str) or not field or field.startswith("$"):
        raise InvalidInputError(f"{what}: {field!r} is not a metadata field name (a non-empty string, "
                                "not starting with '$')")
    return check_metadata_key(field, what)


def _rank(c: Candidate) -> tuple[float, str]:
    return -c.score, c.id


def best_first(cands: Iterable[Candidate]) -> list[Candidate]:
    """Best score first, ties broken by id."""
    return sorted(cands, key=_rank)


def same_codec(a: TokenCodec, b: TokenCodec) -> bool:
    """Whether two token codecs encode alike (precision, dims, and the same fitted PCA if any)."""
    if (a.precision, a.dims, a.components is None) != (b.precision, b.dims, b.components is None):
        return False
    if a.components is None or b.components is None or a.mean is None or b.mean is None:
        return a.components is None and b.components is None
    return bool(np.array_equal(a.components, b.components) and np.array_equal(a.mean, b.mean))


class RecordBatch(NamedTuple):
    """Live records in write order, as :meth:`Collection.export_records` yields and ``import_records`` takes."""

    ids: list[str]
    texts: list[str | None]
    index_texts: list[str | None]  # what the encoder and bm25 read, where it differs from the text
    metadata: list[dict[str, Any]]
    vectors: np.ndarray  # float32 [n, dim]
    #: per record its stored token vectors (token count, the codec's bytes), from a collection that stores them
    tokens: list[tuple[int, bytes] | None] | None = None
    #: the codec of ``tokens`` (``TokenCodec.to_dict()``, PCA included)
    token_codec: dict[str, Any] | None = None


@dataclass
class VerifyReport:
    """What :meth:`Collection.verify` found: ``ok`` when ``problems`` is empty; ``checks`` holds the figures."""

    name: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.ok = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "problems": list(self.problems), "checks": dict(self.checks)}


F = TypeVar("F", bound=Callable[..., Any])


def translated(fn: F) -> F:
    """Run a public method inside the backend's error translation (sqlite3 / psycopg errors -> ours)."""

    @functools.wraps(fn)
    def wrapper(self: Collection, *args: Any, **kwargs: Any) -> Any:
        with self._errors():
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Collection(abc.ABC):
    """A named, persistent set of (id, text, metadata, vector) records with exact and HNSW search.

    Open one with :func:`~embedsmith.store.open_collection`. Use it as a context manager, or call
    :meth:`close`. Every public write is one transaction: all of it is stored, or none of it. A handle whose
    collection was deleted or replaced by another process raises
    :class:`~embedsmith.errors.CollectionNotFoundError` on its next call.
    """

    def __init__(self, settings: CollectionSettings, encoder: Encoder | None, options: OpenOptions) -> None:
        self.settings = settings
        self._encoder = encoder
        self._options = options
        self._lock = threading.RLock()
        self.exact_below = options.exact_below
        self.ef_search = options.ef_search
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._calibration_read: tuple[float, Any] | None = None  # (when, the calibration note) for searches

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

    @property
    def late_interaction(self) -> TokenCodec | None:
        """The :class:`~embedsmith.rerankers.late_interaction.TokenCodec` of the token vectors stored with the
        records (``late_interaction=...`` at creation), or None (late interaction then computes them per search).
        A PCA codec is unfitted until the first write."""
        if self.settings.late is None:
            return None
        return self._token_codec()

    def _token_codec(self) -> TokenCodec:
        """The collection's codec, with its PCA once fitted (a backend that stores token vectors overrides)."""
        from ..rerankers.late_interaction import TokenCodec

        return TokenCodec.from_dict(self.settings.late or {})

    def _late_tokens(self, ids: list[str], texts: list[str]) -> tuple[Any, list[np.ndarray]]:
        """The codec and, per id, its stored token vectors decoded (float32 [tokens, codec dims]); a record
        without stored tokens gets them computed from its text, through the codec."""
        from ..errors import NoTokenVectorsError

        raise NoTokenVectorsError(f"collection {self.name!r} stores no token vectors")

    def _adopt_codec(self, codec: TokenCodec) -> None:
        """Take ``codec`` (with its fitted PCA) as this collection's token codec before its first write."""
        raise StoreError(f"collection {self.name!r} cannot take stored token vectors")

    def _document_tokens(self, texts: Sequence[str | None], ids: Sequence[str]) -> list[np.ndarray]:
        """Unit token vectors of the texts the encoder reads, for a collection that stores them (every text is
        needed: a record without one cannot have token vectors)."""
        missing = [i for i, t in zip(ids, texts, strict=True) if not t]
        if missing:
            raise InvalidInputError(
                f"collection {self.name!r} stores token vectors for late interaction, computed from each record's "
                f"text; {len(missing)} record(s) have none: {', '.join(repr(x) for x in missing[:5])}")
        enc: Any = self.encoder  # token vectors are BaseEncoder's (NoTokenVectorsError where a model has none)
        return list(enc.token_vectors([str(t) for t in texts], kind="document"))

    def _check_encoder(self, enc: Encoder) -> None:
        check_encoder(self.settings, enc)

    # -- what a backend provides ------------------------------------------------------------------------
    @abc.abstractmethod
    def _errors(self) -> AbstractContextManager[None]:
        """Translate this backend's database errors into :mod:`embedsmith.errors` (the only place that does)."""

    @abc.abstractmethod
    def _compile_where(self, where: Where | None) -> CompiledFilter:
        """Check a filter and compile it for this backend."""

    @abc.abstractmethod
    def _live_ids(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` that are live records."""

    @abc.abstractmethod
    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: CompiledFilter | None = None, index_texts: Sequence[str | None] | None = None,
        tokens: Sequence[np.ndarray] | None = None, token_blobs: Sequence[tuple[int, bytes] | None] | None = None,
    ) -> None:
        """In one transaction: delete ``delete_where`` matches (and, with ``replace``, live rows with these ids),
        then add the rows. ``vectors`` are checked float32 [n, dim]; ``meta`` checked JSON objects as text.
        In a collection that stores token vectors: per row its unit ``tokens`` [tokens, dim], encoded with the
        collection's codec (fitted first when it is not yet), or its already encoded ``token_blobs`` entry."""

    @abc.abstractmethod
    def _delete(self, ids: list[str] | None, flt: CompiledFilter | None) -> int:
        """Delete live rows by id or by filter, in one transaction; return how many."""

    @abc.abstractmethod
    def _get(self, ids: list[str] | None, flt: CompiledFilter | None, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        """Live rows (id, text, metadata dict[, float32 vector]); by filter in write order."""

    @abc.abstractmethod
    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        """Distinct tuples of top-level metadata values over live rows (absent fields as None)."""

    @abc.abstractmethod
    def _count_estimate(self) -> int:
        """Live records, possibly a moment old: it picks exact vs graph search, never what is found."""

    @abc.abstractmethod
    def _count(self, flt: CompiledFilter) -> int:
        """Live records passing ``flt``."""

    @abc.abstractmethod
    def _ann(self, q: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
             factor: int, light: bool = False) -> list[Candidate]:
        """Top ``k`` live rows passing ``flt`` from the vector index (brute force over it with ``exact``),
        ``factor`` times ``k`` fetched and rescored with the full vectors when the index holds approximate
        codes. Best first."""

    def _ann_many(self, qs: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
                  factor: int, light: bool = False) -> list[list[Candidate]]:
        """:meth:`_ann` for each query vector of ``qs`` [n, dim] (a backend may search them in one call)."""
        return [self._ann(q, k, flt, ef=ef, exact=exact, factor=factor, light=light) for q in qs]

    def _dense_ids(self, q: np.ndarray, k: int, ef: int) -> Hits | None:
        """Ids and scores of an unfiltered graph search, when the backend answers it without reading rows;
        None sends the search down the general path."""
        return None

    @abc.abstractmethod
    def _create_index(self, field: str) -> bool:
        """Index a metadata field for filters; False when it already was."""

    @abc.abstractmethod
    def _drop_index(self, field: str) -> bool:
        """Drop a field's index; False when there was none."""

    @abc.abstractmethod
    def _indexes(self) -> list[str]:
        """Metadata fields with an index, sorted."""

    @abc.abstractmethod
    def _scan(self, q: np.ndarray, k: int, flt: CompiledFilter) -> list[Candidate]:
        """Exact top ``k`` over every live row passing ``flt``, from the stored full vectors. Best first."""

    @abc.abstractmethod
    def _bm25(self, query: str, n: int, flt: CompiledFilter, *, reader: bool = False) -> list[Candidate]:
        """Top ``n`` live rows passing ``flt`` by BM25, best first. ``reader``: called from the hybrid worker
        thread, concurrently with the dense search."""

    @abc.abstractmethod
    def _export(self, batch: int) -> Iterator[RecordBatch]:
        """Live rows in write order, ``batch`` at a time, from one consistent snapshot."""

    @abc.abstractmethod
    def _count_live(self) -> int:
        """Live records, including writes by other processes."""

    @abc.abstractmethod
    def _compact(self, *, reindex: bool) -> dict[str, int]:
        """Drop deleted rows and reclaim space; returns dropped, bytes_before, bytes_after."""

    @abc.abstractmethod
    def _disk_bytes(self) -> int:
        """Bytes the collection takes on disk."""

    @abc.abstractmethod
    def _location(self) -> str:
        """Where the collection is stored, for people (no password)."""

    @abc.abstractmethod
    def _index_vectors(self) -> int:
        """Vectors the ANN index holds (deleted ones included until compaction)."""

    @abc.abstractmethod
    def _notes(self) -> dict[str, Any]:
        """The collection's notes (small JSON values kept beside its settings)."""

    @abc.abstractmethod
    def _set_notes(self, changes: dict[str, Any]) -> None:
        """Set notes in one transaction; a None value removes the note."""

    @abc.abstractmethod
    def _is_current(self) -> bool:
        """Whether the collection this handle opened still exists under its name (cheap: no row is read)."""

    @abc.abstractmethod
    def _verify(self, report: VerifyReport) -> None:
        """Check the database, the derived files against the rows, checksums and settings; add problems."""

    @abc.abstractmethod
    def _repair(self) -> dict[str, Any]:
        """Rebuild every derived structure from the rows."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Save what is kept in memory and release the backend's connections (called once, under the lock)."""

    # -- input ----------------------------------------------------------------------------------------
    def _check_vectors(self, vectors: Any, n: int | None = None) -> np.ndarray:
        return check_vectors(vectors, self.settings.dim, self.settings.metric, self.name, n)

    def _reject_existing(self, ids: list[str]) -> None:
        found = self._live_ids(ids)
        if found:
            order = {x: i for i, x in enumerate(ids)}
            found = sorted(found, key=order.__getitem__)
            shown = ", ".join(repr(x) for x in found[:5]) + (" ..." if len(found) > 5 else "")
            raise InvalidInputError(
                f"{len(found)} id(s) already in collection {self.name!r}: {shown}; use upsert to replace them"
            )

    @staticmethod
    def _split_records(
        texts: Sequence[str] | Sequence[Mapping[str, Any]],
        ids: Sequence[str] | None,
        metadata: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[list[str], list[str] | None, list[Mapping[str, Any]] | None, list[str] | None]:
        """Texts, ids, metadata and (from records' ``index_text``) what the encoder and bm25 read instead."""
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a list of strings, not a single string; wrap it: [text]")
        items: list[Any] = list(texts)
        if items and all(isinstance(r, Mapping) for r in items):
            if ids is not None or metadata is not None:
                raise InvalidInputError("pass ids and metadata inside the records, not beside them")
            recs: list[dict[str, Any]] = [dict(r) for r in items]
            for i, r in enumerate(recs):
                if "text" not in r:
                    raise InvalidInputError(f"records[{i}] has no 'text'")
            got_ids: list[Any] = [r.get("id") for r in recs]
            embed: list[str] | None = None
            if any("index_text" in r for r in recs):
                # What the encoder and bm25 read may differ from what is stored and shown (e.g. a chunk
                # with its document's title in front).
                embed = check_texts([r.get("index_text") or r["text"] for r in recs])
            return (
                [r["text"] for r in recs],
                None if all(x is None for x in got_ids) else got_ids,
                [r.get("metadata") or {} for r in recs],
                embed,
            )
        return (items, (list(ids) if ids is not None else None),
                (list(metadata) if metadata is not None else None), None)

    def _embed(self, texts: list[str], index_texts: list[str] | None, batch_size: int | None,
               show_progress: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Vectors [n, dim] of what the encoder reads and, in a collection that stores them, each text's unit
        token vectors [tokens, dim] from the same forward pass (not through the vector cache, which keeps
        pooled vectors only)."""
        if self.settings.late is not None:
            enc: Any = self.encoder  # token vectors are BaseEncoder's (NoTokenVectorsError where a model has none)
            vectors, tokens = enc.embed_tokens(index_texts or texts, kind="document", batch_size=batch_size,
                                               show_progress=show_progress)
            return self._check_vectors(vectors, len(texts)), tokens
        vectors = self.encoder.encode(index_texts or texts, kind="document", batch_size=batch_size,
                                      show_progress=show_progress)
        return self._check_vectors(vectors, len(texts)), None

    # -- writes ---------------------------------------------------------------------------------------
    @translated
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
        t, i, m, e = self._split_records(texts, ids, metadata)
        t = check_texts(t)
        id_list = check_ids(i, len(t))
        meta = check_metadata(m, len(t))
        self._reject_existing(id_list)
        vectors, tokens = self._embed(t, e, batch_size, show_progress)
        self._insert(id_list, t, meta, vectors, replace=False, index_texts=e, tokens=tokens)
        return id_list

    @translated
    def add_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Add pre-computed vectors [n, dim] (for users with their own encoder). Returns the ids.

        In a collection that stores token vectors (``late_interaction=...``), the vectors given are kept and the
        token vectors are computed from ``texts`` with the collection's encoder (one forward pass): every record
        then needs a text (:class:`InvalidInputError` otherwise, nothing written)."""
        v = self._check_vectors(vectors)
        n = v.shape[0]
        id_list = check_ids(ids, n)
        t = check_optional_texts(texts, n)
        meta = check_metadata(metadata, n)
        tokens = self._document_tokens(t, id_list) if self.settings.late is not None else None
        self._reject_existing(id_list)
        self._insert(id_list, t, meta, v, replace=False, tokens=tokens)
        return id_list

    @translated
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
        t, i, m, e = self._split_records(texts, ids, metadata)
        t = check_texts(t)
        if i is None:
            raise InvalidInputError("upsert needs ids")
        id_list = check_ids(i, len(t))
        meta = check_metadata(m, len(t))
        vectors, tokens = self._embed(t, e, batch_size, show_progress)
        self._insert(id_list, t, meta, vectors, replace=True, index_texts=e, tokens=tokens)
        return id_list

    @translated
    def upsert_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Like :meth:`add_vectors` (token vectors computed from ``texts`` in a late-interaction collection),
        replacing existing ids."""
        v = self._check_vectors(vectors)
        id_list = check_ids(ids, v.shape[0])
        t = check_optional_texts(texts, v.shape[0])
        meta = check_metadata(metadata, v.shape[0])
        tokens = self._document_tokens(t, id_list) if self.settings.late is not None else None
        self._insert(id_list, t, meta, v, replace=True, tokens=tokens)
        return id_list

    @translated
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
        return self._replace(where, records, lambda t, e: self._embed(t, e, batch_size, show_progress))

    @translated
    def replace_vectors(self, where: Where, records: Sequence[Mapping[str, Any]], vectors: np.ndarray) -> list[str]:
        """:meth:`replace` with pre-computed vectors [n, dim] (one per record, e.g. encoded on other machines):
        the records matching ``where`` are deleted and ``records`` added in one transaction. In a collection that
        stores token vectors, they are computed from the records' texts with its encoder (as :meth:`add_vectors`)."""

        def given(t: list[str], e: list[str] | None) -> tuple[np.ndarray, list[np.ndarray] | None]:
            v = self._check_vectors(vectors, len(t))
            read = e or t
            return v, (self._document_tokens(read, read) if self.settings.late is not None else None)

        return self._replace(where, records, given)

    def _replace(self, where: Where, records: Sequence[Mapping[str, Any]],
                 vectors_for: Callable[[list[str], list[str] | None], tuple[np.ndarray, list[np.ndarray] | None]]
                 ) -> list[str]:
        """The records matching ``where`` deleted and ``records`` (checked first) added with
        ``vectors_for(texts, index_texts)`` (vectors, and token vectors or None), in one transaction."""
        flt = self._compile_where(where)
        if not records:
            self._delete(None, flt)
            return []
        t, i, m, e = self._split_records(records, None, None)
        t = check_texts(t)
        id_list = check_ids(i, len(t))
        meta = check_metadata(m, len(t))
        vectors, tokens = vectors_for(t, e)
        self._insert(id_list, t, meta, vectors, replace=True, delete_where=flt, index_texts=e, tokens=tokens)
        return id_list

    @translated
    def delete(self, ids: Sequence[str] | None = None, *, where: Where | None = None) -> int:
        """Delete records by id or by filter. Returns how many were deleted."""
        if (ids is None) == (where is None):
            raise InvalidInputError("delete needs exactly one of ids= or where=")
        if ids is not None:
            return self._delete(check_id_list(ids), None)
        return self._delete(None, self._compile_where(where))

    @translated
    def import_records(self, batch: RecordBatch) -> list[str]:
        """Add exported records (vectors kept, nothing re-embedded) in one transaction. Returns the ids.

        In a collection that stores token vectors, the batch's stored token vectors are kept as they are (they
        must come from a collection with the same codec: :func:`~embedsmith.store.migrate_collection` and
        :func:`~embedsmith.store.restore_collection` see to it); records without them get them computed from
        their texts."""
        v = check_vectors(batch.vectors, self.settings.dim, self.settings.metric, self.name, normalize=False)
        n = v.shape[0]
        id_list = check_ids(batch.ids, n)
        texts = check_optional_texts(batch.texts, n)
        index_texts = check_optional_texts(batch.index_texts, n)
        meta = check_metadata(batch.metadata, n)
        read = [x if x is not None else t for x, t in zip(index_texts, texts, strict=True)]
        tokens: list[np.ndarray] | None = None
        blobs: list[tuple[int, bytes] | None] | None = None
        if self.settings.late is not None:
            from ..rerankers.late_interaction import TokenCodec

            mine = self._token_codec()
            theirs = TokenCodec.from_dict(batch.token_codec) \
                if batch.token_codec is not None and batch.tokens is not None else None
            if (theirs is not None and theirs.fitted and not mine.fitted
                    and (theirs.precision, theirs.dims) == (mine.precision, mine.dims)):
                self._adopt_codec(theirs)  # a copy of a collection whose PCA was fitted on its first write
                mine = theirs
            kept = theirs is not None and same_codec(mine, theirs)
            blobs = list(batch.tokens or []) if kept else [None] * n
            if len(blobs) != n:
                raise InvalidInputError(f"a record batch of {n} records carries {len(blobs)} token vector entries")
            todo = [i for i, b in enumerate(blobs) if b is None]
            computed = self._document_tokens([read[i] for i in todo], [id_list[i] for i in todo]) if todo else []
            tokens = [np.zeros((0, 0), np.float32)] * n
            for i, tv in zip(todo, computed, strict=True):
                tokens[i] = tv
        self._reject_existing(id_list)
        self._insert(id_list, texts, meta, v, replace=False, index_texts=read, tokens=tokens, token_blobs=blobs)
        return id_list

    # -- reads ----------------------------------------------------------------------------------------
    @translated
    def count(self) -> int:
        """Live (not deleted) records, including writes by other processes."""
        return self._count_live()

    @translated
    def get(
        self, ids: Sequence[str] | None = None, *, where: Where | None = None, limit: int | None = None,
        include_vectors: bool = False,
    ) -> list[dict[str, Any]]:
        """Records by id (in the order asked; absent ids left out) or by filter (in write order)."""
        if (ids is None) == (where is None):
            raise InvalidInputError("get needs exactly one of ids= or where=")
        lim = positive_int(limit, "limit") if limit is not None else None

        def record(row: tuple[Any, ...]) -> dict[str, Any]:
            rec: dict[str, Any] = {"id": row[0], "text": row[1], "metadata": row[2]}
            if include_vectors:
                rec["vector"] = np.array(row[3], dtype=np.float32)
            return rec

        if ids is None:
            return [record(r) for r in self._get(None, self._compile_where(where), lim, include_vectors)]
        wanted = check_id_list(ids)
        found = {r[0]: record(r) for r in self._get(wanted, None, None, include_vectors)}
        return [found[i] for i in wanted if i in found]

    @translated
    def distinct(self, *fields: str) -> set[tuple[Any, ...]]:
        """Distinct tuples of metadata values over live records (e.g. ``distinct("source", "doc_hash")``)."""
        if not fields:
            raise InvalidInputError("distinct needs at least one metadata field")
        for f in fields:
            if not isinstance(f, str) or not f:
                raise InvalidInputError(f"metadata field names must be non-empty strings, got {f!r}")
            check_metadata_key(f, "distinct")
        return self._distinct(tuple(fields))

    @translated
    def create_index(self, field: str) -> bool:
        """Index a metadata field, so that filters on it (equality, ``$in``, ranges) find their rows without
        reading the others: a 1%-selective filter on a million records is then scored exactly over the
        matching rows instead of widening a graph walk. Every process's searches use it at once.

        On SQLite it is an expression index on the JSON path filters use; on PostgreSQL a B-tree on
        ``metadata -> field`` (equality already has the GIN index). Building it reads every record once.

        Returns:
            True when created, False when the field was already indexed.
        """
        return self._create_index(_index_field(field, "create_index"))

    @translated
    def drop_index(self, field: str) -> bool:
        """Drop a metadata field's index (filters on it still work, by scanning). False when there was none."""
        return self._drop_index(_index_field(field, "drop_index"))

    @translated
    def indexes(self) -> list[str]:
        """Metadata fields with an index (:meth:`create_index`), sorted."""
        return self._indexes()

    def export_records(self, *, batch: int = 1000) -> Iterator[RecordBatch]:
        """Live records in write order, ``batch`` at a time, from one consistent snapshot of the collection."""
        size = positive_int(batch, "batch")
        it = self._export(size)
        while True:
            with self._errors():
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def iter_records(self, *, batch: int = 1000) -> Iterable[list[dict[str, Any]]]:
        """Live records in write order, in lists of ``batch``, with float32 vectors."""
        for b in self.export_records(batch=batch):
            yield [{"id": i, "text": t, "metadata": m, "vector": v}
                   for i, t, m, v in zip(b.ids, b.texts, b.metadata, b.vectors, strict=True)]

    def _query_vector(self, query: str | np.ndarray | Sequence[float]) -> np.ndarray:
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInputError("query is empty")
            q = self.encoder.encode([query], kind="query")[0]
        else:
            try:
                raw = np.asarray(query)
            except (ValueError, TypeError) as exc:
                raise InvalidInputError(f"query vector must be a list of numbers: {exc}") from None
            if raw.dtype.kind not in "fiu":
                raise InvalidInputError(f"query vector must be real numbers, got dtype {raw.dtype}")
            q = raw.astype(np.float32).reshape(-1)
            if q.shape[0] != self.settings.dim:
                raise InvalidInputError(
                    f"query has dimension {q.shape[0]}, collection {self.name!r} stores {self.settings.dim}"
                )
        square = float(q @ q)  # finite exactly when every component is (or the sum overflows: checked below)
        if not math.isfinite(square) and not np.isfinite(q).all():
            raise InvalidInputError("query vector contains NaN or infinity")
        if self.settings.metric is Metric.COSINE:
            if square == 0:
                raise InvalidInputError("query vector is all zeros (no cosine)")
            norm = math.sqrt(square) if math.isfinite(square) else float(np.linalg.norm(q.astype(np.float64)))
            q = q / np.float32(norm)
        return q if q.dtype == np.float32 else q.astype(np.float32)

    def _dense(self, q: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
               rescore: int | None, light: bool = False) -> list[Candidate]:
        """Top ``k`` by vector similarity: the index (graph, or brute force below ``exact_below``), rescored
        when it holds approximate codes, and an exact scan of the matching rows when the graph came up short.
        ``light``: ids and scores are enough (a backend may leave texts and metadata unread)."""
        return self._dense_many(q.reshape(1, -1), k, flt, ef=ef, exact=exact, rescore=rescore, light=light)[0]

    def _dense_many(self, qs: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
                    rescore: int | None, light: bool = False) -> list[list[Candidate]]:
        s = self.settings
        approximate = s.precision is not Precision.FLOAT32 or s.dims < s.dim
        factor = rescore or (10 if s.precision is Precision.BINARY else 4 if approximate else 1)
        use_exact = exact or self._count_estimate() <= self.exact_below
        found = self._ann_many(qs, k, flt, ef=ef, exact=use_exact, factor=factor, light=light)
        short = [i for i, hits in enumerate(found) if len(hits) < k]
        if short:  # the graph came up short: an exact scan where more rows match than it found
            matching = self._count(flt)
            for i in short:
                if matching > len(found[i]):
                    found[i] = self._scan(qs[i], k, flt)
        return found

    def _query_vectors(self, queries: Sequence[str | np.ndarray | Sequence[float]]) -> np.ndarray:
        """Checked query vectors [n, dim]: texts embedded in one encoder batch, vectors checked one by one."""
        texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
        embedded = dict(zip(texts, self.encoder.encode([str(queries[i]) for i in texts], kind="query"),
                            strict=True)) if texts else {}
        return np.stack([self._query_vector(embedded[i] if i in embedded else q) for i, q in enumerate(queries)])

    @translated
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
        include: Sequence[str] | None = None,
        diversity: float | None = None,
        dedup: bool | float | None = None,
        boost: Mapping[str, float] | None = None,
        decay: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        min_relevance: float | None = None,
        late_interaction: Any = False,
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
            include: what hits carry besides ids and scores: 'texts', 'metadata' (default both). Leaving them
                out lets a dense search skip reading them (as Chroma's ``include``); hits then hold None
                texts and empty metadata.
            diversity: in [0, 1]: maximal marginal relevance over the hits' vectors (lambda = 1 - diversity);
                0 keeps relevance order, 1 is most diverse. Hits then come in MMR's order.
            dedup: True (cosine 0.95) or a cosine threshold: overlapping chunks of one document merge into
                the better one (offsets and text widened), and near-copies of a better hit are dropped.
            boost: ``{field: weight}``: adds ``weight * value`` of numeric metadata to the relevance.
            decay: ``{"field", "origin", "scale", "decay"=0.5, "function"="exp"|"gauss"|"linear",
                "offset"=0}`` (or a list): multiplies the relevance by a decay in the distance of a numeric
                or ISO 8601 date field from ``origin`` ('now' allowed), as Qdrant's decay functions.
                With boost or decay, scores are the shaped relevance: the pool's scores as a share of the best,
                times the decays, plus the boosts (see :mod:`embedsmith.shaping`). Shaping runs after
                filters, the first stage, grouping and reranking, on a pool of max(4k, 50, candidates).
            min_relevance: drop hits whose calibrated P(relevant) is below this (needs :meth:`calibrate` for
                this mode first). Whenever a calibration for the mode is stored, hits carry ``relevance``
                (except an ids-and-scores search of a vector, which takes a straight path).
            late_interaction: hybrid only: True (or a :class:`~embedsmith.rerankers.LateInteraction`) orders
                the fused top ``candidates`` (100) by MaxSim and fuses that order with the dense and bm25
                lists by RRF.

        Returns:
            :class:`Hits`, best first, ties broken by id. Dense scores are higher-is-better (negated
            distances for l2 and manhattan). When k matching records exist, k hits are returned.
        """
        from .query import MAX_K, SearchRequest, run_search

        if (where is None and mode == "dense" and type(k) is int and 0 < k <= MAX_K and not exact
                and isinstance(include, (list, tuple)) and all(x in ("ids", "scores") for x in include)
                and rerank is None and group_by is None and rescore is None and isinstance(query, np.ndarray)
                and diversity is None and dedup is None and boost is None and decay is None
                and min_relevance is None
                and (ef is None or (type(ef) is int and ef > 0))):
            # The common call of an application (a vector, ids and scores, no filter) in a straight line;
            # anything it cannot answer exactly as the general path would (None) goes that way.
            found = self._dense_ids(self._query_vector(query), k, ef if ef is not None else self.ef_search)
            if found is not None:
                return found
        request = SearchRequest.checked(query, k, mode=mode, ef=ef if ef is not None else self.ef_search,
                                        exact=exact, rescore=rescore, fusion=fusion, alpha=alpha, rrf_k=rrf_k,
                                        candidates=candidates, rerank=rerank, group_by=group_by, include=include,
                                        diversity=diversity, dedup=dedup, boost=boost, decay=decay,
                                        late_interaction=late_interaction)
        floor = self._relevance_floor(min_relevance, boost, decay)
        calibrated = mode if request.late is None else "hybrid+maxsim"  # its own scores, its own calibration
        return self._with_relevance(run_search(self, request, self._compile_where(where)), calibrated, rerank, floor)

    @translated
    def search_many(
        self,
        queries: Sequence[str | np.ndarray | Sequence[float]] | np.ndarray,
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
        include: Sequence[str] | None = None,
        diversity: float | None = None,
        dedup: bool | float | None = None,
        boost: Mapping[str, float] | None = None,
        decay: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        min_relevance: float | None = None,
    ) -> list[Hits]:
        """:meth:`search` for each of ``queries`` (texts, vectors, or a [n, dim] array), with the same options.

        Dense queries are searched as one batch: texts embedded in one encoder call, and the batch handed to
        the index at once (faiss spreads it over its threads; PostgreSQL answers each on one connection).
        Other modes search one query after another.

        Returns:
            One :class:`Hits` per query, in order, each as :meth:`search` would return it.
        """
        from .query import MAX_QUERIES, SearchRequest, run_many

        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            items: list[Any] = list(queries)
        elif isinstance(queries, (list, tuple)):
            items = list(queries)
        else:
            raise InvalidInputError(f"queries must be a list of texts or vectors, or a 2-d array, got "
                                    f"{type(queries).__name__}")
        if not items:
            raise InvalidInputError("queries is empty")
        if len(items) > MAX_QUERIES:
            raise InvalidInputError(f"{len(items)} queries in one call; at most {MAX_QUERIES}")
        requests = [SearchRequest.checked(q, k, mode=mode, ef=ef if ef is not None else self.ef_search, exact=exact,
                                          rescore=rescore, fusion=fusion, alpha=alpha, rrf_k=rrf_k,
                                          candidates=candidates, rerank=rerank, group_by=group_by, include=include,
                                          diversity=diversity, dedup=dedup, boost=boost, decay=decay)
                    for q in items]
        floor = self._relevance_floor(min_relevance, boost, decay)
        return [self._with_relevance(h, mode, rerank, floor)
                for h in run_many(self, requests, self._compile_where(where))]

    def _relevance_floor(self, min_relevance: Any, boost: Any, decay: Any) -> float | None:
        from ..calibration import check_min_relevance

        floor = check_min_relevance(min_relevance)
        if floor is not None and (boost is not None or decay is not None):
            raise InvalidInputError("min_relevance reads calibrated first-stage (or reranked) scores; boost and decay "
                                    "change them: use one or the other")
        return floor

    def _with_relevance(self, hits: Hits, mode: str, rerank: Any, floor: float | None) -> Hits:
        """``hits`` with calibrated relevance, when this mode has a calibration; those below ``floor`` dropped."""
        from ..calibration import NOTE, from_note

        # The note is read at most once a second (a PostgreSQL round trip per search otherwise): a fit made
        # by another process shows within a second, one made through this handle at once (set_notes resets).
        now = time.monotonic()
        if self._calibration_read is None or now - self._calibration_read[0] > 1.0:
            self._calibration_read = (now, self._notes().get(NOTE))
        cal = from_note(self._calibration_read[1], self.settings.fingerprint, mode, rerank is not None)
        if cal is None:
            if floor is not None:
                raise InvalidInputError(f"min_relevance needs a calibration of {mode!r} search"
                                        f"{' with reranking' if rerank is not None else ''} for collection "
                                        f"{self.name!r}: run calibrate first (embedsmith calibrate -c {self.name})")
            return hits
        rel = [float(p) for p in cal(hits.scores)]
        keep = [i for i, p in enumerate(rel) if floor is None or p >= floor]

        def pick(xs: list[Any] | None) -> list[Any] | None:
            return None if xs is None else [xs[i] for i in keep]

        return Hits(pick(hits.ids) or [], pick(hits.scores) or [], pick(hits.texts) or [], pick(hits.metadata) or [],
                    first_stage_scores=pick(hits.first_stage_scores), rerank_logits=pick(hits.rerank_logits),
                    relevance=[rel[i] for i in keep])

    @translated
    def calibrate(self, *, queries: Mapping[str, str] | None = None,
                  qrels: Mapping[str, Mapping[str, int]] | None = None, mode: str = "dense", depth: int = 20,
                  rerank: Reranker | None = None, pseudo: int = 200, holdout: float = 0.0,
                  seed: int = 0) -> dict[str, Any]:
        """Fit and store a map from this mode's scores to P(relevant) (see :func:`embedsmith.calibration.calibrate`);
        later searches of the mode carry ``relevance`` and accept ``min_relevance``."""
        from ..calibration import calibrate

        return calibrate(self, queries=queries, qrels=qrels, mode=mode, depth=depth, rerank=rerank, pseudo=pseudo,
                         holdout=holdout, seed=seed)

    def context(self, query: str, *, budget_tokens: int = 2000, k: int | None = None, mode: str = "dense",
                where: Where | None = None, rerank: Reranker | None = None, tokenizer: Any = None,
                widen: bool = True, widen_above: float = 0.98, format: str = "markdown") -> Context:
        """The best passages for ``query`` within ``budget_tokens``: searched, widened with neighbouring chunks,
        merged by offsets, cited and packed (see :func:`embedsmith.context.pack_context`)."""
        from ..context import pack_context

        return pack_context(self, query, budget_tokens=budget_tokens, k=k, mode=mode, where=where, rerank=rerank,
                            tokenizer=tokenizer, widen=widen, widen_above=widen_above, format=format)

    def _bm25_worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedsmith-bm25-{self.name}")
        return self._executor

    # -- management -----------------------------------------------------------------------------------
    @translated
    def compact(self, *, reindex: bool = False) -> dict[str, int]:
        """Drop deleted rows, reclaim space and rebuild the ANN index; returns dropped, bytes_before, bytes_after."""
        return self._compact(reindex=reindex)

    @translated
    def disk_bytes(self) -> int:
        """Bytes the collection takes on disk."""
        return self._disk_bytes()

    @translated
    def info(self) -> dict[str, Any]:
        """Settings, count, size on disk, where it is stored and how many vectors its ANN index holds; under
        ``late_interaction``, what its stored token vectors take (``precision``, ``dims``, ``rows``, ``tokens``,
        ``bytes``, ``tokens_per_chunk``, ``bytes_per_chunk``), or None when it stores none."""
        s = self.settings
        return {
            "name": s.name, "count": self._count_live(), "model": s.model, "fingerprint": s.fingerprint,
            "prompts": s.prompts, "dim": s.dim, "dims": s.dims, "precision": s.precision.value,
            "metric": s.metric.value, "disk_bytes": self._disk_bytes(), "path": self._location(),
            "index_vectors": self._index_vectors(), "identity": s.identity, "notes": self._notes(),
            "late_interaction": self._late_stats() if s.late is not None else None,
        }

    def _late_stats(self) -> dict[str, Any]:
        """What the stored token vectors take: ``precision``, ``dims``, ``rows``, ``tokens``, ``bytes``,
        ``tokens_per_chunk``, ``bytes_per_chunk`` (a backend that stores them overrides)."""
        return {**(self.settings.late or {})}

    @translated
    def notes(self) -> dict[str, Any]:
        """Notes recorded with the collection, e.g. ``{"reembed_incomplete": "kb"}`` while a re-embedding into it
        has not finished."""
        return self._notes()

    @translated
    def set_notes(self, **changes: Any) -> None:
        """Record notes with the collection (JSON values; None removes one), in one transaction."""
        for key, value in changes.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"note {key!r} is not JSON-serialisable: {exc}") from None
        self._set_notes(changes)
        self._calibration_read = None

    def is_current(self) -> bool:
        """Whether this handle's collection still exists (False once another process deleted or replaced it, or
        the handle was closed): a cheap check for long-lived holders such as the server."""
        if self._closed:
            return False
        try:
            with self._errors():
                return self._is_current()
        except StoreError:
            return False

    def verify(self) -> VerifyReport:
        """Check the collection's integrity: the database, the derived index files against the rows, their
        checksums, and the settings. Problems are reported, never raised (a collection that cannot be read at
        all raises :class:`~embedsmith.errors.StoreError`)."""
        report = VerifyReport(self.name)
        with self._errors():
            self._verify(report)
        return report

    @translated
    def repair(self) -> dict[str, Any]:
        """Rebuild every derived structure (ANN index, BM25 index) from the rows; returns what was rebuilt."""
        return self._repair()

    # -- life cycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Save what the backend keeps in memory and release its connections."""
        with self._lock:
            if self._closed:
                return
            try:
                with self._errors():
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


class Store(abc.ABC):
    """Where collections live: a folder (SQLite) or a PostgreSQL schema. :mod:`.api` picks one."""

    location: str  # for messages: a path, or a DSN without its password

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def create(self, settings: CollectionSettings, encoder: Encoder | None, options: OpenOptions) -> Collection:
        """Create an empty collection; :class:`CollectionExistsError` when the name is taken."""

    @abc.abstractmethod
    def open(self, name: str, options: OpenOptions) -> Collection:
        """Open an existing collection; :class:`CollectionNotFoundError` when there is none."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Names of the collections, sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove a collection; open handles to it notice on their next call."""

    @abc.abstractmethod
    def rename(self, old: str, new: str) -> None:
        """Give collection ``old`` the free name ``new``."""

    def not_found(self, name: str) -> CollectionNotFoundError:
        return CollectionNotFoundError(f"no collection {name!r} in {self.location!r}")


@dataclass(frozen=True)
class Requested:
    """What the caller of ``open_collection`` asked for (None: whatever the collection records)."""

    metric: Metric | None = None
    precision: Precision | None = None
    dims: int | None = None
    dim: int | None = None
    calibration: Int8Calibration | None = None
    hnsw_m: int = 32
    ef_construction: int = 128
    late: Any = None  # open_collection's late_interaction, as given


def open_in(store: Store, name: str, encoder: Encoder | None, requested: Requested, *, create: bool,
            options: OpenOptions) -> Collection:
    """The open sequence, once for every backend: create if missing, else open and check the settings and
    encoder against what the collection records."""
    if not store.exists(name):
        if not create:
            raise store.not_found(name)
        r = requested
        settings = new_settings(name, encoder, r.metric or Metric.COSINE, r.precision or Precision.FLOAT32, r.dims,
                                r.dim, r.calibration, r.hnsw_m, r.ef_construction, late_request(r.late))
        try:
            return store.create(settings, encoder, options)
        except CollectionExistsError:
            pass  # another process created it between our look and our create: open theirs
    coll = store.open(name, options)
    try:
        check_requested(coll.settings, requested.metric, requested.precision, requested.dims, requested.dim,
                        requested.late)
        if encoder is not None:
            coll._check_encoder(encoder)
            coll._encoder = encoder
    except BaseException:
        coll.close()
        raise
    return coll


__all__ = ["Candidate", "Collection", "RecordBatch", "Requested", "Store", "VerifyReport", "best_first", "open_in",
           "same_codec"]
