"""Late interaction: MiniLM's token vectors, MaxSim as a second stage (real model, Cranfield slice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsmith import index_paths, open_collection
from embedsmith.errors import InvalidInputError, NoTokenVectorsError
from embedsmith.rerankers import LateInteraction, load_reranker, maxsim
from embedsmith.rerankers.late_interaction import TokenCodec

CRAN = Path(__file__).parent / "data" / "cranfield"
QUERY = "what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft"

pytestmark = pytest.mark.slow


def direct_maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """ColBERT's score written out: for each query token its best cosine with any document token, averaged."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    return float(np.mean([max(float(a @ b) for b in dn) for a in qn]))


@pytest.fixture(scope="module")
def kb(minilm_onnx, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("late")
    coll = open_collection("kb", store=root, encoder=minilm_onnx)
    index_paths(coll, [CRAN / "corpus.jsonl"])
    yield coll, root
    coll.close()


def test_token_vectors_are_the_models_hidden_states_and_pool_to_encode(minilm_onnx) -> None:
    texts = ["the boundary layer on a flat plate", "heat transfer to a blunt body at hypersonic speed"]
    pooled, tokens = minilm_onnx.embed_tokens(texts, kind="document")
    assert np.allclose(pooled, minilm_onnx.encode(texts, kind="document"), atol=1e-5)
    counts = minilm_onnx.count_tokens(texts, kind="document")
    assert [len(t) for t in tokens] == counts
    assert all(np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5) for t in tokens)
    inner = minilm_onnx.token_vectors(texts, kind="document", special_tokens=False)
    assert [len(t) for t in inner] == [n - 2 for n in counts]  # [CLS] and [SEP] dropped
    assert np.allclose(inner[0], tokens[0][1:-1])


def test_maxsim_equals_a_direct_computation_on_real_token_vectors(minilm_onnx) -> None:
    docs = [json.loads(line)["text"] for line in (CRAN / "corpus.jsonl").read_text().splitlines()[:12]]
    q = minilm_onnx.token_vectors([QUERY], kind="query")[0]
    d = minilm_onnx.token_vectors(docs, kind="document")
    got = maxsim(q, d)
    want = np.array([direct_maxsim(q, x) for x in d])
    assert np.allclose(got, want, atol=1e-5)
    assert len(set(np.round(got, 4))) > 6  # the scores tell documents apart


def test_codecs_keep_maxsim_close_and_pca_fits(minilm_onnx) -> None:
    docs = [json.loads(line)["text"] for line in (CRAN / "corpus.jsonl").read_text().splitlines()[:40]]
    q = minilm_onnx.token_vectors([QUERY], kind="query")[0]
    d = minilm_onnx.token_vectors(docs, kind="document")
    exact = maxsim(q, d)
    for prec, tol in (("float16", 1e-3), ("int8", 1e-2), ("binary", 0.15)):
        codec = TokenCodec.checked(prec)
        back = [codec.decode(codec.encode(x), len(x), 384) for x in d]
        assert np.abs(maxsim(q, back) - exact).max() < tol, prec
    pca = TokenCodec.checked("int8", 128).fit(np.concatenate(d))
    again = TokenCodec.from_dict(json.loads(json.dumps(pca.to_dict())))
    back = [again.decode(again.encode(x), len(x), 128) for x in d]
    rho = np.corrcoef(maxsim(again.project(q), back), exact)[0, 1]
    assert rho > 0.9
    assert pca.bytes_per_token(384) == 130
    with pytest.raises(InvalidInputError, match="precision"):
        TokenCodec.checked("int4")


def test_search_reranked_by_maxsim_orders_candidates_by_their_maxsim(kb, minilm_onnx) -> None:
    coll, _ = kb
    first = coll.search(QUERY, k=20, mode="dense")
    hits = coll.search(QUERY, k=20, mode="dense", rerank=LateInteraction(), candidates=20)
    assert set(hits.ids) == set(first.ids)
    q = minilm_onnx.token_vectors([QUERY], kind="query")[0]
    want = maxsim(q, minilm_onnx.token_vectors([t for t in first.texts if t], kind="document"))
    by_id = dict(zip(first.ids, want, strict=True))
    assert hits.ids == sorted(first.ids, key=lambda i: (-round(float(by_id[i]), 5), i))[:20] or \
        np.allclose(hits.scores, sorted(want, reverse=True), atol=1e-5)
    assert hits.first_stage_scores is not None and hits.rerank_logits == pytest.approx(hits.scores)
    # the same through the named second stage, as the CLI and server resolve it
    again = coll.search(QUERY, k=20, mode="dense", rerank=load_reranker("maxsim"), candidates=20)
    assert again.ids == hits.ids


def test_cli_rerank_maxsim(kb) -> None:
    _, root = kb
    out = subprocess.run([sys.executable, "-m", "embedsmith", "search", QUERY, "-c", "kb", "--store", str(root),
                          "--rerank", "maxsim", "-k", "5", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_late_interaction_needs_token_vectors(kb, tmp_path) -> None:
    coll, _ = kb
    with pytest.raises(NoTokenVectorsError, match="late_interaction=True"):
        coll.search(QUERY, k=5, rerank=LateInteraction(source="stored"))
    from embedsmith.encoders.base import BaseEncoder

    class Pooled(BaseEncoder):  # an encoder with pooled vectors only, as static and remote models are
        name, dim, max_tokens, fingerprint, prompts = "pooled", 4, 16, "x", {}

    with pytest.raises(NoTokenVectorsError, match="minilm"):
        Pooled().token_vectors(["a text"])
    with pytest.raises(InvalidInputError, match="source"):
        LateInteraction(source="disk")


def test_hybrid_fuses_maxsim_as_a_third_list(kb, minilm_onnx) -> None:
    from embedsmith.search import reciprocal_rank_fusion

    coll, _ = kb
    fused = coll.search(QUERY, k=100, mode="hybrid")
    dense = coll.search(QUERY, k=100, mode="dense")
    sparse = coll.search(QUERY, k=100, mode="bm25")
    q = minilm_onnx.token_vectors([QUERY], kind="query")[0]
    s = maxsim(q, minilm_onnx.token_vectors([str(t) for t in fused.texts], kind="document"))
    order = [fused.ids[i] for i in np.argsort(-s, kind="stable")]
    want = [i for i, _ in reciprocal_rank_fusion([dense.ids, sparse.ids, order])][:10]
    got = coll.search(QUERY, k=10, mode="hybrid", late_interaction=True)
    assert got.ids == want
    assert got.ids != fused.ids[:10]
    with pytest.raises(InvalidInputError, match="rerank=LateInteraction"):
        coll.search(QUERY, mode="dense", late_interaction=True)


def test_eval_pipeline_late_interaction_modes(kb) -> None:
    _, root = kb
    out = subprocess.run([sys.executable, "-m", "embedsmith", "eval", "pipeline", "-c", "kb", "--store", str(root),
                          "--queries", str(CRAN / "queries.jsonl"), "--qrels", str(next((CRAN / "qrels").glob("*"))),
                          "--late-interaction", "--modes", "dense", "--limit", "3", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    modes = json.loads(out.stdout)["modes"]
    assert set(modes) == {"dense", "dense>maxsim", "hybrid+maxsim"}
    for m in ("dense>maxsim", "hybrid+maxsim"):
        assert set(modes[m]) == {"ndcg_at_10", "recall_at_100", "mrr_at_10", "latency_p50_ms"}
        assert 0 <= modes[m]["ndcg_at_10"] <= 1
