"""Task results, their JSON in MTEB's result layout, and the per-item side file next to it.

The MTEB JSON stays exactly as MTEB reads it; what :mod:`~embedsmith.evaluation.stats` needs to judge a
difference (per-query scores, per-pair similarities and gold scores...) goes to ``<name>.items.json``
beside it (:func:`items_path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InvalidInputError

ITEMS_FORMAT = 1


@dataclass
class MetricItems:
    """One metric's item data: ``rows`` [n] (per-item scores, ``statistic="mean"``) or [n, m] (item rows
    that the named statistic of :data:`~embedsmith.evaluation.stats.STATISTICS` turns into the metric)."""

    statistic: str
    rows: np.ndarray


@dataclass
class ItemScores:
    """Per-item data of a task result: item ids (query ids, pair or text numbers) and, per metric, its
    :class:`MetricItems`."""

    ids: list[str]
    metrics: dict[str, MetricItems]

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "metrics": {k: {"statistic": m.statistic, "rows": m.rows.tolist()}
                                             for k, m in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemScores:
        return cls([str(i) for i in data["ids"]],
                   {k: MetricItems(str(m["statistic"]), np.asarray(m["rows"], np.float64))
                    for k, m in data["metrics"].items()})


def items_path(path: str | Path) -> Path:
    """The per-item side file of a result file: ``r.json`` -> ``r.items.json``."""
    p = Path(path)
    return p.with_name(p.stem + ".items.json")


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
    #: per-item data for significance tests (saved to the side file, not to the MTEB JSON)
    items: ItemScores | None = field(default=None, repr=False, compare=False)
    #: True when the result was read from the result cache rather than computed
    cached: bool = field(default=False, compare=False)

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

    def items_dict(self) -> dict[str, Any]:
        """The side file's content: what identifies the result, and its per-item data."""
        return {"format": ITEMS_FORMAT, "task_name": self.task_name, "task_type": self.task_type,
                "split": self.split, "dataset_revision": self.dataset_revision, "model_name": self.model_name,
                "model_revision": self.model_revision, "dims": self.dims, "precision": self.precision,
                "items": self.items.to_dict() if self.items is not None else None}

    def save(self, path: str | Path) -> None:
        """Write the MTEB JSON to ``path`` and the per-item data to :func:`items_path` of it."""
        Path(path).write_text(json.dumps(self.to_mteb(), indent=2) + "\n", encoding="utf-8")
        items_path(path).write_text(json.dumps(self.items_dict()) + "\n", encoding="utf-8")

    @classmethod
    def from_mteb(cls, data: dict[str, Any], items: dict[str, Any] | None = None) -> TaskResult:
        """A result from its MTEB JSON (as :meth:`to_mteb` writes it) and, optionally, its side file."""
        try:
            split, entries = next(iter(data["scores"].items()))
            entry = dict(entries[0])
            extra = data.get("embedsmith") or {}
            languages = entry.pop("languages", [])
            entry.pop("hf_subset", None)
            return cls(
                task_name=data["task_name"], task_type=extra.get("task_type", ""), split=split,
                scores={k: float(v) for k, v in entry.items()}, model_name=data["model_name"],
                model_revision=data.get("model_revision"), evaluation_time=float(data["evaluation_time"]),
                encode_time=float(extra.get("encode_time", 0.0)), n_examples=int(extra.get("n_examples", 0)),
                dataset_revision=data.get("dataset_revision"), dims=extra.get("dims"),
                precision=extra.get("precision", "float32"), languages=list(languages),
                problems=dict(extra.get("problems") or {}),
                items=ItemScores.from_dict(items["items"]) if items and items.get("items") else None)
        except (KeyError, StopIteration, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"not a result in MTEB's layout ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> TaskResult:
        """Read a result file written by :meth:`save` (and its side file, when there is one)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInputError(f"result file {str(p)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"{p}: not a JSON result file ({exc})") from None
        if isinstance(data, list):
            raise InvalidInputError(f"{p} holds {len(data)} results; compare takes files of one result each "
                                    "(run eval with one --model per --output)")
        side = items_path(p)
        items = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else None
        return cls.from_mteb(data, items)
