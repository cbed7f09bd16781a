"""Clustering, classification, analogies, cross-lingual search and modality warnings, on real data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import DATA
from embedsmith import InvalidInputError, open_collection
from embedsmith.analysis import Classifier, cluster_texts, read_texts, word_analogy
from embedsmith.evaluation.tasks import read_labelled
from embedsmith.modality import ModalityWarning, guess, mismatch
from test_cli import run

BANKING = DATA / "banking77" / "train-20x40.csv"


def test_guesses_language_and_code():
    assert guess("How do I activate my new card?") == "en"
    assert guess("Wie kann ich meine Karte aktivieren, wenn sie nicht ankommt?") == "de"
    assert guess("¿Dónde está mi tarjeta? No la he recibido todavía") == "es"
    assert guess("我的卡什么时候到") == "non-latin"
    assert guess("def area(r):\n    return 3.14 * r ** 2\n") == "code"
    assert guess("for (int i = 0; i < n; i++) {\n  total += a[i];\n}") == "code"
    german = ["Der Zug kommt heute nicht.", "Ich habe meine Karte verloren und sie ist weg."] * 3
    assert "multilingual encoder" in (mismatch(german, english_only=True) or "")
    assert mismatch(german, english_only=False) is None
    assert mismatch(["The train is late.", "I lost my card and it is gone."], english_only=True) is None


def test_english_only_encoder_warns_once_about_german(minilm_onnx):
    from embedsmith import load_encoder

    enc = load_encoder("minilm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc.encode(["Wie kann ich meine Karte aktivieren?"])
        enc.encode(["Wo ist meine Karte, die ich bestellt habe?"])
        enc.encode(["Where is the card I ordered?"])
    found = [w for w in caught if issubclass(w.category, ModalityWarning)]
    assert len(found) == 1 and "language 'de'" in str(found[0].message)


@pytest.fixture(scope="module")
def banking(minilm_onnx):
    texts, labels = read_labelled(BANKING)
    return texts, labels, minilm_onnx.encode(texts)


def test_clustering_beats_a_tfidf_baseline(banking):
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import v_measure_score

    texts, labels, vectors = banking
    result = cluster_texts(texts, vectors=vectors, k=20)
    ours = v_measure_score(labels, result.labels)
    tfidf = TfidfVectorizer(stop_words="english").fit_transform(texts)
    base = v_measure_score(labels, KMeans(n_clusters=20, n_init="auto", random_state=42).fit_predict(tfidf))
    assert ours > base + 0.1, (ours, base)
    assert len(result.clusters) == 20 and sum(c.size for c in result.clusters) == len(texts)
    assert all(c.terms and c.central for c in result.clusters)
    # The cluster holding "card_arrival" texts is described by arrival words.
    arrival = result.labels[[i for i, lbl in enumerate(labels) if lbl == "card_arrival"]]
    top = max(result.clusters, key=lambda c: int((arrival == c.id).sum()))
    assert {"arrive", "arrived", "delivery", "delivered", "come", "card"} & set(top.terms), top.terms


def test_auto_k_and_other_methods(banking):
    texts, _, vectors = banking
    auto = cluster_texts(texts[:300], vectors=vectors[:300], k="auto", k_max=12)
    assert 2 <= auto.k <= 12 and auto.silhouette_by_k and auto.k == max(
        auto.silhouette_by_k, key=lambda k: (auto.silhouette_by_k[k], -k))
    agg = cluster_texts(texts[:300], vectors=vectors[:300], k=8, method="agglomerative")
    assert len(set(agg.labels.tolist())) == 8
    hdb = cluster_texts(texts, vectors=vectors, method="hdbscan")
    assert hdb.k >= 2 and set(hdb.labels.tolist()) - {-1}
    with pytest.raises(InvalidInputError, match="k=50 clusters but only 10 texts"):
        cluster_texts(texts[:10], vectors=vectors[:10], k=50)
    with pytest.raises(InvalidInputError, match="unknown clustering method 'dbscan'"):
        cluster_texts(texts, vectors=vectors, method="dbscan")


@pytest.mark.parametrize("method", ["knn", "centroid", "logistic"])
def test_classifiers_on_a_held_back_split(banking, method):
    texts, labels, vectors = banking
    test_idx = np.arange(len(texts)) % 5 == 0
    tr = np.flatnonzero(~test_idx)
    te = np.flatnonzero(test_idx)
    clf = Classifier(method=method).fit([texts[i] for i in tr], [labels[i] for i in tr], vectors=vectors[tr])
    rep = clf.evaluate([texts[i] for i in te], [labels[i] for i in te], vectors=vectors[te])
    assert rep.accuracy > 0.75 and rep.macro_f1 > 0.7, (method, rep.accuracy)
    assert all(0 < p.confidence <= 1 for p in rep.predictions)
    with pytest.raises(InvalidInputError, match="label 'pizza' \\(row 2\\) is not one of the 20 training labels"):
        clf.evaluate(texts[:2], [labels[0], "pizza"], vectors=vectors[:2])


def test_analogy_king_queen(minilm_onnx):
    top = [w for w, _ in word_analogy("king", "man", "woman", minilm_onnx, k=3)]
    assert "queen" in top and not {"king", "man", "woman"} & set(top)


@pytest.mark.slow
def test_cross_lingual_search_with_a_multilingual_encoder(tmp_path):
    from embedsmith import load_encoder

    docs = ["The train to Berlin leaves at eight in the morning.", "My credit card was stolen yesterday.",
            "Cats sleep most of the day.", "The museum is closed on Mondays.", "How to bake bread at home."]
    queries = {"Meine Kreditkarte wurde gestohlen": 1, "¿Cuándo sale el tren a Berlín?": 0,
               "Le musée est fermé le lundi": 3}
    for alias in ("e5-small-multilingual", "use-multilingual"):
        c = open_collection(f"x-{alias}", store=tmp_path, encoder=load_encoder(alias))
        c.add(docs, ids=[str(i) for i in range(len(docs))])
        for q, want in queries.items():
            assert c.search(q, k=1).ids == [str(want)], (alias, q)
        c.close()


def test_cli_cluster_classify_analogy_and_errors(tmp_path):
    out, png = tmp_path / "c.jsonl", tmp_path / "c.png"
    data = json.loads(run("cluster", str(BANKING), "--k", "20", "--output", str(out), "--plot", str(png),
                          "--json").stdout)
    assert data["k"] == 20 and len(data["labels"]) == 800
    assert len(out.read_text().splitlines()) == 800 and png.read_bytes()[:4] == b"\x89PNG"
    test = tmp_path / "test.csv"
    test.write_text("text,category\nmy card still has not arrived,card_arrival\n"
                    "why was I charged the wrong exchange rate for my card payment,card_payment_wrong_exchange_rate\n")
    res = json.loads(run("classify", "--train", str(BANKING), "--evaluate", str(test), "--predict", str(test),
                         "--method", "centroid", "--json").stdout)
    assert res["evaluation"]["accuracy"] == 1.0 and len(res["predictions"]) == 2
    assert json.loads(run("analogy", "king", "man", "woman", "--json").stdout)["results"][0]["word"] == "queen"

    proc = run("cluster", str(test), "--column", "body", check=False)
    assert proc.returncode == 1 and "no column 'body'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("cluster", str(test), "--k", "5", check=False)
    assert "k=5 clusters but only 2 texts" in proc.stderr
    test.write_text("text,category\nhello there,greeting\n")
    proc = run("classify", "--train", str(BANKING), "--evaluate", str(test), check=False)
    assert "label 'greeting' (row 1) is not one of the 20 training labels" in proc.stderr


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InvalidInputError, match="no field 'text'"):
        read_texts(tmp_path / "a.jsonl")
    assert read_texts(tmp_path / "a.jsonl", column="body") == ["x"]
