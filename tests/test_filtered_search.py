"""Filtered search at every selectivity, metadata indexes, search_many and the in-memory id table, on both
backends (``store`` runs each test on SQLite + faiss and on PostgreSQL + pgvector)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from embedsmith import InvalidInputError, open_collection
from embedsmith.store import is_postgres

N = 12_000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12,000 clustered unit vectors [N, 32], 20 queries, and a bucket per row: bucket b holds ~b% of rows
    for b in 1..4 (and bucket 0 ~0.1%); the rest are bucket 9."""
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(50, 32))
    x = centers[rng.integers(0, 50, N)] + 0.5 * rng.normal(size=(N, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = centers[rng.integers(0, 50, 20)] + 0.5 * rng.normal(size=(20, 32))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    u = rng.random(N)
    bucket = np.full(N, 9)
    bucket[u < 0.50] = 4  # 50%
    bucket[u < 0.10] = 3  # 10%
    bucket[u < 0.03] = 2  # 2%
    bucket[u < 0.01] = 1  # 1%
    bucket[u < 0.0015] = 0  # 0.15%: ~18 rows
    return x, q, bucket


def _build(store, data, name):  # type: ignore[no-untyped-def]
    x, _, bucket = data
    c = open_collection(name, store=store, dim=32, exact_below=0)
    c.add_vectors(x, [str(i) for i in range(N)],
                  metadata=[{"bucket": int(b), "year": 2000 + int(b), "tag": f"t{b}"} for b in bucket])
    return c


def _exact(data, rows: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    x = data[0]
    scores = x[rows] @ q
    order = np.lexsort((rows.astype(str), -scores))[:k]
    return [str(r) for r in rows[order]]


def _check_selectivities(c, data, *, indexed: bool, postgres: bool) -> None:  # type: ignore[no-untyped-def]
    _, queries, bucket = data
    for b in (0, 1, 2, 3, 4):
        rows = np.nonzero(bucket == b)[0]
        for where in ({"bucket": b}, {"year": {"$gte": 2000 + b, "$lt": 2001 + b}}, {"tag": {"$in": [f"t{b}"]}}):
            recalls = []
            for q in queries:
                hits = c.search(q, k=10, where=where, include=["ids", "scores"])
                assert len(hits) == 10, (b, where)  # always at least 10 rows match
                assert all(bucket[int(i)] == b for i in hits.ids), (b, where)
                assert hits.scores == sorted(hits.scores, reverse=True)
                truth = _exact(data, rows, q, 10)
                recalls.append(len(set(hits.ids) & set(truth)) / 10)
            # The few matching rows of a selective filter on an indexed field are scored exactly (SQLite
            # pre-filters through the index); the others walk the graph, widened until k pass, or scan.
            exact = indexed and not postgres and len(rows) <= 2000 and "tag" not in where
            assert np.mean(recalls) >= (1.0 if exact else 0.9), (b, where, np.mean(recalls))
        full = c.search(queries[0], k=10, where={"bucket": b})
        assert all(m["bucket"] == b for m in full.metadata) and all(t is None for t in full.texts)
    # k larger than the matching rows: all of them, exactly
    rare = np.nonzero(bucket == 0)[0]
    hits = c.search(queries[0], k=len(rare) + 5, where={"bucket": 0})
    assert hits.ids == _exact(data, rare, queries[0], len(rare))


def test_filtered_search_returns_k_hits_at_every_selectivity_with_and_without_indexes(store, data):
    _, queries, _bucket = data
    with _build(store, data, "sel") as c, open_collection("sel", store=store) as other:
        _check_selectivities(c, data, indexed=False, postgres=is_postgres(store))
        assert c.indexes() == [] and other.indexes() == []
        assert c.create_index("bucket") is True and c.create_index("year") is True
        assert c.create_index("bucket") is False
        c.create_index("naïve 'quote' % key")
        assert other.indexes() == ["bucket", "naïve 'quote' % key", "year"]  # another handle sees them at once
        _check_selectivities(other, data, indexed=True, postgres=is_postgres(store))
        for bad in ("", "$and", 'a"b', 3, None):
            with pytest.raises(InvalidInputError):
                c.create_index(bad)  # type: ignore[arg-type]
        assert c.drop_index("naïve 'quote' % key") is True and c.drop_index("never") is False
        # A row added after the index was built is found through it; a deleted one is not.
        before = other.search(queries[1], k=10, where={"bucket": 1}).ids
        c.add_vectors(queries[1:2], ["new"], metadata=[{"bucket": 1}])
        c.delete([before[0]])
        after = other.search(queries[1], k=10, where={"bucket": 1}).ids
        assert after[0] == "new" and before[0] not in after
    with open_collection("sel", store=store) as again:
        assert again.indexes() == ["bucket", "year"]


def test_sqlite_filters_use_the_index_they_name(tmp_path, data):
    """The index's expression is the literal JSON path filters emit, so SQLite's planner uses it."""
    with _build(tmp_path, data, "plan") as c:
        c.create_index("year")
        flt = c._compile_where({"year": {"$gte": 2001, "$lt": 2002}})
        plan = " ".join(str(r[-1]) for r in c._conn.execute(
            f"EXPLAIN QUERY PLAN SELECT seq FROM records WHERE deleted = 0{flt.and_sql()}", flt.params))
        assert "USING INDEX records_meta_" in plan, plan
        assert c.verify().ok
        name = plan.split("USING INDEX ")[1].split()[0]
    with sqlite3.connect(tmp_path / "plan" / "collection.sqlite") as raw:  # lost by hand (or an old copy)
        raw.execute(f"DROP INDEX {name}")
    with open_collection("plan", store=tmp_path) as c:
        report = c.verify()
        assert not report.ok and "'year'" in " ".join(report.problems)
        c.repair()
        assert c.verify().ok and c.indexes() == ["year"]


def test_search_many_and_light_search_over_other_handles_writes(store, data):
    """search_many equals search one query at a time; ids and scores come from the in-memory id table, and
    another writer's delete or upsert shows there at once."""
    _, queries, _bucket = data
    with _build(store, data, "many") as c, open_collection("many", store=store) as other:
        for kw in ({}, {"include": ["ids", "scores"]}, {"where": {"bucket": {"$in": [1, 2]}}}, {"k": 3, "ef": 200}):
            many = c.search_many(list(queries), **kw)
            assert len(many) == len(queries)
            for q, got in zip(queries, many, strict=True):
                one = c.search(q, **kw)
                assert got.ids == one.ids and got.metadata == one.metadata
                np.testing.assert_allclose(got.scores, one.scores, atol=1e-5)
        assert [h.ids for h in c.search_many(queries[:3])] == [c.search(q).ids for q in queries[:3]]  # 2-d array
        for bad in ([], "text", queries[0], [queries[0], ""]):
            with pytest.raises(InvalidInputError):
                c.search_many(bad)
        for q in queries:  # the straight path of an ids+scores search answers as the general one
            light, full = c.search(q, k=10, include=["ids", "scores"]), c.search(q, k=10)
            assert light.ids == full.ids and light.texts == [None] * 10
            np.testing.assert_allclose(light.scores, full.scores, atol=1e-6)
        top = c.search(queries[2], k=5, include=["ids", "scores"]).ids
        other.delete([top[0]])
        other.upsert_vectors(-queries[2:3], [top[1]])  # now the farthest point
        other.add_vectors(queries[2:3], ["exact"])
        now = c.search(queries[2], k=5, include=["ids", "scores"]).ids
        assert now[0] == "exact" and top[0] not in now and top[1] not in now
        assert now == c.search(queries[2], k=5).ids
        assert c.search(-queries[2], k=1, include=["ids"]).ids == [top[1]]


def test_ties_are_broken_by_id_in_an_ids_only_search(tmp_path):
    with open_collection("t", store=tmp_path, dim=4, exact_below=0) as c:
        v = np.array([[1, 0, 0, 0]] * 5 + [[0, 1, 0, 0]] * 20, np.float32)
        c.add_vectors(v, ["e", "b", "d", "a", "c"] + [f"z{i:02d}" for i in range(20)])
        assert c.search(v[0], k=5, include=["ids", "scores"]).ids == ["a", "b", "c", "d", "e"]


OTHER_PROCESS = """
import sys, numpy as np
from embedsmith import open_collection
q = np.array([float(x) for x in sys.argv[3].split(",")], np.float32)
with open_collection("proc", store=sys.argv[1]) as c:
    c.delete([sys.argv[2]])
    c.add_vectors(q[None], ["from-the-other-process"])
"""


def test_an_ids_only_search_sees_another_processs_delete_and_add(store, data):
    """The in-memory id table is caught up from another process's commits: a real second process deletes the
    best hit and adds a closer record; the next ids+scores search shows both."""
    x, queries, _ = data
    with open_collection("proc", store=store, dim=32, exact_below=0) as c:
        c.add_vectors(x[:3000], [str(i) for i in range(3000)])
        q = queries[4]
        top = c.search(q, k=5, include=["ids", "scores"]).ids
        subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(store), top[0], ",".join(map(str, q.tolist()))],
                       check=True, timeout=120)
        now = c.search(q, k=5, include=["ids", "scores"]).ids
        assert now[0] == "from-the-other-process" and top[0] not in now
        assert now[1:] == top[1:]


def test_range_filters_compare_numbers_only_on_both_backends(store):
    with open_collection("types", store=store, dim=4) as c:
        rng = np.random.default_rng(5)
        c.add_vectors(rng.normal(size=(4, 4)).astype(np.float32), ["num", "text", "bool", "none"],
                      metadata=[{"year": 2001}, {"year": "unknown"}, {"year": True}, {}])
        # texts never fall in a range (SQLite orders text above numbers); SQLite reads true as 1, PostgreSQL
        # leaves booleans out (documented in store/filters.py)
        for where in ({"year": {"$gt": 2}}, {"year": {"$lt": 3000, "$gt": 2}}, {"year": {"$gte": 2, "$lte": 2001.5}}):
            assert [r["id"] for r in c.get(where=where)] == ["num"], where
            assert c.search(rng.normal(size=4).astype(np.float32), k=4, where=where).ids == ["num"], where
        assert "text" not in {r["id"] for r in c.get(where={"year": {"$gt": 0}})}
        c.create_index("year")  # the indexed plan gives the same rows
        assert c.search(rng.normal(size=4).astype(np.float32), k=4, where={"year": {"$gt": 2}}).ids == ["num"]
