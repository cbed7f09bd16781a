"""Classification: texts with labels; MTEB's logistic regression protocol, plus kNN (main: accuracy)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...analysis import knn_vote
from ...errors import InvalidInputError
from ...io import read_labelled
from ..results import ItemScores, MetricItems
from .base import Embed, Task, digest, sklearn


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
    similarity (:func:`embedsmith.analysis.knn_vote`)."""
    return [str(x) for x in knn_vote(train, list(labels), test, k)[0]]


@dataclass
class ClassificationTask(Task):
    """Texts with labels: MTEB's protocol (logistic regression on ``samples_per_label`` texts per label,
    ``n_experiments`` times with fixed seeds; accuracy and macro F1 averaged), plus kNN over the whole
    training set."""

    task_type: ClassVar[str] = "classification"
    help: ClassVar[str] = ("Text + label file (and optionally a test file): MTEB's logistic regression protocol, "
                           "plus kNN.")
    columns: ClassVar[tuple[str, ...]] = ("accuracy", "f1", "knn_accuracy")
    second_path: ClassVar[str] = "optional"
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    split: str = "test"
    samples_per_label: int = 8
    n_experiments: int = 10
    seed: int = 42
    knn_k: int = 5

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> ClassificationTask:
        return cls.from_file(path, path2, text_column=text_column, label_column=label_column)

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
            ms = sklearn().model_selection
            texts, test_texts, labels, test_labels = ms.train_test_split(
                texts, labels, test_size=test_size, random_state=seed, stratify=labels)
        unseen = sum(1 for lbl in test_labels if lbl not in set(labels))
        if unseen:
            problems["test_labels_unseen_in_train"] += unseen
        return cls(name or Path(path).stem, list(texts), list(labels), list(test_texts), list(test_labels),
                   seed=seed, problems=dict(problems), dataset_revision=digest(*paths), **protocol)

    @property
    def n_examples(self) -> int:
        return len(self.test_texts)

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        sk = sklearn()
        metrics = sk.metrics
        train = embed(self.train_texts, None)
        test = embed(self.test_texts, None)
        per: defaultdict[str, list[float]] = defaultdict(list)
        y_test = self.test_labels
        correct = np.zeros(len(y_test))
        label_id = {lbl: i for i, lbl in enumerate(sorted(set(self.train_labels) | set(y_test)))}
        gold = np.array([label_id[lbl] for lbl in y_test], np.float64)
        predictions = []
        for chosen in undersample(self.train_labels, self.samples_per_label, self.n_experiments, self.seed):
            model = sk.linear_model.LogisticRegression(max_iter=100, random_state=self.seed)
            model.fit(train[chosen], [self.train_labels[i] for i in chosen])
            pred = model.predict(test)
            correct += np.asarray(pred) == np.asarray(y_test)
            predictions.append([label_id[str(lbl)] for lbl in pred])
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
        # Per text: the share of experiments that labelled it right (its mean is the accuracy), and kNN's; for
        # macro F1, the gold label and each experiment's prediction (F1 is recomputed per resample of texts).
        accuracy = MetricItems("mean", correct / max(self.n_experiments, 1))
        knn_ids = np.array([label_id[lbl] for lbl in knn], np.float64)
        items = ItemScores([str(i) for i in range(len(y_test))], {
            "main_score": accuracy, "accuracy": accuracy,
            "f1": MetricItems("macro_f1", np.column_stack([gold, *np.asarray(predictions, np.float64)])),
            "knn_accuracy": MetricItems("mean", (np.asarray(knn) == np.asarray(y_test)).astype(np.float64)),
            "knn_f1": MetricItems("macro_f1", np.column_stack([gold, knn_ids]))})
        return out, items
