"""Several processes on one collection: concurrent writers and a reader, a collection deleted (and recreated)
under an open handle, and kill -9 during compaction and snapshots. Real processes (``sys.executable -c``),
vectors only (dim 32), both backends where the defect is not particular to the embedded store.

New names (errors, snapshot functions) are imported inside each test, so one that is missing fails only the
tests that need it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from embedsmith import IndexRebuildWarning, open_collection

# -- 1. two writers and a reader ---------------------------------------------------------------------------

WRITER = """
import sys, time, numpy as np
from embedsmith import open_collection
store, prefix, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
c = open_collection("k", store=store, dim=32, exact_below=0)
n = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    ids = [f"{prefix}-{n}-{i}" for i in range(3)]
    c.add_vectors(rng.normal(size=(3, 32)).astype(np.float32), ids, metadata=[{"w": prefix, "n": n}] * 3)
    print(" ".join(ids), flush=True)  # acknowledged: add_vectors returned
    n += 1
c.close()
"""

READER = """
import os, sys, numpy as np
from embedsmith import open_collection
store, stop = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(99)
c = open_collection("k", store=store, dim=32, exact_below=0)
loops = 0
while True:
    done = os.path.exists(stop)  # looked at before the last round, so that round sees every write
    c.count()
    c.search(rng.normal(size=32).astype(np.float32), k=10)
    loops += 1
    if done:
        break
c.close()  # saves the index it caught up: the next open loads it
print(loops, flush=True)
"""


def test_two_writers_and_a_reader_lose_nothing(store, tmp_path):
    """Catching up must not skip rows committed while it reads (today's SQLite code reads the rows, then the
    highest seq, in two statements: rows committed in between are never added to the index, and the reader
    saves that index on close). Afterwards every acknowledged record is counted and found, exactly and by
    HNSW."""
    open_collection("k", store=store, dim=32, exact_below=0).close()
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, store, str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, store, p, "3"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for p in ("a", "b")]
    acknowledged: list[str] = []
    try:
        for w in writers:
            out, err = w.communicate(timeout=60)
            assert w.returncode == 0, err
            acknowledged += out.split()
    finally:
        stop.write_text("")
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(out) > 0
    assert len(acknowledged) > 30 and len(set(acknowledged)) == len(acknowledged)

    with open_collection("k", store=store, exact_below=0) as c:  # a fresh open: loads what was saved
        assert c.count() == len(acknowledged)
        stored = {r["id"]: r["vector"] for batch in c.iter_records(batch=5000) for r in batch}
        assert set(stored) == set(acknowledged), "an acknowledged write is missing"
        sample = acknowledged if len(acknowledged) <= 300 else random.Random(1).sample(acknowledged, 300)
        missed_exact = [i for i in sample if c.search(stored[i], k=1, exact=True).ids != [i]]
        assert not missed_exact, f"{len(missed_exact)} of {len(sample)} records not found by exact search"
        missed_ann = [i for i in sample if i not in c.search(stored[i], k=10, ef=200).ids]
        assert not missed_ann, f"{len(missed_ann)} of {len(sample)} records not found by HNSW search"


def test_commit_between_reading_new_rows_and_the_stamp_loses_nothing(tmp_path, vecs):
    """Defect 1, deterministically: another writer commits while a reader catches up. The reader's stamp must
    not move past the row it did not read (once it did: the row was never added to the index, not even for
    exact search, and the reader saved that index on close)."""
    reader = open_collection("k", store=tmp_path, dim=32, exact_below=0)
    writer = open_collection("k", store=tmp_path, dim=32)
    reader.add_vectors(vecs[:5], [f"r{i}" for i in range(5)])
    writer.add_vectors(vecs[5:6], ["w0"])  # the reader has rows to catch up
    fired = []

    def commit_meanwhile(statement: str) -> None:
        # Fires as the reader starts reading the rows it lacks: another handle commits right then.
        if "SELECT seq, vector, id, deleted FROM records" in statement and not fired:
            fired.append(statement)
            writer.add_vectors(vecs[6:7], ["w1"])

    reader._conn.set_trace_callback(commit_meanwhile)
    try:
        first = reader.count()  # its snapshot began before w1 was committed
    finally:
        reader._conn.set_trace_callback(None)
    assert fired, "the catch-up read was not reached"
    assert first == 6 and reader.count() == 7
    for i, rid in ((5, "w0"), (6, "w1")):
        assert reader.search(vecs[i], k=1, exact=True).ids == [rid]
        assert reader.search(vecs[i], k=1).ids == [rid]
    reader.close()
    writer.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved index is consistent: no rebuild
        with open_collection("k", store=tmp_path, exact_below=0) as c:
            assert c.verify().ok
            assert c.search(vecs[6], k=1, exact=True).ids == ["w1"]


def test_first_bulk_insert_on_postgres_never_blocks_readers(pg_server):
    """Defect 8: the first large insert used to drop the HNSW index inside its transaction (ACCESS EXCLUSIVE
    on the table until the graph was rebuilt), so every reader waited. Now the graph is built with a SHARE
    lock: a reader with a 200 ms lock timeout is never refused while the insert runs."""
    import threading

    import psycopg

    from conftest import clustered, pg_schema

    data = clustered(10_000, dim=32, seed=5)
    with pg_schema(pg_server) as pg, open_collection("b", store=pg, dim=32) as c:
        table = c._t
        done = threading.Event()
        errors: list[BaseException] = []

        def load() -> None:
            try:
                c.add_vectors(data, [str(i) for i in range(len(data))])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        refused, exclusive, reads = 0, 0, 0
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '200ms'")
            thread = threading.Thread(target=load)
            thread.start()
            while not done.is_set():
                try:
                    conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    reads += 1
                except psycopg.errors.LockNotAvailable:
                    refused += 1
                exclusive += conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND mode = 'AccessExclusiveLock'",
                    (table,)).fetchone()[0]
                time.sleep(0.02)
            thread.join()
        assert not errors, errors
        assert reads > 0 and refused == 0 and exclusive == 0
        assert c.count() == len(data) and c.search(data[123], k=1).ids == ["123"]


# -- 2. a collection deleted (and recreated) under an open handle ------------------------------------------

REPLACER = """
import sys, numpy as np
from embedsmith.store import delete_collection, open_collection
store, recreate = sys.argv[1], sys.argv[2] == "1"
delete_collection("g", store=store)
if recreate:
    with open_collection("g", store=store, dim=32, exact_below=0) as c:
        c.add_vectors(np.full((1, 32), -1.0, np.float32), ["new"])
"""


def _replace_in_other_process(store: str, recreate: bool) -> None:
    proc = subprocess.run([sys.executable, "-c", REPLACER, store, "1" if recreate else "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("recreate", [True, False], ids=["recreated", "deleted"])
def test_handle_of_deleted_collection_raises_not_found(store, vecs, recreate):
    """Today the SQLite handle keeps writing into the unlinked database (acknowledged, then lost); the
    PostgreSQL one raises a plain StoreError."""
    from embedsmith.errors import CollectionNotFoundError, StoreError

    assert issubclass(CollectionNotFoundError, StoreError)
    old = open_collection("g", store=store, dim=32, exact_below=0)
    try:
        old.add_vectors(vecs[:50], [f"old{i}" for i in range(50)])
        assert old.count() == 50
        _replace_in_other_process(store, recreate)
        with pytest.raises(CollectionNotFoundError, match="'g'"):
            old.add_vectors(vecs[50:53], ["x1", "x2", "x3"])
        with pytest.raises(CollectionNotFoundError):
            old.count()
        with pytest.raises(CollectionNotFoundError):
            old.search(vecs[0], k=3)
        with pytest.raises(CollectionNotFoundError):
            old.get(["old1"])
        with pytest.raises(CollectionNotFoundError):
            old.delete(["old1"])
    finally:
        old.close()  # must not raise
    if recreate:
        with open_collection("g", store=store, create=False) as c:
            assert c.count() == 1 and [r["id"] for b in c.iter_records() for r in b] == ["new"]
    else:
        with pytest.raises(CollectionNotFoundError):
            open_collection("g", store=store, create=False)


def test_closing_handle_of_replaced_collection_leaves_new_one_alone(store, vecs):
    """The old handle holds 50 unsaved index entries. Today its close() saves them as the index of the new
    collection's folder (no warning on the next open, and search returns the new record with the old vectors'
    scores or misses it)."""
    old = open_collection("g", store=store, dim=32, exact_below=0)
    old.add_vectors(vecs[:50], [f"old{i}" for i in range(50)])
    _replace_in_other_process(store, recreate=True)
    try:
        old.close()
    except Exception as exc:
        pytest.fail(f"closing the handle of a replaced collection raised {type(exc).__name__}: {exc}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuildWarning)
        c = open_collection("g", store=store, create=False, exact_below=0)
    with c:
        assert c.count() == 1
        assert c.info()["index_vectors"] == 1
        q = np.full(32, -1.0, np.float32)
        hits = c.search(q, k=5)
        assert hits.ids == ["new"] and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
        hits = c.search(vecs[3], k=5)
        assert hits.ids == ["new"]
        assert hits.scores[0] == pytest.approx(float(vecs[3] @ (q / np.linalg.norm(q))), abs=1e-5)


# -- 8. kill -9 during compaction and snapshots (embedded store) -------------------------------------------

COMPACTOR = """
import sys
from embedsmith import open_collection
c = open_collection("kc", store=sys.argv[1])
print("START", flush=True)
while True:
    c.compact()
    print("compacted", flush=True)
"""


def _start_and_kill(args: list[str], delay: float) -> list[str]:
    """Run ``args``, wait for its START line, kill -9 it ``delay`` seconds later; return its lines."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    if first.strip() != "START":
        proc.kill()
        proc.wait()
        pytest.fail(f"child did not start: {first!r} {proc.stderr.read()[-2000:]}")
    time.sleep(delay)
    proc.kill()
    lines = proc.stdout.read().split("\n")
    proc.wait()
    return [ln for ln in lines if ln]


def _check_all_live(folder: Path, live: dict[str, np.ndarray], *, every: int = 1) -> None:
    """The collection holds exactly ``live`` (vectors bit for bit); every ``every``-th record is found by exact
    search."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        c = open_collection("kc", store=folder)
    with c:
        assert c.count() == len(live)
        got = {r["id"]: r["vector"] for b in c.iter_records(batch=5000) for r in b}
        assert set(got) == set(live), (f"lost {len(set(live) - set(got))}, resurrected "
                                       f"{len(set(got) - set(live))}")
        for i, v in got.items():
            assert np.array_equal(v, live[i]), f"record {i!r} changed"
        sample = list(got.items())[::every] if every else []
        missed = [i for i, v in sample if c.search(v, k=1, exact=True).ids != [i]]
        assert not missed, f"{len(missed)} live records not found by exact search, e.g. {missed[:3]}"


def _fill(folder: Path, n: int, *, texts: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    v = rng.normal(size=(n, 32)).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    with open_collection("kc", store=folder, dim=32) as c:
        c.add_vectors(v, ids, texts=[f"record {i} " + "lorem ipsum " * 40 for i in range(n)] if texts else None,
                      metadata=[{"i": i, "tag": f"t{i % 7}"} for i in range(n)])
        return {r["id"]: r["vector"] for b in c.iter_records(batch=5000) for r in b}


def test_kill_9_during_compact_loses_nothing(tmp_path):
    """Each round deletes a few records (so there is something to drop) and kills a process that compacts in a
    loop, at a random moment (deleting, VACUUM, checkpoint, rebuilding or saving the index)."""
    live = _fill(tmp_path, 3000)
    rng = random.Random(5)
    for round_ in range(4):
        with open_collection("kc", store=tmp_path) as c:
            gone = [f"r{i}" for i in range(round_ * 40, round_ * 40 + 40)]
            assert c.delete(gone) == 40
            for i in gone:
                live.pop(i)
        _start_and_kill([sys.executable, "-c", COMPACTOR, str(tmp_path)], rng.uniform(0.02, 0.6))
    _check_all_live(tmp_path, live)


SNAPSHOTTER = """
import sys
from embedsmith.store import snapshot_collection
print("START", flush=True)
snapshot_collection("kc", sys.argv[2], store=sys.argv[1])
print("DONE", flush=True)
"""


def test_kill_9_during_snapshot_leaves_no_partial_file(tmp_path):
    """The snapshot is written under another name and renamed at the end: after a kill the target path holds
    nothing or a complete snapshot, and the store is untouched."""
    from embedsmith.store import restore_collection, snapshot_collection

    store = tmp_path / "store"
    live = _fill(store, 6000, texts=True)
    started = time.monotonic()
    snapshot_collection("kc", tmp_path / "first.embedsmith", store=store)  # how long one takes, unkilled
    took = max(time.monotonic() - started, 0.05)
    rng = random.Random(8)
    for round_ in range(4):
        target = tmp_path / f"snap-{round_}.embedsmith"
        lines = _start_and_kill([sys.executable, "-c", SNAPSHOTTER, str(store), str(target)],
                                rng.uniform(0.0, took))
        if "DONE" in lines:  # finished before the kill: the file is complete
            info = restore_collection(target, name=f"back{round_}", store=tmp_path / "restored")
            assert isinstance(info, dict)
            with open_collection(f"back{round_}", store=tmp_path / "restored", create=False) as c:
                assert c.count() == len(live)
        else:
            assert not target.exists(), f"a half-written snapshot was left at {target}"
        _check_all_live(store, live, every=0 if round_ < 3 else 10)



# -- kill -9 during ingestion and re-embedding (a real model) ------------------------------------------------

INDEXER = """
import sys
from embedsmith import load_encoder, open_collection
from embedsmith.ingest import index_paths
c = open_collection("kb", store=sys.argv[1], encoder=load_encoder("minilm", backend="onnx"))
index_paths(c, [sys.argv[2]], max_tokens=128, batch_chunks=12)
c.close()
"""


def _chunks_by_source(c) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[int]] = {}
    for batch in c.iter_records(batch=1000):
        for r in batch:
            out.setdefault(r["metadata"]["source"], []).append(r["metadata"]["chunk"])
    return out


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:  # type: ignore[type-arg,no-untyped-def]
    """Poll until ``ready()``, then SIGKILL the process; False when it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.05)
    proc.wait()
    return False


@pytest.mark.slow
def test_kill_9_during_index_and_reembed_then_rerun_loses_nothing(tmp_path):
    """kill -9 in the middle of ``index`` (after its first commit) and of ``reembed`` (once the target exists):
    the store stays sound, no file is half-indexed, the target is marked incomplete, and reruns finish the job
    with every record present once."""
    import json

    from conftest import CRAN

    docs = tmp_path / "docs"
    docs.mkdir()
    for line in (CRAN / "corpus.jsonl").read_text().splitlines()[:60]:
        row = json.loads(line)
        (docs / f"{row['_id']}.txt").write_text(f"{row['title']}\n\n{row['text']}", encoding="utf-8")
    store = tmp_path / "store"
    store.mkdir()

    def committed() -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", IndexRebuildWarning)
                with open_collection("kb", store=store, create=False) as c:
                    return c.count() > 0
        except Exception:  # not created yet
            return False

    proc = subprocess.Popen([sys.executable, "-c", INDEXER, str(store), str(docs)], stderr=subprocess.DEVNULL)
    killed = _kill_when(proc, committed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        with open_collection("kb", store=store) as c:
            assert c.verify().ok
            partial = _chunks_by_source(c)
    for chunks in partial.values():  # a file's chunks commit together: all of them or none
        assert sorted(chunks) == list(range(len(chunks)))
    subprocess.run([sys.executable, "-c", INDEXER, str(store), str(docs)], check=True, stderr=subprocess.DEVNULL)
    with open_collection("kb", store=store) as c:
        full = _chunks_by_source(c)
        total = c.count()
    assert len(full) == 60 and all(sorted(v) == list(range(len(v))) for v in full.values())
    assert sum(map(len, full.values())) == total
    assert all(full[s] and sorted(full[s]) == sorted(v) for s, v in partial.items())
    assert killed or len(partial) == 60

    cli = [sys.executable, "-m", "embedsmith.cli", "reembed", "-c", "kb", "--to", "kb2", "--model", "minilm",
           "--backend", "onnx", "--store", str(store)]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if _kill_when(proc, lambda: (store / "kb2" / "collection.sqlite").is_file()):
        with open_collection("kb2", store=store, create=False) as c:
            # The target is created, then marked, then filled: killed between the first two commits it is
            # empty and unmarked (the rerun fills it all the same); after them, marked and partial.
            assert c.notes().get("reembed_incomplete") == "kb" or c.count() == 0
            assert c.verify().ok and c.count() < total
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open_collection("kb2", store=store, create=False) as c, open_collection("kb", store=store) as src:
        assert c.count() == total and c.notes() == {}
        assert {i for b in c.export_records() for i in b.ids} == {i for b in src.export_records() for i in b.ids}
