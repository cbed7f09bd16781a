"""PostgreSQL + pgvector: the same :class:`~embedsmith.store.Collection` contract on a database server.

Layout, in one PostgreSQL schema (``embedsmith`` unless the DSN says ``?schema=NAME``):

* ``collections``: one row per collection: its settings (as the embedded store records them), the name of
  its table, and the corpus statistics BM25 needs (documents with text, their total length in tokens).
* one table per collection: ``seq`` (write order), ``id``, ``deleted`` (soft delete, dropped by
  :meth:`PgCollection.compact`), ``metadata jsonb``, ``text``, ``index_text``, the full ``vector`` (float32),
  and the generated ``tsv`` (``to_tsvector('english', ...)``) and ``doclen`` (its token count).
* indexes: unique live ``id``; GIN over ``metadata`` (``jsonb_path_ops``) and over ``tsv``; HNSW over the
  indexed code of the vector: the vector itself (float32), ``halfvec`` (float16) or ``binary_quantize`` as
  ``bit`` (binary, Hamming distance), of the first ``dims`` dimensions. Approximate codes are rescored with
  the full vectors in the same statement.

Writes are single transactions that take the collection's row lock (one writer at a time, like the embedded
store; others wait ``lock_timeout``); bulk rows go in with binary ``COPY``. A new table has no HNSW index until
its first write, which builds it inside that write's transaction (after the rows when they are many, which is
far faster than inserting into a graph row by row) with a SHARE lock, so readers never wait on it. A handle
whose collection was deleted or recreated finds the registry naming another table (or none), and raises
:class:`~embedsmith.errors.CollectionNotFoundError`. A search sets ``hnsw.ef_search``
for its own transaction and uses iterative index scans (``hnsw.iterative_scan = relaxed_order``), so a
selective filter still yields k hits; when the graph still misses matching rows, the rows that match are
scanned exactly.

BM25 is Okapi BM25 computed in SQL with FTS5's formula (k1=1.2, b=0.75, idf = ln((N - df + 0.5)/(df + 0.5)),
floored at 1e-6) over PostgreSQL's English text search lexemes (Snowball stemmer, English stopwords); N and
the average length are kept per collection in the same transactions as the rows, document frequencies are
counted at query time. It is not ``ts_rank``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from ..errors import (
    CollectionBusyError,
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidInputError,
    StoreCorruptError,
    StoreError,
    StoreReadOnlyError,
    require,
)
from ..types import Encoder, Metric, Precision
from .base import Candidate, Collection, RecordBatch, Store, VerifyReport, best_first
from .bm25 import match_expression
from .filters import CompiledFilter, Where, compile_where_pg, pg_field
from .settings import CollectionSettings, OpenOptions, new_identity

if TYPE_CHECKING:
    import psycopg

PG_FORMAT_VERSION = 1
DEFAULT_SCHEMA = "embedsmith"
TS_CONFIG = "english"
BM25_K1, BM25_B = 1.2, 0.75
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OPS = {  # metric -> (distance operator, operator class suffix)
    Metric.COSINE: ("<=>", "cosine"),
    Metric.DOT: ("<#>", "ip"),
    Metric.L2: ("<->", "l2"),
    Metric.MANHATTAN: ("<+>", "l1"),
}
# pgvector's HNSW limits: dimensions an index can hold per type, m and ef_construction ranges, ef_search.
_MAX_INDEX_DIMS = {Precision.FLOAT32: 2000, Precision.FLOAT16: 4000, Precision.BINARY: 64000}
_MAX_EF_SEARCH = 1000
_BULK_BUILD_ROWS = 1000  # a first batch this large is loaded before its HNSW graph is built
_BUILD_MEMORY = "1GB"  # maintenance_work_mem for that build (this transaction only): the graph must fit


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def parse_store(dsn: str) -> tuple[str, str]:
    """Split an embedsmith PostgreSQL store into (libpq conninfo, schema); ``schema`` is our own parameter."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for k, v in query:
        if k == "schema":
            schema = v
        else:
            rest.append((k, v))
    if not _IDENT.match(schema):
        raise InvalidInputError(
            f"schema {schema!r} in store {mask_dsn(dsn)!r} must be 1-63 lower-case letters, digits or '_', "
            "not starting with a digit"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def _psycopg() -> Any:
    require("psycopg_pool", extra="postgres", what="PostgreSQL stores")
    require("pgvector.psycopg", extra="postgres", what="PostgreSQL stores")
    return require("psycopg", extra="postgres", what="PostgreSQL stores")


def _scalar(conn: psycopg.Connection[Any], stmt: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(stmt, params).fetchone()
    return row[0] if row is not None else None


def _ident(name: str) -> str:
    """A schema or table name we generated or checked against ``_IDENT``: safe to put in SQL as is."""
    if not _IDENT.match(name):
        raise StoreError(f"unexpected PostgreSQL identifier {name!r}")
    return name


def _connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    psycopg = _psycopg()
    conninfo, _ = parse_store(dsn)
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL store {mask_dsn(dsn)!r}: {exc}") from exc


def _setup_schema(conn: psycopg.Connection[Any], schema: str, dsn: str) -> None:
    """Create the extension, schema, registry table and helper function once (concurrent callers serialised)."""
    s = _ident(schema)
    if _scalar(conn, "SELECT to_regclass(%s)", (f"{s}.collections",)) is not None:
        return
    psycopg = _psycopg()
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"embedsmith:{s}",))
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {s}.collections(
                    name text PRIMARY KEY,
                    tbl text NOT NULL UNIQUE,
                    format_version integer NOT NULL,
                    settings jsonb NOT NULL,
                    bm25_docs bigint NOT NULL DEFAULT 0,
                    bm25_tokens bigint NOT NULL DEFAULT 0,
                    created timestamptz NOT NULL DEFAULT now())""")
            # BM25's document length: tokens (positions), not distinct lexemes.
            conn.execute(f"""
                CREATE OR REPLACE FUNCTION {s}.token_count(tsvector) RETURNS integer
                LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
                AS $$ SELECT COALESCE(SUM(COALESCE(array_length(positions, 1), 1)), 0)::integer FROM unnest($1) $$""")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"cannot set up PostgreSQL store {mask_dsn(dsn)!r}: {exc}. The pgvector extension must be installed "
            "(CREATE EXTENSION vector, by a superuser) and the user needs CREATE on the database"
        ) from exc
    except psycopg.Error as exc:
        raise StoreError(f"cannot set up PostgreSQL store {mask_dsn(dsn)!r}: {exc}") from exc


def _code(settings: CollectionSettings, vec: str) -> str:
    """SQL for what the HNSW index holds of the vector expression ``vec``."""
    base = vec if settings.dims == settings.dim else f"subvector({vec}, 1, {settings.dims})::vector({settings.dims})"
    if settings.precision is Precision.FLOAT16:
        return f"({base})::halfvec({settings.dims})"
    if settings.precision is Precision.BINARY:
        return f"binary_quantize({base})::bit({settings.dims})"
    return base


def _index_op(settings: CollectionSettings) -> tuple[str, str]:
    """(distance operator, operator class) of the HNSW index."""
    op, suffix = _OPS[settings.metric]
    if settings.precision is Precision.BINARY:
        return "<~>", "bit_hamming_ops"
    kind = "halfvec" if settings.precision is Precision.FLOAT16 else "vector"
    return op, f"{kind}_{suffix}_ops"


def _score(settings: CollectionSettings, q: str) -> str:
    """SQL for the exact, higher-is-better score of the full vector against ``q`` (vectors are unit length for
    cosine, so the inner product is the cosine)."""
    op = {Metric.COSINE: "<#>", Metric.DOT: "<#>", Metric.L2: "<->", Metric.MANHATTAN: "<+>"}[settings.metric]
    return f"(-(vector {op} {q}))"


def _check_pg_settings(s: CollectionSettings) -> None:
    if s.late is not None:
        # Refused rather than half-done: token rows would need their own COPY keyed by the identity column
        # and every soft delete, compaction and export to follow them (not built yet).
        raise InvalidInputError(
            f"collection {s.name!r}: stored token vectors (late_interaction=...) are not available on PostgreSQL "
            "yet; keep the collection in an embedded (folder) store, or rerank PostgreSQL collections on the fly "
            "(LateInteraction(source='on-the-fly'), which `--rerank maxsim` does for collections without them)"
        )
    if s.precision is Precision.INT8:
        raise InvalidInputError(
            "precision int8 is not available on PostgreSQL (pgvector has no int8 vector type); "
            "use float16 (halfvec) or binary (bit, rescored)"
        )
    limit = _MAX_INDEX_DIMS[s.precision]
    if s.dims > limit:
        raise InvalidInputError(
            f"pgvector's HNSW index holds at most {limit} dimensions at precision {s.precision.value}, "
            f"got dims={s.dims}; pass a smaller dims= (Matryoshka) or precision float16/binary"
        )
    if not 2 <= s.hnsw_m <= 100:
        raise InvalidInputError(f"hnsw_m must be between 2 and 100 on PostgreSQL, got {s.hnsw_m}")
    if not 4 <= s.ef_construction <= 1000 or s.ef_construction < 2 * s.hnsw_m:
        raise InvalidInputError(
            f"ef_construction must be between 4 and 1000 and at least 2 * hnsw_m ({2 * s.hnsw_m}) on PostgreSQL, "
            f"got {s.ef_construction}"
        )


def translate(exc: Exception, what: str) -> StoreError | InvalidInputError:
    """Our error for a psycopg error, chosen by its class (SQLSTATE), never by its message."""
    errors = _psycopg().errors
    if isinstance(exc, errors.UniqueViolation):
        return InvalidInputError(f"{what}: an id is already in the collection (added meanwhile by another "
                                 "process); use upsert to replace it")
    if isinstance(exc, (errors.LockNotAvailable, errors.DeadlockDetected)):
        return CollectionBusyError(f"{what}: the collection is being written by another process ({exc})")
    if isinstance(exc, errors.UndefinedTable):
        return CollectionNotFoundError(f"{what}: the collection was deleted or replaced by another process")
    if isinstance(exc, (errors.DataCorrupted, errors.IndexCorrupted)):
        return StoreCorruptError(f"{what}: the database reports damage ({exc})")
    if isinstance(exc, (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)):
        return StoreReadOnlyError(f"{what}: the store cannot be written by this user ({exc})")
    if isinstance(exc, errors.DiskFull):
        return StoreError(f"{what}: the database server's disk is full ({exc}); nothing of this write was stored")
    if isinstance(exc, errors.UntranslatableCharacter):
        return InvalidInputError(f"{what}: a text or metadata value cannot be stored ({exc})")
    return StoreError(f"{what}: {exc}")


class PgCollection(Collection):
    """A collection stored in PostgreSQL with pgvector. Open one with :func:`~embedsmith.store.open_collection`
    and a ``postgresql://`` store."""

    def __init__(self, dsn: str, schema: str, table: str, settings: CollectionSettings, encoder: Encoder | None,
                 options: OpenOptions) -> None:
        super().__init__(settings, encoder, options)
        _psycopg()
        from psycopg_pool import ConnectionPool

        self.store = mask_dsn(dsn)
        self.schema = _ident(schema)
        self.table = _ident(table)
        self._t = f"{self.schema}.{self.table}"
        self._lock_timeout = options.lock_timeout
        self._live = -1
        self._live_at = 0.0
        self._has_hnsw: bool | None = None
        conninfo, _ = parse_store(dsn)

        def configure(conn: Any) -> None:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            conn.execute("SET hnsw.iterative_scan = relaxed_order")

        self._pool = ConnectionPool(conninfo, min_size=1, max_size=max(2, options.pool_size), open=False,
                                    kwargs={"autocommit": True}, configure=configure, timeout=30.0,
                                    name=f"embedsmith-{settings.name}")
        try:
            self._pool.open(wait=True, timeout=30.0)
        except Exception as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL store {self.store!r}: {exc}") from exc
        with self._errors():
            self._count_estimate()

    # -- the boundary ---------------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        psycopg = _psycopg()
        from psycopg_pool import PoolTimeout

        try:
            yield
        except PoolTimeout as exc:
            raise StoreError(f"no connection to PostgreSQL store {self.store!r} for collection {self.name!r}: "
                             f"{exc}") from exc
        except psycopg.Error as exc:
            raise translate(exc, f"collection {self.name!r} ({self.store})") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit: callers open transactions)."""
        if self._closed:
            raise StoreError(f"collection {self.name!r} is closed")
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction holding the collection's write lock: all of it is committed, or none of it."""
        psycopg = _psycopg()
        with self._connection() as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{int(self._lock_timeout * 1000)}ms'")
            try:
                row = conn.execute(f"SELECT tbl FROM {self.schema}.collections WHERE name = %s FOR UPDATE",
                                   (self.name,)).fetchone()
            except psycopg.errors.LockNotAvailable as exc:
                raise CollectionBusyError(
                    f"collection {self.name!r} is being written by another process; waited "
                    f"{self._lock_timeout:g} s for its lock"
                ) from exc
            if row is None or row[0] != self.table:
                raise CollectionNotFoundError(
                    f"collection {self.name!r} was deleted or replaced in {self.store!r} by another process; "
                    "open it again"
                )
            conn.execute("SET LOCAL lock_timeout = 0")
            yield conn

    def _soft_delete(self, conn: psycopg.Connection[Any], cond: str, params: Sequence[Any]) -> int:
        """Flag live rows deleted and take them out of the BM25 statistics, in the caller's transaction."""
        n, docs, tokens = conn.execute(
            f"WITH d AS (UPDATE {self._t} SET deleted = true WHERE NOT deleted AND ({cond}) RETURNING doclen) "
            "SELECT count(*), count(doclen), COALESCE(sum(doclen), 0) FROM d", params).fetchall()[0]
        if docs:
            conn.execute(f"UPDATE {self.schema}.collections SET bm25_docs = bm25_docs - %s, "
                         "bm25_tokens = bm25_tokens - %s WHERE name = %s", (docs, tokens, self.name))
        return int(n)

    def _hnsw_exists(self, conn: psycopg.Connection[Any]) -> bool:
        if self._has_hnsw is None or not self._has_hnsw:
            self._has_hnsw = _scalar(conn, "SELECT to_regclass(%s)", (f"{self._t}_hnsw",)) is not None
        return self._has_hnsw

    # -- writes ---------------------------------------------------------------------------------------
    def _compile_where(self, where: Where | None) -> CompiledFilter:
        return compile_where_pg(where)

    def _live_ids(self, ids: list[str]) -> list[str]:
        with self._connection() as conn:
            return [r[0] for r in conn.execute(f"SELECT id FROM {self._t} WHERE NOT deleted AND id = ANY(%s)", (ids,))]

    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: CompiledFilter | None = None, index_texts: Sequence[str | None] | None = None,
        tokens: Sequence[np.ndarray] | None = None, token_blobs: Sequence[tuple[int, bytes] | None] | None = None,
    ) -> None:
        if not ids and delete_where is None:
            return
        from psycopg.types.json import set_json_dumps

        extra = [None if x == t else x for x, t in zip(index_texts, texts, strict=True)] \
            if index_texts is not None else [None] * len(ids)
        with self._write() as conn:
            if replace:
                self._soft_delete(conn, "id = ANY(%s)", (ids,))
            if delete_where is not None:
                self._soft_delete(conn, delete_where.sql or "TRUE", delete_where.params)
            before = _scalar(conn, f"SELECT COALESCE(max(seq), 0) FROM {self._t}")
            # A new table gets its graph in its first write: built after a large batch (many times faster than
            # inserting row by row), before a small one. CREATE INDEX takes a SHARE lock, which readers never
            # wait for (dropping an index would take ACCESS EXCLUSIVE and block them until the build ends).
            build = None if self._hnsw_exists(conn) else ("after" if len(ids) >= _BULK_BUILD_ROWS else "before")
            if build == "before":
                conn.execute(_hnsw_sql(self.schema, self.table, self.settings))
            with conn.cursor() as cur:
                set_json_dumps(lambda obj: obj, context=cur)  # metadata arrives as checked JSON text
                with cur.copy(f"COPY {self._t} (id, metadata, text, index_text, vector) FROM STDIN "
                              "(FORMAT BINARY)") as copy:
                    copy.set_types(["text", "jsonb", "text", "text", "vector"])
                    for row in zip(ids, meta, texts, extra, vectors, strict=True):
                        copy.write_row(row)
            if build == "after":
                conn.execute(f"SET LOCAL maintenance_work_mem = '{_BUILD_MEMORY}'")
                conn.execute(_hnsw_sql(self.schema, self.table, self.settings))
            conn.execute(
                f"UPDATE {self.schema}.collections c SET bm25_docs = c.bm25_docs + x.docs, "
                "bm25_tokens = c.bm25_tokens + x.tokens FROM (SELECT count(doclen) AS docs, "
                f"COALESCE(sum(doclen), 0) AS tokens FROM {self._t} WHERE seq > %s) x WHERE c.name = %s",
                (before, self.name))
        if build is not None:
            self._has_hnsw = True
        self._live = -1

    def _delete(self, ids: list[str] | None, flt: CompiledFilter | None) -> int:
        with self._write() as conn:
            if ids is not None:
                n = self._soft_delete(conn, "id = ANY(%s)", (ids,))
            elif flt is not None:
                n = self._soft_delete(conn, flt.sql or "TRUE", flt.params)
            else:
                raise InvalidInputError("delete needs exactly one of ids= or where=")
        self._live = -1
        return n

    def _compact(self, *, reindex: bool) -> dict[str, int]:
        """Delete soft-deleted rows, then ``VACUUM (ANALYZE)`` the table (and ``REINDEX`` it with ``reindex``,
        which rebuilds the HNSW graph without the holes deletes leave; it blocks writers meanwhile).

        ``bytes_after`` may equal ``bytes_before``: plain VACUUM makes the space reusable by later writes
        rather than returning it to the operating system.
        """
        with self._write() as conn:
            dropped = conn.execute(f"DELETE FROM {self._t} WHERE deleted").rowcount
        before = self._disk_bytes()
        with self._connection() as conn:  # autocommit: VACUUM cannot run inside a transaction
            conn.execute(f"VACUUM (ANALYZE) {self._t}")
            if reindex:
                conn.execute(f"REINDEX TABLE {self._t}")
        self._live = -1
        return {"dropped": int(dropped), "bytes_before": before, "bytes_after": self._disk_bytes()}

    # -- reads ----------------------------------------------------------------------------------------
    def _count_live(self) -> int:
        with self._connection() as conn:
            n = int(_scalar(conn, f"SELECT count(*) FROM {self._t} WHERE NOT deleted"))
        self._live, self._live_at = n, time.monotonic()
        return n

    def _count_estimate(self) -> int:
        """The live count, at most a second old: only picks exact vs HNSW search, never what is found."""
        if self._live < 0 or time.monotonic() - self._live_at > 1.0:
            return self._count_live()
        return self._live

    def _count(self, flt: CompiledFilter) -> int:
        if flt.matches_all:
            return self._count_live()
        with self._connection() as conn:
            return int(_scalar(conn, f"SELECT count(*) FROM {self._t} WHERE NOT deleted AND ({flt.sql})", flt.params))

    def _get(self, ids: list[str] | None, flt: CompiledFilter | None, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        cols = "id, text, metadata" + (", vector" if include_vectors else "")
        with self._connection() as conn:
            if ids is not None:
                rows = conn.execute(f"SELECT {cols} FROM {self._t} WHERE NOT deleted AND id = ANY(%s)",
                                    (ids,)).fetchall()
            elif flt is not None:
                lim = f" LIMIT {int(limit)}" if limit is not None else ""
                rows = conn.execute(
                    f"SELECT {cols} FROM {self._t} WHERE NOT deleted{flt.and_sql()} ORDER BY seq{lim}", flt.params
                ).fetchall()
            else:
                raise InvalidInputError("get needs exactly one of ids= or where=")
        if include_vectors:
            return [(*r[:3], r[3].to_numpy()) for r in rows]
        return [tuple(r) for r in rows]

    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        cols = ", ".join("metadata -> %s" for _ in fields)
        with self._connection() as conn:
            rows = conn.execute(f"SELECT DISTINCT {cols} FROM {self._t} WHERE NOT deleted", fields).fetchall()

        def plain(v: Any) -> Any:  # as SQLite's json_extract gives them: containers as JSON text, JSON null as None
            return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v

        return {tuple(plain(v) for v in r) for r in rows}

    def _export(self, batch: int) -> Iterator[RecordBatch]:
        with self._connection() as conn, conn.transaction():
            cur = conn.cursor(name=f"export_{uuid.uuid4().hex[:8]}")
            cur.itersize = batch
            cur.execute(f"SELECT id, text, index_text, metadata, vector FROM {self._t} WHERE NOT deleted "
                        "ORDER BY seq")
            while rows := cur.fetchmany(batch):
                vectors = np.stack([r[4].to_numpy() for r in rows]).astype(np.float32, copy=False)
                yield RecordBatch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                  [r[3] for r in rows], vectors)
            cur.close()

    def _ann(self, q: np.ndarray, k: int, flt: CompiledFilter, *, ef: int, exact: bool,
             factor: int, light: bool = False) -> list[Candidate]:
        if exact:
            return self._scan(q, k, flt)
        s = self.settings
        score = _score(s, "%s")
        op, _ = _index_op(s)
        want = k * factor
        stmt = (
            f"WITH cand AS MATERIALIZED (SELECT seq FROM {self._t} WHERE NOT deleted{flt.and_sql()} "
            f"ORDER BY {_code(s, 'vector')} {op} {_code(s, '%s::vector')} LIMIT %s) "
            f"SELECT {score} AS score, id, text, metadata FROM {self._t} JOIN cand USING (seq) "
            "ORDER BY score DESC, id LIMIT %s"
        )
        with self._connection() as conn, conn.transaction(), conn.pipeline():
            # ef_search below the rows wanted would cut the list short; pgvector caps it at 1000.
            conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(ef, want), _MAX_EF_SEARCH)}")
            cur = conn.execute(stmt, (*flt.params, q, want, q, k))
            return [Candidate(*r) for r in cur.fetchall()]

    def _scan(self, q: np.ndarray, k: int, flt: CompiledFilter) -> list[Candidate]:
        """Exact top k over every live row passing the filter (a sequential scan, or the GIN index's rows)."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_score(self.settings, '%s')} AS score, id, text, metadata FROM {self._t} "
                f"WHERE NOT deleted{flt.and_sql()} ORDER BY score DESC, id LIMIT %s", (q, *flt.params, k)).fetchall()
        return [Candidate(*r) for r in rows]

    def _bm25(self, query: str, n: int, flt: CompiledFilter, *, reader: bool = False) -> list[Candidate]:
        """Top ``n`` live rows by Okapi BM25 over English lexemes (see the module docstring), ties by id."""
        match_expression(query)  # the same checks and messages as the embedded store
        with self._connection() as conn:
            lexemes = [r[0] for r in conn.execute(
                f"SELECT DISTINCT lexeme FROM unnest(to_tsvector('{TS_CONFIG}', %s))", (query,))]
            if not lexemes:  # only stopwords: nothing of them is in the index
                return []
            tsquery = " | ".join("'" + x.replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes)
            rows = conn.execute(
                f"""
                WITH stats AS (
                    SELECT bm25_docs::float8 AS n, bm25_tokens::float8 / GREATEST(bm25_docs, 1) AS avgdl
                    FROM {self.schema}.collections WHERE name = %s),
                hits AS MATERIALIZED (
                    SELECT seq, tsv, doclen, ({flt.sql or 'TRUE'}) AS passes FROM {self._t}
                    WHERE NOT deleted AND tsv @@ %s::tsquery),
                terms AS (
                    SELECT u.lexeme, u.positions, h.seq, h.doclen, h.passes
                    FROM hits h, unnest(h.tsv) u WHERE u.lexeme = ANY(%s)),
                df AS (SELECT lexeme, count(*)::float8 AS df FROM terms GROUP BY lexeme),
                scored AS (
                    SELECT t.seq, SUM(
                        GREATEST(ln((s.n - df.df + 0.5) / (df.df + 0.5)), 1e-6)
                        * (COALESCE(array_length(t.positions, 1), 1) * {BM25_K1 + 1})
                        / (COALESCE(array_length(t.positions, 1), 1)
                           + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * t.doclen / GREATEST(s.avgdl, 1e-9)))
                    ) AS score
                    FROM terms t JOIN df USING (lexeme) CROSS JOIN stats s
                    WHERE t.passes GROUP BY t.seq)
                SELECT sc.score, r.id, r.text, r.metadata FROM scored sc JOIN {self._t} r USING (seq)
                ORDER BY sc.score DESC, r.id LIMIT %s
                """,
                (self.name, *flt.params, tsquery, lexemes, n)).fetchall()
        return best_first(Candidate(*r) for r in rows)

    # -- management -----------------------------------------------------------------------------------
    def _disk_bytes(self) -> int:
        """Bytes of the table, its TOAST data and its indexes."""
        with self._connection() as conn:
            return int(_scalar(conn, "SELECT pg_total_relation_size(%s)", (self._t,)))

    def _location(self) -> str:
        return f"{self.store} (table {self._t})"

    def _index_vectors(self) -> int:
        with self._connection() as conn:
            return int(_scalar(conn, f"SELECT count(*) FROM {self._t}"))

    def _notes(self) -> dict[str, Any]:
        with self._connection() as conn:
            notes = _scalar(conn, f"SELECT settings -> 'notes' FROM {self.schema}.collections WHERE name = %s",
                            (self.name,))
        return dict(sorted((notes or {}).items()))

    def _set_notes(self, changes: dict[str, Any]) -> None:
        with self._write() as conn:
            notes = _scalar(conn, f"SELECT settings -> 'notes' FROM {self.schema}.collections WHERE name = %s",
                            (self.name,)) or {}
            for key, value in changes.items():
                if value is None:
                    notes.pop(key, None)
                else:
                    notes[key] = value
            conn.execute(f"UPDATE {self.schema}.collections SET settings = settings || %s::jsonb WHERE name = %s",
                         (json.dumps({"notes": notes}, ensure_ascii=False), self.name))

    def _indexes(self) -> list[str]:
        with self._connection() as conn:
            fields = _scalar(conn, f"SELECT settings -> 'indexes' FROM {self.schema}.collections WHERE name = %s",
                             (self.name,))
        return sorted(fields or [])

    def _create_index(self, field: str) -> bool:
        return self._change_index(field, create=True)

    def _drop_index(self, field: str) -> bool:
        return self._change_index(field, create=False)

    def _change_index(self, field: str, *, create: bool) -> bool:
        """A B-tree on the expression range filters emit (``metadata -> 'field'``, a literal key), listed in the
        registry row; built inside the write transaction, so writers wait for it and it is all or nothing."""
        with self._write() as conn:
            fields = set(_scalar(conn, f"SELECT settings -> 'indexes' FROM {self.schema}.collections "
                                       "WHERE name = %s", (self.name,)) or [])
            if (field in fields) == create:
                return False
            digest = hashlib.sha256(f"{self.table}\0{field}".encode()).hexdigest()[:24]
            name = f"{self.schema}.m_{digest}"
            if create:
                # Parameters (none) make psycopg read pg_field's "%%" as the "%" filters send.
                conn.execute(f"CREATE INDEX IF NOT EXISTS m_{digest} ON {self._t} ({pg_field(field)}) "
                             "WHERE NOT deleted", ())
                fields.add(field)
            else:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
                fields.discard(field)
            conn.execute(f"UPDATE {self.schema}.collections SET settings = settings || %s::jsonb WHERE name = %s",
                         (json.dumps({"indexes": sorted(fields)}, ensure_ascii=False), self.name))
            return True

    def _is_current(self) -> bool:
        with self._connection() as conn:
            return _scalar(conn, f"SELECT tbl FROM {self.schema}.collections WHERE name = %s",
                           (self.name,)) == self.table

    def _verify(self, report: VerifyReport) -> None:
        with self._connection() as conn, conn.transaction():
            row = conn.execute(f"SELECT tbl, settings, bm25_docs, bm25_tokens FROM {self.schema}.collections "
                               "WHERE name = %s", (self.name,)).fetchone()
            if row is None or row[0] != self.table:
                raise CollectionNotFoundError(f"collection {self.name!r} was deleted or replaced in {self.store!r}")
            try:
                stored = CollectionSettings.from_meta(row[1])
                if stored != self.settings:
                    report.problem("the settings in the registry differ from those this handle opened with")
            except (KeyError, ValueError, TypeError) as exc:
                report.problem(f"the settings in the registry do not parse: {exc!r}")
            live, docs, tokens = conn.execute(
                f"SELECT count(*), count(doclen) FILTER (WHERE doclen IS NOT NULL), COALESCE(sum(doclen), 0) "
                f"FROM {self._t} WHERE NOT deleted").fetchall()[0]
            report.checks.update(records=int(live))
            if (int(docs), int(tokens)) != (int(row[2]), int(row[3])):
                report.problem(f"the BM25 statistics say {row[2]} documents of {row[3]} tokens; the rows hold "
                               f"{docs} of {tokens}; repair recounts them")
            index = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
                                 (f"{self._t}_hnsw",)).fetchone()
            if index is None:
                if live:
                    report.problem("the HNSW index is missing; repair builds it")
            elif not index[0]:
                report.problem("the HNSW index is invalid (an interrupted build); repair rebuilds it")
            report.checks["hnsw_index"] = "missing" if index is None else ("ok" if index[0] else "invalid")

    def _repair(self) -> dict[str, Any]:
        with self._write() as conn:
            conn.execute(
                f"UPDATE {self.schema}.collections c SET bm25_docs = x.docs, bm25_tokens = x.tokens FROM (SELECT "
                f"count(doclen) AS docs, COALESCE(sum(doclen), 0) AS tokens FROM {self._t} WHERE NOT deleted) x "
                "WHERE c.name = %s", (self.name,))
            if self._hnsw_exists(conn):
                conn.execute(f"REINDEX INDEX {self._t}_hnsw")
            else:
                conn.execute(_hnsw_sql(self.schema, self.table, self.settings))
                self._has_hnsw = True
        return {"ann_vectors": self._index_vectors(), "bm25_rows": self._count_live()}

    def _close(self) -> None:
        self._pool.close()


def _table_sql(schema: str, table: str, s: CollectionSettings) -> list[str]:
    t = f"{schema}.{table}"
    indexed = "COALESCE(index_text, text)"
    return [
        f"""CREATE TABLE {t}(
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL,
            deleted boolean NOT NULL DEFAULT false,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            text text,
            index_text text,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', {indexed})) STORED,
            doclen integer GENERATED ALWAYS AS ({schema}.token_count(to_tsvector('{TS_CONFIG}', {indexed}))) STORED,
            vector vector({s.dim}) NOT NULL)""",
        f"CREATE UNIQUE INDEX {table}_live_id ON {t}(id) WHERE NOT deleted",
        f"CREATE INDEX {table}_metadata ON {t} USING gin (metadata jsonb_path_ops)",
        f"CREATE INDEX {table}_tsv ON {t} USING gin (tsv) WHERE NOT deleted",
        # The HNSW index comes with the first write (PgCollection._insert).
    ]


def _hnsw_sql(schema: str, table: str, s: CollectionSettings) -> str:
    _, opclass = _index_op(s)
    return (f"CREATE INDEX {table}_hnsw ON {schema}.{table} USING hnsw (({_code(s, 'vector')}) {opclass}) "
            f"WITH (m = {s.hnsw_m}, ef_construction = {s.ef_construction})")


class PgStore(Store):
    """Collections in one PostgreSQL schema: a registry table and one table per collection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.location = mask_dsn(dsn)
        _, self.schema = parse_store(dsn)

    def _conn(self) -> psycopg.Connection[Any]:
        conn = _connect(self.dsn)
        try:
            _setup_schema(conn, self.schema, self.dsn)
        except BaseException:
            conn.close()
            raise
        return conn

    def exists(self, name: str) -> bool:
        with self._conn() as conn:
            return _scalar(conn, f"SELECT 1 FROM {self.schema}.collections WHERE name = %s", (name,)) is not None

    def names(self) -> list[str]:
        with _connect(self.dsn) as conn:
            if _scalar(conn, "SELECT to_regclass(%s)", (f"{self.schema}.collections",)) is None:
                return []
            return [r[0] for r in conn.execute(f"SELECT name FROM {self.schema}.collections ORDER BY name")]

    def create(self, settings: CollectionSettings, encoder: Encoder | None, options: OpenOptions) -> PgCollection:
        _check_pg_settings(settings)
        if settings.identity is None:
            settings = replace(settings, identity=new_identity())
        psycopg = _psycopg()
        table = f"records_{uuid.uuid4().hex[:16]}"
        with self._conn() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"INSERT INTO {self.schema}.collections(name, tbl, format_version, settings) "
                                 "VALUES (%s, %s, %s, %s)",
                                 (settings.name, table, PG_FORMAT_VERSION, json.dumps(settings.to_meta())))
                    for stmt in _table_sql(self.schema, table, settings):
                        conn.execute(stmt)
            except psycopg.errors.UniqueViolation:
                raise CollectionExistsError(
                    f"collection {settings.name!r} already exists in {self.location!r}") from None
            except psycopg.Error as exc:
                raise translate(exc, f"cannot create collection {settings.name!r} in {self.location!r}") from exc
        return PgCollection(self.dsn, self.schema, table, settings, encoder, options)

    def open(self, name: str, options: OpenOptions) -> PgCollection:
        psycopg = _psycopg()
        with self._conn() as conn:
            try:
                row = conn.execute(f"SELECT tbl, format_version, settings FROM {self.schema}.collections "
                                   "WHERE name = %s", (name,)).fetchone()
                if row is None:
                    raise self.not_found(name)
                table, version, meta = row
                if version > PG_FORMAT_VERSION:
                    raise StoreError(
                        f"collection {name!r} has PostgreSQL store format {version}; this embedsmith reads up to "
                        f"{PG_FORMAT_VERSION}: upgrade embedsmith"
                    )
                if not meta.get("identity"):  # a collection from before identities adopts one, once
                    meta = {**meta, "identity": new_identity()}
                    conn.execute(f"UPDATE {self.schema}.collections SET settings = settings || %s::jsonb "
                                 "WHERE name = %s AND NOT settings ? 'identity'",
                                 (json.dumps({"identity": meta["identity"]}), name))
                    meta = _scalar(conn, f"SELECT settings FROM {self.schema}.collections WHERE name = %s", (name,))
            except psycopg.Error as exc:
                raise translate(exc, f"cannot open collection {name!r} in {self.location!r}") from exc
        return PgCollection(self.dsn, self.schema, table, CollectionSettings.from_meta(meta), None, options)

    def delete(self, name: str, *, lock_timeout: float = 10.0) -> None:
        """Drop a collection's table and registry row in one transaction."""
        psycopg = _psycopg()
        with self._conn() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
                    row = conn.execute(f"DELETE FROM {self.schema}.collections WHERE name = %s RETURNING tbl",
                                       (name,)).fetchone()
                    if row is None:
                        raise self.not_found(name)
                    conn.execute(f"DROP TABLE IF EXISTS {self.schema}.{_ident(row[0])}")
            except psycopg.Error as exc:
                raise translate(exc, f"cannot delete collection {name!r} from {self.location!r}") from exc

    def rename(self, old: str, new: str) -> None:
        psycopg = _psycopg()
        with self._conn() as conn:
            try:
                conn.execute(f"UPDATE {self.schema}.collections SET name = %s, settings = settings || %s::jsonb "
                             "WHERE name = %s", (new, json.dumps({"name": new}), old))
            except psycopg.errors.UniqueViolation:
                raise CollectionExistsError(f"collection {new!r} already exists in {self.location!r}") from None
            except psycopg.Error as exc:
                raise translate(exc, f"cannot rename collection {old!r}") from exc


__all__ = ["PgCollection", "PgStore", "mask_dsn", "parse_store", "translate"]
