"""Snapshots: one portable file per collection, consistent while writers run, restored into either backend.

``snapshot_collection`` and ``restore_collection`` (and the new errors) are imported inside each test, so
that while they are missing each test fails on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedsmith import list_collections, open_collection

BATCH = 20

WRITER = """
import os, sys, numpy as np
from embedsmith import open_collection
store, stop, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(3)
c = open_collection("s", store=store, dim=32)
b = 0
while not os.path.exists(stop) and b < 5000:
    ids = [f"w{b}-{i}" for i in range(size)]
    c.add_vectors(rng.normal(size=(size, 32)).astype(np.float32), ids, texts=[f"text of {x}" for x in ids],
                  metadata=[{"batch": b, "i": i, "payload": "p" * 50} for i in range(size)])
    print(" ".join(ids), flush=True)
    b += 1
c.close()
"""


def records(c: Any) -> list[dict[str, Any]]:
    return [r for batch in c.iter_records(batch=1000) for r in batch]


def assert_same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["text"] == rb["text"] and ra["metadata"] == rb["metadata"], ra["id"]
        assert ra["vector"].dtype == rb["vector"].dtype == np.float32
        assert ra["vector"].tobytes() == rb["vector"].tobytes(), f"vector of {ra['id']!r} differs"


def test_snapshot_while_a_writer_runs_is_a_consistent_prefix(store, tmp_path):
    """The writer commits batches of 20 (metadata batch/i/payload) in one process; the snapshot is taken in
    this one meanwhile. The snapshot holds whole batches, in write order, a prefix of what was written, and
    every batch acknowledged before it started."""
    from embedsmith.store import restore_collection, snapshot_collection

    rng = np.random.default_rng(0)
    pre = [f"pre{i}" for i in range(3000)]
    with open_collection("s", store=store, dim=32) as c:
        c.add_vectors(rng.normal(size=(3000, 32)).astype(np.float32), pre, texts=[f"text of {x}" for x in pre],
                      metadata=[{"batch": -1, "i": i, "payload": "p" * 50} for i in range(3000)])
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store, str(stop), str(BATCH)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    before: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(before) < 5 * BATCH and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            before += line.split()
        assert len(before) >= 5 * BATCH, writer.stderr.read() if writer.poll() is not None else "writer too slow"
        info = snapshot_collection("s", tmp_path / "s.snapshot", store=store)
        time.sleep(0.3)  # the writer keeps going after the snapshot
    finally:
        stop.write_text("")
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    written = pre + before + out.split()
    assert isinstance(info, dict)

    restore_collection(tmp_path / "s.snapshot", name="back", store=tmp_path / "restored")
    with open_collection("back", store=tmp_path / "restored", create=False) as back, \
            open_collection("s", store=store, create=False) as src:
        got = records(back)
        n = len(got)
        assert back.count() == n
        if "count" in info:
            assert info["count"] == n
        assert [r["id"] for r in got] == written[:n], "the snapshot is not a prefix of what was written"
        assert n >= len(pre) + len(before), "a batch acknowledged before the snapshot is missing"
        assert (n - len(pre)) % BATCH == 0, "the snapshot holds part of a batch"
        for r in got:
            assert r["text"] == f"text of {r['id']}"
            assert set(r["metadata"]) == {"batch", "i", "payload"} and r["metadata"]["payload"] == "p" * 50
        assert_same_records(got, src.get([r["id"] for r in got], include_vectors=True))
        assert len(records(src)) == len(written)


def _fill_source(store: Any) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    n = 500
    with open_collection("src", store=store, dim=32, metric="dot", precision="float16", dims=16, hnsw_m=16,
                         ef_construction=64) as c:
        c.add_vectors(rng.normal(size=(n, 32)).astype(np.float32), [f"r{i}" for i in range(n)],
                      texts=[None if i % 10 == 0 else f"texte n°{i} — ünïcödé" for i in range(n)],
                      metadata=[{"i": i, "tags": ["x", i % 3], "nested": {"ok": i % 2 == 0}, "f": i / 7}
                                for i in range(n)])
        c.delete([f"r{i}" for i in range(0, n, 17)])
        c.upsert_vectors(rng.normal(size=(1, 32)).astype(np.float32), ["r5"], texts=["replaced"],
                         metadata=[{"i": 5, "replaced": True}])
        c.create_index("i")
        return records(c)


@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
def test_restore_into_the_other_backend_is_bit_for_bit(pg_server, tmp_path, direction):
    from conftest import pg_schema
    from embedsmith.store import restore_collection, snapshot_collection

    with pg_schema(pg_server) as pg:
        source, target = (str(tmp_path / "a"), pg) if direction == "sqlite-to-postgres" else (pg, str(tmp_path / "a"))
        want = _fill_source(source)
        with open_collection("src", store=source, create=False) as c:
            settings = c.settings
        snap = tmp_path / "src.snapshot"
        snapshot_collection("src", snap, store=source)
        assert snap.is_file() and snap.stat().st_size > 0
        restore_collection(snap, name="copy", store=target)
        restore_collection(snap, store=tmp_path / "third")  # the name recorded in the snapshot
        assert list_collections(tmp_path / "third") == ["src"]
        for store, name in ((target, "copy"), (tmp_path / "third", "src")):
            with open_collection(name, store=store, create=False) as c:
                s = c.settings
                assert (s.metric, s.precision, s.dim, s.dims, s.hnsw_m, s.ef_construction, s.model) == (
                    settings.metric, settings.precision, settings.dim, settings.dims, settings.hnsw_m,
                    settings.ef_construction, settings.model)
                got = records(c)
                assert_same_records(got, want)
                assert c.count() == len(want)
                for r in got[::50]:
                    assert c.search(r["vector"], k=1, exact=True).ids == [r["id"]]
                assert c.search(want[3]["vector"], k=3, where={"nested": {"$exists": True}}).ids
                assert c.indexes() == ["i"]  # the source's metadata indexes are recreated


def test_restore_onto_an_existing_name_needs_replace(store, tmp_path):
    from embedsmith.errors import CollectionExistsError, StoreError
    from embedsmith.store import restore_collection, snapshot_collection

    assert issubclass(CollectionExistsError, StoreError)
    rng = np.random.default_rng(1)
    v = rng.normal(size=(15, 32)).astype(np.float32)
    with open_collection("a", store=store, dim=32) as c:
        c.add_vectors(v[:10], [f"r{i}" for i in range(10)])
        snapshot_collection("a", tmp_path / "a.snapshot", store=store)
        at_snapshot = records(c)
        c.add_vectors(v[10:], [f"r{i}" for i in range(10, 15)])
    with pytest.raises(CollectionExistsError, match="'a'"):
        restore_collection(tmp_path / "a.snapshot", store=store)
    with pytest.raises(CollectionExistsError, match="'a'"):
        restore_collection(tmp_path / "a.snapshot", name="a", store=store)
    with open_collection("a", store=store, create=False) as c:
        assert c.count() == 15  # untouched
    restore_collection(tmp_path / "a.snapshot", name="b", store=store)
    restore_collection(tmp_path / "a.snapshot", store=store, replace=True)
    assert list_collections(store) == ["a", "b"]
    for name in ("a", "b"):
        with open_collection(name, store=store, create=False) as c:
            assert c.count() == 10
            assert_same_records(records(c), at_snapshot)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedsmith.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def _cli_ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = cli(*args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedsmith: error: "), proc.stderr
    return lines[0]


def _cli_roundtrip(tmp_path: Path, target: str) -> None:
    a = tmp_path / "a"
    rng = np.random.default_rng(2)
    with open_collection("kb", store=a, dim=32) as c:
        c.add_vectors(rng.normal(size=(300, 32)).astype(np.float32), [f"r{i}" for i in range(300)],
                      texts=[f"text {i}" for i in range(300)], metadata=[{"i": i} for i in range(300)])
        want = records(c)
    snap = tmp_path / "kb.snapshot"
    _cli_ok("snapshot", "-c", "kb", "--store", str(a), "--to", str(snap))
    assert snap.is_file()
    _cli_ok("restore", str(snap), "-c", "kb2", "--store", target)
    proc = _cli_ok("verify", "-c", "kb2", "--store", target, "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["problems"] == [], report
    _cli_ok("verify", "-c", "kb2", "--store", target)
    with open_collection("kb2", store=target, create=False) as c:
        assert_same_records(records(c), want)
    again = cli("restore", str(snap), "-c", "kb2", "--store", target)
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert "kb2" in _one_error_line(again)
    with open_collection("kb2", store=target, create=False) as c:
        c.delete(["r1"])
    _cli_ok("restore", str(snap), "-c", "kb2", "--store", target, "--replace")
    with open_collection("kb2", store=target, create=False) as c:
        assert c.count() == 300
    missing = cli("verify", "-c", "nope", "--store", target)
    assert missing.returncode == 2, (missing.stdout, missing.stderr)
    assert "Traceback" not in missing.stderr and "nope" in missing.stderr, missing.stderr


def test_cli_snapshot_restore_verify_roundtrip(tmp_path):
    _cli_roundtrip(tmp_path, str(tmp_path / "b"))


def test_cli_restore_into_postgres(tmp_path, pg_server):
    from conftest import pg_schema

    with pg_schema(pg_server) as pg:
        _cli_roundtrip(tmp_path, pg)
