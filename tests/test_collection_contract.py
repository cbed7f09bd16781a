"""The collections contract, run against both backends: the embedded store (SQLite + faiss HNSW) and
PostgreSQL + pgvector (a temporary schema on the test server; see ``store`` in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from embedsmith import IndexRebuildWarning, InvalidInputError, list_collections, open_collection, pairwise
from embedsmith.errors import SettingsMismatchError, StoreError
from embedsmith.similarity import higher_is_closer, top_k
from embedsmith.store import is_postgres


def make(store, name="c", **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("dim", 32)
    return open_collection(name, store=store, **kw)


WRITER = """
import sys, numpy as np
from embedsmith import open_collection
store, start, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(start)
c = open_collection("k", store=store, dim=32, save_every=int(sys.argv[5]), exact_below=0)
for b in range(batches):
    ids = [f"{start}-{b}-{i}" for i in range(size)]
    v = rng.normal(size=(size, 32)).astype(np.float32)
    c.add_vectors(v, ids, metadata=[{"batch": f"{start}-{b}"}] * size)
    print(" ".join(ids), flush=True)
c.close()
"""


def test_add_get_count_search_roundtrip(store, vecs):
    with make(store) as c:
        ids = c.add_vectors(vecs[:100], [f"d{i}" for i in range(100)],
                            texts=[f"text {i}" for i in range(100)], metadata=[{"i": i} for i in range(100)])
        assert ids[:2] == ["d0", "d1"] and c.count() == 100
        got = c.get(["d5", "missing", "d2"], include_vectors=True)
        assert [g["id"] for g in got] == ["d5", "d2"]
        assert got[0]["text"] == "text 5" and got[0]["metadata"] == {"i": 5}
        np.testing.assert_allclose(got[0]["vector"], vecs[5], atol=1e-6)
        hits = c.search(vecs[7], k=3)
        assert hits.ids[0] == "d7" and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert hits.texts[0] == "text 7" and hits.metadata[0] == {"i": 7}
        assert hits.scores == sorted(hits.scores, reverse=True)
    assert list_collections(store) == ["c"]


def test_duplicate_ids_write_nothing(store, vecs):
    with make(store) as c:
        c.add_vectors(vecs[:3], ["a", "b", "c"])
        with pytest.raises(InvalidInputError, match=r"1 id\(s\) already in collection 'c': 'b'"):
            c.add_vectors(vecs[3:5], ["new", "b"])
        with pytest.raises(InvalidInputError, match="'x' appears more than once"):
            c.add_vectors(vecs[3:5], ["x", "x"])
        assert c.count() == 3 and c.get(["new"]) == []


def test_upsert_delete_compact(store, vecs):
    with make(store, exact_below=0) as c:
        c.add_vectors(vecs[:500], [str(i) for i in range(500)], metadata=[{"even": i % 2 == 0} for i in range(500)])
        c.upsert_vectors(vecs[600:601], ["3"], texts=["replaced"])
        assert c.count() == 500 and c.get(["3"])[0]["text"] == "replaced"
        assert c.search(vecs[600], k=1).ids == ["3"]
        assert c.search(vecs[3], k=1).ids != ["3"] or c.search(vecs[3], k=1).scores[0] < 0.999
        assert c.delete(["1", "2", "nope"]) == 2
        assert c.delete(where={"even": True}) == 249  # "2" was already gone
        assert c.count() == 249
        hits = c.search(vecs[4], k=20)
        assert all(int(h) % 2 == 1 or h == "3" for h in hits.ids) and "1" not in hits.ids
        stats = c.compact()
        assert stats["dropped"] == 252 and c.count() == 249
        assert c.info()["index_vectors"] == 249
        if is_postgres(store):  # plain VACUUM keeps the space for reuse; REINDEX rebuilds the graph
            assert c.compact(reindex=True)["dropped"] == 0
        else:
            assert stats["bytes_after"] < stats["bytes_before"]
        assert c.search(vecs[5], k=1).ids == ["5"]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2", "manhattan"])
@pytest.mark.parametrize("exact_below", [0, 10_000])
def test_metrics_match_brute_force(store, metric, exact_below):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1500, 16)).astype(np.float32)
    queries = rng.normal(size=(10, 16)).astype(np.float32)
    with open_collection("m", store=store, dim=16, metric=metric, exact_below=exact_below, ef_search=200) as c:
        c.add_vectors(data, [f"{i:05d}" for i in range(1500)])
        stored = data / np.linalg.norm(data, axis=1, keepdims=True) if metric == "cosine" else data
        ref = top_k(queries, stored, 10, metric=metric)
        recall = []
        for qi, q in enumerate(queries):
            hits = c.search(q, k=10)
            expected = [f"{i:05d}" for i in ref.indices[qi]]
            recall.append(len(set(hits.ids) & set(expected)) / 10)
            natural = np.asarray(ref.scores[qi])
            want = natural if higher_is_closer(metric) else -natural  # scores are higher-is-better
            if hits.ids == expected:
                np.testing.assert_allclose(hits.scores, want, rtol=1e-4, atol=1e-4)
        assert np.mean(recall) >= (1.0 if exact_below else 0.95)


@pytest.fixture(scope="module")
def minilm_stsb(stsb, minilm_onnx) -> tuple[np.ndarray, np.ndarray]:
    """Real MiniLM vectors of STSb dev sentences: 2,900 to store and 100 held-out queries."""
    sentences = list(dict.fromkeys(stsb[0] + stsb[1]))[:3000]
    v = minilm_onnx.encode(sentences)
    return v[100:], v[:100]


@pytest.mark.parametrize(("precision", "dims", "floor"), [("float16", None, 0.97), ("int8", None, 0.97),
                                                          ("binary", None, 0.95), ("float32", 128, 0.9)])
def test_precisions_and_funnel_rescore_to_exact_scores(store, minilm_stsb, precision, dims, floor):
    data, queries = minilm_stsb
    if is_postgres(store) and precision == "int8":
        with pytest.raises(InvalidInputError, match="precision int8 is not available on PostgreSQL"):
            open_collection("p", store=store, dim=384, precision=precision)
        return
    with open_collection("p", store=store, dim=384, precision=precision, dims=dims, exact_below=0) as c:
        c.add_vectors(data, [str(i) for i in range(len(data))])
        ref = top_k(queries, data, 10)
        recall = []
        for qi, q in enumerate(queries):
            hits = c.search(q, k=10)
            exact_scores = pairwise(q, data[[int(i) for i in hits.ids]])[0]
            np.testing.assert_allclose(hits.scores, exact_scores, atol=1e-5)  # rescored with full vectors
            recall.append(len(set(map(int, hits.ids)) & set(ref.indices[qi].tolist())) / 10)
        assert np.mean(recall) >= floor, (precision, np.mean(recall))


def test_filters(store, vecs):
    meta = [{"lang": ["en", "de", "fr"][i % 3], "year": 1990 + i % 30, "rare": i % 250 == 0} for i in range(3000)]
    with make(store, exact_below=0) as c:
        c.add_vectors(vecs, [str(i) for i in range(3000)], metadata=meta)
        q = vecs[1]

        def check(where, pred):  # type: ignore[no-untyped-def]
            hits = c.search(q, k=10, where=where)
            assert hits.ids and all(pred(m) for m in hits.metadata), where
            return hits

        check({"lang": "de"}, lambda m: m["lang"] == "de")
        check({"lang": {"$in": ["fr", "de"]}}, lambda m: m["lang"] != "en")
        check({"lang": {"$ne": "en"}}, lambda m: m["lang"] != "en")
        check({"year": {"$gte": 2000, "$lt": 2005}}, lambda m: 2000 <= m["year"] < 2005)
        check({"$or": [{"lang": "en"}, {"year": 1990}]}, lambda m: m["lang"] == "en" or m["year"] == 1990)
        check({"$and": [{"lang": "en"}, {"year": {"$gt": 2010}}]}, lambda m: m["lang"] == "en" and m["year"] > 2010)
        # 12 rows match and sit far from the query: the graph alone would miss most of them.
        rare = check({"rare": True}, lambda m: m["rare"])
        assert len(rare) == 10
        assert len(c.search(q, k=50, where={"rare": True})) == 12
        with pytest.raises(InvalidInputError, match=r"unknown filter operator '\$regex'"):
            c.search(q, where={"lang": {"$regex": "e.*"}})
        with pytest.raises(InvalidInputError, match=r"unknown filter operator or bad field name '\$not'"):
            c.search(q, where={"$not": {"lang": "en"}})


def test_ties_broken_by_id(store):
    with open_collection("t", store=store, dim=4) as c:
        v = np.array([[1, 0, 0, 0]] * 5, np.float32)
        c.add_vectors(v, ["e", "b", "d", "a", "c"])
        assert c.search(v[0], k=5).ids == ["a", "b", "c", "d", "e"]


def test_bad_input_leaves_store_unchanged(store, vecs):
    with make(store) as c:
        c.add_vectors(vecs[:5], list("abcde"))
        bad = vecs[5:7].copy()
        bad[1, 3] = np.nan
        cases = [
            (lambda: c.add_vectors(vecs[:2, :16], ["x", "y"]), "dimension 16 .* stores 32"),
            (lambda: c.add_vectors(bad, ["x", "y"]), "vector 1 contains NaN or infinity"),
            (lambda: c.add_vectors(vecs[5:6], ["x"], metadata=[{"s": {1, 2}}]), r"metadata\[0\] is not JSON"),
            (lambda: c.add_vectors(vecs[5:6], ["x"], metadata=[{"f": float("nan")}]), r"metadata\[0\] is not JSON"),
            (lambda: c.search(vecs[0][:10]), "query has dimension 10, collection 'c' stores 32"),
            (lambda: c.search(vecs[0], k=0), "k must be a positive integer"),
            (lambda: c.delete(where={"a": {"$foo": 1}}), r"unknown filter operator '\$foo'"),
            (lambda: c.delete(), "exactly one of ids= or where="),
            (lambda: c.add(["text"]), "stores vectors without a model"),
        ]
        for fn, msg in cases:
            with pytest.raises(InvalidInputError, match=msg):
                fn()
        assert c.count() == 5 and c.get(["x"]) == []


def test_settings_mismatch_names_both_values(store):
    make(store, metric="dot").close()
    with pytest.raises(SettingsMismatchError, match="created with metric='dot'; opened with metric='l2'"):
        open_collection("c", store=store, metric="l2")
    with pytest.raises(SettingsMismatchError, match="created with dim=32; opened with dim=64"):
        open_collection("c", store=store, dim=64)
    with pytest.raises(InvalidInputError, match=r"collection name '\.\./x'"):
        open_collection("../x", store=store, dim=3)
    with pytest.raises(StoreError, match="no collection 'nope'"):
        open_collection("nope", store=store, create=False)


def test_readers_in_other_processes_see_acknowledged_writes(store):
    reader = open_collection("k", store=store, dim=32, exact_below=0)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(store), "1", "3", "40", "1000000"],
                          capture_output=True, text=True, check=True)
    written = proc.stdout.split()
    assert reader.count() == 120  # no reopen: the reader catches up from SQLite
    got = reader.get(written, include_vectors=True)
    assert len(got) == 120
    for rec in got[::17]:
        assert reader.search(rec["vector"], k=1).ids == [rec["id"]]
    reader.close()


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9(store):
    import random
    import time

    rng = random.Random(7)
    acknowledged: list[str] = []
    rounds = 8 if is_postgres(store) else 24  # the server's durability is not ours to prove at length
    for round_ in range(rounds):
        # save_every=150 makes the writer also save the index file now and then, so kills land there too.
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(round_), "100000", "25", "150"],
                                stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + rng.uniform(1.0, 3.0)
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged += line.split()
        proc.kill()  # SIGKILL: no cleanup, no close
        acknowledged += proc.stdout.read().split()  # lines printed before the kill were acknowledged too
        proc.wait()
    assert len(acknowledged) > rounds * 25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        c = open_collection("k", store=store)
    got = c.get(acknowledged, include_vectors=True)
    assert len(got) == len(acknowledged), "an acknowledged write was lost"
    total = c.count()
    assert total % 25 == 0, "a batch was half-written"
    batches: dict[str, int] = {}
    for rec in c.iter_records(batch=5000):
        for r in rec:
            batches[r["metadata"]["batch"]] = batches.get(r["metadata"]["batch"], 0) + 1
    assert set(batches.values()) == {25}
    for rec in got[:: max(1, len(got) // 40)]:
        assert c.search(rec["vector"], k=1).ids == [rec["id"]]
    c.close()


def test_text_collection_with_real_model(store, minilm_onnx):
    docs = ["The cat sat on the mat.", "Stock markets fell sharply.", "A kitten sleeps on a rug.",
            "Interest rates were raised by the central bank."]
    with open_collection("docs", store=store, encoder=minilm_onnx) as c:
        c.add(docs, ids=["cat", "stocks", "kitten", "rates"], metadata=[{"topic": t} for t in
                                                                          ["pets", "money", "pets", "money"]])
        hits = c.search("a small cat resting", k=2)
        assert set(hits.ids) == {"cat", "kitten"}
        assert c.search("finance news", k=1, where={"topic": "money"}).ids[0] in {"stocks", "rates"}
        c.add([{"id": "dog", "text": "A dog barks at the mailman.", "metadata": {"topic": "pets"}}])
        assert c.get(["dog"])[0]["metadata"] == {"topic": "pets"}
    with open_collection("docs", store=store) as c:  # the recorded model is loaded on demand
        assert c.search("puppy", k=1).ids == ["dog"]
        assert c.settings.model == "minilm" and c.settings.fingerprint.endswith(":onnx")
    from embedsmith import load_encoder

    int8 = load_encoder("minilm", backend="onnx-int8")
    with pytest.raises(SettingsMismatchError, match=r"built with model 'minilm'.*reembed"):
        open_collection("docs", store=store, encoder=int8)


def test_reembed_copies_records_with_another_encoder_and_resumes(store, minilm_onnx):
    from embedsmith.store import RecordBatch, reembed_collection

    texts = ["Cats purr when content.", "Stock markets fell.", "Kittens sleep all day.", "Interest rates rose."]
    index_texts = [None, None, "Pets\n\n" + texts[2], None]
    with make(store, "src", dim=4, metric="dot") as c:
        c.import_records(RecordBatch(ids=list("abcd"), texts=texts, index_texts=index_texts,
                                     metadata=[{"i": i} for i in range(4)], vectors=np.eye(4, dtype=np.float32)))
    with open_collection("dst", store=store, encoder=minilm_onnx, metric="dot") as d:  # an interrupted earlier run
        d.set_notes(reembed_incomplete="src")
        d.upsert([{"id": "a", "text": texts[0], "metadata": {"i": 0}}])
    report = reembed_collection("src", "dst", minilm_onnx, store=store, batch=2)
    assert report == {"name": "src", "target_name": "dst", "count": 4, "resumed": True, "resumed_after": 1,
                      "model": "minilm", "dim": 384}
    with open_collection("dst", store=store, create=False) as d:
        assert d.notes() == {} and d.metric.value == "dot"
        recs = {r["id"]: r for r in d.get(list("abcd"), include_vectors=True)}
        assert recs["b"]["metadata"] == {"i": 1} and recs["c"]["text"] == texts[2]
        # the index text (a chunk's document title in front) is what the new encoder reads, as on indexing
        want = minilm_onnx.encode(["Pets\n\n" + texts[2]], kind="document")[0]
        np.testing.assert_allclose(recs["c"]["vector"], want, atol=1e-5)
    again = reembed_collection("src", "dst", minilm_onnx, store=store)  # complete: a fresh pass, same records
    assert again["count"] == 4 and not again["resumed"]
    with pytest.raises(InvalidInputError, match="target other than the source"):
        reembed_collection("src", "src", minilm_onnx, store=store)


def test_include_leaves_texts_and_metadata_out(store, vecs):
    """`include` (as Chroma's): ids and scores always; texts and metadata only when asked, in every mode."""
    with make(store, "inc") as c:
        texts = [f"note {i} on wing flutter" for i in range(200)]
        c.add_vectors(vecs[:200], [f"r{i}" for i in range(200)], texts=texts, metadata=[{"n": i} for i in range(200)])
        full = c.search(vecs[3], k=5)
        light = c.search(vecs[3], k=5, include=["ids", "scores"])
        assert light.ids == full.ids and light.scores == full.scores
        assert light.texts == [None] * 5 and light.metadata == [{}] * 5
        meta = c.search(vecs[3], k=5, include=["metadata"])
        assert meta.metadata == full.metadata and meta.texts == [None] * 5 and meta.ids == full.ids
        words = c.search("note 7 flutter", k=3, mode="bm25", include=["texts"])
        assert words.texts == c.search("note 7 flutter", k=3, mode="bm25").texts and words.metadata == [{}] * 3
        filtered = c.search(vecs[3], k=5, where={"n": {"$lt": 100}}, include=[])
        assert filtered.ids == c.search(vecs[3], k=5, where={"n": {"$lt": 100}}).ids
        for bad in (["vectors"], "texts", [1], [["texts"]]):
            with pytest.raises(InvalidInputError, match="include"):
                c.search(vecs[3], k=5, include=bad)
