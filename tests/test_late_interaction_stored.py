"""Late interaction with token vectors stored at index time (``late_interaction=...`` at creation): the same
ranking as on the fly (to quantisation), and token rows that follow their records through every write, copy
and repair. Real MiniLM (ONNX) on small Cranfield slices."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedsmith import index_paths, open_collection
from embedsmith.encoders.cache import VectorCache
from embedsmith.errors import InvalidInputError, NoTokenVectorsError, SettingsMismatchError
from embedsmith.rerankers import LateInteraction
from embedsmith.rerankers.late_interaction import TokenCodec
from embedsmith.store import migrate_collection, reembed_collection, restore_collection, snapshot_collection
from embedsmith.store.base import same_codec

CRAN = Path(__file__).parent / "data" / "cranfield"
QUERY = "what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft"
QUERIES = [QUERY, "heat transfer in laminar boundary layers at hypersonic speeds"]

pytestmark = pytest.mark.slow


def docs(n: int, start: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (CRAN / "corpus.jsonl").read_text().splitlines()[start:start + n]]
    return [{"id": r["_id"], "text": r["text"]} for r in rows]


class Counted:
    """Counts calls of a collection's ``_late_tokens`` (the stored path) while delegating to it."""

    def __init__(self, coll: Any) -> None:
        self.coll, self.calls, self.inner = coll, 0, coll._late_tokens

    def __call__(self, ids: list[str], texts: list[str]) -> Any:
        self.calls += 1
        return self.inner(ids, texts)


def token_rows(coll: Any) -> dict[str, tuple[int, bytes]]:
    """Live id -> (token count, blob), read from the database directly (not through the code under test)."""
    conn = sqlite3.connect(str(Path(coll.folder) / "collection.sqlite"))
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT r.id, t.n, t.vectors FROM records r JOIN tokens t ON t.seq = r.seq WHERE r.deleted = 0")}
    finally:
        conn.close()


def orphan_rows(coll: Any) -> int:
    conn = sqlite3.connect(str(Path(coll.folder) / "collection.sqlite"))
    try:
        return int(conn.execute("SELECT COUNT(*) FROM tokens WHERE seq NOT IN "
                                "(SELECT seq FROM records WHERE deleted = 0)").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory):  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("stored")


@pytest.fixture(scope="module")
def f16(minilm_onnx, root):  # type: ignore[no-untyped-def]
    """40 Cranfield abstracts indexed from files (ingestion's path, through a vector cache), float16 tokens."""
    src = root / "slice.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in
                           [{"_id": d["id"], "text": d["text"]} for d in docs(40)]))
    coll = open_collection("f16", store=root, encoder=minilm_onnx, late_interaction="float16")
    report = index_paths(coll, [src], vector_cache=VectorCache(root / "cache.sqlite"))
    assert report.chunks > 0
    yield coll
    coll.close()


@pytest.fixture(scope="module")
def default(minilm_onnx, root):  # type: ignore[no-untyped-def]
    """The same 40 abstracts added as texts, with the default codec."""
    coll = open_collection("default", store=root, encoder=minilm_onnx, late_interaction=True)
    coll.add(docs(40))
    yield coll
    coll.close()


def test_every_chunk_has_its_tokens_even_through_the_vector_cache(f16, minilm_onnx) -> None:
    rows = token_rows(f16)
    assert len(rows) == f16.count()
    info = f16.info()["late_interaction"]
    assert info["precision"] == "float16" and info["rows"] == f16.count()
    assert info["bytes_per_chunk"] == pytest.approx(info["tokens_per_chunk"] * 2 * 384, rel=0.01)
    rid = next(iter(rows))
    text = f16.get([rid])[0]["text"]
    want = minilm_onnx.token_vectors([text], kind="document")[0]
    n, blob = rows[rid]
    assert n == len(want)
    assert np.allclose(TokenCodec.checked("float16").decode(blob, n, 384), want, atol=2e-3)


def test_stored_and_on_the_fly_rank_alike(f16, default, monkeypatch) -> None:
    for coll, exact in ((f16, True), (default, False)):
        counted = Counted(coll)
        monkeypatch.setattr(coll, "_late_tokens", counted)
        for q in QUERIES:
            stored = coll.search(q, k=10, rerank=LateInteraction(), candidates=20)
            fly = coll.search(q, k=10, rerank=LateInteraction(source="on-the-fly"), candidates=20)
            if exact:  # float16: the same order, scores within float16 rounding
                assert stored.ids == fly.ids
                assert np.allclose(stored.scores, fly.scores, atol=2e-3)
            else:  # 2-bit codes: the same top 10 but for a swap at the edge
                assert len(set(stored.ids) & set(fly.ids)) >= 8, (q, stored.ids, fly.ids)
        assert counted.calls == len(QUERIES)  # auto read the stored vectors; on-the-fly did not


def test_hybrid_late_interaction_reads_stored_vectors(default, monkeypatch) -> None:
    counted = Counted(default)
    monkeypatch.setattr(default, "_late_tokens", counted)
    hits = default.search(QUERY, k=10, mode="hybrid", late_interaction=True)
    assert len(hits.ids) == 10 and counted.calls == 1


def test_a_search_encodes_the_query_once_for_its_vector_and_its_token_vectors(f16, monkeypatch) -> None:
    enc = f16.encoder
    passes: list[str] = []
    for name in ("_embed", "_embed_tokens"):  # every forward pass goes through one of these
        inner = getattr(enc, name)
        monkeypatch.setattr(enc, name, lambda *a, _inner=inner, _name=name, **kw: passes.append(_name) or
                            _inner(*a, **kw))
    li = LateInteraction()
    hits = f16.search(QUERY, k=10, rerank=li, candidates=20)
    assert passes == ["_embed_tokens"]
    hybrid = f16.search(QUERY, k=10, mode="hybrid", late_interaction=True)
    assert passes == ["_embed_tokens"] * 2 and len(hybrid.ids) == 10
    monkeypatch.undo()
    # The same scores as MaxSim with the query encoded on its own, and the same first stage as a plain search
    fresh = LateInteraction().scores(QUERY, list(map(str, hits.texts)), coll=f16, ids=hits.ids)
    assert np.allclose(hits.scores, fresh, atol=1e-5)
    plain = f16.search(QUERY, k=20)
    primed = f16.search(QUERY, k=20, rerank=LateInteraction(), candidates=20)
    assert set(primed.ids) == set(plain.ids) and np.allclose(sorted(primed.first_stage_scores), sorted(plain.scores),
                                                             atol=1e-5)


def test_codec_is_recorded_and_checked_on_open(f16, default, root, minilm_onnx) -> None:
    with open_collection("default", store=root, encoder=minilm_onnx) as again:
        assert again.late_interaction is not None and again.late_interaction.precision == "int2"
    with open_collection("f16", store=root, encoder=minilm_onnx, late_interaction=True) as again:
        assert again.late_interaction is not None and again.late_interaction.precision == "float16"
    with pytest.raises(SettingsMismatchError, match="late_interaction"):
        open_collection("f16", store=root, encoder=minilm_onnx, late_interaction="int8")
    plain = open_collection("plain", store=root, dim=384)
    plain.close()
    with pytest.raises(SettingsMismatchError, match="late_interaction"):
        open_collection("plain", store=root, late_interaction=True)
    bad_codecs = ("int4", {"precision": "int8", "dims": 7}, {"dims": 64, "bits": 2}, 3,
                  {"precision": "int2", "dims": 66})
    for bad in bad_codecs:
        with pytest.raises(InvalidInputError):
            open_collection("bad", store=root, encoder=minilm_onnx, late_interaction=bad)
    with pytest.raises(InvalidInputError, match="encoder"):
        open_collection("bad", store=root, dim=384, late_interaction=True)
    assert not (root / "bad").exists()


def test_a_collection_without_token_vectors_is_a_clear_error(minilm_onnx, root) -> None:
    with open_collection("without", store=root, encoder=minilm_onnx) as plain:
        plain.add(docs(3))
        assert plain.late_interaction is None and plain.info()["late_interaction"] is None
        with pytest.raises(NoTokenVectorsError, match="late_interaction=True"):
            plain.search(QUERY, k=3, rerank=LateInteraction(source="stored"))
        assert len(plain.search(QUERY, k=3, rerank=LateInteraction()).ids) == 3  # auto: on the fly


def test_writes_compaction_and_repair_keep_token_rows_with_their_records(minilm_onnx, root) -> None:
    coll = open_collection("mut", store=root, encoder=minilm_onnx, late_interaction="float16")
    with coll:
        coll.add(docs(12))
        coll.delete(["1", "2"])
        rows = token_rows(coll)
        assert "1" not in rows and "2" not in rows and len(rows) == coll.count() == 10
        assert orphan_rows(coll) == 0
        coll.upsert([{"id": "3", "text": "supersonic flutter of a heated panel"}])
        n, blob = token_rows(coll)["3"]
        want = minilm_onnx.token_vectors(["supersonic flutter of a heated panel"], kind="document")[0]
        assert n == len(want) and np.allclose(TokenCodec.checked("float16").decode(blob, n, 384), want, atol=2e-3)
        coll.replace({"source": "none"}, [{"id": "r1", "text": "wing tip vortices"}])
        # pre-computed vectors: tokens computed from the texts; without a text, refused and nothing written
        v = minilm_onnx.encode(["skin friction in turbulent flow"], kind="document")
        coll.add_vectors(v, ["v1"], texts=["skin friction in turbulent flow"])
        assert token_rows(coll)["v1"][0] == len(minilm_onnx.token_vectors(["skin friction in turbulent flow"],
                                                                         kind="document")[0])
        with pytest.raises(InvalidInputError, match="'v2'"):
            coll.add_vectors(v, ["v2"])
        assert coll.get(["v2"]) == []
        dropped = coll.compact()["dropped"]
        assert dropped == 3  # 1, 2 and the old 3
        rows = token_rows(coll)
        assert set(rows) == {r["id"] for b in coll.iter_records() for r in b} and orphan_rows(coll) == 0
        report = coll.verify()
        assert report.ok and report.checks["token_vectors"] == {"missing": 0, "extra": 0}
        # a token row lost by hand: verify counts it, repair computes it again from the text
        conn = sqlite3.connect(str(coll.folder / "collection.sqlite"))
        conn.execute("DELETE FROM tokens WHERE seq = (SELECT seq FROM records WHERE id = '4' AND deleted = 0)")
        conn.commit()
        conn.close()
        report = coll.verify()
        assert not report.ok and report.checks["token_vectors"] == {"missing": 1, "extra": 0}
        assert coll.repair()["token_rows_added"] == 1
        assert coll.verify().ok and token_rows(coll)["4"] == rows["4"]


def test_pca_codec_is_fitted_once_and_travels_with_copies(minilm_onnx, root, tmp_path) -> None:
    with open_collection("pca", store=root, encoder=minilm_onnx,
                         late_interaction={"precision": "int8", "dims": 64}) as coll:
        assert coll.late_interaction is not None and not coll.late_interaction.fitted
        with pytest.raises(InvalidInputError, match="first write"):
            coll.add(docs(1))  # too few tokens to fit a PCA on: nothing written
        assert coll.count() == 0
        coll.add(docs(12, 20))
        codec = coll.late_interaction
        assert codec is not None and codec.fitted and codec.components is not None
        coll.add(docs(2, 40))  # later writes use the same fit
        assert coll.late_interaction is not None and same_codec(coll.late_interaction, codec)
        hits = coll.search(QUERY, k=5, rerank=LateInteraction())
    with open_collection("pca", store=root) as reopened:
        assert reopened.late_interaction is not None and same_codec(reopened.late_interaction, codec)
    snap = tmp_path / "pca.snapshot"
    snapshot_collection("pca", snap, store=root)
    restore_collection(snap, name="pca-restored", store=root)
    migrate_collection("pca", root, tmp_path / "other")
    for store, name in ((root, "pca-restored"), (tmp_path / "other", "pca")):
        with open_collection(name, store=store, encoder=minilm_onnx) as copy:
            assert copy.late_interaction is not None and same_codec(copy.late_interaction, codec)
            assert copy.verify().ok
            with open_collection("pca", store=root) as orig:
                assert token_rows(copy) == token_rows(orig)  # the blobs themselves, bit for bit
            assert copy.search(QUERY, k=5, rerank=LateInteraction()).ids == hits.ids


def test_reembed_recomputes_token_vectors(minilm_onnx, root) -> None:
    report = reembed_collection("mut", "mut-again", minilm_onnx, store=root)
    assert report["late_interaction"] == "recomputed"
    with open_collection("mut-again", store=root) as coll, open_collection("mut", store=root) as src:
        assert coll.late_interaction is not None and coll.late_interaction.precision == "float16"
        assert len(token_rows(coll)) == coll.count() == src.count()


def test_reembed_with_an_encoder_without_token_vectors_drops_them_and_says_so(root) -> None:
    from embedsmith.encoders.base import BaseEncoder

    class Pooled(BaseEncoder):  # pooled vectors only, as static and remote models give
        name, dim, max_tokens, fingerprint, prompts = "pooled", 8, 64, "pooled-test", {}

        def _embed(self, texts: list[str], kind: Any, batch_size: int, show_progress: bool) -> np.ndarray:
            return np.array([[len(t) % 7 + 1, len(t) % 5 + 1, 1, 2, 3, 4, 5, 6] for t in texts], np.float32)

    report = reembed_collection("mut", "mut-pooled", Pooled(), store=root)
    assert report["late_interaction"].startswith("dropped: 'pooled' gives no token vectors")
    with open_collection("mut-pooled", store=root, encoder=Pooled()) as coll:
        assert coll.late_interaction is None and coll.count() == report["count"]


@pytest.mark.skipif(not os.environ.get("EMBEDSMITH_TEST_PG"), reason="needs EMBEDSMITH_TEST_PG")
def test_postgres_refuses_stored_token_vectors(minilm_onnx) -> None:
    with pytest.raises(InvalidInputError, match="folder"):
        open_collection("late-refused", store=os.environ["EMBEDSMITH_TEST_PG"], encoder=minilm_onnx,
                        late_interaction=True)


def test_cli_index_late_interaction_then_search_maxsim(tmp_path) -> None:
    src = tmp_path / "slice.jsonl"
    src.write_text("".join(json.dumps({"_id": d["id"], "text": d["text"]}) + "\n" for d in docs(30)))
    store = str(tmp_path / "store")

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "embedsmith", *args], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    printed = cli("index", str(src), "-c", "kb", "--store", store, "--late-interaction", "--late-precision", "int8",
                  "--no-vector-cache")
    assert "token vectors int8" in printed and "KB per chunk" in printed
    hits = json.loads(cli("search", QUERY, "-c", "kb", "--store", store, "--rerank", "maxsim", "-k", "5", "--json"))
    assert len(hits["hits"]) == 5
    with open_collection("kb", store=store) as coll:
        assert coll.late_interaction is not None and coll.late_interaction.precision == "int8"
        assert len(token_rows(coll)) == coll.count()
        want = coll.search(QUERY, k=5, rerank=LateInteraction(source="stored"))
    assert [h["id"] for h in hits["hits"]] == want.ids
    listed = json.loads(cli("collections", "--store", store, "--json"))
    assert listed[0]["late_interaction"]["rows"] == listed[0]["count"]


WRITER = """
import json, sys
from embedsmith import load_encoder, open_collection
rows = json.loads(sys.argv[3])
with open_collection(sys.argv[2], store=sys.argv[1], encoder=load_encoder("minilm", backend="onnx")) as c:
    c.add(rows)
"""


def test_another_process_writes_are_read_from_its_stored_tokens_and_share_its_pca(minilm_onnx, tmp_path,
                                                                                   monkeypatch) -> None:
    """A handle open before another process's first write: that process fits the PCA and writes rows with
    their tokens; this handle then scores those rows from the stored tokens (no forward pass over them) and
    its own writes use the PCA the other process fitted."""
    store = tmp_path / "store"
    here = open_collection("kb", store=store, encoder=minilm_onnx, late_interaction={"precision": "int8", "dims": 64})
    theirs, mine = docs(20), docs(5, start=20)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(store), "kb", json.dumps(theirs)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    passes: list[int] = []
    inner = minilm_onnx._embed_tokens
    monkeypatch.setattr(minilm_onnx, "_embed_tokens", lambda texts, *a, **kw: passes.append(len(texts)) or
                        inner(texts, *a, **kw))
    hits = here.search(theirs[3]["text"], k=3, rerank=LateInteraction(source="stored"), candidates=10)
    assert hits.ids[0] == theirs[3]["id"] and passes == [1]  # the query alone: every candidate's tokens were read
    monkeypatch.undo()
    here.add(mine)
    with open_collection("kb", store=store, create=False) as fresh:
        assert fresh.late_interaction is not None and same_codec(fresh.late_interaction, here.late_interaction)
        assert len(token_rows(fresh)) == fresh.count() == 25
        assert fresh.verify().ok
    again = here.search(mine[2]["text"], k=3, rerank=LateInteraction(source="stored"), candidates=10)
    assert again.ids[0] == mine[2]["id"]
    here.close()
