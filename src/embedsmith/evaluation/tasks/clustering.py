"""Clustering: texts with labels; MiniBatchKMeans with k = number of labels, V-measure (as MTEB)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InvalidInputError
from ...io import read_labelled
from ..results import ItemScores, MetricItems
from .base import Embed, Task, digest, sklearn


@dataclass
class ClusteringTask(Task):
    """Texts with labels: MiniBatchKMeans with k = number of labels, scored by V-measure (as MTEB)."""

    task_type: ClassVar[str] = "clustering"
    help: ClassVar[str] = "Text + label file: MiniBatchKMeans with k = number of labels, V-measure."
    columns: ClassVar[tuple[str, ...]] = ("v_measure", "nmi", "ari")
    texts: list[str]
    labels: list[str]
    split: str = "test"
    seed: int = 42
    batch_size: int = 500

    @classmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> ClusteringTask:
        cls.check_paths(path2)
        return cls.from_file(path, text_column=text_column, label_column=label_column)

    @classmethod
    def from_file(cls, path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
                  name: str | None = None, seed: int = 42) -> ClusteringTask:
        problems: Counter[str] = Counter()
        texts, labels = read_labelled(path, text_column=text_column, label_column=label_column, problems=problems)
        if len(set(labels)) < 2:
            raise InvalidInputError(f"{path}: clustering needs at least 2 labels, found {len(set(labels))}")
        return cls(name or Path(path).stem, texts, labels, seed=seed, problems=dict(problems),
                   dataset_revision=digest(Path(path)))

    @property
    def n_examples(self) -> int:
        return len(self.texts)

    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        sk = sklearn()
        vectors = embed(self.texts, None)
        km = sk.cluster.MiniBatchKMeans(n_clusters=len(set(self.labels)), batch_size=self.batch_size,
                                        n_init="auto", compute_labels=True, random_state=self.seed)
        km.fit(vectors)
        pred = km.labels_.tolist()
        m = sk.metrics
        scores = {
            "main_score": float(m.v_measure_score(self.labels, pred)),
            "v_measure": float(m.v_measure_score(self.labels, pred)),
            "nmi": float(m.normalized_mutual_info_score(self.labels, pred)),
            "ari": float(m.adjusted_rand_score(self.labels, pred)),
        }
        # Per text: [gold label id, cluster id]; V-measure is recomputed on each resample of texts.
        ids = {lbl: i for i, lbl in enumerate(sorted(set(self.labels)))}
        rows = MetricItems("v_measure", np.array([[ids[g], p] for g, p in zip(self.labels, pred, strict=True)],
                                                 np.float64))
        return scores, ItemScores([str(i) for i in range(len(pred))], {"main_score": rows, "v_measure": rows})
