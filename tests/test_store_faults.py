"""Store faults users hit: non-ASCII metadata keys, a full disk, damaged files, a read-only store and bad inputs.

Vectors only (dim 32); real processes (``sys.executable -c``) where a limit or a privilege must apply to the
process that writes. New names (errors, ``verify``/``repair``) are imported or looked up inside each test, so
one that is missing fails only the tests that need it.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedsmith import IndexRebuildWarning, InvalidInputError, list_collections, open_collection
from embedsmith.errors import StoreError
from embedsmith.store import is_postgres


def make(store: Any, name: str = "c", **kw: Any):  # type: ignore[no-untyped-def]
    kw.setdefault("dim", 32)
    return open_collection(name, store=store, **kw)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedsmith.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedsmith: error: "), proc.stderr


# -- 3. non-ASCII metadata keys ----------------------------------------------------------------------------

def _unicode_records(n: int = 30) -> list[dict[str, Any]]:
    return [{"café": i % 2, "日本": ["x", "y", "z"][i % 3], "n": i} for i in range(n)]


def test_non_ascii_metadata_keys_in_filters_distinct_and_group_by(store, vecs):
    """Today SQLite's json_extract gets the path $."caf\\u00e9" (json.dumps escapes it) and matches nothing."""
    meta = _unicode_records()
    ids = [f"u{i}" for i in range(30)]
    with make(store) as c:
        c.add_vectors(vecs[:30], ids, metadata=meta)
        assert [r["id"] for r in c.get(where={"café": 1})] == [f"u{i}" for i in range(1, 30, 2)]
        assert [r["id"] for r in c.get(where={"café": {"$gte": 1}, "日本": {"$ne": "x"}})] == \
            [f"u{i}" for i in range(30) if i % 2 == 1 and i % 3 != 0]
        assert len(c.get(where={"日本": {"$in": ["y", "z"]}})) == 20
        assert len(c.get(where={"日本": {"$exists": True}})) == 30
        hits = c.search(vecs[0], k=30, where={"日本": "x"})
        assert sorted(hits.ids) == sorted(f"u{i}" for i in range(0, 30, 3))
        assert all(m["日本"] == "x" for m in hits.metadata)
        assert c.distinct("café") == {(0,), (1,)}
        assert c.distinct("日本", "café") == {(a, b) for a in "xyz" for b in (0, 1)}
        grouped = c.search(vecs[0], k=10, group_by="日本")
        assert len(grouped) == 3 and sorted(m["日本"] for m in grouped.metadata) == ["x", "y", "z"]
        assert c.delete(where={"café": 1}) == 15
        assert c.count() == 15 and c.get(where={"café": 1}) == []


def test_metadata_key_with_double_quote_is_refused(store, vecs):
    """A top-level key with '"' cannot be addressed by SQLite JSON paths: refused on both backends, naming it."""
    with make(store) as c:
        c.add_vectors(vecs[:2], ["a", "b"])
        for write in (c.add_vectors, c.upsert_vectors):
            with pytest.raises(InvalidInputError) as exc:
                write(vecs[2:4], ["q1", "q2"], metadata=[{"ok": 1}, {'say "hi"': 1}])
            assert 'say "hi"' in str(exc.value) or repr('say "hi"') in str(exc.value), str(exc.value)
        assert c.count() == 2 and c.get(["q1", "q2"]) == []
        c.add_vectors(vecs[4:5], ["nested"], metadata=[{"outer": {'in"ner': 1}}])  # only top-level keys are fields
        assert c.get(["nested"])[0]["metadata"] == {"outer": {'in"ner': 1}}


def test_cli_delete_with_non_ascii_key(tmp_path, vecs):
    with make(tmp_path, "cli") as c:
        c.add_vectors(vecs[:30], [f"u{i}" for i in range(30)], metadata=_unicode_records())
    proc = cli("delete", "-c", "cli", "--store", str(tmp_path), "--where", '{"café": 1}')
    assert proc.returncode == 0, proc.stderr
    assert "deleted 15 record(s)" in proc.stdout, proc.stdout
    with open_collection("cli", store=tmp_path, create=False) as c:
        assert c.count() == 15


# -- 4. disk full (embedded store) -------------------------------------------------------------------------
# RLIMIT_FSIZE caps the size of every file the child writes (SIGXFSZ ignored, so write() fails with EFBIG
# instead of killing it): the database, its WAL and the index file all hit the same cap. Writes commit to
# the WAL (about 15 KB per 3-record call here) and the index is written in full to a temp file when saved,
# so a cap between the database's size and the index file's size lets the rows commit and the save fail.

FULL_PRELUDE = """
import json, os, resource, signal, sys, warnings
import numpy as np
from embedsmith import open_collection
from embedsmith.store.ann import _faiss
_faiss()  # loaded before the cap

def names(e):
    return [k.__name__ for k in type(e).__mro__]

def cap(limit):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def emit(**kw):
    print(json.dumps(kw), flush=True)
"""

FULL_ROWS = FULL_PRELUDE + """
store = sys.argv[1]
c = open_collection("full", store=store, dim=32, save_every=10**9, save_interval_s=10**9)
folder = os.path.join(store, "full")
biggest = max(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
cap(biggest + 256 * 1024)  # the WAL reaches it after a few dozen commits
rng = np.random.default_rng(1)
for b in range(5000):
    ids = [f"b{b}-{i}" for i in range(3)]
    try:
        c.add_vectors(rng.normal(size=(3, 32)).astype(np.float32), ids, metadata=[{"b": b, "pad": "x" * 200}] * 3)
    except BaseException as e:
        emit(error=names(e), message=str(e))
        break
    emit(ack=ids)
try:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        c.close()
    emit(close="ok")
except BaseException as e:
    emit(close=names(e), message=str(e))
"""


def _events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _check_acknowledged(store: Path, acked: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        c = open_collection("full", store=store)
    with c:
        got = c.get(acked, include_vectors=True)
        assert [r["id"] for r in got] == acked, "an acknowledged record was lost"
        missed = [r["id"] for r in got if c.search(r["vector"], k=1, exact=True).ids != [r["id"]]]
        assert not missed, f"{len(missed)} acknowledged records not found by exact search"


def test_disk_full_while_writing_is_a_store_error(tmp_path):
    """Today: sqlite3.OperationalError 'cannot rollback - no transaction is active' (the failed COMMIT already
    rolled back, and the ROLLBACK after it raises), with 'disk I/O error' as its context."""
    make(tmp_path, "full").close()
    events = _events(subprocess.run([sys.executable, "-c", FULL_ROWS, str(tmp_path)], capture_output=True,
                                    text=True, timeout=120))
    acked = [i for e in events if "ack" in e for i in e["ack"]]
    errors = [e for e in events if "error" in e]
    assert acked and errors, events[-3:]
    err = errors[0]
    assert "StoreError" in err["error"], err
    assert "OperationalError" not in err["error"] and "DatabaseError" not in err["error"], err
    assert "cannot rollback" not in err["message"], err
    close = next(e for e in events if "close" in e)
    assert close["close"] == "ok" or "StoreError" in close["close"], close
    _check_acknowledged(tmp_path, acked)
    with open_collection("full", store=tmp_path) as c:
        assert c.count() == len(acked)  # the failed call wrote nothing


FULL_INDEX = FULL_PRELUDE + """
store = sys.argv[1]
c = open_collection("full", store=store, save_every=50, exact_below=0)
folder = os.path.join(store, "full")
db = os.path.getsize(os.path.join(folder, "collection.sqlite"))
index = os.path.getsize(os.path.join(folder, json.load(open(os.path.join(folder, "ann.json")))["file"]))
limit = (db + index) // 2
emit(db=db, index=index, limit=limit)
cap(limit)
rng = np.random.default_rng(2)
first_warned = None
for b in range(60):
    ids = [f"n{b}-{i}" for i in range(3)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            c.add_vectors(rng.normal(size=(3, 32)).astype(np.float32), ids)
        except BaseException as e:
            emit(error=names(e), message=str(e), ids=ids)
            continue
    emit(ack=ids, warnings=[f"{w.category.__name__}: {w.message}" for w in seen])
    if seen and first_warned is None:
        first_warned = ids
    if first_warned is not None and b >= 20:
        break
if first_warned is not None:
    try:
        c.add_vectors(rng.normal(size=(3, 32)).astype(np.float32), first_warned)
        emit(retry="accepted")
    except BaseException as e:
        emit(retry=names(e), message=str(e))
try:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        c.close()
    emit(close="ok")
except BaseException as e:
    emit(close=names(e), message=str(e))
"""


def test_disk_full_while_saving_the_index_warns_and_keeps_the_rows(tmp_path):
    """4,000 records: the database is about 0.75 MB, the index file about 2.7 MB; the cap sits between.
    With save_every=50 the 17th call commits its rows, then its index save fails. Today that call raises
    faiss's RuntimeError ('write error ... File too large') although its rows were committed."""
    rng = np.random.default_rng(5)
    with make(tmp_path, "full", exact_below=0, hnsw_m=64) as c:  # m=64: the graph makes the index file big
        c.add_vectors(rng.normal(size=(4000, 32)).astype(np.float32), [f"p{i}" for i in range(4000)],
                      metadata=[{"p": i} for i in range(4000)])
    events = _events(subprocess.run([sys.executable, "-c", FULL_INDEX, str(tmp_path)], capture_output=True,
                                    text=True, timeout=120))
    sizes = events[0]
    assert sizes["db"] + 300_000 < sizes["limit"] < sizes["index"], sizes  # the cap leaves room for the WAL
    errors = [e for e in events if "error" in e]
    assert not errors, f"a write whose rows committed raised: {errors[0]}"
    warned = [e for e in events if e.get("warnings")]
    assert warned, "no call warned that the index could not be saved"
    retry = next(e for e in events if "retry" in e)
    assert "InvalidInputError" in retry["retry"] and "already" in retry["message"], retry
    close = next(e for e in events if "close" in e)
    assert close["close"] == "ok", close
    acked = [i for e in events if "ack" in e for i in e["ack"]]
    _check_acknowledged(tmp_path, acked)
    with open_collection("full", store=tmp_path) as c:
        assert c.count() == 4000 + len(acked)


# -- 5. damaged files (embedded store) ---------------------------------------------------------------------

def _verify_report(c: Any) -> Any:
    report = c.verify()
    assert isinstance(report.ok, bool) and isinstance(report.problems, list)
    d = report.to_dict()
    assert d["ok"] is report.ok and list(d["problems"]) == list(report.problems)
    return report


def test_damaged_index_file_is_reported_and_repaired(tmp_path, vecs):
    """One stored float of the saved index is overwritten with 1e35 (same size, faiss still loads it).
    Today the open accepts the file and search returns that record with a cosine score of about 1e34."""
    import faiss

    with make(tmp_path, "d", exact_below=0) as c:
        c.add_vectors(vecs[:2000], [str(i) for i in range(2000)])
        target = c.get(["700"], include_vectors=True)[0]["vector"]
    folder = tmp_path / "d"
    index_file = folder / json.loads((folder / "ann.json").read_text())["file"]
    raw = bytearray(index_file.read_bytes())
    at = raw.find(target.tobytes())
    assert at > 0 and raw.find(target.tobytes(), at + 1) == -1, "the stored vector was not found once in the index"
    j = int(np.argmax(np.abs(target)))
    raw[at + 4 * j : at + 4 * j + 4] = struct.pack("<f", float(np.copysign(1e35, target[j])))
    index_file.write_bytes(bytes(raw))
    assert faiss.read_index(str(index_file)).ntotal == 2000  # still loads: only a checksum can tell

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        c = open_collection("d", store=tmp_path, exact_below=0)
    try:
        report = _verify_report(c)
        assert report.ok is False
        assert any("checksum" in p.lower() for p in report.problems), report.problems
        proc = cli("verify", "-c", "d", "--store", str(tmp_path))
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "checksum" in proc.stdout.lower(), proc.stdout
        for exact in (False, True):
            hits = c.search(target, k=5, exact=exact)
            assert max(hits.scores) <= 1.01, (exact, hits.ids, hits.scores)
        stats = c.repair()
        assert isinstance(stats, dict)
        assert _verify_report(c).ok is True
        hits = c.search(target, k=1)
        assert hits.ids == ["700"] and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
    finally:
        c.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuildWarning)  # repair saved a sound file
        with open_collection("d", store=tmp_path, exact_below=0) as c:
            assert _verify_report(c).ok is True
            assert c.search(target, k=1).ids == ["700"]
    assert cli("verify", "-c", "d", "--store", str(tmp_path)).returncode == 0


def _corrupt_records_page(tmp_path: Path, vecs: np.ndarray) -> np.ndarray:
    with make(tmp_path, "d") as c:
        c.add_vectors(vecs[:2000], [f"r{i}" for i in range(2000)], texts=[f"alpha record {i}" for i in range(2000)],
                      metadata=[{"i": i} for i in range(2000)])
        target = c.get(["r1000"], include_vectors=True)[0]["vector"]
    db = tmp_path / "d" / "collection.sqlite"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    raw = bytearray(db.read_bytes())
    page_size = struct.unpack(">H", raw[16:18])[0]
    at = raw.find(target.tobytes())
    assert at > page_size, "record r1000 not found in the database file"
    page = at - at % page_size  # a leaf page of the records table: its header and cell pointers become garbage
    raw[page : page + 64] = b"\xa5" * 64
    db.write_bytes(bytes(raw))
    return target


def test_corrupt_database_page_is_a_store_corrupt_error(tmp_path, vecs):
    """Today: sqlite3.DatabaseError('database disk image is malformed') escapes from search."""
    from embedsmith.errors import StoreCorruptError

    assert issubclass(StoreCorruptError, StoreError)
    target = _corrupt_records_page(tmp_path, vecs)
    with pytest.raises(StoreCorruptError):
        c = open_collection("d", store=tmp_path)
        try:
            c.search(target, k=5, exact=True)
            c.get(["r1000"])
        finally:
            try:
                c.close()
            except StoreError:
                pass


def test_corrupt_database_page_on_the_command_line(tmp_path, vecs):
    """Today `embedsmith search` prints a sqlite3.DatabaseError traceback (and `verify` does not exist)."""
    _corrupt_records_page(tmp_path, vecs)
    # r1000's row lies on the damaged page: any plan that returns it reads that page
    proc = cli("search", "record 1000", "-c", "d", "--store", str(tmp_path), "--mode", "bm25", "-k", "3",
               "--where", '{"i": 1000}')
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert_one_error_line(proc)
    proc = cli("verify", "-c", "d", "--store", str(tmp_path))
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    if proc.returncode == 1:  # problems found: one per line
        assert proc.stdout.strip() and all(line.strip() for line in proc.stdout.strip().splitlines())
    else:
        assert_one_error_line(proc)


# -- 6. read-only store (embedded) -------------------------------------------------------------------------
# Tests run as root, which writes through any mode bits. The child keeps uid 0 (the interpreter lives under
# /root, which user 65534 cannot reach) but drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER and
# CAP_FSETID from its capability bounding set before exec: after exec it holds none of them, so the mode
# bits of the root-owned store (files 0444, folders 0555) apply to it like to any owner.

READ_ONLY = """
import json, os, sys
import numpy as np
from embedsmith import list_collections, open_collection
store = sys.argv[1]
v = np.array(json.loads(sys.argv[2]), np.float32)
out = {}

def step(name, fn):
    try:
        out[name] = {"ok": fn()}
    except BaseException as e:
        out[name] = {"error": [k.__name__ for k in type(e).__mro__], "message": str(e)}

try:
    open(os.path.join(store, "ro", "probe"), "w").close()
    out["enforced"] = False
except OSError:
    out["enforced"] = True
step("list", lambda: list_collections(store))
c = None
def opened():
    global c
    c = open_collection("ro", store=store, create=False, exact_below=0)
    return True
step("open", opened)
if c is not None:
    step("count", c.count)
    step("get", lambda: c.get(["r5"])[0]["metadata"])
    step("search", lambda: c.search(v[5], k=1).ids)
    step("search_exact", lambda: c.search(v[6], k=1, exact=True).ids)
    step("search_where", lambda: c.search(v[7], k=1, where={"i": 7}).ids)
    step("bm25", lambda: c.search("record", k=3, mode="bm25").ids)
    step("add", lambda: c.add_vectors(v[:1], ["new"]))
    step("upsert", lambda: c.upsert_vectors(v[:1], ["r1"]))
    step("delete", lambda: c.delete(["r2"]))
    step("compact", lambda: c.compact())
    step("close", lambda: c.close() or True)
step("create", lambda: open_collection("other", store=store, dim=32).close())
print(json.dumps(out), flush=True)
"""


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3, 4):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _set_modes(root: Path, *, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755 if writable else 0o555)
        else:
            p.chmod(0o644 if writable else 0o444)


def test_read_only_store_reads_and_refuses_writes(tmp_path, vecs):
    """Today the open fails: SQLite cannot create collection.sqlite-shm for the WAL database in a read-only
    folder ('unable to open database file')."""
    store = tmp_path / "ro-store"
    with make(store, "ro", exact_below=0) as c:
        c.add_vectors(vecs[:200], [f"r{i}" for i in range(200)], texts=[f"record {i}" for i in range(200)],
                      metadata=[{"i": i} for i in range(200)])
    before = sorted(p.name for p in (store / "ro").iterdir())
    _set_modes(store, writable=False)
    try:
        preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
        try:
            proc = subprocess.run([sys.executable, "-c", READ_ONLY, str(store), json.dumps(vecs[:10].tolist())],
                                  capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        except OSError as exc:  # e.g. no CAP_SETPCAP in this container
            pytest.skip(f"cannot drop privileges for the read-only child: {exc}")
    finally:
        _set_modes(store, writable=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["enforced"]:
        pytest.skip("the child can still write into a 0555 folder: read-only is not enforced here")
    assert out["list"] == {"ok": ["ro"]}
    assert out["open"] == {"ok": True}, out["open"]
    assert out["count"] == {"ok": 200}, out["count"]
    assert out["get"] == {"ok": {"i": 5}}, out["get"]
    assert out["search"] == {"ok": ["r5"]} and out["search_exact"] == {"ok": ["r6"]}, out
    assert out["search_where"] == {"ok": ["r7"]} and len(out["bm25"].get("ok", [])) == 3, out
    for write in ("add", "upsert", "delete", "compact"):
        assert "StoreReadOnlyError" in out[write].get("error", []), (write, out[write])
        assert "StoreError" in out[write]["error"]
    assert out["close"] == {"ok": True}, out["close"]
    assert "StoreError" in out["create"].get("error", []), out["create"]
    assert sorted(p.name for p in (store / "ro").iterdir()) == before  # nothing left behind
    assert not (store / "other").exists()
    with open_collection("ro", store=store, create=False) as c:
        assert c.count() == 200 and c.get(["new"]) == [] and len(c.get(["r2"])) == 1


# -- 7. bad inputs: InvalidInputError naming the value, nothing stored -------------------------------------

def _deep(n: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    cur = d
    for _ in range(n):
        cur["a"] = {}
        cur = cur["a"]
    return d


ONE = np.random.default_rng(4).normal(size=(1, 32)).astype(np.float32)

BAD_WRITES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # case: (add_vectors keyword arguments, any of these must appear in the message)
    "surrogate-in-text": ({"vectors": ONE, "ids": ["s"], "texts": ["ok \ud800"]},
                          ("texts[0]", repr("ok \ud800"))),
    "surrogate-in-id": ({"vectors": ONE, "ids": ["x\ud800"]}, ("ids[0]", repr("x\ud800"))),
    "surrogate-in-key": ({"vectors": ONE, "ids": ["s"], "metadata": [{"\ud800": 1}]},
                         ("metadata[0]", repr("\ud800"))),
    "surrogate-in-value": ({"vectors": ONE, "ids": ["s"], "metadata": [{"k": "\ud800"}]},
                           ("metadata[0]", repr("\ud800"))),
    "5000-deep-metadata": ({"vectors": ONE, "ids": ["s"], "metadata": [_deep(5000)]}, ("metadata[0]", "deep", "nest")),
    "string-array": ({"vectors": np.array([["1"] * 32]), "ids": ["s"]}, ("vector",)),
    "list-of-strings": ({"vectors": ["1"] * 32, "ids": ["s"]}, ("vector",)),
    "complex": ({"vectors": ONE.astype(np.complex64) + 1j, "ids": ["s"]}, ("vector",)),
    "ragged": ({"vectors": [[0.1] * 32, [0.1] * 31], "ids": ["s", "t"]}, ("vector",)),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_bad_write_is_invalid_input_and_stores_nothing(store, vecs, case):
    """Today: surrogates raise UnicodeEncodeError, deep metadata RecursionError, ragged lists numpy's
    ValueError, and string or complex vectors are silently converted and stored."""
    kwargs, named = BAD_WRITES[case]
    with make(store) as c:
        c.add_vectors(vecs[:3], ["a", "b", "c"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
            with pytest.raises(InvalidInputError) as exc:
                c.add_vectors(**kwargs)
        msg = str(exc.value)
        assert any(n in msg for n in named) or any(n in msg.lower() for n in named), msg
        assert c.count() == 3 and [r["id"] for b in c.iter_records() for r in b] == ["a", "b", "c"]


def test_collection_name_with_trailing_newline_is_refused(store):
    """Today the name regex ends in '$', which also matches before a final newline: 'kb\\n' is created."""
    with pytest.raises(InvalidInputError) as exc:
        open_collection("kb\n", store=store, dim=32)
    assert repr("kb\n") in str(exc.value), str(exc.value)
    assert list_collections(store) == []
    with pytest.raises(InvalidInputError):
        open_collection("kb\n", store=store, create=False)



# -- the error classes ---------------------------------------------------------------------------------------

def test_store_error_classes():
    import embedsmith
    from embedsmith import errors

    assert embedsmith.StoreError is StoreError and embedsmith.SettingsMismatchError is errors.SettingsMismatchError
    for name in ("CollectionNotFoundError", "CollectionExistsError", "CollectionBusyError", "StoreCorruptError",
                 "StoreReadOnlyError"):
        assert issubclass(getattr(errors, name), StoreError), name
    assert issubclass(errors.FilterTooComplexError, InvalidInputError)


def test_lock_timeout_is_collection_busy(store, vecs):
    """Today a plain StoreError ('being written by another process'); the message is kept."""
    from embedsmith.errors import CollectionBusyError

    with make(store, lock_timeout=0.2) as c:
        if is_postgres(store):
            import psycopg

            other: Any = psycopg.connect(store.split("?")[0])
            other.execute(f"SELECT 1 FROM {c.schema}.collections WHERE name = 'c' FOR UPDATE")  # type: ignore[attr-defined]
        else:
            import sqlite3

            other = sqlite3.connect(Path(store) / "c" / "collection.sqlite", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(CollectionBusyError, match="being written by another process"):
                c.add_vectors(vecs[:1], ["a"])
        finally:
            other.rollback()
            other.close()
        c.add_vectors(vecs[:1], ["a"])
        assert c.count() == 1


def test_cli_collections_lists_the_others_when_one_is_damaged(tmp_path, vecs):
    for name in ("good", "bad"):
        with open_collection(name, store=tmp_path, dim=32) as c:
            c.add_vectors(vecs[:5], list("abcde"))
    (tmp_path / "bad" / "collection.sqlite").write_bytes(b"this is not a database" * 100)
    proc = cli("collections", "--store", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["good"]["count"] == 5 and "damaged" in rows["bad"]["error"]
