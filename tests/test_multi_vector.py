"""Multi-vector (ColBERT-style) model folders by path: a tiny MultiVectorEncoder built here, saved, loaded back
by ``load_encoder`` and scored against sentence-transformers' own MaxSim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedsmith import load_encoder, open_collection
from embedsmith.errors import InvalidInputError
from embedsmith.rerankers import LateInteraction, load_reranker, maxsim

pytestmark = pytest.mark.slow

CRAN = Path(__file__).parent / "data" / "cranfield"
QUERY = "what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft"


@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A two-layer random BERT (MiniLM's tokenizer) with sentence-transformers' default multi-vector head
    (projection to 128, mask, normalisation) and query/document prompts, saved to a folder."""
    import torch
    from sentence_transformers import MultiVectorEncoder
    from transformers import AutoTokenizer, BertConfig, BertModel

    from embedsmith.encoders.registry import _minilm_folder

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(base)
    AutoTokenizer.from_pretrained(str(_minilm_folder()), local_files_only=True).save_pretrained(base)
    model = MultiVectorEncoder(str(base), local_files_only=True, device="cpu",
                               prompts={"query": "query: ", "document": "passage: "})
    folder = tmp_path_factory.mktemp("tiny-colbert")
    model.save(str(folder))
    return folder, model


@pytest.fixture(scope="module")
def docs() -> list[str]:
    # cut short: the tiny model reads 128 tokens, and warnings about it would only be noise
    return [json.loads(line)["text"][:300] for line in (CRAN / "corpus.jsonl").read_text().splitlines()[:8]]


def test_a_multi_vector_folder_loads_by_path_with_the_models_own_token_vectors(tiny_colbert, docs) -> None:
    folder, model = tiny_colbert
    enc = load_encoder(folder, device="cpu")
    assert type(enc).__name__ == "MultiVectorTorchEncoder" and enc.dim == 128
    assert enc.prompts == {"query": "query: ", "document": "passage: "}
    q = enc.token_vectors([QUERY], kind="query")[0]
    d = enc.token_vectors(docs, kind="document")
    want_q = model.encode_query([QUERY], convert_to_numpy=True)[0]
    want_d = model.encode_document(docs, convert_to_numpy=True)
    assert q.shape == want_q.shape and np.allclose(q, want_q, atol=1e-5)
    assert all(a.shape == b.shape and np.allclose(a, b, atol=1e-5) for a, b in zip(d, want_d, strict=True))
    # the prompt is read by the model: one more token than the text alone, [CLS] and [SEP] included
    assert len(q) == enc.count_tokens([QUERY], kind="query")[0]
    assert len(q) == enc.count_tokens([QUERY])[0] + 2


def test_our_maxsim_equals_the_librarys_scoring(tiny_colbert, docs) -> None:
    import torch

    folder, model = tiny_colbert
    enc = load_encoder(folder, device="cpu")
    q = enc.token_vectors([QUERY], kind="query")[0]
    ours = maxsim(q, enc.token_vectors(docs, kind="document"))
    # sentence-transformers sums over query tokens; ours is the mean (same order, scale-free across queries)
    theirs = model.similarity(model.encode_query([QUERY]), model.encode_document(docs))[0]
    assert np.allclose(ours * len(q), theirs.to(torch.float32).numpy(), atol=1e-4)
    li = LateInteraction(encoder=str(folder))
    order = [i for i, _, _ in li.rerank(QUERY, docs)]
    assert order == list(np.argsort(-theirs.numpy(), kind="stable"))
    spec = load_reranker(f"maxsim:{folder}")
    assert [i for i, _, _ in spec.rerank(QUERY, docs)] == order


def test_search_reranks_with_a_multi_vector_model_by_path(tiny_colbert, docs, minilm_onnx, tmp_path) -> None:
    folder, _ = tiny_colbert
    li = load_reranker(f"maxsim:{folder}")
    with open_collection("kb", store=tmp_path, encoder=minilm_onnx) as coll:
        coll.add(docs, ids=[f"d{i}" for i in range(len(docs))])
        hits = coll.search(QUERY, k=8, rerank=li)
    scores = li.scores(QUERY, docs)
    assert [h.id for h in hits] == [f"d{i}" for i in np.argsort(-scores, kind="stable")]
    # a collection whose own encoder is the multi-vector model: its pooled vector is a first stage
    enc = load_encoder(folder, device="cpu")
    pooled = enc.encode(docs[:2], kind="document")
    assert pooled.shape == (2, 128) and np.allclose(np.linalg.norm(pooled, axis=1), 1, atol=1e-5)
    tokens = enc.token_vectors(docs[:2], kind="document")
    mean = np.stack([t.mean(axis=0) for t in tokens])
    assert np.allclose(pooled, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    with open_collection("own", store=tmp_path, encoder=enc) as coll:
        coll.add(docs, ids=[f"d{i}" for i in range(len(docs))])
        hits = coll.search(QUERY, k=3, rerank=LateInteraction())
    assert [h.id for h in hits] == [f"d{i}" for i in np.argsort(-maxsim(
        enc.token_vectors([QUERY], kind="query")[0], tokens + enc.token_vectors(docs[2:], kind="document")),
        kind="stable")[:3]]


def test_a_multi_vector_folder_refuses_the_onnx_backend(tiny_colbert) -> None:
    folder, _ = tiny_colbert
    with pytest.raises(InvalidInputError, match="multi-vector model, run by torch"):
        load_encoder(folder, backend="onnx", device="cpu")
