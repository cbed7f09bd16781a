"""Task results, and their JSON in MTEB's result layout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__


@dataclass
class TaskResult:
    """The outcome of one task for one encoder.

    Attributes:
        scores: ``main_score`` and every metric of the task (floats).
        problems: rows that were skipped or judgements that were dropped while reading the data, by kind
            (e.g. ``{"qrels_unknown_doc": 3}``); empty when the data was clean.
        evaluation_time: seconds for the whole task, encoding included; ``encode_time``: the share spent
            inside the encoder (zero when every vector came from the run's cache).
    """

    task_name: str
    task_type: str
    split: str
    scores: dict[str, float]
    model_name: str
    model_revision: str | None
    evaluation_time: float
    encode_time: float
    n_examples: int
    dataset_revision: str | None = None
    dims: int | None = None
    precision: str = "float32"
    languages: list[str] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def main_score(self) -> float:
        return self.scores["main_score"]

    def to_mteb(self) -> dict[str, Any]:
        """MTEB's result layout (``results/<model>/<revision>/<task>.json``), plus an ``embedsmith`` block."""
        entry = {**self.scores, "hf_subset": "default", "languages": self.languages or ["eng-Latn"]}
        return {
            "dataset_revision": self.dataset_revision,
            "task_name": self.task_name,
            "mteb_version": None,
            "scores": {self.split: [entry]},
            "evaluation_time": self.evaluation_time,
            "kg_co2_emissions": None,
            "model_name": self.model_name,
            "model_revision": self.model_revision,
            "embedsmith": {
                "version": __version__,
                "task_type": self.task_type,
                "dims": self.dims,
                "precision": self.precision,
                "n_examples": self.n_examples,
                "encode_time": self.encode_time,
                "problems": self.problems,
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_mteb(), indent=2) + "\n", encoding="utf-8")
