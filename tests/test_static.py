"""Static (model2vec) encoder: distilled from MiniLM on real data, loaded, fitted to a corpus, stored, and the CLI.

Every distillation here keeps only the MiniLM tokens that the test texts use (``restrict_to``): the same
tokenization of those texts as the full vocabulary, in a few seconds instead of ~15 (the full distillation is
measured in benchmarks/static.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import CRAN, read_stsb
from embedsmith import load_encoder, open_collection
from embedsmith.encoders.base import file_digest
from embedsmith.encoders.static import StaticEncoder, _pca, _sif_weights, _train_rows, distill, is_static_folder
from embedsmith.errors import InvalidInputError, ModelNotFoundError, SettingsMismatchError
from embedsmith.io import read_beir_corpus, read_beir_queries

pytestmark = pytest.mark.slow

STSB = read_stsb()
CRANFIELD = list(read_beir_corpus(CRAN / "corpus.jsonl", Counter()).values())  # 300 abstracts, title + text
QUERIES = list(read_beir_queries(CRAN / "queries.jsonl", Counter()).values())
TEXTS = list(dict.fromkeys(STSB[0] + STSB[1])) + CRANFIELD + QUERIES


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "embedsmith.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ))
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default distillation (PCA to 256), one without PCA, and that one fitted to 120 Cranfield abstracts."""
    root = tmp_path_factory.mktemp("static")
    return {
        "plain": distill("minilm", root / "plain", restrict_to=TEXTS),
        "raw": distill("minilm", root / "raw", pca_dims=None, restrict_to=TEXTS),
        "fitted": distill("minilm", root / "fitted", pca_dims=None, restrict_to=TEXTS, corpus=CRANFIELD[:120]),
    }


@pytest.fixture(scope="module")
def static(models: dict[str, Path]) -> StaticEncoder:
    enc = load_encoder(f"static:{models['plain']}")
    assert isinstance(enc, StaticEncoder)
    return enc


def test_model2vec_folder_is_recognised_and_loads_by_prefix_and_by_path(models, static):
    from embedsmith.encoders.registry import _minilm_folder

    folder = models["plain"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "model2vec" and config["embedsmith"]["teacher"] == "minilm"
    assert is_static_folder(folder) and not is_static_folder(_minilm_folder())  # a sentence-transformers folder
    assert static.dim == 256 and static.backend == "static" and static.prompts == {} and static.max_tokens == 512
    assert static.fingerprint == f"{file_digest(folder / 'model.safetensors')[:16]}:static"
    assert static.name == f"static:{folder}" and static.english_only
    by_path = load_encoder(str(folder))
    assert isinstance(by_path, StaticEncoder) and by_path.fingerprint == static.fingerprint
    sentences = STSB[0][:200]
    np.testing.assert_array_equal(static.encode(sentences), by_path.encode(sentences))
    # A sentence-transformers folder still loads as a transformer.
    assert load_encoder(str(_minilm_folder()), backend="onnx").backend == "onnx"


def test_vectors_match_model2vec_and_every_encode_option_works(static):
    from model2vec import StaticModel

    sentences = STSB[0][:300] + CRANFIELD[:20]
    ours = static.encode(sentences)
    theirs = StaticModel.from_pretrained(str(static.path)).encode(sentences)  # computes in float16
    np.testing.assert_allclose(ours, theirs.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert ours.dtype == np.float32 and ours.shape == (len(sentences), 256)
    np.testing.assert_array_equal(static.encode(sentences, kind="query"), ours)  # no prompts
    cut = static.encode(sentences, dims=64)
    assert cut.shape == (len(sentences), 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1, atol=1e-5)
    assert static.encode(sentences, precision="int8").dtype == np.int8
    assert static.encode(sentences, precision="binary").shape == (len(sentences), 32)
    assert static.encode(sentences, precision="float16").dtype == np.float16
    assert static.count_tokens(["a man"]) == [2] and static.overhead_tokens() == 0
    assert static.token_spans("a man") == [(0, 1), (2, 5)]
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is empty"):
        static.encode(["ok", " "])
    with pytest.warns(UserWarning, match="1 of 2 texts have no token"):
        v = static.encode(["a man", "\u2603\u2603"])  # unknown tokens are dropped, as model2vec does
    assert not v[1].any()
    long_text = " ".join(["wing"] * 600)
    with pytest.warns(UserWarning, match="600"):
        static.encode([long_text])
    vectors, counts = static.embed_counted([long_text, "a man"], truncation_side="left")
    assert counts == [600, 2] and vectors.shape == (2, 256)


def test_our_pca_and_weights_are_model2vecs():
    from model2vec.distill.inference import _pca_fit_transform, compute_weights

    x = np.random.default_rng(0).normal(size=(500, 48)).astype(np.float32) @ np.diag(np.linspace(3, 0.1, 48))
    theirs, _, _ = _pca_fit_transform(x, 16)
    np.testing.assert_allclose(_pca(x.astype(np.float32), 16).project(x), theirs, atol=1e-4)
    np.testing.assert_allclose(_sif_weights(1000), compute_weights(1000, 1e-4))


def test_stsb_spearman_is_a_real_signal(static):
    a, b, gold = STSB

    def spearman(enc_a: np.ndarray, enc_b: np.ndarray) -> float:
        return float(spearmanr((enc_a * enc_b).sum(1), gold).statistic)

    ours = spearman(static.encode(a), static.encode(b))
    rng = np.random.default_rng(0)
    unique = {t: i for i, t in enumerate(dict.fromkeys(a + b))}
    random_vectors = rng.normal(size=(len(unique), 256))
    chance = spearman(random_vectors[[unique[t] for t in a]], random_vectors[[unique[t] for t in b]])
    # Random token vectors with the same tokenizer score word overlap, a much stronger baseline.
    shuffled = StaticEncoder(static.path)
    shuffled.table = rng.normal(size=shuffled.table.shape).astype(np.float32)
    overlap = spearman(shuffled.encode(a), shuffled.encode(b))
    print(f"static {ours:.4f}, random token table {overlap:.4f}, random vectors {chance:.4f}")
    assert abs(chance) < 0.1
    assert ours > 0.7 and ours > overlap + 0.15


def test_corpus_fit_lowers_held_out_distance_to_the_teacher(models, minilm_onnx):
    held_out = CRANFIELD[250:]  # never given to distill
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long abstracts are cut, by the teacher at 256 tokens
        teacher = minilm_onnx.encode(held_out)
        plain = load_encoder(str(models["raw"])).encode(held_out)
        fitted = load_encoder(str(models["fitted"])).encode(held_out)
    before = float(1 - (plain * teacher).sum(1).mean())
    after = float(1 - (fitted * teacher).sum(1).mean())
    fit = json.loads((models["fitted"] / "config.json").read_text())["embedsmith"]["fit"]
    print(f"held-out cosine distance to MiniLM: plain {before:.4f}, fitted {after:.4f}; recorded {fit}")
    assert after < before - 0.2
    assert fit["texts"] == 120 and fit["held_out"] == 12
    assert fit["held_out_distance_after"] < fit["held_out_distance_before"]


def test_fit_is_deterministic(static):
    ids = [e.ids for e in static.tokenizer.encode_batch_fast(STSB[0][:60], add_special_tokens=False)]
    target = np.random.default_rng(1).normal(size=(60, static.dim)).astype(np.float32)
    first = _train_rows(static.table, ids, target, epochs=3, patience=3, batch_size=16, learning_rate=1e-2, seed=7)
    again = _train_rows(static.table, ids, target, epochs=3, patience=3, batch_size=16, learning_rate=1e-2, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]


def test_collection_records_the_static_encoder(models, minilm_onnx, tmp_path):
    enc = load_encoder(f"static:{models['raw']}")  # 384 dims, as MiniLM: only the fingerprint tells them apart
    with open_collection("kb", store=tmp_path, encoder=enc) as c:
        c.add(CRANFIELD[:50], ids=[str(i) for i in range(50)])
    with open_collection("kb", store=tmp_path, encoder=load_encoder(str(models["raw"]))) as c:
        assert c.search(CRANFIELD[3], k=1).ids == ["3"]
    with open_collection("kb", store=tmp_path) as c:  # no encoder: the one the collection records
        assert c.count() == 50 and c.search(CRANFIELD[7], k=1).ids == ["7"]
    for other in (minilm_onnx, load_encoder(str(models["fitted"]))):
        with pytest.raises(SettingsMismatchError, match="was built with model"):
            open_collection("kb", store=tmp_path, encoder=other)


def test_loading_errors_name_the_folder(models, tmp_path):
    with pytest.raises(ModelNotFoundError, match="/no/such/folder"):
        load_encoder("static:/no/such/folder")
    with pytest.raises(ModelNotFoundError, match="not a model2vec folder"):
        load_encoder(f"static:{tmp_path}")
    with pytest.raises(InvalidInputError, match="backend='auto', got 'onnx'"):
        load_encoder(str(models["plain"]), backend="onnx")
    with pytest.raises(InvalidInputError, match="backend='auto'"):
        load_encoder(f"static:{models['plain']}", backend="torch")


def test_distill_refuses_bad_input_before_any_work(models, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelNotFoundError, match="'no-such-model'"):
        distill("no-such-model", out)
    with pytest.raises(InvalidInputError, match="not an empty folder"):
        distill("minilm", models["plain"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is not a folder"):
        distill("minilm", tmp_path / "file" / "model")
    for dims in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError, match="pca_dims"):
            distill("minilm", out, pca_dims=dims)
    with pytest.raises(InvalidInputError, match="pca_dims=999 exceeds minilm's dimension 384"):
        distill("minilm", out, pca_dims=999)
    with pytest.raises(InvalidInputError, match="corpus holds 3 distinct texts"):
        distill("minilm", out, corpus=["a", "b", "c", "a"])
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is empty"):
        distill("minilm", out, corpus=["a", ""] * 10)
    with pytest.raises(InvalidInputError, match="not a sentence-transformers model"):
        distill("e5-small-multilingual", out)
    with pytest.raises(InvalidInputError, match="already a static model"):
        distill(models["plain"], out)
    assert not out.exists()


def test_cli_distill_round_trip_and_errors(tmp_path):
    lines = tmp_path / "sentences.txt"
    lines.write_text("\n".join(STSB[0][:150]) + "\n")
    words = tmp_path / "words.txt"
    words.write_text("hypersonics\nAerofoils\n")
    out = tmp_path / "model"
    report = json.loads(run("distill", "minilm", "--output", str(out), "--pca-dims", "64", "--restrict-to",
                            str(lines), "--restrict-to", str(CRAN / "corpus.jsonl"), "--corpus", str(lines),
                            "--vocabulary", str(words), "--json").stdout)
    assert report["dim"] == 64 and report["output"] == str(out) and 0 < report["vocabulary"] < 10_000
    assert report["fit"]["texts"] > 120
    tokenizer = StaticEncoder(out).tokenizer  # added words are whole tokens (as the teacher normalises them)
    assert tokenizer.encode("hypersonics aerofoils", add_special_tokens=False).tokens == ["hypersonics", "aerofoils"]
    vectors = json.loads(run("embed", "Swept wings at supersonic speed.", "--model", f"static:{out}",
                             "--json").stdout)
    assert vectors["dim"] == 64 and len(vectors["vectors"][0]) == 64
    for args, message in [
        (("no-such-model", "--output", str(tmp_path / "x")), "unknown model 'no-such-model'"),
        (("minilm", "--output", str(out)), "exists and is not an empty folder"),
        (("minilm", "--output", str(tmp_path / "x"), "--pca-dims", "many"), "--pca-dims takes a positive integer"),
        (("minilm", "--output", str(tmp_path / "x"), "--corpus", "/no/such/file.txt"), "does not exist"),
    ]:
        proc = run("distill", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "x").exists()

