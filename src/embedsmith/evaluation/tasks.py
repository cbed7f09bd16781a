"""Evaluation tasks on local data. So far: semantic textual similarity (STS)."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..types import Encoder


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


@dataclass(frozen=True)
class STSTask:
    """Sentence pairs with gold similarity scores.

    Reads the STS Benchmark CSV (no header: sentence1, sentence2, score) and SICK / SemEval TSV files
    with a header (``sentence_A``/``sentence_B``/``relatedness_score`` or ``sentence1``/``sentence2``/
    ``score``).
    """

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None) -> STSTask:
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"STS file {str(p)!r} does not exist")
        a: list[str] = []
        b: list[str] = []
        s: list[float] = []
        text = p.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else ""
        if "\t" in first:
            rows = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
            for n, row in enumerate(rows, start=2):
                s1 = row.get("sentence_A") or row.get("sentence1")
                s2 = row.get("sentence_B") or row.get("sentence2")
                score = row.get("relatedness_score") or row.get("score")
                if s1 is None or s2 is None or score is None:
                    raise InvalidInputError(f"{p}:{n}: expected sentence_A/sentence_B/relatedness_score columns")
                a.append(s1)
                b.append(s2)
                s.append(_score(score, p, n))
        else:
            for n, fields in enumerate(csv.reader(text.splitlines()), start=1):
                if len(fields) < 3:
                    raise InvalidInputError(f"{p}:{n}: expected sentence1,sentence2,score")
                a.append(fields[0])
                b.append(fields[1])
                s.append(_score(fields[2], p, n))
        if len(a) < 2:
            raise InvalidInputError(f"{p} holds {len(a)} pairs; STS needs at least 2")
        return cls(name or p.stem, a, b, s)

    def evaluate(self, encoder: Encoder, *, batch_size: int | None = None) -> dict[str, Any]:
        """Spearman and Pearson of cosine, Manhattan and Euclidean similarities against the gold scores.

        Returns:
            ``{"main_score": spearman_cosine, "spearman_cosine": ..., "pearson_manhattan": ..., ...,
            "evaluation_time": seconds}``; distances are negated so every similarity is higher-is-closer.
        """
        start = time.perf_counter()
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))
        vectors = encoder.encode(unique, batch_size=batch_size)
        row = {t: i for i, t in enumerate(unique)}
        va = vectors[[row[t] for t in self.sentences1]].astype(np.float64)
        vb = vectors[[row[t] for t in self.sentences2]].astype(np.float64)
        gold = np.asarray(self.scores, np.float64)
        sims = {
            "cosine": (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)),
            "manhattan": -np.abs(va - vb).sum(1),
            "euclidean": -np.sqrt(((va - vb) ** 2).sum(1)),
        }
        out: dict[str, Any] = {}
        for name, sim in sims.items():
            out[f"pearson_{name}"] = pearson(sim, gold)
            out[f"spearman_{name}"] = spearman(sim, gold)
        out["main_score"] = out["spearman_cosine"]
        out["evaluation_time"] = time.perf_counter() - start
        return out
