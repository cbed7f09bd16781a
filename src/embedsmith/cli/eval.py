"""``embedsmith eval``: MTEB-style tasks on local data, the dims/precision trade-off, and a deployed pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..evaluation.tasks import TASKS
from . import render
from .options import (
    BackendOpt,
    CollectionOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    ModelsOpt,
    StoreOpt,
    VectorCacheOpt,
    load_model,
)

eval_app = typer.Typer(
    help="Evaluate encoders on local data (MTEB's protocols), the dimension/precision trade-off, or a "
    "deployed collection.",
    no_args_is_help=True,
)

# The registry of task types (light: numpy and the readers; scikit-learn loads when a task runs).
TASK_HELP = {name: cls.help for name, cls in TASKS.items()}
COLUMNS = {name: cls.columns for name, cls in TASKS.items()}

OutputOpt = Annotated[Path | None, typer.Option(help="write the results as JSON (MTEB's layout)")]


def _run_task(task_type: str, path: Path, path2: Path | None, models: list[str], backend: str, device: str,
              split: str | None, dims: int | None, precision: str, text_column: str | None,
              label_column: str | None, as_json: bool, output: Path | None, vector_cache: bool = False,
              use_cache: bool = True) -> None:
    from ..encoders.cache import VectorCache
    from ..evaluation import EmbeddingCache, load_task
    from ..evaluation.result_cache import ResultCache

    task = load_task(task_type, path, path2, split=split, text_column=text_column, label_column=label_column)
    render.warn_problems(task.problems)
    cache = EmbeddingCache(show_progress=not as_json)
    shared = VectorCache() if vector_cache else None

    def model(name: str) -> Any:
        enc = load_model(name, backend, device)
        enc.vector_cache = shared  # vectors of texts seen in earlier runs are read, not computed
        return enc

    stored = ResultCache() if use_cache else None
    results = [task.evaluate(model(m), dims=dims, precision=precision, cache=cache, result_cache=stored)
               for m in models]
    for r in results:
        if r.cached and stored is not None:
            typer.echo(f"{r.model_name} on {task.name}: the stored result of the same model, data and settings "
                       f"(from {stored.folder}; --no-cache computes it again)", err=True)
    payload = [r.to_mteb() for r in results]
    if output is not None and len(results) == 1:
        results[0].save(output)  # and the per-item scores beside it, for `eval compare`
    elif output is not None:
        from ..evaluation.results import items_path

        output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        items_path(output).write_text(json.dumps([r.items_dict() for r in results]) + "\n", encoding="utf-8")
    if as_json:
        render.print_json(payload[0] if len(payload) == 1 else payload)
        return
    setting = f"{dims or 'full'} dims, {precision}"
    columns = ["model", "main score", *COLUMNS[task_type], "time (s)", "encoding"]
    rows = []
    for r in results:
        share = r.encode_time / r.evaluation_time if r.evaluation_time else 0.0
        rows.append([r.model_name, f"{r.main_score:.4f}", *(f"{r.scores[c]:.4f}" for c in COLUMNS[task_type]),
                     f"{r.evaluation_time:.1f}", f"{share:.0%}"])
    render.print_table(f"{task_type}: {task.name} ({task.split_name}, {task.n_examples} examples, {setting})", columns,
                       rows, right=columns[1:])
    if output is not None:
        render.console().print(f"wrote {output}", markup=False)


def _task_command(task_type: str) -> Callable[..., None]:
    def command(
        path: Annotated[Path, typer.Argument(help="dataset file or folder")],
        path2: Annotated[Path | None, typer.Argument(help="second file (bitext target, classification test)")]
        = None,
        model: ModelsOpt = None,
        backend: BackendOpt = "auto",
        device: DeviceOpt = "auto",
        split: Annotated[str | None, typer.Option(help="qrels split (retrieval), e.g. dev or test")] = None,
        dims: Annotated[int | None, typer.Option(help="keep the first N dimensions (Matryoshka)")] = None,
        precision: Annotated[str, typer.Option(help="float32 | float16 | int8 | binary")] = "float32",
        text_column: Annotated[str | None, typer.Option(help="text column of labelled files")] = None,
        label_column: Annotated[str | None, typer.Option(help="label column of labelled files")] = None,
        as_json: JsonOpt = False,
        output: OutputOpt = None,
        vector_cache: VectorCacheOpt = False,
        use_cache: Annotated[bool, typer.Option(
            "--cache/--no-cache", help="read the stored result of the same model, data and settings "
                                       "($EMBEDSMITH_CACHE/results), or compute it again")] = True,
    ) -> None:
        from ..encoders import DEFAULT_MODEL

        _run_task(task_type, path, path2, model or [DEFAULT_MODEL], backend, device, split, dims, precision,
                  text_column, label_column, as_json, output, vector_cache, use_cache)

    return command


for _name, _help in TASK_HELP.items():
    eval_app.command(_name, help=_help)(_task_command(_name))


SeedOpt = Annotated[int, typer.Option(help="seed of the significance resampling")]
ResamplesOpt = Annotated[int, typer.Option(help="paired bootstrap resamples (and permutations) of the significance "
                                                "test")]


@eval_app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="result A (eval --output), with its .items.json beside it")],
    b: Annotated[Path, typer.Argument(help="result B, of the same data")],
    seed: SeedOpt = 0,
    resamples: ResamplesOpt = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Is B better than A? Per metric B - A, a paired-bootstrap 95% interval, a permutation p-value, a verdict.

    Exit status 0 whatever the verdict (a report, not a gate).
    """
    from ..evaluation.compare import compare_files, significance_dict

    rows = compare_files(a, b, resamples=resamples, seed=seed)
    if as_json:
        render.print_json(significance_dict(rows))
        return
    render.print_comparisons(f"{b} (B) against {a} (A), {resamples} paired resamples", rows)


@eval_app.command()
def tradeoff(
    path: Annotated[Path, typer.Argument(help="BEIR folder (retrieval) or STS file")],
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    split: Annotated[str | None, typer.Option(help="qrels split for a BEIR folder")] = None,
    dims: Annotated[str, typer.Option(help="comma-separated cuts; 'full' for all dimensions")] = "64,128,256,full",
    precisions: Annotated[str, typer.Option(help="comma-separated")] = "float32,float16,int8,binary,binary+rescore",
    report: Annotated[Path, typer.Option(help="markdown table to write")] = Path("tradeoff.md"),
    plot: Annotated[Path | None, typer.Option(help="PNG plot of quality vs storage")] = Path("tradeoff.png"),
    seed: SeedOpt = 0,
    resamples: ResamplesOpt = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Quality at Matryoshka dims x precision, with bytes per vector, storage per 1M and search latency.

    Each setting is compared with full-dimension float32 over the task's queries (or pairs): the difference,
    its paired-bootstrap 95% interval, the permutation p-value and the verdict.
    """
    from ..errors import InvalidInputError
    from ..evaluation import RetrievalTask, STSTask
    from ..evaluation import tradeoff as tr

    task: RetrievalTask | STSTask = RetrievalTask.from_beir(path, split=split) if path.is_dir() \
        else STSTask.from_file(path)
    render.warn_problems(task.problems)
    cuts: list[int | None] = []
    for part in dims.split(","):
        part = part.strip()
        if part == "full":
            cuts.append(None)
        elif part.isdigit() and int(part) > 0:
            cuts.append(int(part))
        else:
            raise InvalidInputError(f"--dims takes positive integers or 'full', got {part!r}")
    enc = load_model(model, backend, device)
    rows = tr.tradeoff(enc, task, dims=cuts, precisions=[p.strip() for p in precisions.split(",")],
                       show_progress=not as_json, resamples=resamples, seed=seed)
    metric = "nDCG@10" if isinstance(task, RetrievalTask) else "Spearman (cosine)"
    n_docs = len(task.corpus) if isinstance(task, RetrievalTask) else len(set(task.sentences1 + task.sentences2))
    title = f"{enc.name} on {task.name}"
    md = tr.to_markdown(rows, title=title, metric=metric, n_docs=n_docs)
    report.write_text(md, encoding="utf-8")
    if plot is not None:
        tr.plot(rows, plot, title=title, metric=metric)
    if as_json:
        render.print_json({"model": enc.name, "task": task.name, "metric": metric, "rows": tr.rows_to_dicts(rows)})
        return
    from rich.markdown import Markdown

    console = render.console()
    console.print(Markdown(md))
    console.print(f"wrote {report}" + (f" and {plot}" if plot is not None else ""), markup=False)


@eval_app.command()
def pipeline(
    collection: CollectionOpt,
    queries: Annotated[Path, typer.Option(help="BEIR queries.jsonl or id<TAB>text lines")],
    qrels: Annotated[Path, typer.Option(help="BEIR qrels TSV or TREC qrels")],
    store: StoreOpt = None,
    k: Annotated[int, typer.Option("-k", help="cut-off for ANN recall against exact search")] = 10,
    modes: Annotated[str, typer.Option(help="comma-separated: dense,bm25,hybrid")] = "dense,bm25,hybrid",
    rerank: Annotated[Path | None, typer.Option(help="cross-encoder folder: adds a reranked mode")] = None,
    candidates: Annotated[int, typer.Option(help="first-stage candidates for reranking")] = 100,
    id_field: Annotated[str, typer.Option(help="metadata field naming a record's document")] = "doc_id",
    limit: Annotated[int | None, typer.Option(help="evaluate only the first N judged queries")] = None,
    rag: Annotated[bool, typer.Option(help="also redundancy with/without dedup and diversity, and context recall "
                                           "against naive concatenation at 1k/2k/4k tokens")] = False,
    late_interaction: Annotated[bool, typer.Option(
        "--late-interaction", help="add dense>maxsim (dense reordered by MaxSim) and hybrid+maxsim (fused)")] = False,
    seed: SeedOpt = 0,
    resamples: ResamplesOpt = 10_000,
    as_json: JsonOpt = False,
    output: Annotated[Path | None, typer.Option(help="write the report as JSON")] = None,
) -> None:
    """Evaluate a deployed collection as it is: ANN recall against exact search, and each search mode.

    Each mode is compared with the first (the baseline) over the judged queries: the difference, its
    paired-bootstrap 95% interval, the permutation p-value and the verdict per metric.
    """
    from ..evaluation.pipeline import evaluate_pipeline
    from ..store import open_collection

    reranker = None
    if rerank is not None:
        from ..rerankers import load_reranker

        reranker = load_reranker(rerank)
    with open_collection(collection, store=store, create=False) as c:
        rep = evaluate_pipeline(c, queries, qrels, k=k, modes=[m.strip() for m in modes.split(",")],
                                reranker=reranker, candidates=candidates, id_field=id_field, limit=limit,
                                show_progress=not as_json, rag=rag, late_interaction=late_interaction,
                                resamples=resamples, seed=seed)
    data = rep.to_dict()
    if output is not None:
        output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        render.print_json(data)
        return
    render.warn_problems(rep.problems)
    columns = ["mode", "nDCG@10", "recall@100", "MRR@10", "p50 latency (ms)"]
    rows = []
    for mode, s in rep.modes.items():
        if "error" in s:
            rows.append([mode, "-", "-", "-", s["error"]])
        else:
            rows.append([mode, f"{s['ndcg_at_10']:.4f}", f"{s['recall_at_100']:.4f}", f"{s['mrr_at_10']:.4f}",
                         f"{s['latency_p50_ms']:.1f}"])
    render.print_table(f"{collection}: {rep.n_queries} queries; ANN recall@{k} vs exact = {rep.ann_recall:.4f}",
                       columns, rows, right=columns[1:])
    if rep.significance:
        cols = ["mode", "metric", "difference", "95% interval", "p", "verdict"]
        render.print_table(f"each mode (B) against {rep.baseline} (A), {rep.n_queries} queries, {resamples} paired "
                           "resamples", cols,
                           [[mode, metric, f"{c['diff']:+.4f}", f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                             f"{c['p_value']:.4f}", c["verdict"]]
                            for mode, per in rep.significance.items() for metric, c in per.items()],
                           right=cols[2:5])
    for mode, parts in (rep.rag or {}).items():
        cols = ["shaping", "mean pairwise cosine (top 10)", "near-duplicate pairs", "nDCG@10"]
        render.print_table(f"{mode}: redundancy of the top 10", cols,
                           [[name, f"{r['mean_pairwise_cosine']:.3f}", f"{r['near_duplicate_pairs']:.3f}",
                             f"{r['ndcg_at_10']:.4f}"] for name, r in parts["redundancy"].items()], right=cols[1:])
        cols = ["budget (tokens)", "context recall: context", "naive concatenation"]
        recall = parts["context_recall"].items()
        render.print_table(f"{mode}: context recall", cols,
                           [[b, f"{r['context']:.3f}", f"{r['naive']:.3f}"] for b, r in recall], right=cols)
