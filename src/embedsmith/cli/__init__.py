"""The ``embedsmith`` command line: the typer ``app`` and ``main``, which registers every command group.

One module per group (``encode``, ``collections``, ``quickstart``, ``serve``, ``analysis``, ``train`` (and
``distill``), ``eval``); shared options live in :mod:`.options`, output helpers in :mod:`.render`. Commands import
the library inside their bodies, so ``embedsmith --help`` stays instant.
"""

from __future__ import annotations

import sys

import typer

from . import analysis, collections, encode, quickstart, serve, train
from .eval import eval_app

app = typer.Typer(
    help="embedsmith: encode, compare, store and search text embeddings, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Registered in the order `embedsmith --help` lists them.
for _command in (
    encode.embed, encode.similarity, encode.models,
    collections.index, collections.search, collections.context, collections.ask, collections.calibrate,
    collections.delete, collections.compact, collections.collections,
    collections.verify, collections.repair, collections.snapshot, collections.restore, collections.reembed,
    collections.migrate,
    quickstart.quickstart, serve.serve,
    analysis.cluster, analysis.classify, analysis.analogy,
    train.finetune, train.distill,
):
    app.command()(_command)
app.command("finetune-reranker")(train.finetune_reranker)
app.command("mine-negatives")(train.mine_negatives)
app.add_typer(eval_app, name="eval")


def main() -> None:
    """Entry point: one clear line on stderr for expected errors, a traceback only with --debug."""
    import logging

    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    import warnings

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("embedsmith: %(message)s"))
    logger = logging.getLogger("embedsmith")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if not debug:
        warnings.showwarning = lambda message, category, *_a, **_k: print(
            f"embedsmith: warning: {message}", file=sys.stderr
        )
    from ..errors import EmbedsmithError

    try:
        app()
    except (EmbedsmithError, OSError) as exc:
        if debug:
            raise
        print(f"embedsmith: error: {exc}", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
