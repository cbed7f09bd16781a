"""Printing results: JSON for scripts, rich tables for people. Shared by the commands.

Text that comes from data (documents, queries, file names, error messages) is escaped before rich sees it:
rich reads ``[...]`` as markup, and a document holding ``[/x]`` would otherwise stop the table with a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console, RenderableType

    from ..evaluation.stats import Comparison
    from ..ingest import IndexReport
    from ..types import Hits


def print_json(data: Any, *, indent: int | None = None, ensure_ascii: bool = True) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=indent, ensure_ascii=ensure_ascii))


def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str | RenderableType]], *,
                right: Collection[str] = ()) -> None:
    """A table on stdout; string cells are plain text (never markup), other cells rich renderables as they are.

    Args:
        right: names of the columns to right-align (numbers).
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col in columns:
        table.add_column(escape(col), justify="right" if col in right else "left")
    for row in rows:
        table.add_row(*(escape(cell) if isinstance(cell, str) else cell for cell in row))
    console().print(table)


def print_comparisons(title: str, rows: Sequence[Comparison], *, a: str = "A", b: str = "B") -> None:
    """Per metric: A's and B's value, B - A with its 95% interval, the permutation p-value and the verdict
    (columns named ``a`` and ``b``, e.g. "before" and "after"; the title says which is A and which B). The
    one table of every significance report."""
    columns = ["metric", a, b, "B - A", "95% interval", "p", "verdict"]
    print_table(title, columns,
                [[c.metric, f"{c.a:.4f}", f"{c.b:.4f}", f"{c.diff:+.4f}", f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                  f"{c.p_value:.4f}", c.verdict] for c in rows], right=columns[1:6])


def print_similarity(texts: Sequence[str], matrix: np.ndarray, metric: str, model: str) -> None:
    """The pairwise matrix of ``texts`` (shape [n, n]) as a table."""
    heads = [f"[{i}]" for i in range(len(texts))]
    rows = [[f"[{i}] {text[:40]}", *(f"{x:.3f}" for x in row)]
            for i, (text, row) in enumerate(zip(texts, matrix, strict=True))]
    print_table(f"{metric} ({model})", ["", *heads], rows, right=heads)


def print_hits(collection: str, query: str, mode: str, hits: Hits, *, reranked: bool = False) -> None:
    """Search results as a table: rank, score (and reranker logit), id, source file name, text."""
    rows = []
    for n, h in enumerate(hits, start=1):
        score = f"{h.score:.4f}" + (f" (logit {h.rerank_logit:.2f})" if h.rerank_logit is not None else "")
        rows.append([str(n), score, h.id, Path(str(h.metadata.get("source", ""))).name,
                     (h.text or "").replace("\n", " ")[:100]])
    print_table(f"{collection} ({mode}{', reranked' if reranked else ''}): {query!r}",
                ["#", "score", "id", "source", "text"], rows)


def print_index_report(report: IndexReport, info: Mapping[str, Any]) -> None:
    """What indexing did, and what the collection (``Collection.info()``) holds now; skipped files on stderr."""
    late = info.get("late_interaction")
    tokens = f"; token vectors {late['precision']}{'/' + str(late['dims']) if late['dims'] else ''}, " \
             f"{late['bytes_per_chunk'] / 1024:.1f} KB per chunk" if late else ""
    print(f"{info['name']}: {report.summary()}; {info['count']} chunks stored "
          f"({info['model']}, dim {info['dim']}, {info['precision']}, {info['metric']}{tokens})")
    for src, why in report.files_skipped[:20]:
        print(f"  skipped {src}: {why}", file=sys.stderr)


def warn_problems(problems: Mapping[str, int]) -> None:
    """One line on stderr counting the data problems a reader skipped, e.g. ``2 malformed rows``."""
    if problems:
        from rich.markup import escape

        listed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(problems.items()))
        console(stderr=True).print(f"[yellow]data problems (skipped): {escape(listed)}[/yellow]")
