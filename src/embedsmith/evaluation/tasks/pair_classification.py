"""Pair classification: sentence pairs with a binary label; best accuracy/F1 and average precision."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InvalidInputError
from ...io import check_file, read_rows
from ..results import ItemScores, MetricItems
from .base import Embed, Task, digest, sklearn, split_of


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
    help: ClassVar[str] = "Sentence pairs + binary label: best accuracy/F1 and average precision."
    columns: ClassVar[tuple[str, ...]] = ("max_ap", "max_f1", "max_accuracy")
    sentences1: list[str]
    sentences2: list[str]
    labels: list[int]
    split: str = "test"

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> PairClassificationTask:
        cls.check_paths(path2)
        return cls.from_file(path, label_column=label_column, split=split)

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
        return cls(name or p.stem, a, b, y, split or split_of(p), problems=dict(problems),
                   dataset_revision=digest(p))

    @property
    def n_examples(self) -> int:
        return len(self.labels)

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        sk = sklearn()
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
        # Per pair: each measure's score (higher = more alike) and the label; AP and the thresholds' best
        # accuracy and F1 are recomputed per resample.
        rows = np.stack([s * (1 if higher else -1) for s, higher in measures.values()] + [y.astype(np.float64)], 1)
        best_ap = MetricItems("max_average_precision", rows)
        cosine = rows[:, [0, -1]]
        items = ItemScores([str(i) for i in range(len(y))], {
            "main_score": best_ap, "max_ap": best_ap,
            "max_accuracy": MetricItems("best_accuracy", rows), "max_f1": MetricItems("best_f1", rows),
            "cosine_ap": MetricItems("average_precision", cosine),
            "cosine_accuracy": MetricItems("best_accuracy", cosine), "cosine_f1": MetricItems("best_f1", cosine)})
        return out, items
