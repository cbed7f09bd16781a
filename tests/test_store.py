"""Collections on the embedded store (SQLite + faiss HNSW), with vectors-only and real-model collections."""

from __future__ import annotations

import json
import sqlite3
import warnings

import numpy as np
import pytest

from embedsmith import (
    IndexRebuildWarning,
    open_collection,
)
from embedsmith.errors import StoreError


def make(tmp_path, name="c", **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("dim", 32)
    return open_collection(name, store=tmp_path, **kw)


def test_int8_ranges_fixed_at_creation_and_stored(tmp_path, vecs):
    from embedsmith import Int8Calibration

    cal = Int8Calibration.from_vectors(vecs[:500])
    with make(tmp_path, precision="int8", calibration=cal) as c:
        c.add_vectors(vecs[:10], [str(i) for i in range(10)])
    with open_collection("c", store=tmp_path) as c:
        np.testing.assert_allclose(c.settings.calibration.low, cal.low)
        assert c.settings.precision.value == "int8"


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create collection 'c'"):
        open_collection("c", store=blocker, dim=4)


def test_newer_format_is_refused(tmp_path):
    make(tmp_path).close()
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="store format 99; this embedsmith reads up to 4"):
        open_collection("c", store=tmp_path)


def test_format_1_store_is_upgraded_in_place(tmp_path, vecs):
    with make(tmp_path) as c:
        c.add_vectors(vecs[:3], ["a", "b", "c"], texts=["zebra crossing", "lift and drag", None])
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    db.executescript("DROP INDEX records_dead; "
                     "ALTER TABLE records DROP COLUMN index_text; UPDATE meta SET value = '1' "
                     "WHERE key = 'format_version';")
    db.close()
    with open_collection("c", store=tmp_path) as c:
        assert c.search("zebra", k=3, mode="bm25").ids == ["a"]
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0] == "4"
    db.close()


FORMAT_3_FTS = """
CREATE VIEW records_search AS SELECT seq, COALESCE(index_text, text) AS text FROM records;
CREATE VIRTUAL TABLE fts USING fts5(text, content='records_search', content_rowid='seq',
                                    tokenize='porter unicode61 remove_diacritics 2');
INSERT INTO fts(rowid, text) SELECT seq, COALESCE(index_text, text) FROM records
    WHERE COALESCE(index_text, text) IS NOT NULL AND deleted = 0;
UPDATE meta SET value = '3' WHERE key = 'format_version';
"""


def test_format_3_store_loses_its_fts5_index_when_opened(tmp_path, vecs):
    """Format 3 kept an FTS5 index beside the rows; BM25 no longer reads it, and a writable open drops the FTS
    tables (format 4)."""
    with make(tmp_path) as c:
        c.add_vectors(vecs[:3], ["a", "b", "c"], texts=["zebra crossing", "lift and drag", None])
    path = tmp_path / "c" / "collection.sqlite"
    db = sqlite3.connect(path)
    db.executescript(FORMAT_3_FTS)
    db.close()
    (tmp_path / "c" / "bm25.npz").unlink(missing_ok=True)
    with open_collection("c", store=tmp_path) as c:
        assert c.search("zebra", k=3, mode="bm25").ids == ["a"]
        assert c.search("lift", k=3, mode="bm25").ids == ["b"]
        assert c.verify().ok
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0] == "4"
    assert db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'fts%' OR name = 'records_search'"
                      ).fetchall() == []
    db.close()


def test_index_file_saved_reloaded_and_rebuilt_when_damaged(tmp_path, vecs):
    with make(tmp_path, exact_below=0) as c:
        c.add_vectors(vecs[:2000], [str(i) for i in range(2000)])
    folder = tmp_path / "c"
    stamp = json.loads((folder / "ann.json").read_text())
    assert stamp["last_seq"] == 2000 and stamp["ntotal"] == 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean reopen loads the file without rebuilding
        with open_collection("c", store=tmp_path) as c:
            assert c.search(vecs[10], k=1).ids == ["10"]
    index_file = folder / stamp["file"]
    raw = bytearray(index_file.read_bytes())
    index_file.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.warns(IndexRebuildWarning, match="rebuilding it from the database"):
        c = open_collection("c", store=tmp_path)
    assert c.search(vecs[11], k=1).ids == ["11"] and c.info()["index_vectors"] == 2000
    c.close()
    (folder / "ann.json").unlink()
    with pytest.warns(IndexRebuildWarning, match="no index file"):
        c = open_collection("c", store=tmp_path)
    assert c.search(vecs[12], k=1).ids == ["12"]
    c.close()


def test_second_writer_gets_a_clear_error(tmp_path, vecs):
    c = make(tmp_path, lock_timeout=0.2)
    other = sqlite3.connect(tmp_path / "c" / "collection.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="being written by another process"):
            c.add_vectors(vecs[:1], ["a"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    c.add_vectors(vecs[:1], ["a"])
    assert c.count() == 1
    c.close()




def test_saving_keeps_newer_index_files_and_drops_old_ones(tmp_path, vecs):
    import os

    with make(tmp_path, exact_below=0) as c:
        c.add_vectors(vecs[:50], [str(i) for i in range(50)])
        c.save_index()
        folder = tmp_path / "c"
        newer = folder / "ann-999999.faiss"  # as if another process had just saved a later state
        newer.write_bytes(b"x")
        stale_tmp = folder / ".ann-7.faiss.12345.tmp"
        stale_tmp.write_bytes(b"half")
        os.utime(stale_tmp, (1, 1))
        c.add_vectors(vecs[50:60], [str(i) for i in range(50, 60)])
        c.save_index()
        files = sorted(p.name for p in folder.glob("ann-*.faiss"))
        assert files == ["ann-60.faiss", "ann-999999.faiss"]
        assert not stale_tmp.exists()


def test_store_from_the_previous_format_adopts_its_index_once(tmp_path, vecs):
    """A store saved before identities and checksums (index stamp format 1, no identity in meta) opens without
    a rebuild, gains an identity, and its index is re-stamped in the new format on close."""
    with make(tmp_path, exact_below=0) as c:
        c.add_vectors(vecs[:300], [str(i) for i in range(300)])
        c.delete([str(i) for i in range(10)])
    folder = tmp_path / "c"
    for f in folder.glob("ann*"):
        f.unlink()
    # As the old catch-up could leave it: without rows deleted before it saw them (seq 1-10), and without
    # some it never read (seq 11-15, "10".."14", lost to the race this format fixes).
    import faiss

    from embedsmith.store.ann import AnnIndex, IndexSpec
    from embedsmith.types import Metric, Precision

    old_index = AnnIndex(IndexSpec(32, Metric.COSINE, Precision.FLOAT32))
    old_index.add(np.arange(16, 301), vecs[15:300])
    faiss.write_index(old_index.index, str(folder / "ann-300.faiss"))
    (folder / "ann.json").write_text(json.dumps({"format": 1, "file": "ann-300.faiss", "last_seq": 300,
                                                 "ntotal": 285, "bytes": (folder / "ann-300.faiss").stat().st_size}))
    db = sqlite3.connect(folder / "collection.sqlite")
    db.execute("DELETE FROM meta WHERE key IN ('identity', 'generation')")
    db.commit()
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adopted: no IndexRebuildWarning
        with open_collection("c", store=tmp_path, exact_below=0) as c:
            assert c.settings.identity and c.count() == 290
            assert c.info()["index_vectors"] == 300  # the missing rows were added, nothing rebuilt
            for i in (12, 42):
                assert c.search(vecs[i], k=1).ids == [str(i)]
        with open_collection("c", store=tmp_path, exact_below=0) as c:
            assert c.verify().ok, c.verify().problems
    assert json.loads((folder / "ann.json").read_text())["format"] == 2


def test_a_filter_too_large_is_refused_before_reaching_sqlite(tmp_path, vecs):
    from embedsmith.errors import FilterTooComplexError, InvalidInputError

    with make(tmp_path) as c:
        c.add_vectors(vecs[:20], [str(i) for i in range(20)], metadata=[{"n": i} for i in range(20)])
        huge = {"$or": [{"n": i} for i in range(999)]}
        for call in (lambda: c.search(vecs[0], where=huge), lambda: c.delete(where=huge),
                     lambda: c.get(where={"$and": [huge]})):
            with pytest.raises(FilterTooComplexError, match="at most 256"):
                call()
        assert issubclass(FilterTooComplexError, InvalidInputError) and c.count() == 20
        deep: dict = {"n": 1}
        for _ in range(20):
            deep = {"$and": [deep]}
        with pytest.raises(FilterTooComplexError, match="deeper than 16"):
            c.search(vecs[0], where=deep)
        # One $in with many values is one condition.
        assert len(c.get(where={"n": {"$in": list(range(3000))}})) == 20
