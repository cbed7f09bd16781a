from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SEED


def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "embedsmith.cli", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_help_lists_commands():
    out = run("--help").stdout
    for cmd in ("embed", "similarity", "models"):
        assert cmd in out


def test_embed_json_and_outputs(tmp_path):
    data = json.loads(run("embed", *SEED, "--json", "--backend", "onnx").stdout)
    assert data["model"] == "minilm" and data["dim"] == 384
    v = np.array(data["vectors"])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] - v[0] @ v[2] >= 0.3
    inp = tmp_path / "in.txt"
    inp.write_text("first line\n\nsecond line\n")
    run("embed", "--input", str(inp), "--dims", "64", "--output", str(tmp_path / "v.npy"))
    assert np.load(tmp_path / "v.npy").shape == (2, 64)
    table = tmp_path / "in.csv"  # the text column of a CSV, quoted commas and all (not its raw lines)
    table.write_text('id,text\n1,"first, with a comma"\n2,second\n')
    run("embed", "--input", str(table), "--output", str(tmp_path / "t.jsonl"))
    assert [json.loads(x)["text"] for x in (tmp_path / "t.jsonl").read_text().splitlines()] == [
        "first, with a comma", "second"]
    run("embed", "x", "--precision", "int8", "--output", str(tmp_path / "v.jsonl"))
    row = json.loads((tmp_path / "v.jsonl").read_text())
    assert row["text"] == "x" and len(row["vector"]) == 384 and all(isinstance(i, int) for i in row["vector"])


def test_similarity_json():
    data = json.loads(run("similarity", *SEED, "--json", "--metric", "l2").stdout)
    m = np.array(data["matrix"])
    assert data["metric"] == "l2" and m.shape == (3, 3)
    np.testing.assert_allclose(np.diag(m), 0, atol=1e-3)
    assert m[0, 1] < m[0, 2]


def test_models_json():
    rows = {r["alias"]: r for r in json.loads(run("models", "--json").stdout)}
    assert rows["minilm"]["dim"] == 384 and rows["minilm"]["available_offline"]
    assert rows["mpnet"]["dim"] == 768


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("embed", ""), "texts[0] is empty"),
        (("embed", "x", "--model", "nope"), "unknown model 'nope'"),
        (("embed", "x", "--dims", "999"), "dims=999 is larger than the model's dimension 384"),
        (("similarity", "a", "b", "--metric", "jaccard"), "unknown metric 'jaccard'"),
        (("similarity", "a"), "at least two texts"),
        (("embed", "--input", "/no/such/file"), "does not exist"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_debug_shows_traceback():
    proc = run("--debug", "embed", "", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_index_search_delete_compact_collections(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.txt").write_text("Cats are small domesticated felines that purr.")
    (docs / "notes.md").write_text("# Markets\nStock markets fell sharply on interest rate fears.")
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "w1", "title": "Wings", "text": "Lift on a swept wing at high speed."}) + "\n"
        + json.dumps({"_id": "w2", "title": "Heat", "text": "Heat conduction in composite slabs."}) + "\n"
    )
    store = str(tmp_path / "store")
    out = run("index", str(docs), str(tmp_path / "corpus.jsonl"), "--collection", "kb", "--store", store).stdout
    assert "3 file(s) indexed (4 documents, 4 chunks)" in out and "4 chunks stored" in out
    res = json.loads(run("search", "kitten", "--collection", "kb", "--store", store, "-k", "2", "--json").stdout)
    assert res["hits"][0]["id"].endswith("cats.txt") and len(res["hits"]) == 2
    res = json.loads(run("search", "purring felines", "-c", "kb", "--store", store, "--mode", "hybrid",
                         "--json").stdout)
    assert res["hits"][0]["id"].endswith("cats.txt") and res["mode"] == "hybrid"
    bm = json.loads(run("search", "interest rate", "-c", "kb", "--store", store, "--mode", "bm25", "--json").stdout)
    assert [h["id"] for h in bm["hits"]] == [str(docs / "notes.md")]
    res = json.loads(run("search", "aerodynamics", "-c", "kb", "--store", store, "--json",
                         "--where", '{"title": {"$in": ["Wings", "Heat"]}}').stdout)
    assert res["hits"][0]["id"] == "w1" and {h["id"] for h in res["hits"]} == {"w1", "w2"}
    assert "deleted 1" in run("delete", "-c", "kb", "--store", store, "--ids", "w2").stdout
    assert "dropped 1" in run("compact", "-c", "kb", "--store", store).stdout
    rows = json.loads(run("collections", "--store", store, "--json").stdout)
    assert rows[0]["name"] == "kb" and rows[0]["count"] == 3 and rows[0]["model"] == "minilm"
    # Re-indexing unchanged files skips them instead of duplicating them.
    assert "0 file(s) indexed" in run("index", str(docs), "--collection", "kb", "--store", store).stdout
    assert json.loads(run("collections", "--store", store, "--json").stdout)[0]["count"] == 3
    bad = run("search", "x", "-c", "kb", "--store", store, "--where", '{"a": {"$regex": 1}}', check=False)
    assert bad.returncode == 1 and "unknown filter operator '$regex'" in bad.stderr
    missing = run("search", "x", "-c", "nope", "--store", store, check=False)
    assert missing.returncode == 1 and "no collection 'nope'" in missing.stderr


def test_bad_files_numbers_and_stores_are_one_line_errors(tmp_path):
    """Each of these printed a traceback: a non-UTF-8 input file, a JSONL line without text or not JSON, a k
    too large for SQLite, a filter number that is infinite, a damaged store."""
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9\n".encode("latin-1"))
    no_text = tmp_path / "no-text.jsonl"
    no_text.write_text('{"text": "fine"}\n{"title": "no text here"}\n')
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text('{"text": "fine"}\n{"text": \n')
    store = tmp_path / "store"
    from embedsmith import open_collection

    with open_collection("kb", store=store, dim=4) as c:
        c.add_vectors(np.eye(4, dtype=np.float32), list("abcd"), texts=["heat", "flow", "wing", "slab"],
                      metadata=[{"n": i} for i in range(4)])
    with open_collection("broken", store=store, dim=4) as c:
        c.add_vectors(np.eye(4, dtype=np.float32)[:1], ["a"])
    (store / "broken" / "collection.sqlite").write_bytes(b"not a database" * 300)
    cases = [
        (("embed", "--input", str(bad_utf8)), "latin1.txt: not UTF-8 text (byte 3, line 1"),
        (("embed", "--input", str(no_text)), "no-text.jsonl:2: no field 'text'"),
        (("embed", "--input", str(not_json)), "broken.jsonl:2: not JSON"),
        (("search", "heat", "-c", "kb", "--store", str(store), "--mode", "bm25", "-k", "99999999999999999999"),
         "k=99999999999999999999 is more hits"),
        (("search", "heat", "-c", "kb", "--store", str(store), "--mode", "bm25", "--where", '{"n": {"$gt": 1e400}}'),
         "needs a finite number"),
        (("search", "heat", "-c", "broken", "--store", str(store), "--mode", "bm25"), "damaged"),
        (("verify", "-c", "broken", "--store", str(store)), "broken"),
    ]
    for args, message in cases:
        proc = run(*args, check=False)
        assert proc.returncode in (1, 2) and message in proc.stderr + proc.stdout, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)


def test_index_without_model_keeps_the_collections_own_model(tmp_path):
    """`index` took "no --model" and "--model minilm" for the same thing (it compared the value with the default):
    an explicit minilm on a collection built with another model was silently ignored. Now no --model means the
    collection's own model (minilm for a new one), and an explicit one is checked against the collection."""
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"_id": "h", "text": "Heat conduction in composite slabs."}) + "\n")
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"_id": "w", "text": "Swept [/x] wings."}) + "\n")
    store = str(tmp_path / "store")
    run("index", str(first), "-c", "kb", "--store", store, "--model", "e5-small-multilingual")
    out = run("index", str(second), "-c", "kb", "--store", store).stdout
    assert "1 file(s) indexed" in out and "2 chunks stored (e5-small-multilingual, dim 384" in out
    bad = run("index", str(first), "-c", "kb", "--store", store, "--model", "minilm", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("embedsmith: error:")]
    assert len(errors) == 1 and "was built with model 'e5-small-multilingual'" in errors[0]
    # Text from the data is printed as it is, never read as rich markup (a "[/x]" stopped the table).
    table = run("search", "swept wings", "-c", "kb", "--store", store, "-k", "1")
    assert "[/x]" in table.stdout and "Traceback" not in table.stderr


def test_quickstart_returns_what_it_shows(tmp_path):
    from embedsmith.quickstart import run_quickstart

    r = run_quickstart(store=tmp_path)
    assert r.model == "minilm" and r.similarity.shape == (3, 3) and r.similarity[0, 1] > r.similarity[0, 2] + 0.3
    assert r.index.files_indexed == 1 and r.index.documents == 200 and r.collection["count"] == r.index.chunks
    assert [s.mode for s in r.searches] == ["dense", "hybrid"] and all(len(s.hits) == 3 for s in r.searches)
    assert "144" in r.searches[1].hits.ids  # "heat flow in composite slabs"
    out = run("quickstart", "--store", str(tmp_path)).stdout  # the sample is unchanged: nothing is embedded again
    assert "sentences with 'minilm'" in out and "0 file(s) indexed" in out and "1 unchanged" in out
    assert "cranfield-sample (hybrid): 'heat conduction in composite slabs'" in out
