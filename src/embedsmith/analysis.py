"""Clustering and classification by vector nearness, and word analogies.

Stages take vectors ([n, dim] float32, as encoders return them) and texts, and return plain results:
:class:`Clustering` (labels, the chosen k, and a description of each cluster) and :class:`Classifier`
predictions with a confidence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, require
from .io import read_texts  # noqa: F401  (read_texts lived here; embedsmith.io holds every reader now)
from .quantization import l2_normalize

METHODS = ("kmeans", "hdbscan", "agglomerative")
CLASSIFIERS = ("knn", "centroid", "logistic")


def _sk() -> Any:
    return require("sklearn", extra="eval", what="clustering and classification")


def _check_vectors(vectors: Any, n: int | None = None) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise InvalidInputError(f"vectors must have shape [n, dim] with n > 0, got {list(v.shape)}")
    if n is not None and v.shape[0] != n:
        raise InvalidInputError(f"{v.shape[0]} vectors for {n} texts")
    return v


# -------------------------------------------------------------------------------------------- clustering


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster: its size, most distinctive terms (class-based TF-IDF) and most central texts."""

    id: int
    size: int
    terms: list[str]
    central: list[str]


@dataclass
class Clustering:
    """``labels[i]`` is text i's cluster (-1: noise, HDBSCAN only)."""

    labels: np.ndarray
    k: int
    method: str
    silhouette: float | None
    clusters: list[ClusterInfo]
    silhouette_by_k: dict[int, float] = field(default_factory=dict)


def choose_k(vectors: np.ndarray, *, k_min: int = 2, k_max: int = 20, seed: int = 42,
             sample: int = 3000) -> tuple[int, dict[int, float]]:
    """The k in [k_min, k_max] with the best silhouette (cosine, on a sample of at most ``sample``)."""
    sk = _sk()
    v = l2_normalize(vectors)
    k_max = min(k_max, len(v) - 1)
    if k_max < k_min:
        raise InvalidInputError(f"{len(v)} texts are too few to choose between {k_min} or more clusters")
    scores: dict[int, float] = {}
    for k in range(k_min, k_max + 1):
        labels = sk.cluster.KMeans(n_clusters=k, n_init="auto", random_state=seed).fit_predict(v)
        scores[k] = float(sk.metrics.silhouette_score(v, labels, metric="cosine",
                                                      sample_size=min(sample, len(v)), random_state=seed))
    return max(scores, key=lambda k: (scores[k], -k)), scores


def cluster_vectors(vectors: Any, *, k: int | str = "auto", method: str = "kmeans", seed: int = 42,
                    k_max: int = 20, min_cluster_size: int = 5) -> tuple[np.ndarray, int, dict[int, float]]:
    """Cluster unit-normalised vectors.

    Args:
        k: the number of clusters, or 'auto' (best silhouette for k in 2..k_max; kmeans and agglomerative).
        method: 'kmeans' (k-means on unit vectors, i.e. spherical), 'hdbscan' (finds k itself; -1 is noise)
            or 'agglomerative' (average linkage on cosine distance; O(n^2) memory).

    Returns:
        (labels [n], k, silhouette per k tried when k was 'auto').
    """
    sk = _sk()
    v = l2_normalize(_check_vectors(vectors))
    if method not in METHODS:
        raise InvalidInputError(f"unknown clustering method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "hdbscan":
        labels = sk.cluster.HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", copy=True).fit_predict(v)
        return labels, len(set(labels.tolist()) - {-1}), {}
    tried: dict[int, float] = {}
    if k == "auto":
        k, tried = choose_k(v, k_max=k_max, seed=seed)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer or 'auto', got {k!r}")
    if k > len(v):
        raise InvalidInputError(f"k={k} clusters but only {len(v)} texts")
    if method == "kmeans":
        labels = sk.cluster.KMeans(n_clusters=int(k), n_init="auto", random_state=seed).fit_predict(v)
    else:
        labels = sk.cluster.AgglomerativeClustering(n_clusters=int(k), metric="cosine",
                                                    linkage="average").fit_predict(v)
    return np.asarray(labels), int(k), tried


def describe_clusters(texts: Sequence[str], vectors: Any, labels: np.ndarray, *, top_terms: int = 8,
                      central: int = 3) -> list[ClusterInfo]:
    """Distinctive terms by class-based TF-IDF (BERTopic's c-TF-IDF: a cluster's term frequency times
    log(1 + average words per cluster / the term's frequency over all clusters)), and the texts nearest
    each cluster's centroid."""
    sk = _sk()
    v = l2_normalize(_check_vectors(vectors, len(texts)))
    ids = sorted(set(labels.tolist()) - {-1})
    docs = [" ".join(texts[int(i)] for i in np.flatnonzero(labels == c)) for c in ids]
    try:
        cv = sk.feature_extraction.text.CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
        counts = cv.fit_transform(docs).toarray().astype(np.float64)
        vocab = cv.get_feature_names_out()
    except ValueError:  # nothing but stop words
        counts, vocab = np.zeros((len(ids), 0)), np.array([], dtype=str)
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    avg = counts.sum() / max(len(ids), 1)
    idf = np.log(1 + avg / np.maximum(counts.sum(0), 1))
    ctfidf = tf * idf
    out = []
    for row, c in enumerate(ids):
        members = np.flatnonzero(labels == c)
        centroid = v[members].mean(0)
        nearest = members[np.argsort(-(v[members] @ centroid), kind="stable")[:central]]
        order: list[int] = np.argsort(-ctfidf[row], kind="stable")[:top_terms].tolist() if len(vocab) else []
        out.append(ClusterInfo(int(c), len(members), [str(vocab[j]) for j in order if ctfidf[row, j] > 0],
                               [texts[int(i)] for i in nearest]))
    return out


def cluster_texts(texts: Sequence[str], encoder: Any = None, *, vectors: Any = None, k: int | str = "auto",
                  method: str = "kmeans", seed: int = 42, k_max: int = 20,
                  show_progress: bool = False) -> Clustering:
    """Encode (unless ``vectors`` are given), cluster and describe.

    Raises:
        InvalidInputError: no texts, fewer texts than clusters, an unknown method.
    """
    if not texts:
        raise InvalidInputError("no texts to cluster")
    if vectors is None:
        if encoder is None:
            raise InvalidInputError("cluster_texts needs an encoder or precomputed vectors")
        vectors = encoder.encode(list(texts), kind="document", show_progress=show_progress)
    v = _check_vectors(vectors, len(texts))
    if isinstance(k, int) and not isinstance(k, bool) and k > len(texts):
        raise InvalidInputError(f"k={k} clusters but only {len(texts)} texts")
    labels, chosen, tried = cluster_vectors(v, k=k, method=method, seed=seed, k_max=k_max)
    sk = _sk()
    real = labels >= 0
    sil = None
    if 1 < len(set(labels[real].tolist())) < real.sum():
        sil = float(sk.metrics.silhouette_score(l2_normalize(v[real]), labels[real], metric="cosine",
                                                sample_size=min(3000, int(real.sum())), random_state=seed))
    return Clustering(labels, chosen, method, sil, describe_clusters(texts, v, labels), tried)


def project_2d(vectors: Any, *, seed: int = 42) -> np.ndarray:
    """PCA to two dimensions: float32 [n, 2]."""
    v = l2_normalize(_check_vectors(vectors))
    return np.asarray(_sk().decomposition.PCA(n_components=2, random_state=seed).fit_transform(v), np.float32)


def plot_clusters(coords: np.ndarray, labels: np.ndarray, path: str | Path, *, title: str,
                  names: dict[int, str] | None = None) -> Path:
    """A scatter plot of 2-D coordinates coloured by cluster, saved as PNG."""
    require("matplotlib", extra="eval", what="cluster plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(sorted(set(labels.tolist()))):
        pts = coords[labels == c]
        label = "noise" if c == -1 else (names or {}).get(c, f"cluster {c}")
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, color="lightgrey" if c == -1 else cmap(i % 20),
                   label=label[:40])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(set(labels.tolist())) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


@dataclass
class ClassificationReport:
    """Accuracy and macro F1 on labelled texts, per-label F1, and the most frequent confusions."""

    accuracy: float
    macro_f1: float
    n: int
    per_label_f1: dict[str, float]
    confusions: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    predictions: list[Prediction]


def knn_vote(train: np.ndarray, train_labels: Sequence[Any], test: np.ndarray, k: int) -> tuple[list[Any], np.ndarray]:
    """The label of each test vector by its ``k`` most cosine-similar training vectors.

    Each neighbour votes with its similarity (negative ones count as 0, plus 1e-9 so that every
    neighbour counts); the heaviest label wins, ties going to the smallest label. Neighbours tied on
    similarity are taken in training order. Used by :class:`Classifier` and by
    :class:`~embedsmith.evaluation.ClassificationTask`'s kNN scores.

    Args:
        train: [m, dim] training vectors; ``train_labels``: their m labels (any sortable values).
        test: [n, dim] vectors to label.

    Returns:
        n labels, and each one's confidence [n]: its share of the votes.
    """
    tn = l2_normalize(np.asarray(train, np.float32))
    k = min(k, len(tn))
    out: list[Any] = []
    confidence: list[float] = []
    for lo in range(0, len(test), 512):
        sims = l2_normalize(np.asarray(test[lo : lo + 512], np.float32)) @ tn.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
            np.tile(np.arange(sims.shape[1]), (sims.shape[0], 1))
        rows = np.arange(sims.shape[0])[:, None]
        top = part[rows, np.lexsort((part, -sims[rows, part]), axis=1)]
        for row, idx in zip(sims, top, strict=True):
            votes: dict[Any, float] = {}
            for i in idx:
                lbl = train_labels[int(i)]
                votes[lbl] = votes.get(lbl, 0.0) + max(float(row[i]), 0.0) + 1e-9
            best = max(votes.values())
            winner = min(lbl for lbl, w in votes.items() if w == best)
            out.append(winner)
            confidence.append(best / sum(votes.values()))
    return out, np.asarray(confidence)


class Classifier:
    """Labels texts by vector nearness.

    Methods: 'knn' (the ``k`` most cosine-similar training texts vote, weighted by similarity; confidence
    is the winner's share of the votes), 'centroid' (nearest label centroid; confidence is a softmax over
    centroid similarities with temperature 0.05) and 'logistic' (logistic regression; its probability).
    """

    def __init__(self, encoder: Any = None, *, method: str = "knn", k: int = 5) -> None:
        if method not in CLASSIFIERS:
            raise InvalidInputError(f"unknown method {method!r}; expected one of {', '.join(CLASSIFIERS)}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        self.encoder, self.method, self.k = encoder, method, k
        self.labels: list[str] = []
        self._train: np.ndarray | None = None
        self._train_labels: np.ndarray | None = None
        self._centroids: np.ndarray | None = None
        self._model: Any = None

    def _embed(self, texts: Sequence[str], vectors: Any) -> np.ndarray:
        if vectors is not None:
            return l2_normalize(_check_vectors(vectors, len(texts)))
        if self.encoder is None:
            raise InvalidInputError("this classifier has no encoder: pass vectors")
        if not texts:
            raise InvalidInputError("no texts given")
        return l2_normalize(self.encoder.encode(list(texts), kind="document"))

    def fit(self, texts: Sequence[str], labels: Sequence[str], *, vectors: Any = None) -> Classifier:
        if len(texts) != len(labels):
            raise InvalidInputError(f"{len(texts)} texts but {len(labels)} labels")
        if len(set(labels)) < 2:
            raise InvalidInputError(f"classification needs at least 2 labels, got {sorted(set(labels))}")
        v = self._embed(texts, vectors)
        self.labels = sorted(set(map(str, labels)))
        index = {lbl: i for i, lbl in enumerate(self.labels)}
        y = np.array([index[str(lbl)] for lbl in labels])
        self._train, self._train_labels = v, y
        self._centroids = l2_normalize(np.stack([v[y == i].mean(0) for i in range(len(self.labels))]))
        if self.method == "logistic":
            self._model = _sk().linear_model.LogisticRegression(max_iter=1000, random_state=42).fit(v, y)
        return self

    def predict(self, texts: Sequence[str], *, vectors: Any = None) -> list[Prediction]:
        if self._train is None or self._train_labels is None or self._centroids is None:
            raise InvalidInputError("fit the classifier before predicting")
        v = self._embed(texts, vectors)
        if self.method == "logistic":
            proba = self._model.predict_proba(v)
            return [Prediction(self.labels[int(i)], float(p[i])) for p, i in
                    zip(proba, proba.argmax(1), strict=True)]
        if self.method == "centroid":
            sims = v @ self._centroids.T
            z = np.exp((sims - sims.max(1, keepdims=True)) / 0.05)
            proba = z / z.sum(1, keepdims=True)
            return [Prediction(self.labels[int(i)], float(p[i])) for p, i in zip(proba, proba.argmax(1), strict=True)]
        labels, confidence = knn_vote(self._train, self._train_labels.tolist(), v, self.k)
        return [Prediction(self.labels[int(i)], float(c)) for i, c in zip(labels, confidence, strict=True)]

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], *, vectors: Any = None) -> ClassificationReport:
        """Score predictions against gold labels.

        Raises:
            InvalidInputError: a gold label the classifier was not trained on (named, with its row).
        """
        known = set(self.labels)
        for row, lbl in enumerate(labels):
            if str(lbl) not in known:
                raise InvalidInputError(f"label {lbl!r} (row {row + 1}) is not one of the {len(known)} "
                                        "training labels")
        preds = self.predict(texts, vectors=vectors)
        m = _sk().metrics
        y, p = [str(x) for x in labels], [x.label for x in preds]
        f1s = m.f1_score(y, p, labels=self.labels, average=None, zero_division=0)
        pairs = Counter((t, q) for t, q in zip(y, p, strict=True) if t != q)
        return ClassificationReport(
            accuracy=float(m.accuracy_score(y, p)),
            macro_f1=float(m.f1_score(y, p, average="macro", zero_division=0)),
            n=len(y), per_label_f1={lbl: float(f) for lbl, f in zip(self.labels, f1s, strict=True)},
            confusions=[(t, q, c) for (t, q), c in pairs.most_common(10)], predictions=preds)


# ------------------------------------------------------------------------------------------------ analogy


def default_vocabulary() -> list[str]:
    """5,000 common English words shipped with the package (see ``data/README.md``)."""
    text = resources.files("embedsmith").joinpath("data/words-en.txt").read_text(encoding="utf-8")
    return [w for w in text.split("\n") if w and not w.startswith("#")]


def word_analogy(a: str, b: str, c: str, encoder: Any, *, candidates: Sequence[str] | None = None,
                 k: int = 5, cache: dict[str, np.ndarray] | None = None) -> list[tuple[str, float]]:
    """Candidates ranked by cosine to ``a - b + c`` (king - man + woman ~ queen), excluding a, b and c.

    ``cache`` (optional) keeps candidate vectors between calls, keyed by the encoder's name.
    """
    from .similarity import analogy

    words = list(candidates) if candidates is not None else default_vocabulary()
    words = [w for w in dict.fromkeys(x.strip() for x in words) if w]
    if not words:
        raise InvalidInputError("no candidate words")
    key = f"{getattr(encoder, 'name', '')}:{len(words)}:{hash(tuple(words))}"
    if cache is not None and key in cache:
        vectors = cache[key]
    else:
        vectors = np.asarray(encoder.encode(words), np.float32)
        if cache is not None:
            cache[key] = vectors
    inputs = {x.strip().lower() for x in (a, b, c)}
    keep = [i for i, w in enumerate(words) if w.lower() not in inputs]
    ranked = analogy(a, b, c, vectors[keep], encoder=encoder, k=k)
    return [(words[keep[i]], float(s)) for i, s in ranked]
