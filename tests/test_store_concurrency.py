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

