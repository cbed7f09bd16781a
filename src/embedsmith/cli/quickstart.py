"""``embedsmith quickstart``: the bundled demo (``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .collections import index, search
from .encode import similarity
from .options import BackendOpt, ModelOpt


def quickstart(
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    store: Annotated[str | None, typer.Option(help="store folder (default: a temporary folder)")] = None,
) -> None:
    """The bundled demo: a similarity matrix, then index 200 Cranfield abstracts and run two searches."""
    import tempfile
    from importlib.resources import files

    sentences = ["A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today."]
    print(f"embedsmith quickstart: {len(sentences)} sentences with {model or 'minilm'!r}")
    similarity(sentences, model=model, backend=backend, device="auto", metric="cosine", as_json=False)
    sample = Path(str(files("embedsmith") / "data" / "cranfield-sample.jsonl"))
    with tempfile.TemporaryDirectory(prefix="embedsmith-demo-") as tmp:
        where = store or tmp
        index([sample], collection="cranfield-sample", store=where, model=model, backend=backend, metric=None,
              precision=None, dims=None, chunk_tokens=None, overlap=50, headings=None, text_field="text",
              id_field=None, prune=False)
        for query, mode in (("what similarity laws must be obeyed when constructing aeroelastic models of heated "
                             "high speed aircraft", "dense"), ("heat conduction in composite slabs", "hybrid")):
            search(query, collection="cranfield-sample", store=where, k=3, mode=mode, where=None, fusion="rrf",
                   alpha=None, rerank=None, candidates=None, group_by="doc_id", exact=False, ef=None, as_json=False)
