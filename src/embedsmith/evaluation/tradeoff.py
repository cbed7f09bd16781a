"""Quality against dimensions and precision, with storage and search latency, measured on the user's data.

For each Matryoshka cut (first ``dims`` dimensions, renormalised) and each precision, the task is scored
on vectors as a store keeps them (see :func:`~embedsmith.evaluation.embed.apply_setting`), and a flat
faiss index of that precision is timed answering one query at a time (k=10). ``binary+rescore`` is the
store's funnel: Hamming search for 10x the hits, then the shortlist rescored with full float32 vectors.
Vectors are encoded once per run; every row reuses them. Each row is compared with full-dimension float32
vectors over the task's queries (or pairs): the difference, its paired-bootstrap 95% interval, the
permutation p-value and the verdict (:func:`~embedsmith.evaluation.compare.compare_items`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require
from ..quantization import quantize, truncate_dims
from .compare import compare_items
from .embed import EmbeddingCache, apply_setting, bytes_per_vector, cosine_matrix, top_indices
from .results import ItemScores
from .stats import RESAMPLES, Comparison
from .tasks import RetrievalTask, STSTask

PRECISIONS = ("float32", "float16", "int8", "binary", "binary+rescore")
DIMS: tuple[int | None, ...] = (64, 128, 256, None)
RESCORE_FACTOR = 10


@dataclass(frozen=True)
class TradeoffRow:
    """One setting: its score, size and latency, and (``comparison``) the setting (B) against full-dimension
    float32 vectors (A) over the task's items; None for the full float32 row itself."""

    dims: int
    precision: str
    score: float
    bytes_per_vector: int
    storage_per_million: int
    latency_ms: float | None
    comparison: Comparison | None = None

#: what a row's score function returns: the score and its per-item data
Scored = tuple[float, ItemScores]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _flat_index(docs: np.ndarray, precision: str) -> Any:
    faiss: Any = require("faiss", extra="store", what="search latency")
    d = docs.shape[1]
    if precision.startswith("binary"):
        index = faiss.IndexBinaryFlat(d)
        index.add(quantize(docs, "binary"))
        return index
    if precision == "float32":
        index = faiss.IndexFlatIP(d)
    else:
        qt = faiss.ScalarQuantizer.QT_fp16 if precision == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
        index.train(docs)
    index.add(docs)
    return index


def _latency_ms(queries: np.ndarray, docs: np.ndarray, full_docs: np.ndarray, full_queries: np.ndarray,
                precision: str, n: int) -> float:
    """Median milliseconds to answer one query (k=10) with a flat index of this precision."""
    index = _flat_index(docs, precision)
    k = min(10, len(docs))
    times = []
    for i in range(min(n, len(queries))):
        q = queries[i : i + 1]
        start = time.perf_counter()
        if precision.startswith("binary"):
            shortlist = k * RESCORE_FACTOR if "rescore" in precision else k
            _, ids = index.search(quantize(q, "binary"), min(len(docs), shortlist))
            if "rescore" in precision:
                cand = ids[0][ids[0] >= 0]
                order = np.argsort(-(full_docs[cand] @ full_queries[i]))[:k]
                _ = cand[order]
        else:
            index.search(q, k)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def tradeoff(
    encoder: Any,
    task: RetrievalTask | STSTask,
    *,
    dims: Sequence[int | None] = DIMS,
    precisions: Sequence[str] = PRECISIONS,
    cache: EmbeddingCache | None = None,
    latency_queries: int = 200,
    show_progress: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[TradeoffRow]:
    """Score ``task`` at every (dims, precision) pair, each compared with full-dimension float32 vectors
    (``resamples`` paired resamples with ``seed``; see :mod:`~embedsmith.evaluation.stats`).

    Returns:
        Rows in the order of ``dims`` then ``precisions``; ``dims=None`` means the full dimension. The score
        is nDCG@10 for retrieval and cosine Spearman for STS. For STS, latency is measured searching the
        task's sentences with its first sentences as queries, and ``binary+rescore`` is left out (STS does
        not search).
    """
    for p in precisions:
        if p not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {p!r}; expected one of {', '.join(PRECISIONS)}")
    cache = cache or EmbeddingCache(show_progress=show_progress)
    judge = _Judge(resamples, seed)
    if isinstance(task, RetrievalTask):
        return _retrieval_rows(encoder, task, dims, precisions, cache, latency_queries, judge)
    return _sts_rows(encoder, task, dims, precisions, cache, latency_queries, judge)


@dataclass(frozen=True)
class _Judge:
    resamples: int
    seed: int

    def __call__(self, reference: ItemScores, row: ItemScores) -> Comparison | None:
        if len(reference.ids) < 2:  # one query: nothing to resample
            return None
        (c,) = compare_items(reference, row, metrics=["main_score"], resamples=self.resamples, seed=self.seed)
        return c


def _retrieval_rows(encoder: Any, task: RetrievalTask, dims: Sequence[int | None], precisions: Sequence[str],
                    cache: EmbeddingCache, latency_queries: int, judge: _Judge) -> list[TradeoffRow]:
    qids, full_q, dids, full_d = task.encode(lambda texts, kind: cache.encode(encoder, texts, kind=kind))
    pos = {did: i for i, did in enumerate(dids)}

    def scored(run: dict[str, list[str]]) -> Scored:
        return task.score_run(run)["main_score"], task.items_of_run(run)

    def score(cut_q: np.ndarray, cut_d: np.ndarray, precision: str) -> Scored:
        if precision != "binary+rescore":
            return scored(task.rank(qids, apply_setting(cut_q, precision=precision), dids,
                                    apply_setting(cut_d, precision=precision)))
        short = task.rank(qids, apply_setting(cut_q, precision="binary"), dids,
                          apply_setting(cut_d, precision="binary"), k=max(task.ks) * RESCORE_FACTOR)
        run = {}
        for qi, qid in enumerate(qids):
            cand = np.array([pos[x] for x in short[qid]])
            sims = cosine_matrix(full_q[qi : qi + 1], full_d[cand])
            run[qid] = [dids[cand[j]] for j in top_indices(sims, max(task.ks))[0]]
        return scored(run)

    return _rows(full_q, full_d, dims, precisions, score, latency_queries, judge)


def _sts_rows(encoder: Any, task: STSTask, dims: Sequence[int | None], precisions: Sequence[str],
              cache: EmbeddingCache, latency_queries: int, judge: _Judge) -> list[TradeoffRow]:
    a = cache.encode(encoder, task.sentences1)
    b = cache.encode(encoder, task.sentences2)
    pool = cache.encode(encoder, list(dict.fromkeys(task.sentences1 + task.sentences2)))

    def score(cut_q: np.ndarray, cut_d: np.ndarray, precision: str) -> Scored:
        nd = cut_q.shape[1]
        va, vb = apply_setting(a, dims=nd, precision=precision), apply_setting(b, dims=nd, precision=precision)
        return task.score_vectors(va, vb)["main_score"], task.items_of_vectors(va, vb)

    return _rows(a, pool, dims, [p for p in precisions if p != "binary+rescore"], score, latency_queries, judge)


def _rows(full_q: np.ndarray, full_d: np.ndarray, dims: Sequence[int | None], precisions: Sequence[str],
          score: Callable[[np.ndarray, np.ndarray, str], Scored], latency_queries: int,
          judge: _Judge) -> list[TradeoffRow]:
    full_dim = full_d.shape[1]
    _, reference = score(full_q, full_d, "float32")
    rows: list[TradeoffRow] = []
    for d in dims:
        nd = full_dim if d is None else d
        if nd > full_dim:
            raise InvalidInputError(f"dims={nd} is larger than the model's dimension {full_dim}")
        cut_q, cut_d = truncate_dims(full_q, nd), truncate_dims(full_d, nd)
        for p in precisions:
            bpv = bytes_per_vector(nd, p.split("+")[0])
            latency = _latency_ms(cut_q, cut_d, full_d, full_q, p, latency_queries) if latency_queries else None
            value, items = score(cut_q, cut_d, p)
            judged = None if (nd, p) == (full_dim, "float32") else judge(reference, items)
            rows.append(TradeoffRow(nd, p, float(value), bpv, bpv * 1_000_000, latency, judged))
    return rows


def to_markdown(rows: Sequence[TradeoffRow], *, title: str, metric: str, n_docs: int) -> str:
    best = max(r.score for r in rows)
    lines = [
        f"### {title}",
        "",
        f"Quality ({metric}) against index size and search latency; {n_docs} vectors searched. "
        "Storage counts the index's vector codes only; with `binary+rescore` the store also keeps float32 "
        "vectors on disk for the rescoring step.",
        "",
        "Difference: the setting minus full-dimension float32, with its paired-bootstrap 95% interval and "
        "permutation p-value over the task's items (B: the setting, A: full float32).",
        "",
        f"| dims | precision | {metric} | vs best | difference [95% interval] | p | verdict | bytes/vector "
        "| storage per 1M | latency/query (ms) |",
        "|---:|---|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lat = f"{r.latency_ms:.3f}" if r.latency_ms is not None else "-"
        c = r.comparison
        judged = (f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.p_value:.4f} | {c.verdict}"
                  if c is not None else "reference | - | -")
        lines.append(f"| {r.dims} | {r.precision} | {r.score:.4f} | {r.score / best:.1%} | {judged} | "
                     f"{r.bytes_per_vector} | {_human(r.storage_per_million)} | {lat} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[TradeoffRow], path: str | Path, *, title: str, metric: str) -> Path:
    """Quality against bytes per vector (log scale), one line per precision, points labelled by dims."""
    require("matplotlib", extra="eval", what="the trade-off plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for p in dict.fromkeys(r.precision for r in rows):
        pts = sorted((r.bytes_per_vector, r.score, r.dims) for r in rows if r.precision == p)
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=p)
        for x, y, d in pts:
            ax.annotate(str(d), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector (log scale); labels: dimensions")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def rows_to_dicts(rows: Sequence[TradeoffRow]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts; each setting's ``significance`` against full float32 as ``eval compare
    --json`` gives a metric (None for the full float32 row)."""
    from .compare import significance_dict

    out = []
    for r in rows:
        d = asdict(r)
        d.pop("comparison")
        d["significance"] = significance_dict([r.comparison])[r.comparison.metric] if r.comparison else None
        out.append(d)
    return out
