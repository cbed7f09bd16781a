"""Ray ingestion into PostgreSQL: the same records as local ingestion, a killed actor, one-line errors.

One local Ray runtime (2 CPUs, a small object store) serves the whole module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import in_ci, pg_schema
from embedsmith import open_collection
from embedsmith.ingest import index_paths


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    if in_ci():
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, configure_logging=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of a JSONL corpus (one with a title long enough for several chunks), markdown, HTML, bad files."""
    root = tmp_path_factory.mktemp("raycorpus")
    for k in range(4):
        with (root / f"shard{k}.jsonl").open("w") as f:
            for i in range(k * 4, k * 4 + 4):
                f.write(json.dumps({"_id": f"d{i}", "title": f"Paper {i}",
                                    "text": f"Boundary layer {i} separates near the trailing edge. " * (3 + 9 * i),
                                    "metadata": {"year": 1960 + i}}) + "\n")
    (root / "notes.md").write_text("# Wings\nLift grows with angle of attack.\n\n## Drag\nDrag grows with speed.\n")
    (root / "page.html").write_text("<html><head><title>Heat</title></head><body><p>Heat flows in slabs.</p></body>")
    (root / "bad.jsonl").write_text('{"_id": "x1", "text": "fine"}\n{not json\n')
    (root / "clash.jsonl").write_text(json.dumps({"_id": "d3", "text": "another file claims d3"}) + "\n")
    return root


def records(store: str, name: str) -> dict[str, tuple[str, dict[str, Any], np.ndarray]]:
    with open_collection(name, store=store, create=False) as c:
        got = [r for batch in c.iter_records() for r in batch]
        assert c.count() == len(got)
    out = {r["id"]: (r["text"], r["metadata"], r["vector"]) for r in got}
    assert len(out) == len(got), "duplicate ids"
    return out


def assert_same(local: dict[str, Any], ray: dict[str, Any]) -> None:
    assert sorted(local) == sorted(ray)
    for rid, (text, meta, vec) in local.items():
        assert ray[rid][0] == text and ray[rid][1] == meta, rid
        assert float(np.dot(vec, ray[rid][2]) / np.linalg.norm(vec) / np.linalg.norm(ray[rid][2])) >= 0.9999, rid


def test_same_records_as_local_ingestion_then_unchanged(ray_runtime, corpus, pg_server, minilm_onnx):
    from embedsmith.ingest_ray import index_dataset

    with pg_schema(pg_server) as store:
        with open_collection("local", store=store, encoder=minilm_onnx) as c, pytest.warns(UserWarning):
            local_report = index_paths(c, [corpus])
        report = index_dataset([corpus], store=store, collection="viaray", encoder=minilm_onnx, num_workers=2,
                               batch_size=2)
        assert (report.files_indexed, report.documents, report.chunks) == \
            (local_report.files_indexed, local_report.documents, local_report.chunks)
        assert dict(report.files_skipped) == dict(local_report.files_skipped)
        assert "line 2" in dict(report.files_skipped)[str(corpus / "bad.jsonl")]
        assert "already used" in dict(report.files_skipped)[str(corpus / "shard0.jsonl")]  # clash.jsonl came first
        assert_same(records(store, "local"), records(store, "viaray"))
        with open_collection("viaray", store=store, create=False) as c:
            assert c.verify().ok
            assert c.search("trailing edge", mode="bm25", k=1)[0].id.startswith("d")
        again = index_dataset([corpus], store=store, collection="viaray", num_workers=1)
        assert again.files_indexed == 0 and again.files_unchanged == local_report.files_indexed


def test_killed_actors_then_rerun_lose_and_duplicate_nothing(ray_runtime, corpus, pg_server, minilm_onnx, tmp_path):
    from embedsmith.ingest_ray import index_dataset

    with pg_schema(pg_server) as store:
        with open_collection("local", store=store, encoder=minilm_onnx) as c, pytest.warns(UserWarning):
            index_paths(c, [corpus])
        markers = [tmp_path / "encoder-killed", tmp_path / "writer-killed"]
        try:  # Ray Data restarts an actor and retries its batch; were it to give up, the rerun must mend it
            index_dataset([corpus], store=store, collection="k", encoder=minilm_onnx, num_workers=1, batch_size=1,
                          _crash=(("encode", 2, str(markers[0])), ("write", 3, str(markers[1]))))
        except Exception as exc:  # pragma: no cover - depends on Ray's retry policy
            print(f"first run failed: {exc!r}")
        assert all(m.exists() for m in markers), "an actor was never killed"
        index_dataset([corpus], store=store, collection="k", num_workers=1, batch_size=4)
        assert_same(records(store, "local"), records(store, "k"))
        with open_collection("k", store=store, create=False) as c:
            assert c.verify().ok  # BM25 statistics match the rows


def test_a_dataset_of_rows_is_upserted_by_id_and_unchanged_rows_are_not_encoded(ray_runtime, corpus, pg_server,
                                                                                  minilm_onnx):
    from embedsmith.errors import InvalidInputError
    from embedsmith.ingest_ray import index_dataset

    rows = [json.loads(line) for k in range(4) for line in (corpus / f"shard{k}.jsonl").read_text().splitlines()]
    with pg_schema(pg_server) as store:
        with open_collection("local", store=store, encoder=minilm_onnx) as c:
            index_paths(c, [corpus / f"shard{k}.jsonl" for k in range(4)])
        ds = ray_runtime.data.from_items(rows)
        report = index_dataset(ds, store=store, collection="rows", encoder=minilm_onnx, num_workers=2, batch_size=3)
        assert (report.documents, report.documents_unchanged, report.files_skipped) == (len(rows), 0, [])
        local, got = records(store, "local"), records(store, "rows")
        assert report.chunks == len(got) > len(rows)  # the long rows were chunked
        # Same chunks, texts, vectors and metadata as the JSONL files gave, but for where they came from
        strip = ("source", "doc_hash")
        assert_same({k: (t, {m: v for m, v in md.items() if m not in strip}, vec) for k, (t, md, vec) in local.items()},
                    {k: (t, {m: v for m, v in md.items() if m not in strip}, vec) for k, (t, md, vec) in got.items()})
        assert {md["source"] for _, md, _ in got.values()} == {"ray.data"}

        rows[5] = dict(rows[5], text="Shock waves meet the boundary layer and it separates.")
        again = index_dataset(ray_runtime.data.from_items(rows), store=store, collection="rows", num_workers=1)
        assert (again.documents, again.documents_unchanged) == (1, len(rows) - 1)
        after = records(store, "rows")
        assert after["d5"][0] == f"Paper 5\n\n{rows[5]['text']}" and not any(k.startswith("d5#") for k in after)
        assert {k: v[0] for k, v in after.items() if not k.startswith("d5")} == \
            {k: v[0] for k, v in got.items() if not k.startswith("d5")}
        with open_collection("rows", store=store, create=False) as c:
            assert c.verify().ok
        with pytest.raises(InvalidInputError, match="id column"):
            index_dataset(ray_runtime.data.from_items([{"text": "no id"}]), store=store, collection="rows")


def test_prune_removes_the_chunks_of_files_that_are_gone(ray_runtime, corpus, pg_server, minilm_onnx, tmp_path):
    import shutil

    from embedsmith.ingest_ray import index_dataset

    for name in ("shard0.jsonl", "notes.md"):
        shutil.copy(corpus / name, tmp_path / name)
    with pg_schema(pg_server) as store:
        first = index_dataset([tmp_path], store=store, collection="p", encoder=minilm_onnx, num_workers=1)
        assert first.files_indexed == 2
        (tmp_path / "notes.md").unlink()
        again = index_dataset([tmp_path], store=store, collection="p", num_workers=1, prune=True)
        assert (again.files_unchanged, again.files_pruned) == (1, 1)
        with open_collection("p", store=store, create=False) as c:
            assert {src for (src,) in c.distinct("source")} == {str(tmp_path / "shard0.jsonl")}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedsmith.cli", *args], capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedsmith: error: "), proc.stderr
    return lines[0]


def test_bad_input_gives_one_line_errors(corpus, pg_server, tmp_path):
    line = one_error_line(cli("index", str(corpus), "-c", "kb", "--store", str(tmp_path), "--ray"))
    assert "postgresql://" in line and "SQLite" in line
    with pg_schema(pg_server) as store:
        line = one_error_line(cli("index", str(corpus), "-c", "kb", "--store", store, "--ray",
                                  "--ray-address", "127.0.0.1:9"))
        assert "cannot reach the Ray cluster at '127.0.0.1:9'" in line
        fake = tmp_path / "noray"
        (fake / "ray").mkdir(parents=True)
        (fake / "ray" / "__init__.py").write_text("raise ImportError('simulated: ray is not installed')\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
        line = one_error_line(cli("index", str(corpus), "-c", "kb", "--store", store, "--ray", env=env))
        assert "pip install 'embedsmith[ray]'" in line
