"""What is particular to the PostgreSQL + pgvector backend: DSNs, BM25 in SQL, migration, locking, atomic batches.

The shared contract runs in test_collection_contract.py; these need the test server too (see conftest.py),
except the first two.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsmith import InvalidInputError, list_collections, open_collection
from embedsmith.errors import StoreError
from embedsmith.store import migrate_collection
from embedsmith.store.pgvector import mask_dsn, parse_store


def test_dsn_masking_and_schema_parameter():
    assert mask_dsn("postgresql://bob:s3cret@db:5432/x?sslmode=require&password=p") == \
        "postgresql://bob:***@db:5432/x?sslmode=require&password=%2A%2A%2A"
    assert parse_store("postgresql://bob@db/x?schema=tenant_1&sslmode=require") == \
        ("postgresql://bob@db/x?sslmode=require", "tenant_1")
    assert parse_store("postgres://db/x")[1] == "embedsmith"
    with pytest.raises(InvalidInputError, match=r"schema 'Robert\); DROP' in store"):
        parse_store("postgresql://db/x?schema=Robert);%20DROP")


def test_unreachable_server_is_a_store_error_without_the_password():
    shown = r"cannot connect to PostgreSQL store 'postgresql://u:\*\*\*@127.0.0.1:1/x'"
    with pytest.raises(StoreError, match=shown) as e:
        open_collection("c", store="postgresql://u:topsecret@127.0.0.1:1/x", dim=4)
    assert "topsecret" not in str(e.value)


# Words without stopwords that the Porter (SQLite) and Snowball (PostgreSQL) stemmers leave alone, so both
# backends count the same tokens: their BM25 scores must agree.
DOCS = ["zebra lion zebra", "lion tiger", "tiger tiger tiger zebra giraffe", "giraffe", "okapi zebra lion tiger"]


def test_bm25_scores_match_the_embedded_store(tmp_path, pg_server):
    from conftest import pg_schema

    rng = np.random.default_rng(0)
    v = rng.normal(size=(len(DOCS), 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(DOCS))]
    with pg_schema(pg_server) as pg:
        results = []
        for store in (str(tmp_path), pg):
            with open_collection("b", store=store, dim=8) as c:
                c.add_vectors(v, ids, texts=DOCS, metadata=[{"n": i} for i in range(len(DOCS))])
                c.delete(["d3"])  # statistics follow deletes
                results.append([c.search(q, k=5, mode="bm25") for q in ("zebra", "lion tiger", "okapi giraffe")])
                filtered = c.search("zebra", k=5, mode="bm25", where={"n": {"$gte": 2}})
                assert set(filtered.ids) == {"d2", "d4"}
                results[-1].append(filtered)
        for lite, post in zip(*results, strict=True):
            assert post.ids == lite.ids
            np.testing.assert_allclose(post.scores, lite.scores, rtol=1e-5)


def test_a_failed_batch_writes_nothing(pg_server):
    from conftest import pg_schema

    v = np.eye(4, dtype=np.float32)
    with pg_schema(pg_server) as pg, open_collection("a", store=pg, dim=4) as c:
        c.add_vectors(v[:2], ["a", "b"], texts=["zebra", "lion"])
        before = c.search("zebra", k=1, mode="bm25").scores
        # Past the up-front id check (as when another writer adds "b" meanwhile): the COPY fails at its last row.
        with pytest.raises(InvalidInputError, match=r"collection 'a'.*an id is already in the collection"), c._errors():
            c._insert(["c", "d", "b"], ["zebra", "zebra", "zebra"], ["{}"] * 3, v[:3], replace=False)
        assert c.count() == 2 and c.get(["c", "d"]) == []
        assert c.search("zebra", k=1, mode="bm25").scores == before  # BM25 statistics untouched


def test_second_writer_waits_then_gets_a_clear_error(pg_server):
    import psycopg

    from conftest import pg_schema

    with pg_schema(pg_server) as pg, open_collection("w", store=pg, dim=4, lock_timeout=0.3) as c:
        other = psycopg.connect(pg_server)
        try:
            other.execute(f"SELECT 1 FROM {c.schema}.collections WHERE name = 'w' FOR UPDATE")
            with pytest.raises(StoreError, match=r"'w' is being written by another process; waited 0\.3 s"):
                c.add_vectors(np.eye(4, dtype=np.float32)[:1], ["a"])
        finally:
            other.rollback()
            other.close()
        c.add_vectors(np.eye(4, dtype=np.float32)[:1], ["a"])
        assert c.count() == 1


def test_migrate_both_ways_without_re_embedding(tmp_path, pg_server):
    from conftest import pg_schema
    from embedsmith.cli import app

    rng = np.random.default_rng(1)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    recs = [{"id": f"r{i}", "text": f"record {i}", "metadata": {"i": i, "tags": ["x", i]}} for i in range(300)]
    with open_collection("m", store=tmp_path / "a", dim=16, metric="dot", precision="float16", dims=8) as c:
        c.add_vectors(v, [r["id"] for r in recs], texts=[r["text"] for r in recs],
                      metadata=[r["metadata"] for r in recs])
        c.delete(["r7"])
        c.create_index("i")
        want = c.search(v[3], k=5, exact=True)
    with pg_schema(pg_server) as pg:
        report = migrate_collection("m", tmp_path / "a", pg, batch=64)
        assert report == {"name": "m", "target_name": "m", "count": 299, "checked": 200}
        with open_collection("m", store=pg) as c:
            s = c.settings
            assert (s.metric.value, s.precision.value, s.dims, s.dim) == ("dot", "float16", 8, 16)
            got = c.search(v[3], k=5, exact=True)  # exact over the full vectors, not the float16 8-dim codes
            live = np.delete(np.arange(300), 7)
            truth = live[np.argsort(-(v[live] @ v[3]), kind="stable")[:5]]
            assert got.ids == [f"r{i}" for i in truth]
            np.testing.assert_allclose(got.scores, v[truth] @ v[3], rtol=1e-5)
            assert c.get(["r7"]) == [] and c.get(["r8"])[0]["metadata"] == {"i": 8, "tags": ["x", 8]}
            assert c.indexes() == ["i"]  # metadata indexes travel with the collection
        with pytest.raises(StoreError, match="collection 'm' already exists"):
            migrate_collection("m", tmp_path / "a", pg)
        out = CliRunner().invoke(app, ["migrate", "-c", "m", "--from", pg, "--to", str(tmp_path / "b")])
        assert out.exit_code == 0, out.output
        assert "299 records, counts equal, 200 sampled records identical" in out.output
    assert list_collections(tmp_path / "b") == ["m"]
    with open_collection("m", store=tmp_path / "b") as c:
        assert c.count() == 299 and c.search(v[3], k=5, exact=True).ids == want.ids
        assert c.indexes() == ["i"]
