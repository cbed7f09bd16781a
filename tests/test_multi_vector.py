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


def test_a_pylate_folder_loads_with_its_prefixes_expansion_and_skiplist(tiny_colbert, tmp_path) -> None:
    """PyLate (<= 1.3) saved [Transformer, Dense] and its ColBERT settings at the top level; sentence-transformers
    reads them back (prefix tokens, query expansion to 32, punctuation skipped in documents)."""
    import shutil

    from sentence_transformers import MultiVectorEncoder

    folder, _ = tiny_colbert
    pyl = tmp_path / "pylate"
    shutil.copytree(folder, pyl, ignore=shutil.ignore_patterns("2_*", "3_*"))
    (pyl / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (pyl / "1_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 128, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    (pyl / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 127, "do_lower_case": False}))
    (pyl / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "ColBERT", "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 32,
        "document_length": 180, "attend_to_expansion_tokens": False, "skiplist_words": [".", ","],
        "similarity_fn_name": "MaxSim", "prompts": {}}))
    enc = load_encoder(pyl, device="cpu")
    assert enc.prompts == {"query": "[unused0]", "document": "[unused1]"} and enc.dim == 128
    theirs = MultiVectorEncoder(str(pyl), device="cpu", local_files_only=True)
    q = enc.token_vectors(["what is a wing ."], kind="query")[0]
    d = enc.token_vectors(["the wing , of a plane ."], kind="document")[0]
    assert q.shape == (32, 128)  # [CLS] [unused0] 5 tokens [SEP], expanded with [MASK] to 32
    assert enc.count_tokens(["the wing , of a plane ."], kind="document") == [10] and len(d) == 8  # , and . skipped
    assert np.allclose(q, theirs.encode_query(["what is a wing ."], convert_to_numpy=True)[0], atol=1e-5)
    assert np.allclose(d, theirs.encode_document(["the wing , of a plane ."], convert_to_numpy=True)[0], atol=1e-5)


def test_a_multi_vector_folder_refuses_the_onnx_backend(tiny_colbert) -> None:
    folder, _ = tiny_colbert
    with pytest.raises(InvalidInputError, match="multi-vector model, run by torch"):
        load_encoder(folder, backend="onnx", device="cpu")


# -- fine-tuning -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_task():  # type: ignore[no-untyped-def]
    """5 judged Cranfield queries over their judged documents and 10 others, cut short (a cheap evaluation)."""
    from embedsmith.evaluation import RetrievalTask

    full = RetrievalTask.from_beir(CRAN, split="dev")
    qids = list(full.qrels)[:5]
    keep = {d for q in qids for d in full.qrels[q]} | set(list(full.corpus)[:10])
    return RetrievalTask("cran-small", {d: full.corpus[d][:400] for d in full.corpus if d in keep},
                         {q: full.queries[q] for q in qids}, {q: full.qrels[q] for q in qids}, "dev")


def test_late_interaction_finetune_starts_from_minilms_maxsim_and_saves_a_loadable_folder(
        small_task, minilm_onnx, tmp_path) -> None:
    from embedsmith.training import TrainingData, finetune_late_interaction, load_training_data
    from embedsmith.training.late_interaction import maxsim_run

    titled = load_training_data(CRAN / "corpus.jsonl")
    data = TrainingData(titled.anchors[:16], titled.positives[:16], titled.negatives[:16], source="cranfield titles")
    out = tmp_path / "colbert"
    rep = finetune_late_interaction("minilm", data, out, max_steps=2, batch_size=8, max_seq_length=48,
                                    eval_task=small_task, candidates=10, first_stage=minilm_onnx,
                                    device="cpu")
    assert rep.steps == 2 and rep.examples == 16 and rep.hyperparameters["token_dim"] == 384
    # the dense top 10 as it came, then reordered by MaxSim: untrained, that is MiniLM's own token vectors
    first = {q: ids[:10] for q, ids in small_task.rank(*small_task.encode(
        lambda texts, kind: minilm_onnx.encode(list(texts), kind=kind)), k=10).items()}
    assert rep.first_stage["ndcg_at_10"] == pytest.approx(small_task.score_run(first)["ndcg_at_10"], abs=1e-4)
    own = small_task.score_run(maxsim_run(small_task, first, minilm_onnx))
    assert rep.before["ndcg_at_10"] == pytest.approx(own["ndcg_at_10"], abs=1e-4)
    assert 0 <= rep.after["ndcg_at_10"] <= 1
    assert rep.kind == "late-interaction" and set(rep.significance) == set(rep.first_stage_significance) == {
        "ndcg_at_10", "mrr_at_10"}
    for c in [*rep.significance.values(), *rep.first_stage_significance.values()]:
        assert c.n == 5 and c.ci_low <= c.diff <= c.ci_high
    assert rep.significance["ndcg_at_10"].diff == pytest.approx(
        rep.after["ndcg_at_10"] - rep.before["ndcg_at_10"], abs=1e-9)
    assert rep.first_stage_significance["ndcg_at_10"].diff == pytest.approx(
        rep.after["ndcg_at_10"] - rep.first_stage["ndcg_at_10"], abs=1e-9)
    saved = json.loads((out / "embedsmith_training.json").read_text())
    assert saved["kind"] == "late-interaction" and saved["first_stage_significance"]["ndcg_at_10"]["verdict"]
    # the folder is sentence-transformers' own format (the first test compares the two), loaded by path
    enc = load_encoder(out, device="cpu")
    assert type(enc).__name__ == "MultiVectorTorchEncoder" and enc.dim == 384
    assert json.loads((out / "config_sentence_transformers.json").read_text())["model_type"] == "MultiVectorEncoder"
    untrained = minilm_onnx.token_vectors([QUERY], kind="query")[0]
    assert not np.allclose(enc.token_vectors([QUERY], kind="query")[0], untrained, atol=1e-3)  # it trained
    card = (out / "README.md").read_text()
    assert "Fine-tuned with embedsmith" in card and "kind: late-interaction" in card and "trained > MaxSim" in card
    assert "rerank with `--rerank maxsim:PATH`" in card
    with pytest.raises(InvalidInputError, match="token_dim must be from 8"):
        finetune_late_interaction("minilm", data, tmp_path / "x", token_dim=4, max_steps=1, device="cpu")


def test_finetune_late_interaction_cli(tmp_path) -> None:
    from test_cli import run

    res = json.loads(run("finetune", "--late-interaction", "--train", str(CRAN / "corpus.jsonl"), "--output",
                         str(tmp_path / "li"), "--max-steps", "1", "--batch-size", "4", "--max-seq-length", "32",
                         "--token-dim", "64", "--device", "cpu", "--json").stdout)
    assert res["steps"] == 1 and res["hyperparameters"]["token_dim"] == 64 and "MaxSim" in res["loss"]
    assert load_encoder(tmp_path / "li", device="cpu").dim == 64
    bad = run("finetune", "--late-interaction", "--train", str(CRAN / "corpus.jsonl"), "--output",
              str(tmp_path / "x"), "--loss", "triplet", check=False)
    assert bad.returncode == 1 and "multi-vector MNRL" in bad.stderr and "Traceback" not in bad.stderr
