"""Scale-out ingestion on Ray Data, into a PostgreSQL + pgvector collection.

The same readers, chunker and records as :func:`~embedsmith.ingest.index_paths` (so a collection indexed here
holds the same ids, texts and metadata), on a Ray cluster or a local Ray runtime:

* files (or a ``ray.data.Dataset`` with a ``path`` column, and optionally the ``bytes`` column
  ``ray.data.read_binary_files(..., include_paths=True)`` gives) are read, hashed, parsed and chunked by an actor
  pool that also encodes them: one model per actor, ONNX on CPU, CUDA when Ray gave the actor a GPU;
* or a ``ray.data.Dataset`` of documents (``ray.data.read_parquet``, ``from_pandas``...): one row per document
  with an id column (``_id``/``id`` or ``id_field``) and a text column (and optionally ``title`` and a
  ``metadata`` mapping), the same fields a JSONL row has. Each document carries the sha256 of its own row
  (``doc_hash``) and ``source`` (``dataset_source``, "ray.data" by default); rows are written as upserts keyed
  by document id, and a row whose stored hash is unchanged is skipped before it is encoded;
* one writer actor writes each batch of whole files with :meth:`Collection.replace_vectors`: one transaction
  that removes the files' old records and adds the new ones with binary ``COPY`` (the backend's own write, so
  the BM25 statistics, HNSW graph and metadata indexes stay what its other writes keep). One writer, because
  the backend takes the collection's write lock per transaction anyway; encoding is what scales.

Idempotent and resumable: records are keyed by document id, every chunk carries its file's sha256
(``doc_hash``), and a file is written whole or not at all. A retried task rewrites the same rows in place of
themselves; a rerun after a crash skips the files whose hash is stored (as local ingestion does) and redoes the
rest. Ray Data restarts a dead actor and retries its batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from .errors import ClusterUnreachableError, EmbedsmithError, InvalidInputError, require
from .ingest import (
    Document,
    IndexReport,
    UnreadableFileError,
    _id_clash,
    chunk_records,
    file_records,
    prune_gone,
    read_documents,
    walk,
)

if TYPE_CHECKING:
    from .store.settings import CollectionSettings
    from .types import Encoder

#: chunks committed together at most (whole files; a larger file is one transaction of its own)
WRITE_CHUNKS = 512


@dataclass(frozen=True)
class Chunking:
    """How documents are cut: chunk size and overlap in the encoder's tokens, markdown headings as boundaries
    (default: on for .md files)."""

    max_tokens: int | None = None
    overlap: int = 50
    headings: bool | None = None


def sqlite_refusal(store: object) -> InvalidInputError:
    """The one-line refusal of Ray ingestion into an embedded (SQLite) store."""
    return InvalidInputError(
        f"Ray ingestion writes to PostgreSQL only; store {str(store)!r} is an embedded SQLite store (one machine, "
        "one writer): pass --store postgresql://user@host:port/db (pip install 'embedsmith[postgres]'), or drop "
        "--ray to index on this machine"
    )


def _ray() -> Any:
    require("ray.data", extra="ray", what="Ray ingestion (--ray)")
    return require("ray", extra="ray", what="Ray ingestion (--ray)")


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, on an address nothing listens on (ray.init would retry for minutes)."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host:
        raise InvalidInputError(f"Ray address {address!r} is not host:port, ray://host:port, 'auto' or 'local'")
    try:
        socket.create_connection((host, port or (10001 if parts.scheme == "ray" else 6379)), timeout=5).close()
    except OSError as exc:
        raise ClusterUnreachableError(
            f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}; start it (ray start --head) or "
            "omit --ray-address for a local Ray runtime"
        ) from None


def _start_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local runtime unless one is up; True when this call started it."""
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ClusterUnreachableError(f"cannot start or reach Ray at {address or 'a local runtime'!r}: {exc}") from exc
    return True


Crash = tuple[tuple[str, int, str], ...]


def _crash_now(crash: Crash, stage: str, done: int) -> None:
    """Test hook: exit this worker process once (a marker file says so) after ``done`` batches of ``stage``
    (for ``write``: after the batch's commit, before Ray hears of it)."""
    for when, after, marker in crash:
        if when == stage and done == after:
            try:
                Path(marker).open("x").close()
            except FileExistsError:
                continue
            os._exit(1)


class _EncodeFiles:
    """Actor: read, hash, parse, chunk and encode a batch of files with one model."""

    def __init__(self, settings: CollectionSettings, known: dict[str, str], chunking: Chunking, text_field: str,
                 id_field: str | None, threads: int, crash: Crash) -> None:
        import ray

        from .encoders import load_encoder
        from .store.settings import check_encoder

        gpu = bool(ray.get_gpu_ids())
        if not settings.model:
            raise InvalidInputError(f"collection {settings.name!r} stores vectors without a model: nothing to "
                                    "encode files with")
        self.enc: Encoder = load_encoder(settings.model, backend="auto" if gpu else "onnx",
                                         device="cuda" if gpu else "cpu", threads=threads)
        check_encoder(settings, self.enc)
        self.known, self.chunking = known, chunking
        self.text_field, self.id_field = text_field, id_field
        self.crash, self.done = crash, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {k: [] for k in ("source", "status", "reason", "documents", "payload")}
        files: list[tuple[int, list[dict[str, Any]], list[tuple[str, int | None]]]] = []
        blobs = batch.get("bytes")
        for i, path in enumerate(batch["path"]):
            source = str(path)
            status, reason, ndocs, payload = "indexed", "", 0, b""
            try:
                raw = bytes(blobs[i]) if blobs is not None else Path(source).read_bytes()
                digest = hashlib.sha256(raw).hexdigest()
                if self.known.get(source) == digest:
                    status = "unchanged"
                else:
                    docs = read_documents(Path(source), raw, text_field=self.text_field, id_field=self.id_field)
                    records = file_records(Path(source), docs, digest, self.enc, max_tokens=self.chunking.max_tokens,
                                           overlap=self.chunking.overlap, headings=self.chunking.headings)
                    ndocs = len(docs)
                    files.append((len(out["source"]), records, [(d.id, d.line) for d in docs]))
            except OSError as exc:
                status, reason = "skipped", exc.strerror or str(exc)
            except UnreadableFileError as exc:
                status, reason = "skipped", str(exc)
            for key, value in zip(out, (source, status, reason, ndocs, payload), strict=True):
                out[key].append(value)
        texts = [r.get("index_text") or r["text"] for _, recs, _ in files for r in recs]
        vectors = (np.asarray(self.enc.encode(texts, kind="document"), dtype=np.float32) if texts
                   else np.zeros((0, 0), np.float32))
        at = 0
        for row, recs, ids in files:
            out["payload"][row] = pickle.dumps((recs, vectors[at : at + len(recs)], ids))
            at += len(recs)
        self.done += 1
        _crash_now(self.crash, "encode", self.done)
        return {k: np.array(v, dtype=object if k == "payload" else None) for k, v in out.items()}


def row_digest(doc: Document) -> str:
    """sha256 of a document row (its id, title, text and metadata): what "unchanged" means for a row."""
    canon = json.dumps([doc.id, doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False,
                       default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _cell(value: Any) -> Any:
    """A Ray Data cell as plain Python (numpy scalars and arrays come back from ``batch_format="numpy"``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class _EncodeRows:
    """Actor: chunk and encode a batch of document rows with one model, skipping rows whose hash is stored."""

    def __init__(self, settings: CollectionSettings, store: str, chunking: Chunking, fields: dict[str, str | None],
                 source: str, threads: int, crash: Crash) -> None:
        from .store import open_collection

        self.files = _EncodeFiles(settings, {}, chunking, "text", None, threads, crash)
        self.c = open_collection(settings.name, store=store, create=False)
        self.fields, self.source = fields, source

    def _document(self, batch: dict[str, np.ndarray], i: int) -> Document:
        f = self.fields
        rid = _cell(batch[str(f["id"])][i])
        if rid is None or str(rid) == "":
            raise UnreadableFileError(f"row has no {f['id']!r}")
        text = _cell(batch[str(f["text"])][i])
        title = _cell(batch[f["title"]][i]) if f["title"] else None
        meta = _cell(batch[f["metadata"]][i]) if f["metadata"] else None
        if meta is not None and not isinstance(meta, dict):
            raise UnreadableFileError(f"document {rid!r}: metadata is {type(meta).__name__}, not a mapping")
        meta = {k: v for k, v in (meta or {}).items() if v is not None}
        return Document(str(rid), "" if text is None else str(text), self.source, str(title) if title else None,
                        meta)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[str(self.fields["id"])])
        out: dict[str, list[Any]] = {k: [] for k in ("source", "status", "reason", "documents", "payload")}
        docs: list[tuple[int, Document, str]] = []
        for i in range(n):
            status, reason, name = "indexed", "", f"row {i}"
            try:
                doc = self._document(batch, i)
                name = doc.id
                if not doc.text.strip() and not doc.title:
                    status, reason = "skipped", "empty text"
                else:
                    docs.append((i, doc, row_digest(doc)))
            except UnreadableFileError as exc:
                status, reason = "skipped", str(exc)
            for key, value in zip(out, (name, status, reason, 1, b""), strict=True):
                out[key].append(value)
        ids = [d.id for _, d, _ in docs]
        stored = {r["metadata"].get("doc_id", r["id"]): r["metadata"].get("doc_hash")
                  for r in self.c.get(ids + [f"{i}#0" for i in ids])} if ids else {}
        todo = []
        for i, doc, digest in docs:
            if stored.get(doc.id) == digest:
                out["status"][i] = "unchanged"
            else:
                ch = self.files.chunking
                recs = chunk_records(doc, self.files.enc, max_tokens=ch.max_tokens, overlap=ch.overlap,
                                     headings=bool(ch.headings))
                for r in recs:
                    r["metadata"]["doc_hash"] = digest
                todo.append((i, recs))
        texts = [r.get("index_text") or r["text"] for _, recs in todo for r in recs]
        vectors = (np.asarray(self.files.enc.encode(texts, kind="document"), dtype=np.float32) if texts
                   else np.zeros((0, 0), np.float32))
        at = 0
        for i, recs in todo:
            out["payload"][i] = pickle.dumps((recs, vectors[at : at + len(recs)], None))
            at += len(recs)
        self.files.done += 1
        _crash_now(self.files.crash, "encode", self.files.done)
        return {k: np.array(v, dtype=object if k == "payload" else None) for k, v in out.items()}

    def __del__(self) -> None:
        c = getattr(self, "c", None)
        if c is not None:
            c.close()


class _WriteFiles:
    """Actor (one): write batches of whole files, each batch in transactions of at most ``WRITE_CHUNKS``."""

    def __init__(self, store: str, name: str, crash: Crash, rows: bool = False) -> None:
        from .store import open_collection

        self.c = open_collection(name, store=store, create=False)
        self.claimed: dict[str, tuple[str, int | None]] = {}
        self.crash, self.done = crash, 0
        #: document rows replace by document id (an upsert); files replace by source, whole files at a time
        self.key = "doc_id" if rows else "source"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["source"])
        status = [str(s) for s in batch["status"]]
        reason = [str(s) for s in batch["reason"]]
        chunks = [0] * n
        group: list[tuple[int, list[dict[str, Any]], np.ndarray]] = []

        def flush() -> None:
            if group:
                recs = [r for _, rs, _ in group for r in rs]
                vecs = np.concatenate([v for _, rs, v in group if rs]) if recs else np.zeros((0, 0), np.float32)
                self.c.replace_vectors({self.key: {"$in": [str(batch["source"][i]) for i, _, _ in group]}}, recs,
                                       vecs)
                group.clear()

        for i in range(n):
            if status[i] != "indexed":
                continue
            source = str(batch["source"][i])
            recs, vecs, ids = pickle.loads(batch["payload"][i])
            if ids is not None:  # a file: its ids must not belong to another file
                docs = [Document(d, "", source, line=line) for d, line in ids]
                clash = _id_clash(self.c, docs, source, self.claimed)
                if clash:
                    status[i], reason[i] = "skipped", clash
                    continue
            chunks[i] = len(recs)
            if group and sum(len(rs) for _, rs, _ in group) + len(recs) > WRITE_CHUNKS:
                flush()
            group.append((i, recs, vecs))
        flush()
        self.done += 1
        _crash_now(self.crash, "write", self.done)
        return {"source": batch["source"], "status": np.array(status), "reason": np.array(reason),
                "documents": batch["documents"], "chunks": np.array(chunks)}

    def __del__(self) -> None:
        c = getattr(self, "c", None)
        if c is not None:
            c.close()


def _cause(exc: BaseException) -> EmbedsmithError | None:
    """Our error inside a Ray task failure (Ray wraps what the actor raised), if that is what it was."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EmbedsmithError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def _row_fields(columns: list[str], text_field: str, id_field: str | None) -> dict[str, str | None]:
    """The columns of a dataset of document rows (id, text, title, metadata), or a clear refusal."""
    listed = ", ".join(map(repr, columns)) or "none"
    ident = id_field if id_field else next((c for c in ("_id", "id") if c in columns), None)
    if ident is None or ident not in columns:
        raise InvalidInputError(
            f"a dataset of documents needs an id column ({id_field or '_id or id'!r}; columns: {listed}): rows are "
            "upserted by id; or give a 'path' column (ray.data.read_binary_files(..., include_paths=True))")
    if text_field not in columns:
        raise InvalidInputError(f"a dataset of documents needs a {text_field!r} column (columns: {listed}); "
                                "pass text_field=")
    return {"id": ident, "text": text_field, "title": "title" if "title" in columns else None,
            "metadata": "metadata" if "metadata" in columns else None}


def index_dataset(
    dataset_or_paths: Any,
    *,
    store: str,
    collection: str,
    encoder: Encoder | str | None = None,
    chunking: Chunking | None = None,
    batch_size: int = 8,
    num_workers: int | None = None,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    ray_address: str | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    metric: str | None = None,
    precision: str | None = None,
    dims: int | None = None,
    dataset_source: str = "ray.data",
    prune: bool = False,
    show_progress: bool = False,
    _crash: Crash = (),
) -> IndexReport:
    """Index files into a PostgreSQL collection on Ray Data (see the module docstring).

    Args:
        dataset_or_paths: files and folders (as :func:`~embedsmith.ingest.index_paths` takes), a
            ``ray.data.Dataset`` with a ``path`` column (and optionally ``bytes``: the file's content), or a
            ``ray.data.Dataset`` of documents: an id column (``id_field``, else ``_id`` or ``id``), a text column
            (``text_field``), optionally ``title`` and ``metadata`` (a mapping), one row per document.
        store: a ``postgresql://`` DSN (a DSN, not an open collection: a connection pool cannot travel to actors).
        collection: its name; created with ``encoder``'s settings (and metric, precision, dims) when missing.
        encoder: an alias, folder or encoder whose name the actors load (default: the collection's model, or
            minilm for a new collection).
        chunking: chunk size, overlap, headings (:class:`Chunking`).
        batch_size: files per encoding batch.
        num_workers: encoding actors (default: the cluster's CPUs / ``threads_per_worker``).
        threads_per_worker, gpus_per_worker: what each actor gets (its model runs on CUDA when it has a GPU).
        ray_address: a cluster (``host:port``, ``ray://host:port``, ``auto``); None: this process's Ray runtime,
            or a new local one.
        dataset_source: the ``source`` metadata of documents from a dataset of rows.
        prune: paths only: afterwards, delete the chunks of files under the paths that no longer exist.

    Returns:
        An :class:`~embedsmith.ingest.IndexReport` (files indexed/unchanged/skipped with reasons, documents,
        chunks). For a dataset of rows: ``documents`` written, ``documents_unchanged`` and ``files_skipped``
        holding (document id, reason).

    Raises:
        InvalidInputError: a store that is not PostgreSQL, a missing path, bad batch sizes.
        MissingExtraError: the ``ray`` (or ``postgres``) extra is not installed.
        ClusterUnreachableError: nothing answers at ``ray_address``.
    """
    from tqdm.auto import tqdm

    from .store import is_postgres, open_collection

    if not is_postgres(store):
        raise sqlite_refusal(store)
    for name, value in (("batch_size", batch_size), ("threads_per_worker", threads_per_worker)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise InvalidInputError(f"num_workers must be a positive integer, got {num_workers!r}")
    if gpus_per_worker < 0:
        raise InvalidInputError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    ray = _ray()
    if ray_address is not None:  # before any model is loaded or collection created
        _check_reachable(ray_address)
    chunking = chunking or Chunking()
    files: list[Path] | None = None
    if not isinstance(dataset_or_paths, ray.data.Dataset):
        paths = [dataset_or_paths] if isinstance(dataset_or_paths, (str, os.PathLike)) else list(dataset_or_paths)
        files = walk([Path(p) for p in paths])
    elif prune:
        raise InvalidInputError("prune=True needs paths (it removes the chunks of files gone from them), not a "
                                "ray.data.Dataset")

    enc: Encoder | None = None
    from .store import list_collections

    if isinstance(encoder, str) or (encoder is None and collection not in list_collections(store)):
        from .encoders import load_encoder

        enc = load_encoder(encoder or "minilm", backend="onnx", device="cpu", threads=threads_per_worker)
    elif encoder is not None:
        enc = encoder
    with open_collection(collection, store=store, encoder=enc, metric=metric, precision=precision, dims=dims) as c:
        settings = c.settings
        known = {src: h for src, h in c.distinct("source", "doc_hash") if src is not None}

    report = IndexReport()
    if files is not None and not files:
        if prune:
            with open_collection(collection, store=store, create=False) as c:
                report.files_pruned = prune_gone(c, paths, files, known)
        return report
    fields: dict[str, str | None] | None = None
    started = _start_ray(ray, ray_address, None)
    try:
        if files is not None:
            blocks = max(1, min(len(files), 4 * (num_workers or 4)))
            ds = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=blocks)
        else:
            ds = dataset_or_paths
            columns = ds.columns() or []
            if "path" in columns:
                ds = ds.select_columns(["path", "bytes"] if "bytes" in columns else ["path"])
            else:
                fields = _row_fields(columns, text_field, id_field)
                ds = ds.select_columns([f for f in fields.values() if f])
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_worker)
        rows = fields is not None
        if rows:
            if not isinstance(dataset_source, str) or not dataset_source.strip():
                raise InvalidInputError(f"dataset_source must be a non-empty string, got {dataset_source!r}")
            actor: type = _EncodeRows
            kwargs: dict[str, Any] = {"settings": settings, "store": store, "chunking": chunking,
                                      "fields": fields, "source": dataset_source}
        else:
            actor = _EncodeFiles
            kwargs = {"settings": settings, "known": known, "chunking": chunking, "text_field": text_field,
                      "id_field": id_field}
        encoded = ds.map_batches(
            actor, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs={**kwargs, "threads": threads_per_worker, "crash": _crash})
        written = encoded.map_batches(
            _WriteFiles, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
            fn_constructor_kwargs={"store": store, "name": collection, "crash": _crash, "rows": rows})
        context = ray.data.DataContext.get_current()
        bars = context.enable_progress_bars
        context.enable_progress_bars = False  # ours counts files; Ray Data's (and its log lines) count blocks
        # Files reach the writer in their order, as in local ingestion: of two files that claim one id, the
        # first is indexed and the second refused, whichever actor encoded them.
        ordered = context.execution_options.preserve_order
        context.execution_options.preserve_order = True
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            bar = tqdm(total=len(files) if files is not None else None, disable=not show_progress,
                       desc=f"indexing into {collection} on Ray", unit="document" if rows else "file")
            for row in written.iter_rows():
                bar.update(1)
                if row["status"] == "unchanged":
                    if rows:
                        report.documents_unchanged += 1
                    else:
                        report.files_unchanged += 1
                elif row["status"] == "skipped":
                    report.files_skipped.append((str(row["source"]), str(row["reason"])))
                else:
                    report.files_indexed += 0 if rows else 1
                    report.documents += int(row["documents"])
                    report.chunks += int(row["chunks"])
            bar.close()
        except Exception as exc:
            ours = _cause(exc)
            if ours is not None:
                raise ours from None
            raise
        finally:
            context.enable_progress_bars = bars
            context.execution_options.preserve_order = ordered
            quiet.setLevel(level)
    finally:
        if started:
            ray.shutdown()
    if prune and files is not None:
        with open_collection(collection, store=store, create=False) as c:
            report.files_pruned = prune_gone(c, paths, files, known)
    report.files_skipped.sort()
    return report


__all__ = ["Chunking", "index_dataset"]
