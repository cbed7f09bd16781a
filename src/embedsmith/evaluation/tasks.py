"""Evaluation tasks on local data, with MTEB's protocols and metrics.

Each task reads a standard file layout, counts (rather than crashes on) malformed rows and dangling
references, and scores any encoder through :class:`~embedsmith.evaluation.embed.EmbeddingCache`:

- :class:`RetrievalTask`: a BEIR folder; nDCG/MAP/MRR/recall/precision at 1, 3, 5, 10, 100 (main: nDCG@10).
- :class:`STSTask`: sentence pairs with gold scores; Spearman/Pearson of cosine, Manhattan, Euclidean.
- :class:`ClassificationTask`: text + label; MTEB's logistic regression protocol, plus kNN (main: accuracy).
- :class:`ClusteringTask`: text + label; MiniBatchKMeans with k = number of labels (main: V-measure).
- :class:`PairClassificationTask`: pairs + binary label; best accuracy/F1 and average precision (main: max AP).
- :class:`BitextTask`: two aligned files; nearest-neighbour accuracy and F1 both ways (main: F1).
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InvalidInputError, require
from ..io import (
    check_file,
    parse_records,
    parse_table,
    read_beir_corpus,
    read_beir_queries,
    read_labelled,
    read_lines,
    read_qrels,
    read_rows,
    read_text,
    split_lines,
)
from ..types import Precision, parse_enum
from .embed import EmbeddingCache, apply_setting, cosine_matrix, model_name, model_revision, top_indices
from .metrics import DEFAULT_KS, retrieval_scores
from .results import TaskResult

Embed = Callable[[Sequence[str], str | None], np.ndarray]


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_rank(np.asarray(x, np.float64)), _rank(np.asarray(y, np.float64)))


def _score(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"{path}:{line}: score {value!r} is not a number") from None


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _sklearn() -> Any:
    return require("sklearn", extra="eval", what="classification and clustering")


class Task(ABC):
    """A dataset with a protocol. Subclasses implement :meth:`_scores` over an ``embed`` function."""

    task_type: ClassVar[str]
    name: str
    split: str
    problems: dict[str, int]
    dataset_revision: str | None
    languages: list[str]

    @property
    @abstractmethod
    def n_examples(self) -> int: ...

    @abstractmethod
    def _scores(self, embed: Embed) -> dict[str, float]: ...

    def evaluate(
        self,
        encoder: Any,
        *,
        dims: int | None = None,
        precision: str | Precision = Precision.FLOAT32,
        cache: EmbeddingCache | None = None,
        show_progress: bool = False,
    ) -> TaskResult:
        """Score ``encoder`` (anything with an ``encode(list[str])`` method) on this task.

        Args:
            dims: keep the first ``dims`` dimensions of every vector (renormalised), as a store would.
            precision: score vectors as stored in float32, float16, int8 or binary.
            cache: share vectors between calls (other tasks, settings or modes) in one run.
        """
        p = parse_enum(Precision, precision, "precision")
        cache = cache or EmbeddingCache(show_progress=show_progress)
        encoded_before = cache.encode_seconds
        start = time.perf_counter()

        def embed(texts: Sequence[str], kind: str | None = None) -> np.ndarray:
            return apply_setting(cache.encode(encoder, texts, kind=kind), dims=dims, precision=p)

        scores = self._scores(embed)
        return TaskResult(
            task_name=self.name, task_type=self.task_type, split=self.split,
            scores={"main_score": scores.pop("main_score"), **scores},
            model_name=model_name(encoder), model_revision=model_revision(encoder),
            evaluation_time=time.perf_counter() - start, encode_time=cache.encode_seconds - encoded_before,
            n_examples=self.n_examples, dataset_revision=self.dataset_revision, dims=dims, precision=p.value,
            languages=list(self.languages), problems=dict(self.problems),
        )


# --------------------------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalTask(Task):
    """Queries, a corpus, and graded judgements (BEIR layout)."""

    task_type: ClassVar[str] = "retrieval"
    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    ks: tuple[int, ...] = DEFAULT_KS
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_beir(cls, folder: str | Path, *, split: str | None = None, name: str | None = None) -> RetrievalTask:
        """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

        ``split`` defaults to ``test``, else ``dev``, else the only qrels file. Judgements of unknown
        queries or documents, malformed rows, and queries without a relevant document are counted in
        ``problems`` and left out.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InvalidInputError(f"BEIR folder {str(root)!r} does not exist")
        corpus_path = check_file(root / "corpus.jsonl", "corpus file")
        queries_path = check_file(root / "queries.jsonl", "queries file")
        qrels_dir = root / "qrels"
        available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        if split is None:
            split = next((s for s in ("test", "dev") if s in available), available[0] if len(available) == 1 else None)
        if split is None or split not in available:
            raise InvalidInputError(
                f"{root}: no qrels for split {split!r} (found: {', '.join(available) or 'none'} in qrels/)"
            )
        qrels_path = qrels_dir / f"{split}.tsv"
        problems: Counter[str] = Counter()
        corpus = read_beir_corpus(corpus_path, problems)
        queries = read_beir_queries(queries_path, problems)
        if not corpus:
            raise InvalidInputError(f"{corpus_path} holds no documents")
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for qid, did, grade in read_qrels(qrels_path, problems):
            if qid not in queries:
                problems["qrels_unknown_query"] += 1
            elif did not in corpus:
                problems["qrels_unknown_doc"] += 1
            else:
                qrels[qid][did] = grade
        judged = {q: rel for q, rel in qrels.items() if any(g > 0 for g in rel.values())}
        if len(judged) < len(qrels):
            problems["queries_without_relevant_doc"] += len(qrels) - len(judged)
        unjudged = len(queries) - len(qrels)
        if unjudged:
            problems["queries_without_qrels"] += unjudged
        if not judged:
            raise InvalidInputError(f"{qrels_path}: no query has a relevant document in the corpus")
        return cls(name or root.name, corpus, queries, judged, split, problems=dict(problems),
                   dataset_revision=_digest(corpus_path, queries_path, qrels_path))

    @property
    def n_examples(self) -> int:
        return len(self.qrels)

    def encode(self, embed: Embed) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        """Query ids, query vectors, document ids and document vectors."""
        qids = list(self.qrels)
        dids = list(self.corpus)
        docs = embed([self.corpus[d] for d in dids], "document")
        qs = embed([self.queries[q] for q in qids], "query")
        return qids, qs, dids, docs

    def rank(self, qids: Sequence[str], qs: np.ndarray, dids: Sequence[str], docs: np.ndarray,
             k: int | None = None) -> dict[str, list[str]]:
        """Exact cosine search: each query's top ``k`` (default: the largest cut-off) document ids."""
        k = k or max(self.ks)
        run: dict[str, list[str]] = {}
        for lo in range(0, len(qids), 256):
            top = top_indices(cosine_matrix(qs[lo : lo + 256], docs), k)
            for qid, row in zip(qids[lo : lo + 256], top, strict=True):
                run[qid] = [dids[i] for i in row]
        return run

    def score_run(self, run: dict[str, list[str]]) -> dict[str, float]:
        scores = retrieval_scores(self.qrels, run, self.ks)
        return {"main_score": scores["ndcg_at_10"], **scores}

    def _scores(self, embed: Embed) -> dict[str, float]:
        return self.score_run(self.rank(*self.encode(embed)))


# ---------------------------------------------------------------------------------------------- STS


@dataclass
class STSTask(Task):
    """Sentence pairs with gold similarity scores.

    Reads the STS Benchmark CSV (no header: sentence1, sentence2, score) and SICK / SemEval TSV files
    with a header (``sentence_A``/``sentence_B``/``relatedness_score`` or ``sentence1``/``sentence2``/
    ``score``).
    """

    task_type: ClassVar[str] = "sts"
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    split: str = "test"
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None, split: str | None = None) -> STSTask:
        p = check_file(path, "STS file")
        a: list[str] = []
        b: list[str] = []
        s: list[float] = []
        text = read_text(p)
        lines = split_lines(text)
        if lines and "\t" in lines[0]:
            for n, row in parse_table(text, p, delimiter="\t", quoting=False).rows:
                s1 = row.get("sentence_A") or row.get("sentence1")
                s2 = row.get("sentence_B") or row.get("sentence2")
                score = row.get("relatedness_score") or row.get("score")
                if s1 is None or s2 is None or score is None:
                    raise InvalidInputError(f"{p}:{n}: expected sentence_A/sentence_B/relatedness_score columns")
                a.append(s1)
                b.append(s2)
                s.append(_score(score, p, n))
        else:
            for n, fields in parse_records(text, p):
                if len(fields) < 3:
                    raise InvalidInputError(f"{p}:{n}: expected sentence1,sentence2,score")
                a.append(fields[0])
                b.append(fields[1])
                s.append(_score(fields[2], p, n))
        if len(a) < 2:
            raise InvalidInputError(f"{p} holds {len(a)} pairs; STS needs at least 2")
        return cls(name or p.stem, a, b, s, split or _split_of(p), dataset_revision=_digest(p))

    @property
    def n_examples(self) -> int:
        return len(self.scores)

    def _scores(self, embed: Embed) -> dict[str, float]:
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))
        vectors = embed(unique, None)
        row = {t: i for i, t in enumerate(unique)}
        return self.score_vectors(vectors[[row[t] for t in self.sentences1]],
                                  vectors[[row[t] for t in self.sentences2]])

    def score_vectors(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """Scores of row-aligned vectors for ``sentences1`` and ``sentences2``."""
        va, vb = a.astype(np.float64), b.astype(np.float64)
        gold = np.asarray(self.scores, np.float64)
        sims = {
            "cosine": (va * vb).sum(1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12),
            "manhattan": -np.abs(va - vb).sum(1),
            "euclidean": -np.sqrt(((va - vb) ** 2).sum(1)),
        }
        out: dict[str, float] = {}
        for name, sim in sims.items():
            out[f"pearson_{name}"] = pearson(sim, gold)
            out[f"spearman_{name}"] = spearman(sim, gold)
        out["main_score"] = out["spearman_cosine"]
        return out


def _split_of(p: Path) -> str:
    stem = p.stem.lower()
    for s in ("train", "dev", "validation", "test", "trial"):
        if s in stem:
            return s
    return "test"


# ------------------------------------------------------------------------------------ classification


def undersample(labels: Sequence[str], samples_per_label: int, n_experiments: int, seed: int) -> list[list[int]]:
    """MTEB's training subsets: per experiment, reshuffle one index list with a fresh ``RandomState(seed)``
    and keep the first ``samples_per_label`` of each label."""
    idxs = list(range(len(labels)))
    out = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        seen: Counter[str] = Counter()
        chosen = []
        for i in idxs:
            if seen[labels[i]] < samples_per_label:
                chosen.append(i)
                seen[labels[i]] += 1
        out.append(chosen)
    return out


def knn_predict(train: np.ndarray, labels: Sequence[str], test: np.ndarray, k: int) -> list[str]:
    """Label of each test vector by its ``k`` most cosine-similar training vectors, votes weighted by
    similarity."""
    preds = []
    for lo in range(0, len(test), 512):
        sims = cosine_matrix(test[lo : lo + 512], train)
        top = top_indices(sims, k)
        for row, idx in zip(sims, top, strict=True):
            votes: defaultdict[str, float] = defaultdict(float)
            for i in idx:
                votes[labels[i]] += float(row[i])
            preds.append(max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0])
    return preds


@dataclass
class ClassificationTask(Task):
    """Texts with labels: MTEB's protocol (logistic regression on ``samples_per_label`` texts per label,
    ``n_experiments`` times with fixed seeds; accuracy and macro F1 averaged), plus kNN over the whole
    training set."""

    task_type: ClassVar[str] = "classification"
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    split: str = "test"
    samples_per_label: int = 8
    n_experiments: int = 10
    seed: int = 42
    knn_k: int = 5
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | Path, test_path: str | Path | None = None, *, text_column: str | None = None,
                  label_column: str | None = None, test_size: float = 0.2, seed: int = 42,
                  name: str | None = None, **protocol: Any) -> ClassificationTask:
        """Read a labelled file; without ``test_path``, hold back a stratified ``test_size`` of it."""
        problems: Counter[str] = Counter()
        texts, labels = read_labelled(path, text_column=text_column, label_column=label_column, problems=problems)
        paths = [Path(path)]
        if test_path is not None:
            test_texts, test_labels = read_labelled(test_path, text_column=text_column,
                                                    label_column=label_column, problems=problems)
            paths.append(Path(test_path))
        else:
            if not 0 < test_size < 1:
                raise InvalidInputError(f"test_size must be between 0 and 1, got {test_size}")
            counts = Counter(labels)
            rare = sorted(lbl for lbl, c in counts.items() if c < 2)
            if rare:
                raise InvalidInputError(
                    f"{path}: labels {rare[:5]} have a single text; a held-out split needs two per label "
                    "(or pass a separate test file)"
                )
            ms = _sklearn().model_selection
            texts, test_texts, labels, test_labels = ms.train_test_split(
                texts, labels, test_size=test_size, random_state=seed, stratify=labels)
        unseen = sum(1 for lbl in test_labels if lbl not in set(labels))
        if unseen:
            problems["test_labels_unseen_in_train"] += unseen
        return cls(name or Path(path).stem, list(texts), list(labels), list(test_texts), list(test_labels),
                   seed=seed, problems=dict(problems), dataset_revision=_digest(*paths), **protocol)

    @property
    def n_examples(self) -> int:
        return len(self.test_texts)

    def _scores(self, embed: Embed) -> dict[str, float]:
        sk = _sklearn()
        metrics = sk.metrics
        train = embed(self.train_texts, None)
        test = embed(self.test_texts, None)
        per: defaultdict[str, list[float]] = defaultdict(list)
        y_test = self.test_labels
        for chosen in undersample(self.train_labels, self.samples_per_label, self.n_experiments, self.seed):
            model = sk.linear_model.LogisticRegression(max_iter=100, random_state=self.seed)
            model.fit(train[chosen], [self.train_labels[i] for i in chosen])
            pred = model.predict(test)
            per["accuracy"].append(metrics.accuracy_score(y_test, pred))
            per["f1"].append(metrics.f1_score(y_test, pred, average="macro"))
            per["f1_weighted"].append(metrics.f1_score(y_test, pred, average="weighted"))
            per["precision"].append(metrics.precision_score(y_test, pred, average="macro"))
            per["recall"].append(metrics.recall_score(y_test, pred, average="macro"))
        out = {k: float(np.mean(v)) for k, v in per.items()}
        knn = knn_predict(train, self.train_labels, test, self.knn_k)
        out["knn_accuracy"] = float(metrics.accuracy_score(y_test, knn))
        out["knn_f1"] = float(metrics.f1_score(y_test, knn, average="macro"))
        out["main_score"] = out["accuracy"]
        return out


@dataclass
class ClusteringTask(Task):
    """Texts with labels: MiniBatchKMeans with k = number of labels, scored by V-measure (as MTEB)."""

    task_type: ClassVar[str] = "clustering"
    name: str
    texts: list[str]
    labels: list[str]
    split: str = "test"
    seed: int = 42
    batch_size: int = 500
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
                  name: str | None = None, seed: int = 42) -> ClusteringTask:
        problems: Counter[str] = Counter()
        texts, labels = read_labelled(path, text_column=text_column, label_column=label_column, problems=problems)
        if len(set(labels)) < 2:
            raise InvalidInputError(f"{path}: clustering needs at least 2 labels, found {len(set(labels))}")
        return cls(name or Path(path).stem, texts, labels, seed=seed, problems=dict(problems),
                   dataset_revision=_digest(Path(path)))

    @property
    def n_examples(self) -> int:
        return len(self.texts)

    def _scores(self, embed: Embed) -> dict[str, float]:
        sk = _sklearn()
        vectors = embed(self.texts, None)
        km = sk.cluster.MiniBatchKMeans(n_clusters=len(set(self.labels)), batch_size=self.batch_size,
                                        n_init="auto", compute_labels=True, random_state=self.seed)
        km.fit(vectors)
        pred = km.labels_.tolist()
        m = sk.metrics
        return {
            "main_score": float(m.v_measure_score(self.labels, pred)),
            "v_measure": float(m.v_measure_score(self.labels, pred)),
            "nmi": float(m.normalized_mutual_info_score(self.labels, pred)),
            "ari": float(m.adjusted_rand_score(self.labels, pred)),
        }


# ----------------------------------------------------------------------------------- pair classification


def best_accuracy(scores: np.ndarray, labels: np.ndarray, higher_is_closer: bool) -> tuple[float, float]:
    """Best accuracy over thresholds between distinct scores, and that threshold (MTEB's sweep)."""
    rows = sorted(zip(scores.tolist(), labels.tolist(), strict=True), key=lambda r: r[0], reverse=higher_is_closer)
    best, threshold = 0.0, -1.0
    positives, negatives_left = 0, int((labels == 0).sum())
    for i in range(len(rows) - 1):
        if rows[i][1] == 1:
            positives += 1
        else:
            negatives_left -= 1
        if rows[i][0] == rows[i + 1][0]:
            continue
        acc = (positives + negatives_left) / len(labels)
        if acc > best:
            best, threshold = acc, (rows[i][0] + rows[i + 1][0]) / 2
    return best, threshold


def best_f1(scores: np.ndarray, labels: np.ndarray, higher_is_closer: bool) -> tuple[float, float, float, float]:
    """Best F1 over thresholds, with its precision, recall and threshold (MTEB's sweep)."""
    rows = sorted(zip(scores.tolist(), labels.tolist(), strict=True), key=lambda r: r[0], reverse=higher_is_closer)
    best = (0.0, 0.0, 0.0, 0.0)
    correct, total = 0, int(labels.sum())
    for i in range(len(rows) - 1):
        if rows[i][1] == 1:
            correct += 1
        if rows[i][0] == rows[i + 1][0] or correct == 0:
            continue
        precision, recall = correct / (i + 1), correct / total
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best[0]:
            best = (f1, precision, recall, (rows[i][0] + rows[i + 1][0]) / 2)
    return best


POSITIVE_LABELS = {"1", "true", "yes", "entailment", "paraphrase", "duplicate"}


@dataclass
class PairClassificationTask(Task):
    """Sentence pairs with a binary label (paraphrase, duplicate, entailment...)."""

    task_type: ClassVar[str] = "pair-classification"
    name: str
    sentences1: list[str]
    sentences2: list[str]
    labels: list[int]
    split: str = "test"
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | Path, *, label_column: str | None = None, name: str | None = None,
                  split: str | None = None) -> PairClassificationTask:
        """CSV/TSV with a header (``sentence1``/``sentence2`` or ``sentence_A``/``sentence_B``, and ``label``
        or SICK's ``entailment_judgment``) or JSONL. Labels 1/true/yes/entailment/paraphrase are positive,
        0/false/no and any other class negative."""
        p = check_file(path, "pair file")
        problems: Counter[str] = Counter()
        a: list[str] = []
        b: list[str] = []
        y: list[int] = []
        for _, row in read_rows(p, problems=problems):
            s1 = row.get("sentence1", row.get("sentence_A"))
            s2 = row.get("sentence2", row.get("sentence_B"))
            col = label_column or next((c for c in ("label", "entailment_judgment", "is_duplicate") if c in row), None)
            raw = row.get(col) if col else None
            if not isinstance(s1, str) or not isinstance(s2, str) or not s1.strip() or not s2.strip():
                problems["malformed_rows"] += 1
                continue
            if raw is None or str(raw).strip() == "":
                problems["missing_label"] += 1
                continue
            a.append(s1)
            b.append(s2)
            y.append(1 if str(raw).strip().lower() in POSITIVE_LABELS else 0)
        if not a:
            raise InvalidInputError(f"{p} holds no labelled pairs (columns sentence1, sentence2, label)")
        if len(set(y)) < 2:
            raise InvalidInputError(f"{p}: pair classification needs positive and negative pairs")
        return cls(name or p.stem, a, b, y, split or _split_of(p), problems=dict(problems),
                   dataset_revision=_digest(p))

    @property
    def n_examples(self) -> int:
        return len(self.labels)

    def _scores(self, embed: Embed) -> dict[str, float]:
        sk = _sklearn()
        va = embed(self.sentences1, None)
        vb = embed(self.sentences2, None)
        y = np.asarray(self.labels, np.int64)
        na = va / np.maximum(np.linalg.norm(va, axis=1, keepdims=True), 1e-12)
        nb = vb / np.maximum(np.linalg.norm(vb, axis=1, keepdims=True), 1e-12)
        measures = {
            "cosine": ((na * nb).sum(1), True),
            "manhattan": (np.abs(va - vb).sum(1), False),
            "euclidean": (np.sqrt(((va - vb) ** 2).sum(1)), False),
            "dot": ((va * vb).sum(1), True),
        }
        out: dict[str, float] = {}
        best: defaultdict[str, list[float]] = defaultdict(list)
        for name, (scores, higher) in measures.items():
            acc, _ = best_accuracy(scores, y, higher)
            f1, precision, recall, _ = best_f1(scores, y, higher)
            ap = float(sk.metrics.average_precision_score(y, scores * (1 if higher else -1)))
            for metric, value in (("accuracy", acc), ("f1", f1), ("precision", precision),
                                  ("recall", recall), ("ap", ap)):
                out[f"{name}_{metric}"] = float(value)
                best[metric].append(float(value))
        for metric, values in best.items():
            out[f"max_{metric}"] = max(values)
        out["main_score"] = out["max_ap"]
        return out


# ------------------------------------------------------------------------------------------------ bitext


@dataclass
class BitextTask(Task):
    """Aligned sentences in two languages: each sentence's nearest neighbour (cosine) on the other side
    should be its translation. Scores are MTEB's (weighted precision/recall/F1 over the gold indices)
    for source -> target, and the same prefixed ``reverse_`` for target -> source."""

    task_type: ClassVar[str] = "bitext"
    name: str
    source: list[str]
    target: list[str]
    split: str = "test"
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    def from_files(cls, source: str | Path, target: str | Path, *, name: str | None = None) -> BitextTask:
        a = read_lines(source, what="source file", keep_blank=True)
        b = read_lines(target, what="target file", keep_blank=True)
        ps, pt = Path(source), Path(target)
        if len(a) != len(b):
            raise InvalidInputError(f"{ps} has {len(a)} lines but {pt} has {len(b)}: the files are not aligned")
        problems: Counter[str] = Counter()
        pairs = []
        for x, y in zip(a, b, strict=True):
            if x.strip() and y.strip():
                pairs.append((x, y))
            else:
                problems["empty_lines"] += 1
        if not pairs:
            raise InvalidInputError(f"{ps} and {pt} hold no aligned sentence pairs")
        langs = [p.suffix.lstrip(".") for p in (ps, pt) if p.suffix]
        return cls(name or f"{ps.stem}{ps.suffix}", [x for x, _ in pairs], [y for _, y in pairs],
                   problems=dict(problems), dataset_revision=_digest(ps, pt), languages=langs)

    @property
    def n_examples(self) -> int:
        return len(self.source)

    def _scores(self, embed: Embed) -> dict[str, float]:
        m = _sklearn().metrics
        va = embed(self.source, None)
        vb = embed(self.target, None)
        gold = np.arange(len(self.source))
        out: dict[str, float] = {}
        for prefix, (q, c) in (("", (va, vb)), ("reverse_", (vb, va))):
            pred = np.concatenate([top_indices(cosine_matrix(q[lo : lo + 512], c), 1)[:, 0]
                                   for lo in range(0, len(q), 512)])
            out[f"{prefix}accuracy"] = float(m.accuracy_score(gold, pred))
            out[f"{prefix}precision"] = float(m.precision_score(gold, pred, zero_division=0, average="weighted"))
            out[f"{prefix}recall"] = float(m.recall_score(gold, pred, zero_division=0, average="weighted"))
            out[f"{prefix}f1"] = float(m.f1_score(gold, pred, zero_division=0, average="weighted"))
        out["main_score"] = out["f1"]
        return out


TASK_TYPES = ("retrieval", "sts", "classification", "clustering", "pair-classification", "bitext")


def load_task(task_type: str, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
              text_column: str | None = None, label_column: str | None = None) -> Task:
    """Read a task of ``task_type`` (one of :data:`TASK_TYPES`) from its file(s)."""
    if task_type not in TASK_TYPES:
        raise InvalidInputError(f"unknown task {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    if task_type == "bitext":
        if path2 is None:
            raise InvalidInputError("bitext needs two aligned files: SOURCE TARGET")
        return BitextTask.from_files(path, path2)
    if path2 is not None and task_type != "classification":
        raise InvalidInputError(f"{task_type} takes one path, got a second: {str(path2)!r}")
    if task_type == "retrieval":
        return RetrievalTask.from_beir(path, split=split)
    if task_type == "sts":
        return STSTask.from_file(path, split=split)
    if task_type == "classification":
        return ClassificationTask.from_file(path, path2, text_column=text_column, label_column=label_column)
    if task_type == "clustering":
        return ClusteringTask.from_file(path, text_column=text_column, label_column=label_column)
    return PairClassificationTask.from_file(path, label_column=label_column, split=split)


def evaluate(encoder: Any, task: Task, **kwargs: Any) -> TaskResult:
    """Score ``encoder`` on ``task`` (see :meth:`Task.evaluate` for the keyword arguments)."""
    return task.evaluate(encoder, **kwargs)
