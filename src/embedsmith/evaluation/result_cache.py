"""A cache of task results on disk (as mteb keeps its results): re-running a task with the same model, data
and settings reads the stored result instead of encoding again.

A result is stored under a key that names everything that decides it: the encoder's identity (weights
digest, backend, quantisation, export version: its ``cache_id`` or ``fingerprint``), its name, prompts,
token limit and dimension; the task's type, split, protocol and a digest of its loaded data (so a changed
file, column or held-out split is a different key); the scoring setting (``dims``, ``precision``); and the
embedsmith version (a release may change a metric). An encoder without a fingerprint is never cached.

Entries live in ``cache_dir()/results`` (``$EMBEDSMITH_CACHE``, beside the vector cache), one JSON file each:
the MTEB JSON and the per-item data. A file that cannot be read is a miss; one that cannot be written is
a warning, never a failed evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from ..types import Precision, parse_enum
from .results import TaskResult

FORMAT = 1


class ResultCacheWarning(UserWarning):
    """The result cache could not be written; the evaluation's result stands."""


def default_result_cache_path() -> Path:
    from ..encoders.base import cache_dir

    return cache_dir() / "results"


def _task_digest(task: Any) -> str:
    """Digest of every field of the task (its data and protocol), as loaded."""
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)} if dataclasses.is_dataclass(task) \
        else dict(vars(task))
    blob = json.dumps({"class": f"{type(task).__module__}.{type(task).__qualname__}", **fields}, sort_keys=True,
                      default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def result_key(task: Any, encoder: Any, *, dims: int | None = None,
               precision: str | Precision = Precision.FLOAT32) -> str | None:
    """The cache key of ``encoder`` on ``task`` with this setting; None when the encoder has no fingerprint."""
    identity = getattr(encoder, "cache_id", None) or getattr(encoder, "fingerprint", None)
    if not identity:
        return None
    parts = {
        "format": FORMAT,
        "embedsmith": __version__,
        "model": [str(identity), str(getattr(encoder, "name", "")), dict(getattr(encoder, "prompts", None) or {}),
                  int(getattr(encoder, "max_tokens", 0) or 0), int(getattr(encoder, "dim", 0) or 0)],
        "task": [getattr(task, "task_type", type(task).__name__), getattr(task, "dataset_revision", None),
                 _task_digest(task)],
        "setting": [dims, parse_enum(Precision, precision, "precision").value],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class ResultCache:
    """Task results by :func:`result_key`, one JSON file each in ``folder`` (default
    :func:`default_result_cache_path`)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_result_cache_path()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> TaskResult | None:
        """The stored result (``cached`` set), or None when there is none or it cannot be read."""
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry.get("format") != FORMAT or entry.get("key") != key:
                return None
            result = TaskResult.from_mteb(entry["result"], entry.get("items"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing, torn or from another format: computed again
        result.cached = True
        return result

    def put(self, key: str, result: TaskResult) -> None:
        """Store ``result`` (written beside its final name and renamed, so a reader never sees half a file)."""
        entry = {"format": FORMAT, "key": key, "result": result.to_mteb(), "items": result.items_dict()}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=self.folder, suffix=".part",
                                             delete=False) as tmp:
                json.dump(entry, tmp)
            os.replace(tmp.name, self.path(key))
        except OSError as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp.name)
            warnings.warn(f"could not store the result in {self.folder} ({exc}); it is not cached",
                          ResultCacheWarning, stacklevel=2)
