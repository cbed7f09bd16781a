"""``embedsmith quickstart``: the bundled demo (``make demo``); :func:`embedsmith.quickstart.run_quickstart` runs it."""

from __future__ import annotations

from typing import Annotated

import typer

from . import render
from .options import BackendOpt, ModelOpt


def quickstart(
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    store: Annotated[str | None, typer.Option(help="store folder (default: a temporary folder)")] = None,
) -> None:
    """The bundled demo: a similarity matrix, then index 200 Cranfield abstracts and run two searches."""
    from ..quickstart import COLLECTION, run_quickstart

    result = run_quickstart(model=model, backend=backend, store=store, show_progress=True)
    print(f"embedsmith quickstart: {len(result.sentences)} sentences with {result.model!r}")
    render.print_similarity(result.sentences, result.similarity, "cosine", result.model)
    render.print_index_report(result.index, result.collection)
    for s in result.searches:
        render.print_hits(COLLECTION, s.query, s.mode, s.hits)
