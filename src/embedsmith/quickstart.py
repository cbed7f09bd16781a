"""The bundled demo behind ``embedsmith quickstart`` (and ``make demo``), offline, as data the CLI renders.

Three sentences are compared (a cosine matrix), then 200 Cranfield abstracts shipped with the package
(``data/cranfield-sample.jsonl``) are indexed into a collection and searched twice (dense and hybrid).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import DEFAULT_MODEL, load_encoder
from .ingest import IndexReport, index_paths
from .similarity import pairwise
from .store import list_collections, open_collection
from .types import Hits, Metric

SENTENCES = ("A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today.")
COLLECTION = "cranfield-sample"
QUERIES = (
    ("what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft",
     "dense"),
    ("heat conduction in composite slabs", "hybrid"),
)


@dataclass(frozen=True)
class DemoSearch:
    """One search of the demo collection: best hit per document (``group_by="doc_id"``), k=3."""

    query: str
    mode: str
    hits: Hits


@dataclass(frozen=True)
class QuickstartResult:
    """What the demo did.

    Attributes:
        model: the encoder's name.
        sentences: the compared sentences; ``similarity`` is their cosine matrix, shape [3, 3].
        index: what indexing the sample did; ``collection`` is the collection's ``info()`` afterwards.
        searches: the two searches, in order.
    """

    model: str
    sentences: list[str]
    similarity: np.ndarray
    index: IndexReport
    collection: dict[str, Any]
    searches: list[DemoSearch]


def sample_path() -> Path:
    """The 200 Cranfield abstracts shipped with the package (BEIR-style JSONL)."""
    return Path(str(files("embedsmith") / "data" / "cranfield-sample.jsonl"))


def run_quickstart(*, model: str | None = None, backend: str = "auto", store: str | os.PathLike[str] | None = None,
                   show_progress: bool = False) -> QuickstartResult:
    """Run the demo (see the module docstring).

    Args:
        model: alias or folder (default: minilm). Without it, an existing demo collection in ``store`` is
            searched with its own model.
        backend: the encoder backend (auto | torch | onnx | onnx-int8).
        store: where the demo collection is written (a folder or a PostgreSQL DSN); default: a temporary folder,
            removed afterwards. In an existing store, an unchanged sample file is not indexed again.
        show_progress: progress bars while indexing.

    Raises:
        SettingsMismatchError: ``model`` differs from the model of the demo collection already in ``store``.
    """
    enc = load_encoder(model or DEFAULT_MODEL, backend=backend)
    sentences = list(SENTENCES)
    matrix = pairwise(enc.encode(sentences), metric=Metric.COSINE)
    with tempfile.TemporaryDirectory(prefix="embedsmith-demo-") as tmp:
        where = tmp if store is None else store
        own_model = model is None and COLLECTION in list_collections(where)
        with open_collection(COLLECTION, store=where, encoder=None if own_model else enc) as c:
            report = index_paths(c, [sample_path()], show_progress=show_progress)
            info = c.info()
            searches = [DemoSearch(q, mode, c.search(q, k=3, mode=mode, group_by="doc_id")) for q, mode in QUERIES]
    return QuickstartResult(enc.name, sentences, matrix, report, info, searches)
