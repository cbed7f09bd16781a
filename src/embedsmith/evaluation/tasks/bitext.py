"""Bitext mining: aligned sentences in two languages; nearest-neighbour accuracy and F1, both ways."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InvalidInputError
from ...io import read_lines
from ..embed import cosine_matrix, top_indices
from ..results import ItemScores, MetricItems
from .base import Embed, Task, digest, sklearn


@dataclass
class BitextTask(Task):
    """Aligned sentences in two languages: each sentence's nearest neighbour (cosine) on the other side
    should be its translation. Scores are MTEB's (weighted precision/recall/F1 over the gold indices)
    for source -> target, and the same prefixed ``reverse_`` for target -> source."""

    task_type: ClassVar[str] = "bitext"
    help: ClassVar[str] = "Two aligned files (SOURCE TARGET): nearest-neighbour accuracy and F1, both ways."
    columns: ClassVar[tuple[str, ...]] = ("accuracy", "f1", "reverse_accuracy", "reverse_f1")
    second_path: ClassVar[str] = "required"
    source: list[str]
    target: list[str]
    split: str = "test"

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> BitextTask:
        if path2 is None:
            raise InvalidInputError("bitext needs two aligned files: SOURCE TARGET")
        return cls.from_files(path, path2)

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
                   problems=dict(problems), dataset_revision=digest(ps, pt), languages=langs)

    @property
    def n_examples(self) -> int:
        return len(self.source)

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        m = sklearn().metrics
        va = embed(self.source, None)
        vb = embed(self.target, None)
        gold = np.arange(len(self.source))
        out: dict[str, float] = {}
        metrics: dict[str, MetricItems] = {}
        for prefix, (q, c) in (("", (va, vb)), ("reverse_", (vb, va))):
            pred = np.concatenate([top_indices(cosine_matrix(q[lo : lo + 512], c), 1)[:, 0]
                                   for lo in range(0, len(q), 512)])
            out[f"{prefix}accuracy"] = float(m.accuracy_score(gold, pred))
            metrics[f"{prefix}accuracy"] = MetricItems("mean", (pred == gold).astype(np.float64))
            out[f"{prefix}precision"] = float(m.precision_score(gold, pred, zero_division=0, average="weighted"))
            out[f"{prefix}recall"] = float(m.recall_score(gold, pred, zero_division=0, average="weighted"))
            out[f"{prefix}f1"] = float(m.f1_score(gold, pred, zero_division=0, average="weighted"))
            # Per sentence: its own index (its class) and the predicted one; weighted F1 is recomputed on
            # each resample (a sentence drawn twice is a class of support 2).
            metrics[f"{prefix}f1"] = MetricItems("weighted_f1", np.stack([gold, pred], 1).astype(np.float64))
        out["main_score"] = out["f1"]
        metrics["main_score"] = metrics["f1"]
        return out, ItemScores([str(i) for i in range(len(gold))], metrics)
