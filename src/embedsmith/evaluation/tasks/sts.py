"""STS: sentence pairs with gold similarity scores; Spearman/Pearson of cosine, Manhattan and Euclidean."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InvalidInputError
from ...io import check_file, parse_records, parse_table, read_text, split_lines
from ..results import ItemScores, MetricItems
from ..stats import pearson, spearman
from .base import Embed, Task, digest, split_of


def _score(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"{path}:{line}: score {value!r} is not a number") from None


@dataclass
class STSTask(Task):
    """Sentence pairs with gold similarity scores.

    Reads the STS Benchmark CSV (no header: sentence1, sentence2, score) and SICK / SemEval TSV files
    with a header (``sentence_A``/``sentence_B``/``relatedness_score`` or ``sentence1``/``sentence2``/
    ``score``).
    """

    task_type: ClassVar[str] = "sts"
    help: ClassVar[str] = "Sentence pairs with gold scores (STSb CSV, SICK/SemEval TSV): Spearman/Pearson."
    columns: ClassVar[tuple[str, ...]] = ("spearman_cosine", "pearson_cosine")
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    split: str = "test"

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> STSTask:
        cls.check_paths(path2)
        return cls.from_file(path, split=split)

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
        return cls(name or p.stem, a, b, s, split or split_of(p), dataset_revision=digest(p))

    @property
    def n_examples(self) -> int:
        return len(self.scores)

    def _vectors(self, embed: Embed) -> tuple[np.ndarray, np.ndarray]:
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))
        vectors = embed(unique, None)
        row = {t: i for i, t in enumerate(unique)}
        return vectors[[row[t] for t in self.sentences1]], vectors[[row[t] for t in self.sentences2]]

    def _similarities(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        va, vb = a.astype(np.float64), b.astype(np.float64)
        return {
            "cosine": (va * vb).sum(1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12),
            "manhattan": -np.abs(va - vb).sum(1),
            "euclidean": -np.sqrt(((va - vb) ** 2).sum(1)),
        }

    def score_vectors(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """Scores of row-aligned vectors for ``sentences1`` and ``sentences2``."""
        gold = np.asarray(self.scores, np.float64)
        out: dict[str, float] = {}
        for name, sim in self._similarities(a, b).items():
            out[f"pearson_{name}"] = pearson(sim, gold)
            out[f"spearman_{name}"] = spearman(sim, gold)
        out["main_score"] = out["spearman_cosine"]
        return out

    def items_of_vectors(self, a: np.ndarray, b: np.ndarray) -> ItemScores:
        """Per pair ``[cosine, gold]``: Spearman and Pearson are recomputed on each resample of pairs."""
        rows = np.stack([self._similarities(a, b)["cosine"], np.asarray(self.scores, np.float64)], axis=1)
        spear = MetricItems("spearman", rows)
        return ItemScores([str(i) for i in range(len(rows))],
                          {"main_score": spear, "spearman_cosine": spear,
                           "pearson_cosine": MetricItems("pearson", rows)})

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        a, b = self._vectors(embed)
        return self.score_vectors(a, b), self.items_of_vectors(a, b)
