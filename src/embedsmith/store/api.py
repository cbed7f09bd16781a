"""Opening, listing, deleting, copying, snapshotting and restoring collections: the facade over the backends.

A store is a folder (the embedded SQLite backend, :mod:`embedsmith.store.sqlite`) or a PostgreSQL DSN
``postgresql://user@host:port/db`` (pgvector, :mod:`embedsmith.store.pgvector`). This is the only module
that imports both and chooses between them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..encoders.cache import VectorCache, using_cache
from ..errors import CollectionExistsError, InvalidInputError, StoreError
from ..quantization import Int8Calibration
from ..types import Encoder, Metric, Precision, parse_enum
from .base import Collection, Requested, Store, open_in
from .settings import (
    CollectionSettings,
    OpenOptions,
    check_name,
    default_store,
    is_postgres,
    late_request,
    positive_int,
)


def store_for(store: str | os.PathLike[str] | None) -> Store:
    """The backend of ``store``: a PostgreSQL DSN, else a folder (default :func:`default_store`)."""
    if is_postgres(store):
        from .pgvector import PgStore

        return PgStore(str(store))
    from .sqlite import FolderStore

    return FolderStore(Path(store).expanduser() if store is not None else default_store())


def _resolve_encoder(encoder: Encoder | str | os.PathLike[str] | None) -> Encoder | None:
    if isinstance(encoder, (str, os.PathLike)):
        from ..encoders import load_encoder

        return load_encoder(encoder)
    return encoder


def open_collection(
    name: str,
    *,
    store: str | os.PathLike[str] | None = None,
    encoder: Encoder | str | None = None,
    metric: str | Metric | None = None,
    precision: str | Precision | None = None,
    dims: int | None = None,
    dim: int | None = None,
    calibration: Int8Calibration | None = None,
    create: bool = True,
    hnsw_m: int = 32,
    ef_construction: int = 128,
    ef_search: int = 64,
    exact_below: int = 10_000,
    lock_timeout: float = 10.0,
    save_every: int = 50_000,
    save_interval_s: float = 60.0,
    pool_size: int = 4,
    late_interaction: bool | str | Mapping[str, Any] | None = None,
) -> Collection:
    """Create or open a collection.

    Args:
        name: letters, digits, ``_``, ``.``, ``-`` (up to 64).
        store: the folder holding collections (default :func:`default_store`), or a PostgreSQL DSN
            ``postgresql://user[:password]@host:port/db`` (with pgvector; ``?schema=NAME`` picks the schema,
            default ``embedsmith``).
        encoder: an encoder, or an alias/folder to load. For an existing collection, None means the
            model it records (loaded on first text operation).
        metric: cosine (default) | dot | l2 | manhattan.
        precision: float32 (default) | float16 | int8 | binary: what the ANN index stores. Full float32
            vectors stay in the database and rescore the shortlist. PostgreSQL has no int8 index.
        dims: index only the first ``dims`` dimensions (Matryoshka funnel); all are used to rescore.
        dim: vector dimension of a collection without an encoder (vectors only).
        calibration: int8 ranges (default: :meth:`Int8Calibration.default`), fixed at creation.
        create: False to fail when the collection does not exist.
        hnsw_m, ef_construction, ef_search: HNSW parameters.
        exact_below: below this many records, search is exact (brute force).
        lock_timeout: seconds a writer waits for another writer's lock.
        save_every, save_interval_s: (embedded store) save the ANN index after this many unsaved rows or seconds.
        pool_size: (PostgreSQL) connections in the collection's pool.
        late_interaction: store each record's token vectors with it, for late interaction (MaxSim) without
            encoding candidates per search: True (the default codec, ``DEFAULT_PRECISION``), a precision
            (float32 | float16 | int8 | int2 | binary) or ``{"precision": ..., "dims": N}`` (a PCA to N dims,
            fitted on the first write). Fixed at creation; on an existing collection True asks that it has
            them and a precision or mapping that it has that codec (None or False: no request). Embedded
            (folder) stores only: PostgreSQL refuses it.

    Raises:
        CollectionNotFoundError: ``create=False`` and there is no such collection.
        SettingsMismatchError: an existing collection records other settings (both values named).
        StoreError: the store cannot be created, reached or written, or has a newer format.
        InvalidInputError: a bad name or setting.
    """
    check_name(name)
    enc = _resolve_encoder(encoder)
    requested = Requested(
        metric=parse_enum(Metric, metric, "metric") if metric is not None else None,
        precision=parse_enum(Precision, precision, "precision") if precision is not None else None,
        dims=dims, dim=dim, calibration=calibration, hnsw_m=hnsw_m, ef_construction=ef_construction,
        late=late_interaction,
    )
    late_request(late_interaction)  # checked before anything is opened or created
    options = OpenOptions(ef_search=ef_search, exact_below=exact_below, lock_timeout=lock_timeout,
                          save_every=save_every, save_interval_s=save_interval_s, pool_size=pool_size)
    return open_in(store_for(store), name, enc, requested, create=create, options=options)


def create_like(settings: CollectionSettings, store: str | os.PathLike[str] | None) -> Collection:
    """Create an empty collection with ``settings`` (same model fingerprint, metric, precision, ...) and a new
    identity."""
    return store_for(store).create(settings.renamed(settings.name), None, OpenOptions())


def list_collections(store: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the collections in a store."""
    return store_for(store).names()


def delete_collection(name: str, *, store: str | os.PathLike[str] | None = None) -> None:
    """Remove a collection and its data. Handles open elsewhere raise CollectionNotFoundError on their next call."""
    store_for(store).delete(check_name(name))


def _copy_checked(src: Collection, dst: Collection, batch: int, show_progress: bool, what: str) -> int:
    from tqdm.auto import tqdm

    with tqdm(total=src.count(), desc=what, unit="rec", disable=not show_progress) as bar:
        for b in src.export_records(batch=batch):
            dst.import_records(b)
            bar.update(len(b.ids))
    return dst.count()


def migrate_collection(
    name: str,
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str] | None,
    *,
    target_name: str | None = None,
    batch: int = 2000,
    sample: int = 200,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Copy a collection to another store (e.g. SQLite -> PostgreSQL) without re-embedding.

    The copy gets the same settings (model fingerprint, prompts, metric, precision, dims, HNSW parameters),
    ids, texts, index texts, metadata and float32 vectors, in write order, and the same metadata indexes.
    Afterwards the counts are compared and ``sample`` records, spread over the collection, are read back from
    both sides and compared (vectors bit for bit). On any failure the half-made copy is deleted.

    Returns:
        ``{"name", "target_name", "count", "checked"}``.

    Raises:
        CollectionNotFoundError: the source is missing. CollectionExistsError: the target already exists.
        StoreError: the copy does not match.
    """
    dest = check_name(target_name or name)
    batch = positive_int(batch, "batch")
    target_store = store_for(target)
    with open_collection(name, store=source, create=False) as src:
        dst = target_store.create(src.settings.renamed(dest), None, OpenOptions())
        try:
            with dst:
                n_dst = _copy_checked(src, dst, batch, show_progress, f"copying {name}")
                for field in src.indexes():  # metadata indexes are the collection's too: the copy gets them
                    dst.create_index(field)
                n_src = src.count()
                if n_src != n_dst:
                    raise StoreError(f"copied {n_dst} records of {name!r}, the source has {n_src}")
                if src.settings.late is not None:
                    rows_src, rows_dst = src.info()["late_interaction"]["rows"], dst.info()["late_interaction"]["rows"]
                    if rows_src != rows_dst:
                        raise StoreError(f"copied token vectors of {rows_dst} records of {name!r}; the source "
                                         f"has {rows_src}")
                all_ids = [i for b in src.export_records(batch=10_000) for i in b.ids]
                step = max(1, len(all_ids) // max(1, sample))
                picked = all_ids[::step][:sample]
                a = src.get(picked, include_vectors=True)
                b = dst.get(picked, include_vectors=True)
                for ra, rb in zip(a, b, strict=False):
                    same = (ra["id"] == rb["id"] and ra["text"] == rb["text"] and ra["metadata"] == rb["metadata"]
                            and np.array_equal(ra["vector"], rb["vector"]))
                    if not same:
                        raise StoreError(f"record {ra['id']!r} differs after copying {name!r}")
                if len(a) != len(b):
                    raise StoreError(f"{len(a) - len(b)} sampled records of {name!r} are missing from the copy")
        except BaseException:
            target_store.delete(dest)
            raise
    return {"name": name, "target_name": dest, "count": n_dst, "checked": len(a)}


REEMBED_NOTE = "reembed_incomplete"


def reembed_collection(
    name: str,
    target: str,
    encoder: Encoder | str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    batch: int = 256,
    show_progress: bool = False,
    vector_cache: VectorCache | None = None,
) -> dict[str, Any]:
    """Embed a collection's records again with another encoder, into a new collection in the same store.

    Ids, texts, index texts (e.g. a chunk with its document's title in front) and metadata are copied; the target
    gets the source's metric and precision, and the encoder's model and dimension. A source that stores token
    vectors (late interaction) gives a target that stores the new model's, with the same codec (a PCA is fitted
    again); when the new encoder has no token vectors they are dropped, and the result says so under
    ``late_interaction``. Until every record is in,
    the target carries the note ``{"reembed_incomplete": name}`` (:meth:`Collection.notes`): running again with
    the same names resumes, embedding only the records the target lacks, and the note is removed at the end.

    Args:
        name: the source collection.
        target: the collection to fill (created when missing).
        encoder: an encoder, or an alias/folder to load.
        batch: records embedded and committed together.
        vector_cache: a :class:`~embedsmith.encoders.cache.VectorCache` the encoder reads and fills (texts
            it has seen with this encoder are not embedded again).

    Returns:
        ``{"name", "target_name", "count", "resumed", "resumed_after", "model", "dim"}``: ``resumed`` when an
        interrupted run was continued, ``resumed_after`` the number of records it had copied; from a source with
        token vectors, ``late_interaction``: 'recomputed', or why they were dropped.

    Raises:
        CollectionNotFoundError: no source collection.
        SettingsMismatchError: the target exists with another model, metric or precision.
        InvalidInputError: the target is the source, or a record has no text to embed (named; rerun after fixing
            it to resume).
    """
    from tqdm.auto import tqdm

    check_name(name)
    if check_name(target) == name:
        raise InvalidInputError(f"re-embedding needs a target other than the source, got {target!r} for both")
    batch = positive_int(batch, "batch")
    enc = _resolve_encoder(encoder)
    with using_cache(enc, vector_cache), open_collection(name, store=store, create=False) as src:
        s = src.settings
        late, late_note = s.late, None
        if late is not None:
            from ..errors import NoTokenVectorsError

            try:
                enc.token_vectors(["probe"], kind="document")  # type: ignore[union-attr]
            except (NoTokenVectorsError, AttributeError):
                late = None
                late_note = (f"dropped: {getattr(enc, 'name', enc)!r} gives no token vectors; late interaction on "
                             f"{target!r} needs source='on-the-fly' with another encoder")
        with open_collection(target, store=store, encoder=enc, metric=s.metric, precision=s.precision,
                             late_interaction=late) as dst:
            resuming = dst.notes().get(REEMBED_NOTE) == name
            if not resuming:
                dst.set_notes(**{REEMBED_NOTE: name})
            done = {i for b in dst.export_records(batch=10_000) for i in b.ids} if resuming else set()
            with tqdm(total=src.count(), desc=f"re-embedding {name} -> {target}", unit="doc",
                      disable=not show_progress) as bar:
                bar.update(len(done))
                for b in src.export_records(batch=batch):
                    todo = []
                    for rid, text, index_text, meta in zip(b.ids, b.texts, b.index_texts, b.metadata, strict=True):
                        if rid in done:
                            continue
                        if not text:
                            raise InvalidInputError(f"record {rid!r} of {name!r} has no text to re-embed")
                        rec: dict[str, Any] = {"id": rid, "text": text, "metadata": meta}
                        if index_text is not None:
                            rec["index_text"] = index_text
                        todo.append(rec)
                    if todo:
                        dst.upsert(todo)
                    bar.update(len(todo))
            dst.set_notes(**{REEMBED_NOTE: None})
            out: dict[str, Any] = {"name": name, "target_name": target, "count": dst.count(), "resumed": resuming,
                                   "resumed_after": len(done), "model": dst.settings.model, "dim": dst.dim}
            if s.late is not None:  # what became of the source's token vectors
                out["late_interaction"] = late_note or "recomputed"
            return out


def snapshot_collection(name: str, path: str | os.PathLike[str], *,
                        store: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write one portable file holding a collection: its settings, and every live record (id, text, index text,
    metadata, float32 vector) as of one moment, consistent while writers run.

    The file is a SQLite database in the embedded store's format, without the derived index files (they are
    rebuilt on restore). From SQLite it is made with SQLite's online backup; from PostgreSQL, through the
    same export migration uses, in one transaction. It is written to a temporary file and renamed, so an
    interrupted snapshot leaves no file at ``path``.

    Returns:
        ``{"name", "path", "count", "bytes"}``.
    """
    from .sqlite import SqliteCollection, write_snapshot

    target = Path(path).expanduser()
    if target.is_dir():
        raise StoreError(f"snapshot target {str(target)!r} is a folder; give a file name")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open_collection(name, store=store, create=False) as src:
            if isinstance(src, SqliteCollection):
                count = src.backup(tmp)
            else:
                count = write_snapshot(tmp, src.settings, src.export_records(batch=2000), src.indexes())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(f"cannot write snapshot {str(target)!r}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": name, "path": str(target), "count": count, "bytes": target.stat().st_size}


def restore_collection(path: str | os.PathLike[str], *, name: str | None = None,
                       store: str | os.PathLike[str] | None = None, replace: bool = False,
                       show_progress: bool = False) -> dict[str, Any]:
    """Restore a snapshot (see :func:`snapshot_collection`) into a store of either backend.

    The collection gets the snapshot's settings, a new identity, and its records in their order; the
    derived indexes are built, and the source's metadata indexes (:meth:`Collection.create_index`) recreated.
    With ``replace``, an existing collection of that name is replaced only once the
    restored copy is complete (it is restored under a temporary name, then swapped in).

    Raises:
        CollectionExistsError: the name is taken and ``replace`` is False.
        StoreCorruptError: the file is not a readable snapshot.
    """
    from .sqlite import read_snapshot

    snap = Path(path).expanduser()
    if not snap.is_file():
        raise StoreError(f"no snapshot file {str(snap)!r}")
    settings, count, batches, indexes = read_snapshot(snap)
    dest = check_name(name or settings.name)
    target = store_for(store)
    exists = target.exists(dest)
    if exists and not replace:
        raise CollectionExistsError(f"collection {dest!r} already exists in {target.location!r}; pass replace=True "
                                    "(--replace) to replace it")
    work = f"{dest[:48]}.restore-{uuid.uuid4().hex[:8]}" if exists else dest
    coll = target.create(settings.renamed(work), None, OpenOptions())
    try:
        with coll:
            from tqdm.auto import tqdm

            with tqdm(total=count, desc=f"restoring {dest}", unit="rec", disable=not show_progress) as bar:
                for b in batches:
                    coll.import_records(b)
                    bar.update(len(b.ids))
            restored = coll.count()
            if restored != count:
                raise StoreError(f"restored {restored} records of {count} from {str(snap)!r}")
            for field in indexes:  # the source's metadata indexes, built once the records are in
                coll.create_index(field)
    except BaseException:
        target.delete(work)
        raise
    if exists:
        target.delete(dest)
        target.rename(work, dest)
    return {"name": dest, "count": restored, "replaced": exists}


__all__ = ["REEMBED_NOTE", "create_like", "default_store", "delete_collection", "is_postgres", "list_collections",
           "migrate_collection", "open_collection", "reembed_collection", "restore_collection", "snapshot_collection",
           "store_for"]
