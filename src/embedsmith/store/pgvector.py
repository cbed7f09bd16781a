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
store; others wait ``lock_timeout``); bulk rows go in with binary ``COPY``. A search sets ``hnsw.ef_search``
for its own transaction and uses iterative index scans (``hnsw.iterative_scan = relaxed_order``), so a
selective filter still yields k hits; when the graph still misses matching rows, the rows that match are
scanned exactly.

BM25 is Okapi BM25 computed in SQL with FTS5's formula (k1=1.2, b=0.75, idf = ln((N - df + 0.5)/(df + 0.5)),
floored at 1e-6) over PostgreSQL's English text search lexemes (Snowball stemmer, English stopwords); N and
the average length are kept per collection in the same transactions as the rows, document frequencies are
counted at query time. It is not ``ts_rank``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from ..errors import InvalidInputError, StoreError, require
from ..quantization import Int8Calibration
from ..types import Encoder, Metric, Precision
from .bm25 import match_expression
from .collection import Batch, Collection, CollectionSettings, Ranked, check_encoder, check_requested, new_settings
from .filters import Where, compile_where_pg

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


class PgCollection(Collection):
    """A collection stored in PostgreSQL with pgvector. Open one with :func:`~embedsmith.store.open_collection`
    and a ``postgresql://`` store."""

    def __init__(self, dsn: str, schema: str, table: str, settings: CollectionSettings, encoder: Encoder | None,
                 *, exact_below: int, ef_search: int, lock_timeout: float, pool_size: int) -> None:
        super().__init__(settings, encoder, exact_below=exact_below, ef_search=ef_search)
        _psycopg()
        from psycopg_pool import ConnectionPool

        self.store = mask_dsn(dsn)
        self.schema = _ident(schema)
        self.table = _ident(table)
        self._t = f"{self.schema}.{self.table}"
        self._lock_timeout = lock_timeout
        self._live = -1
        self._live_at = 0.0
        conninfo, _ = parse_store(dsn)

        def configure(conn: Any) -> None:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            conn.execute("SET hnsw.iterative_scan = relaxed_order")

        self._pool = ConnectionPool(conninfo, min_size=1, max_size=max(2, pool_size), open=False,
                                    kwargs={"autocommit": True}, configure=configure, timeout=30.0,
                                    name=f"embedsmith-{settings.name}")
        try:
            self._pool.open(wait=True, timeout=30.0)
        except Exception as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL store {self.store!r}: {exc}") from exc
        self._count_estimate()

    # -- connections ----------------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit: callers open transactions); database errors become StoreError."""
        if self._closed:
            raise StoreError(f"collection {self.name!r} is closed")
        psycopg = _psycopg()
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreError(f"no connection to PostgreSQL store {self.store!r} for collection {self.name!r}: "
                             f"{exc}") from exc
        except psycopg.errors.UniqueViolation:  # another writer added one of these ids meanwhile
            raise InvalidInputError(f"an id is already in collection {self.name!r}") from None
        except psycopg.errors.LockNotAvailable as exc:
            raise StoreError(
                f"collection {self.name!r} is being written by another process; waited {self._lock_timeout:.0f} s "
                "for its lock"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error in collection {self.name!r} ({self.store}): {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction holding the collection's write lock: all of it is committed, or none of it."""
        with self._connection() as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{int(self._lock_timeout * 1000)}ms'")
            row = conn.execute(f"SELECT tbl FROM {self.schema}.collections WHERE name = %s FOR UPDATE",
                               (self.name,)).fetchone()
            if row is None or row[0] != self.table:
                raise StoreError(f"collection {self.name!r} was deleted from {self.store!r}")
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

    # -- writes ---------------------------------------------------------------------------------------
    def _compile_where(self, where: Where | None) -> tuple[str, list[Any]]:
        return compile_where_pg(where)

    def _reject_existing(self, ids: list[str]) -> None:
        with self._connection() as conn:
            found = [r[0] for r in conn.execute(f"SELECT id FROM {self._t} WHERE NOT deleted AND id = ANY(%s)",
                                                (ids,))]
        if found:
            order = {x: i for i, x in enumerate(ids)}
            found.sort(key=order.__getitem__)
            shown = ", ".join(repr(x) for x in found[:5]) + (" ..." if len(found) > 5 else "")
            raise InvalidInputError(
                f"{len(found)} id(s) already in collection {self.name!r}: {shown}; use upsert to replace them"
            )

    def _insert(
        self, ids: list[str], texts: Sequence[str | None], meta: list[str], vectors: np.ndarray, *, replace: bool,
        delete_where: tuple[str, list[Any]] | None = None, index_texts: Sequence[str | None] | None = None,
    ) -> list[str]:
        if not ids and delete_where is None:
            return []
        from psycopg.types.json import set_json_dumps

        extra = [None if x == t else x for x, t in zip(index_texts, texts, strict=True)] \
            if index_texts is not None else [None] * len(ids)
        for i, t in enumerate(texts):
            if t is not None and "\x00" in t:
                raise InvalidInputError(f"texts[{i}] contains a NUL character, which PostgreSQL cannot store")
        with self._write() as conn:
            if replace:
                self._soft_delete(conn, "id = ANY(%s)", (ids,))
            if delete_where is not None:
                self._soft_delete(conn, delete_where[0], delete_where[1])
            before = _scalar(conn, f"SELECT COALESCE(max(seq), 0) FROM {self._t}")
            # Building the graph once over a large first batch is many times faster than inserting into it
            # row by row; the rebuild happens inside this transaction, so readers see the old, empty table.
            bulk = len(ids) >= _BULK_BUILD_ROWS and before == 0
            if bulk:
                conn.execute(f"DROP INDEX {self.schema}.{self.table}_hnsw")
            with conn.cursor() as cur:
                set_json_dumps(lambda obj: obj, context=cur)  # metadata arrives as checked JSON text
                with cur.copy(f"COPY {self._t} (id, metadata, text, index_text, vector) FROM STDIN "
                              "(FORMAT BINARY)") as copy:
                    copy.set_types(["text", "jsonb", "text", "text", "vector"])
                    for row in zip(ids, meta, texts, extra, vectors, strict=True):
                        copy.write_row(row)
            if bulk:
                conn.execute(f"SET LOCAL maintenance_work_mem = '{_BUILD_MEMORY}'")
                conn.execute(_hnsw_sql(self.schema, self.table, self.settings))
            conn.execute(
                f"UPDATE {self.schema}.collections c SET bm25_docs = c.bm25_docs + x.docs, "
                "bm25_tokens = c.bm25_tokens + x.tokens FROM (SELECT count(doclen) AS docs, "
                f"COALESCE(sum(doclen), 0) AS tokens FROM {self._t} WHERE seq > %s) x WHERE c.name = %s",
                (before, self.name))
        self._live = -1
        return ids

    def _delete(self, ids: list[str] | None, flt: tuple[str, list[Any]] | None) -> int:
        with self._write() as conn:
            if ids is not None:
                n = self._soft_delete(conn, "id = ANY(%s)", (ids,))
            elif flt is not None:
                n = self._soft_delete(conn, flt[0], flt[1])
            else:
                raise InvalidInputError("delete needs exactly one of ids= or where=")
        self._live = -1
        return n

    def compact(self, *, reindex: bool = False) -> dict[str, int]:
        """Delete soft-deleted rows, then ``VACUUM (ANALYZE)`` the table (and ``REINDEX`` it with ``reindex``,
        which rebuilds the HNSW graph without the holes deletes leave; it blocks writers meanwhile).

        ``bytes_after`` may equal ``bytes_before``: plain VACUUM makes the space reusable by later writes
        rather than returning it to the operating system.
        """
        with self._write() as conn:
            dropped = conn.execute(f"DELETE FROM {self._t} WHERE deleted").rowcount
        before = self.disk_bytes()
        with self._connection() as conn:  # autocommit: VACUUM cannot run inside a transaction
            conn.execute(f"VACUUM (ANALYZE) {self._t}")
            if reindex:
                conn.execute(f"REINDEX TABLE {self._t}")
        self._live = -1
        return {"dropped": int(dropped), "bytes_before": before, "bytes_after": self.disk_bytes()}

    # -- reads ----------------------------------------------------------------------------------------
    def count(self) -> int:
        """Live (not deleted) records, including writes by other processes."""
        with self._connection() as conn:
            n = int(_scalar(conn, f"SELECT count(*) FROM {self._t} WHERE NOT deleted"))
        self._live, self._live_at = n, time.monotonic()
        return n

    def _count_estimate(self) -> int:
        """The live count, at most a second old: only picks exact vs HNSW search, never what is found."""
        if self._live < 0 or time.monotonic() - self._live_at > 1.0:
            return self.count()
        return self._live

    def _get(self, ids: list[str] | None, flt: tuple[str, list[Any]] | None, limit: int | None,
             include_vectors: bool) -> list[tuple[Any, ...]]:
        cols = "id, text, metadata::text" + (", vector" if include_vectors else "")
        with self._connection() as conn:
            if ids is not None:
                rows = conn.execute(f"SELECT {cols} FROM {self._t} WHERE NOT deleted AND id = ANY(%s)",
                                    (ids,)).fetchall()
            elif flt is not None:
                lim = f" LIMIT {int(limit)}" if limit is not None else ""
                rows = conn.execute(
                    f"SELECT {cols} FROM {self._t} WHERE NOT deleted AND ({flt[0]}) ORDER BY seq{lim}", flt[1]
                ).fetchall()
            else:
                raise InvalidInputError("get needs exactly one of ids= or where=")
        if include_vectors:
            return [(*r[:3], r[3].to_numpy()) for r in rows]
        return rows

    def _distinct(self, fields: tuple[str, ...]) -> set[tuple[Any, ...]]:
        cols = ", ".join("metadata -> %s" for _ in fields)
        with self._connection() as conn:
            rows = conn.execute(f"SELECT DISTINCT {cols} FROM {self._t} WHERE NOT deleted", fields).fetchall()

        def plain(v: Any) -> Any:  # as SQLite's json_extract gives them: containers as JSON text, JSON null as None
            return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v

        return {tuple(plain(v) for v in r) for r in rows}

    def _export(self, batch: int) -> Iterator[Batch]:
        with self._connection() as conn, conn.transaction():
            cur = conn.cursor(name=f"export_{uuid.uuid4().hex[:8]}")
            cur.itersize = batch
            cur.execute(f"SELECT id, text, index_text, metadata::text, vector FROM {self._t} WHERE NOT deleted "
                        "ORDER BY seq")
            while rows := cur.fetchmany(batch):
                vectors = np.stack([r[4].to_numpy() for r in rows]).astype(np.float32, copy=False)
                yield ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                       vectors)
            cur.close()

    def _dense(self, q: np.ndarray, k: int, flt: tuple[str, list[Any]], *, ef: int, exact: bool,
               rescore: int | None) -> list[Ranked]:
        s = self.settings
        sql, params = flt
        score = _score(s, "%s")
        if exact or self._count_estimate() <= self.exact_below:
            return self._scan(q, k, flt)
        approximate_codes = s.precision is not Precision.FLOAT32 or s.dims < s.dim
        factor = rescore or (10 if s.precision is Precision.BINARY else 4 if approximate_codes else 1)
        op, _ = _index_op(s)
        want = k * factor
        stmt = (
            f"WITH cand AS MATERIALIZED (SELECT seq FROM {self._t} WHERE NOT deleted AND ({sql}) "
            f"ORDER BY {_code(s, 'vector')} {op} {_code(s, '%s::vector')} LIMIT %s) "
            f"SELECT {score} AS score, id, text, metadata::text FROM {self._t} JOIN cand USING (seq) "
            "ORDER BY score DESC, id LIMIT %s"
        )
        with self._connection() as conn, conn.transaction(), conn.pipeline():
            # ef_search below the rows wanted would cut the list short; pgvector caps it at 1000.
            conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(ef, want), _MAX_EF_SEARCH)}")
            cur = conn.execute(stmt, (*params, q, want, q, k))
            hits: list[Ranked] = [tuple(r) for r in cur.fetchall()]
        if len(hits) < k and sql != "TRUE":
            with self._connection() as conn:
                matching = _scalar(conn, f"SELECT count(*) FROM {self._t} WHERE NOT deleted AND ({sql})", params)
            if matching > len(hits):  # the graph missed some: scan the matching rows exactly
                return self._scan(q, k, flt)
        return hits

    def _scan(self, q: np.ndarray, k: int, flt: tuple[str, list[Any]]) -> list[Ranked]:
        """Exact top k over every live row passing the filter (a sequential scan, or the GIN index's rows)."""
        sql, params = flt
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_score(self.settings, '%s')} AS score, id, text, metadata::text FROM {self._t} "
                f"WHERE NOT deleted AND ({sql}) ORDER BY score DESC, id LIMIT %s", (q, *params, k)).fetchall()
        return [tuple(r) for r in rows]

    def _bm25(self, query: str, n: int, flt: tuple[str, list[Any]], *, reader: bool = False) -> list[Ranked]:
        """Top ``n`` live rows by Okapi BM25 over English lexemes (see the module docstring), ties by id."""
        match_expression(query)  # the same checks and messages as the embedded store
        sql, params = flt
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
                    SELECT seq, tsv, doclen, ({sql}) AS passes FROM {self._t}
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
                SELECT sc.score, r.id, r.text, r.metadata::text FROM scored sc JOIN {self._t} r USING (seq)
                ORDER BY sc.score DESC, r.id LIMIT %s
                """,
                (self.name, *params, tsquery, lexemes, n)).fetchall()
        return [tuple(r) for r in rows]

    # -- management -----------------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes of the table, its TOAST data and its indexes."""
        with self._connection() as conn:
            return int(_scalar(conn, "SELECT pg_total_relation_size(%s)", (self._t,)))

    def info(self) -> dict[str, Any]:
        s = self.settings
        with self._connection() as conn:
            total = int(_scalar(conn, f"SELECT count(*) FROM {self._t}"))
        return {
            "name": s.name, "count": self.count(), "model": s.model, "fingerprint": s.fingerprint,
            "prompts": s.prompts, "dim": s.dim, "dims": s.dims, "precision": s.precision.value,
            "metric": s.metric.value, "disk_bytes": self.disk_bytes(),
            "path": f"{self.store} (table {self._t})", "index_vectors": total,
        }

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
        _hnsw_sql(schema, table, s),
    ]


def _hnsw_sql(schema: str, table: str, s: CollectionSettings) -> str:
    _, opclass = _index_op(s)
    return (f"CREATE INDEX {table}_hnsw ON {schema}.{table} USING hnsw (({_code(s, 'vector')}) {opclass}) "
            f"WITH (m = {s.hnsw_m}, ef_construction = {s.ef_construction})")


def create_pg_collection(
    dsn: str, settings: CollectionSettings, enc: Encoder | None = None, *, ef_search: int = 64,
    exact_below: int = 10_000, lock_timeout: float = 10.0, pool_size: int = 4,
) -> PgCollection:
    """Create a new collection with ``settings`` in a PostgreSQL store."""
    _check_pg_settings(settings)
    _, schema = parse_store(dsn)
    psycopg = _psycopg()
    table = f"records_{uuid.uuid4().hex[:16]}"
    with _connect(dsn) as conn:
        _setup_schema(conn, schema, dsn)
        try:
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO {schema}.collections(name, tbl, format_version, settings) VALUES (%s, %s, %s, %s)",
                    (settings.name, table, PG_FORMAT_VERSION, json.dumps(settings.to_meta())))
                for stmt in _table_sql(schema, table, settings):
                    conn.execute(stmt)
        except psycopg.errors.UniqueViolation:
            raise StoreError(f"collection {settings.name!r} already exists in {mask_dsn(dsn)!r}") from None
        except psycopg.Error as exc:
            raise StoreError(f"cannot create collection {settings.name!r} in {mask_dsn(dsn)!r}: {exc}") from exc
    return PgCollection(dsn, schema, table, settings, enc, exact_below=exact_below, ef_search=ef_search,
                        lock_timeout=lock_timeout, pool_size=pool_size)


def open_pg_collection(
    name: str, dsn: str, enc: Encoder | None, metric: Metric | None, precision: Precision | None,
    dims: int | None, dim: int | None, calibration: Int8Calibration | None, *, create: bool, hnsw_m: int,
    ef_construction: int, ef_search: int, exact_below: int, lock_timeout: float, pool_size: int,
) -> PgCollection:
    """:func:`~embedsmith.store.open_collection` for a ``postgresql://`` store."""
    _, schema = parse_store(dsn)
    with _connect(dsn) as conn:
        _setup_schema(conn, schema, dsn)
        row = conn.execute(f"SELECT tbl, format_version, settings FROM {schema}.collections WHERE name = %s",
                           (name,)).fetchone()
    if row is None:
        if not create:
            raise StoreError(f"no collection {name!r} in {mask_dsn(dsn)!r}")
        settings = new_settings(name, enc, metric or Metric.COSINE, precision or Precision.FLOAT32, dims, dim,
                                calibration, hnsw_m, ef_construction)
        try:
            return create_pg_collection(dsn, settings, enc, ef_search=ef_search, exact_below=exact_below,
                                        lock_timeout=lock_timeout, pool_size=pool_size)
        except StoreError as exc:
            if "already exists" not in str(exc):
                raise
            # Another process created it between our look and our insert: open theirs.
            return open_pg_collection(name, dsn, enc, metric, precision, dims, dim, calibration, create=False,
                                      hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                                      exact_below=exact_below, lock_timeout=lock_timeout, pool_size=pool_size)
    table, version, meta = row
    if version > PG_FORMAT_VERSION:
        raise StoreError(
            f"collection {name!r} has PostgreSQL store format {version}; this embedsmith reads up to "
            f"{PG_FORMAT_VERSION}: upgrade embedsmith"
        )
    settings = CollectionSettings.from_meta(meta)
    check_requested(settings, metric, precision, dims, dim)
    if enc is not None:
        check_encoder(settings, enc)
    return PgCollection(dsn, schema, table, settings, enc, exact_below=exact_below, ef_search=ef_search,
                        lock_timeout=lock_timeout, pool_size=pool_size)


def list_pg_collections(dsn: str) -> list[str]:
    """Names of the collections in a PostgreSQL store (none when its schema is not set up)."""
    _, schema = parse_store(dsn)
    with _connect(dsn) as conn:
        if _scalar(conn, "SELECT to_regclass(%s)", (f"{schema}.collections",)) is None:
            return []
        return [r[0] for r in conn.execute(f"SELECT name FROM {schema}.collections ORDER BY name")]


def delete_pg_collection(name: str, dsn: str, *, lock_timeout: float = 10.0) -> None:
    """Drop a collection's table and registry row in one transaction."""
    _, schema = parse_store(dsn)
    psycopg = _psycopg()
    with _connect(dsn) as conn:
        _setup_schema(conn, schema, dsn)
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
                row = conn.execute(f"DELETE FROM {schema}.collections WHERE name = %s RETURNING tbl",
                                   (name,)).fetchone()
                if row is None:
                    raise StoreError(f"no collection {name!r} in {mask_dsn(dsn)!r}")
                conn.execute(f"DROP TABLE IF EXISTS {schema}.{_ident(row[0])}")
        except psycopg.Error as exc:
            raise StoreError(f"cannot delete collection {name!r} from {mask_dsn(dsn)!r}: {exc}") from exc


__all__ = ["PgCollection", "create_pg_collection", "delete_pg_collection", "list_pg_collections", "mask_dsn",
           "open_pg_collection", "parse_store"]
