"""Commands on collections: index, search, delete, compact, list, verify, repair, snapshot, restore, reembed,
migrate. Each parses its options, calls one library function or method, and renders the result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..encoders.cache import VectorCache
from . import render
from .options import (
    BackendOpt,
    CollectionOpt,
    JsonOpt,
    ModelOpt,
    StoreOpt,
    VectorCacheOpt,
    WhereOpt,
    load_model,
    parse_json_option,
    parse_where,
)


def index(
    paths: Annotated[list[Path], typer.Argument(help="files or folders (.txt .md .html .pdf .jsonl .csv)")],
    collection: CollectionOpt,
    store: StoreOpt = None,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    metric: Annotated[str | None, typer.Option(help="cosine | dot | l2 | manhattan (new collections)")] = None,
    precision: Annotated[str | None, typer.Option(help="float32 | float16 | int8 | binary (new collections)")] = None,
    dims: Annotated[int | None, typer.Option(help="index the first N dimensions (new collections)")] = None,
    chunk_tokens: Annotated[int | None, typer.Option(help="chunk size in tokens (default min(384, model max))")] = None,
    overlap: Annotated[int, typer.Option(help="tokens shared by consecutive chunks")] = 50,
    headings: Annotated[bool | None, typer.Option(help="markdown headings as chunk boundaries (default: .md)")] = None,
    text_field: Annotated[str, typer.Option(help="JSONL/CSV text field")] = "text",
    id_field: Annotated[str | None, typer.Option(help="JSONL/CSV id field (default _id or id)")] = None,
    prune: Annotated[bool, typer.Option(help="remove chunks of files that no longer exist")] = False,
    vector_cache: VectorCacheOpt = True,
    ray: Annotated[bool, typer.Option("--ray", help="encode on Ray Data actors (PostgreSQL stores; embedsmith[ray])")]
    = False,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster: host:port, ray://host:port or auto [default: a local Ray runtime]")] = None,
    workers: Annotated[int | None, typer.Option(help="--ray: encoding actors [default: the cluster's CPUs]")] = None,
    late_interaction: Annotated[bool, typer.Option(
        "--late-interaction", help="store token vectors for late interaction (MaxSim) with the chunks "
        "(new collections; embedded stores)")] = False,
    late_precision: Annotated[str | None, typer.Option(
        help="--late-interaction: float32 | float16 | int8 | int2 | binary [default: the library's default]")] = None,
    late_dims: Annotated[int | None, typer.Option(
        help="--late-interaction: reduce token vectors to N dims by a PCA fitted on the first write")] = None,
) -> None:
    """Chunk, embed and store files; unchanged files are skipped, changed ones replaced.

    Without --model, an existing collection keeps the model it was built with and a new one uses minilm; a
    --model other than an existing collection's is refused (re-embed into a new collection instead). With --ray,
    Ray Data actors read, chunk and encode (one model each) and one writer stores whole files into PostgreSQL.
    With --late-interaction, each chunk's token vectors are stored with it (from the same forward pass), so
    `search --rerank maxsim` and `--mode hybrid --late-interaction` read them instead of encoding candidates."""
    from ..errors import InvalidInputError
    from ..ingest import index_paths
    from ..store import list_collections, open_collection

    if (late_precision is not None or late_dims is not None) and not late_interaction:
        raise InvalidInputError("--late-precision and --late-dims go with --late-interaction")
    late: bool | dict[str, object] | None = None
    if late_interaction:
        late = {k: v for k, v in (("precision", late_precision), ("dims", late_dims)) if v is not None} or True

    if ray or ray_address is not None or workers is not None:
        from ..ingest_ray import Chunking, index_dataset, sqlite_refusal
        from ..store import is_postgres

        if not ray:
            raise InvalidInputError("--ray-address and --workers go with --ray")
        if late is not None:
            raise InvalidInputError("--late-interaction stores token vectors in an embedded (folder) store; --ray "
                                    "writes PostgreSQL, which has no stored token vectors")
        if store is None or not is_postgres(store):
            raise sqlite_refusal(store or "the default store")
        report = index_dataset(paths, store=store, collection=collection, encoder=model,
                               chunking=Chunking(chunk_tokens, overlap, headings), num_workers=workers,
                               ray_address=ray_address, text_field=text_field, id_field=id_field, metric=metric,
                               precision=precision, dims=dims, prune=prune, show_progress=True)
        with open_collection(collection, store=store, create=False) as c:
            render.print_index_report(report, c.info())
        return

    # An existing collection loads its recorded model itself; an explicit --model is loaded and checked against it.
    own_model = model is None and collection in list_collections(store)
    enc = None if own_model else load_model(model, backend)
    with open_collection(collection, store=store, encoder=enc, metric=metric, precision=precision, dims=dims,
                         late_interaction=late) as c:
        report = index_paths(c, paths, max_tokens=chunk_tokens, overlap=overlap, headings=headings,
                             text_field=text_field, id_field=id_field, prune=prune, show_progress=True,
                             vector_cache=VectorCache() if vector_cache else None)
        render.print_index_report(report, c.info())


def search(
    query: Annotated[str, typer.Argument(help="query text")],
    collection: CollectionOpt,
    store: StoreOpt = None,
    k: Annotated[int, typer.Option("-k", help="hits to return")] = 10,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: WhereOpt = None,
    fusion: Annotated[str, typer.Option(help="hybrid fusion: rrf | weighted")] = "rrf",
    alpha: Annotated[float | None, typer.Option(help="dense weight for weighted fusion (implies --fusion weighted)")]
    = None,
    rerank: Annotated[Path | None, typer.Option(
        help="cross-encoder folder, or maxsim (late interaction) / maxsim:ENCODER")] = None,
    candidates: Annotated[int | None, typer.Option(help="first-stage candidates for reranking (100)")] = None,
    group_by: Annotated[str | None, typer.Option(help="best hit per metadata field, e.g. source")] = None,
    late_interaction: Annotated[bool, typer.Option(
        "--late-interaction", help="hybrid: fuse a MaxSim order with dense and bm25")] = False,
    exact: Annotated[bool, typer.Option(help="brute-force dense search")] = False,
    ef: Annotated[int | None, typer.Option(help="HNSW search breadth")] = None,
    diversity: Annotated[float | None, typer.Option(help="0..1: MMR diversity (0 = relevance order)")] = None,
    dedup: Annotated[bool, typer.Option(help="merge overlapping chunks of a document, drop near-copies")] = False,
    boost: Annotated[str | None, typer.Option(help='score boosts as JSON, e.g. {"stars": 0.1}')] = None,
    decay: Annotated[str | None, typer.Option(
        help='decay as JSON, e.g. {"field": "date", "origin": "now", "scale": 2592000}')] = None,
    min_relevance: Annotated[float | None, typer.Option(
        help="drop hits whose calibrated P(relevant) is below this (after embedsmith calibrate)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection (dense, bm25 or hybrid; optionally reranked, diversified, deduplicated, boosted)."""
    from ..store import open_collection

    flt = parse_where(where)
    boosts, decays = parse_json_option(boost, "--boost"), parse_json_option(decay, "--decay")
    reranker = None
    if rerank is not None:
        from ..rerankers import load_reranker

        reranker = load_reranker(rerank)
    with open_collection(collection, store=store, create=False) as c:
        hits = c.search(query, k=k, mode=mode, where=flt, exact=exact, ef=ef,
                        fusion="weighted" if alpha is not None else fusion, alpha=0.5 if alpha is None else alpha,
                        rerank=reranker, candidates=candidates, group_by=group_by, diversity=diversity,
                        dedup=True if dedup else None, boost=boosts, decay=decays, min_relevance=min_relevance,
                        late_interaction=late_interaction)
    if as_json:
        render.print_json({"collection": collection, "query": query, "mode": mode, "hits": hits.to_dicts()},
                          ensure_ascii=False)
        return
    render.print_hits(collection, query, mode, hits, reranked=reranker is not None)


def context(
    query: Annotated[str, typer.Argument(help="the question")],
    collection: CollectionOpt,
    store: StoreOpt = None,
    budget: Annotated[int, typer.Option(help="the most tokens the context may take")] = 2000,
    fmt: Annotated[str, typer.Option("--format", help="markdown | json")] = "markdown",
    k: Annotated[int | None, typer.Option("-k", help="chunks searched before widening (default budget / 40)")]
    = None,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: WhereOpt = None,
    rerank: Annotated[Path | None, typer.Option(help="cross-encoder folder to rerank with")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="count tokens with this tokenizer.json, model folder or alias (default: the collection's model)")] = None,
    widen: Annotated[bool, typer.Option(help="add the neighbouring chunks of well-scored hits")] = True,
) -> None:
    """The best passages for a question, merged, cited and within a token budget, ready for an LLM."""
    from ..store import open_collection

    flt = parse_where(where)
    reranker = None
    if rerank is not None:
        from ..rerankers import load_reranker

        reranker = load_reranker(rerank)
    with open_collection(collection, store=store, create=False) as c:
        ctx = c.context(query, budget_tokens=budget, k=k, mode=mode, where=flt, rerank=reranker,
                        tokenizer=tokenizer, widen=widen, format=fmt)
    if fmt == "json":
        render.print_json(ctx.to_dict(), ensure_ascii=False)
        return
    sys.stdout.write(ctx.to_markdown() + "\n")


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    collection: CollectionOpt,
    llm: Annotated[str | None, typer.Option(help="chat endpoint: openai-chat:MODEL@URL (key from $OPENAI_API_KEY)")]
    = None,
    store: StoreOpt = None,
    budget: Annotated[int, typer.Option(help="tokens of context given to the model")] = 2000,
    k: Annotated[int | None, typer.Option("-k", help="chunks searched before widening (default budget / 40)")]
    = None,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: WhereOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the collection's packed context, with numbered citations, through any
    OpenAI-compatible chat endpoint."""
    from ..ask import ask as answer
    from ..ask import parse_llm
    from ..store import open_collection

    parse_llm(llm)  # a missing or malformed endpoint is said before any search
    with open_collection(collection, store=store, create=False) as c:
        got = answer(c, question, llm=llm, budget_tokens=budget, k=k, mode=mode, where=parse_where(where))
    if as_json:
        render.print_json({"answer": got.text, "model": got.model, "context": got.context.to_dict()},
                          ensure_ascii=False)
        return
    sys.stdout.write(got.text + "\n\nSources:\n" + "\n".join(got.sources()) + "\n")


def calibrate(
    collection: CollectionOpt,
    store: StoreOpt = None,
    queries: Annotated[Path | None, typer.Option(help="judged queries (BEIR queries.jsonl or id<TAB>text)")] = None,
    qrels: Annotated[Path | None, typer.Option(help="their judgements (BEIR qrels TSV or TREC qrels)")] = None,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    depth: Annotated[int, typer.Option(help="hits judged per query")] = 20,
    pseudo: Annotated[int, typer.Option(help="pseudo-queries cut from the collection when no qrels are given")]
    = 200,
    holdout: Annotated[float, typer.Option(help="share of the queries kept out of the fit to report its ECE")] = 0.25,
    rerank: Annotated[Path | None, typer.Option(help="calibrate this cross-encoder's scores instead")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a map from a search mode's scores to P(relevant), stored with the collection (then hits carry
    relevance and --min-relevance works); from judged queries, or pseudo-queries cut from its own chunks."""
    from collections import Counter

    from ..errors import InvalidInputError
    from ..io import read_beir_queries, read_qrels
    from ..store import open_collection

    if (queries is None) != (qrels is None):
        raise InvalidInputError("calibrate takes --queries and --qrels together, or neither")
    judged_q: dict[str, str] | None = None
    judged: dict[str, dict[str, int]] | None = None
    if queries is not None and qrels is not None:
        problems: Counter[str] = Counter()
        judged_q = read_beir_queries(queries, problems)
        judged = {}
        for qid, doc, grade in read_qrels(qrels, problems):
            judged.setdefault(qid, {})[doc] = grade
        render.warn_problems(problems)
    reranker = None
    if rerank is not None:
        from ..rerankers import load_reranker

        reranker = load_reranker(rerank)
    with open_collection(collection, store=store, create=False) as c:
        report = c.calibrate(queries=judged_q, qrels=judged, mode=mode, depth=depth, rerank=reranker, pseudo=pseudo,
                             holdout=holdout)
    if as_json:
        render.print_json(report)
        return
    held = (f"; ECE on {report['holdout_queries']} held-out queries {report['ece_holdout']:.3f}"
            if report["ece_holdout"] is not None else "")
    print(f"{collection}: calibrated {report['mode']} from {report['queries']} {report['source']} queries "
          f"({report['hits']} hits, {report['relevant']} relevant); ECE on the fit {report['ece_fit']:.3f}{held}")


def delete(
    collection: CollectionOpt,
    store: StoreOpt = None,
    ids: Annotated[list[str] | None, typer.Option("--ids", help="ids to delete (repeatable)")] = None,
    where: WhereOpt = None,
) -> None:
    """Soft-delete records by id or filter (compact reclaims the space)."""
    from ..store import open_collection

    with open_collection(collection, store=store, create=False) as c:
        n = c.delete(ids=ids or None, where=parse_where(where))
    print(f"deleted {n} record(s) from {collection}")


def compact(collection: CollectionOpt, store: StoreOpt = None) -> None:
    """Drop deleted records, reclaim disk and rebuild the ANN index."""
    from ..store import open_collection

    with open_collection(collection, store=store, create=False) as c:
        stats = c.compact()
    print(f"{collection}: dropped {stats['dropped']} deleted record(s); "
          f"{stats['bytes_before']:,} -> {stats['bytes_after']:,} bytes")


def collections(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List collections: count, model, dimension, precision, metric, size on disk."""
    from ..errors import StoreError
    from ..store import list_collections, open_collection

    rows = []
    for name in list_collections(store):
        try:
            with open_collection(name, store=store, create=False) as c:
                rows.append(c.info())
        except StoreError as exc:  # one damaged collection must not hide the others
            rows.append({"name": name, "error": str(exc)})
    if as_json:
        render.print_json(rows, indent=2)
        return
    from rich.text import Text

    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "-", Text(f"unreadable: {r['error']}", style="red"), "", "", "", "", ""])
            continue
        dim = f"{r['dims']} of {r['dim']}" if r["dims"] != r["dim"] else str(r["dim"])
        late = r.get("late_interaction")
        tokens = f"{late['precision']}{'/' + str(late['dims']) if late['dims'] else ''}, " \
                 f"{late['bytes_per_chunk'] / 1024:.1f} KB/chunk" if late else "-"
        table.append([r["name"], str(r["count"]), str(r["model"]), dim, r["precision"], r["metric"],
                      f"{r['disk_bytes'] / 1e6:.1f} MB", tokens])
    render.print_table("collections", ["name", "count", "model", "dim", "precision", "metric", "disk",
                                       "token vectors"], table)


def verify(collection: CollectionOpt, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Check a collection's integrity: database, index files against the rows, checksums, settings.

    Exit status 0 when sound, 1 when problems were found (one per line), 2 when the check could not run.
    """
    from ..errors import EmbedsmithError
    from ..store import open_collection

    try:
        with open_collection(collection, store=store, create=False) as c:
            report = c.verify()
    except EmbedsmithError as exc:
        if as_json:
            render.print_json({"name": collection, "ok": False, "error": str(exc)})
        print(f"embedsmith: error: cannot verify {collection}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        render.print_json(report.to_dict(), indent=2, ensure_ascii=False)
    elif report.ok:
        print(f"{collection}: ok ({report.checks.get('records', '?')} records)")
    else:
        for problem in report.problems:
            print(f"{collection}: {problem}")
    raise typer.Exit(0 if report.ok else 1)


def repair(collection: CollectionOpt, store: StoreOpt = None) -> None:
    """Rebuild every derived file of a collection (ANN index, BM25 index) from its rows."""
    import warnings

    from ..store import IndexRebuildWarning, open_collection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)  # rebuilding is what was asked for
        with open_collection(collection, store=store, create=False) as c:
            done = c.repair()
            report = c.verify()
    print(f"{collection}: rebuilt the ANN index ({done['ann_vectors']} vectors) and the BM25 index "
          f"({done['bm25_rows']} rows); verify: {'ok' if report.ok else '; '.join(report.problems)}")
    if not report.ok:
        raise typer.Exit(1)


def snapshot(
    collection: CollectionOpt,
    to: Annotated[Path, typer.Option("--to", help="snapshot file to write")],
    store: StoreOpt = None,
) -> None:
    """Write a collection to one portable file, consistent while writers run (restore reads it into either store)."""
    from ..store import snapshot_collection

    report = snapshot_collection(collection, to, store=store)
    print(f"{collection}: {report['count']} records -> {report['path']} ({report['bytes']:,} bytes)")


def restore(
    snapshot_file: Annotated[Path, typer.Argument(help="a file written by embedsmith snapshot")],
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="name (default: the snapshot's)")]
    = None,
    store: StoreOpt = None,
    replace: Annotated[bool, typer.Option(help="replace an existing collection of that name")] = False,
) -> None:
    """Restore a snapshot into a store (folder or postgresql://), as a new collection or replacing one."""
    from ..store import restore_collection

    report = restore_collection(snapshot_file, name=collection, store=store, replace=replace, show_progress=True)
    print(f"{report['name']}: restored {report['count']} records" + (" (replaced)" if report["replaced"] else ""))


def reembed(
    collection: CollectionOpt,
    to: Annotated[str, typer.Option("--to", help="name of the new collection")],
    model: ModelOpt,
    store: StoreOpt = None,
    backend: BackendOpt = "auto",
    vector_cache: VectorCacheOpt = True,
) -> None:
    """Re-embed a collection's texts with another model into a new collection (ids and metadata kept).

    The target is marked incomplete until every record is in; an interrupted run resumes when run again."""
    from ..store import reembed_collection

    report = reembed_collection(collection, to, load_model(model, backend), store=store, show_progress=True,
                                vector_cache=VectorCache() if vector_cache else None)
    print(f"{to}: {report['count']} records ({report['model']}, dim {report['dim']})"
          + (f", resumed after {report['resumed_after']}" if report["resumed"] else "")
          + (f"; token vectors {report['late_interaction']}" if report.get("late_interaction") else ""))


def migrate(
    collection: CollectionOpt,
    source: Annotated[str | None, typer.Option("--from", help="source store: folder or postgresql:// DSN")] = None,
    target: Annotated[str | None, typer.Option("--to", help="target store: folder or postgresql:// DSN")] = None,
    rename: Annotated[str | None, typer.Option("--as", help="name of the copy (default: the same)")] = None,
    batch: Annotated[int, typer.Option(help="records per transaction")] = 2000,
) -> None:
    """Copy a collection between stores (SQLite <-> PostgreSQL) without re-embedding; verifies counts and a sample."""
    from ..errors import InvalidInputError
    from ..store import migrate_collection
    from ..store.pgvector import mask_dsn

    if source is None and target is None:
        raise InvalidInputError("migrate needs --from or --to (the other defaults to $EMBEDSMITH_HOME)")
    report = migrate_collection(collection, source, target, target_name=rename, batch=batch, show_progress=True)

    def shown(store: str | None) -> str:
        return mask_dsn(store) if store and "://" in store else (store or "$EMBEDSMITH_HOME")

    print(f"copied {collection} ({shown(source)}) -> {report['target_name']} ({shown(target)}): "
          f"{report['count']} records, counts equal, {report['checked']} sampled records identical")
