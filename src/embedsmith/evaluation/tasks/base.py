"""The task base: the fields every task has, the protocol around encoding, and per-item scores."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import InvalidInputError, require
from ...types import Precision, parse_enum
from ..embed import EmbeddingCache, apply_setting, model_name, model_revision
from ..result_cache import ResultCache, result_key
from ..results import ItemScores, TaskResult

Embed = Callable[[Sequence[str], str | None], np.ndarray]


def digest(*paths: Path) -> str:
    """Content digest of the task's files (the result's ``dataset_revision``)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def sklearn() -> Any:
    return require("sklearn", extra="eval", what="classification and clustering")


def split_of(p: Path) -> str:
    """The split a file's name says (train, dev, validation, test, trial), else test."""
    stem = p.stem.lower()
    for s in ("train", "dev", "validation", "test", "trial"):
        if s in stem:
            return s
    return "test"


@dataclass
class Task(ABC):
    """A dataset with a protocol. Subclasses declare their registry entry (``task_type``, ``help``,
    ``columns``), read their files in :meth:`load`, and score an ``embed`` function in :meth:`_evaluate`.

    ``problems``, ``dataset_revision`` and ``languages`` are keyword-only fields declared here once;
    ``split`` is declared by each subclass, after its data, so that it stays a positional argument.
    """

    task_type: ClassVar[str]
    #: one line for ``embedsmith eval --help``
    help: ClassVar[str]
    #: the scores the CLI shows after the main score
    columns: ClassVar[tuple[str, ...]]
    #: whether :meth:`load` takes a second path: "no", "optional" or "required"
    second_path: ClassVar[str] = "no"

    name: str
    _: KW_ONLY
    problems: dict[str, int] = field(default_factory=dict)
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, path2: str | Path | None = None, *, split: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> Task:
        """Read the task from its file(s), as ``embedsmith eval TASK PATH [PATH2]`` does."""

    @classmethod
    def check_paths(cls, path2: str | Path | None) -> None:
        if cls.second_path == "required" and path2 is None:
            raise InvalidInputError(f"{cls.task_type} needs two aligned files: SOURCE TARGET")
        if cls.second_path == "no" and path2 is not None:
            raise InvalidInputError(f"{cls.task_type} takes one path, got a second: {str(path2)!r}")

    @property
    @abstractmethod
    def n_examples(self) -> int: ...

    @property
    def split_name(self) -> str:
        """The split (every subclass's positional ``split`` field; read through here where the type is
        only known to be a :class:`Task`)."""
        return str(self.__dict__["split"])

    @abstractmethod
    def _evaluate(self, embed: Embed) -> tuple[dict[str, float], ItemScores | None]:
        """Scores (with ``main_score``) and the per-item data that :mod:`~embedsmith.evaluation.stats`
        resamples (None when the task has none)."""

    def _scores(self, embed: Embed) -> dict[str, float]:
        return self._evaluate(embed)[0]

    def evaluate(
        self,
        encoder: Any,
        *,
        dims: int | None = None,
        precision: str | Precision = Precision.FLOAT32,
        cache: EmbeddingCache | None = None,
        show_progress: bool = False,
        result_cache: ResultCache | None = None,
    ) -> TaskResult:
        """Score ``encoder`` (anything with an ``encode(list[str])`` method) on this task.

        Args:
            dims: keep the first ``dims`` dimensions of every vector (renormalised), as a store would.
            precision: score vectors as stored in float32, float16, int8 or binary.
            cache: share vectors between calls (other tasks, settings or modes) in one run.
            result_cache: read the stored result of the same encoder, data and setting from it (the result's
                ``cached`` is then True), or store the one computed; encoders without a fingerprint skip it.
        """
        p = parse_enum(Precision, precision, "precision")
        key = result_key(self, encoder, dims=dims, precision=p) if result_cache is not None else None
        if result_cache is not None and key is not None:
            stored = result_cache.get(key)
            if stored is not None:
                return stored
        result = self._score(encoder, dims, p, cache, show_progress)
        if result_cache is not None and key is not None:
            result_cache.put(key, result)
        return result

    def _score(self, encoder: Any, dims: int | None, p: Precision, cache: EmbeddingCache | None,
               show_progress: bool) -> TaskResult:
        cache = cache or EmbeddingCache(show_progress=show_progress)
        encoded_before = cache.encode_seconds
        start = time.perf_counter()

        def embed(texts: Sequence[str], kind: str | None = None) -> np.ndarray:
            return apply_setting(cache.encode(encoder, texts, kind=kind), dims=dims, precision=p)

        scores, items = self._evaluate(embed)
        return TaskResult(
            task_name=self.name, task_type=self.task_type, split=self.split_name,
            scores={"main_score": scores.pop("main_score"), **scores},
            model_name=model_name(encoder), model_revision=model_revision(encoder),
            evaluation_time=time.perf_counter() - start, encode_time=cache.encode_seconds - encoded_before,
            n_examples=self.n_examples, dataset_revision=self.dataset_revision, dims=dims, precision=p.value,
            languages=list(self.languages), problems=dict(self.problems), items=items,
        )
