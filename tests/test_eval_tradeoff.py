"""The dimension/precision trade-off report and the `embedsmith eval` command line, on real data."""

from __future__ import annotations

import json

import pytest

from conftest import DATA
from embedsmith.evaluation import EmbeddingCache, RetrievalTask
from embedsmith.evaluation.tradeoff import plot, to_markdown, tradeoff
from test_cli import run


@pytest.mark.slow
def test_tradeoff_on_cranfield(minilm_onnx, tmp_path):
    task = RetrievalTask.from_beir(DATA / "cranfield", split="dev")
    cache = EmbeddingCache()
    rows = tradeoff(minilm_onnx, task, cache=cache, latency_queries=20)
    assert len(rows) == 4 * 5
    by = {(r.dims, r.precision): r for r in rows}
    assert by[(384, "float32")].bytes_per_vector == 1536 and by[(384, "binary")].bytes_per_vector == 48
    assert by[(64, "int8")].storage_per_million == 64_000_000
    full = by[(384, "float32")].score
    assert full == pytest.approx(task.evaluate(minilm_onnx, cache=cache).main_score, abs=1e-9)
    assert by[(384, "float16")].score == pytest.approx(full, abs=0.01)
    assert by[(64, "binary")].score < full - 0.05  # 8 bytes a vector costs quality
    assert by[(64, "binary+rescore")].score > by[(64, "binary")].score  # the float32 rescoring wins it back
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in rows)
    # Each setting against full float32 over the queries: the difference is the scores', and 8 bytes a
    # vector is significantly worse.
    assert by[(384, "float32")].comparison is None
    for r in rows:
        if r.comparison is not None:
            assert r.comparison.diff == pytest.approx(r.score - full, abs=1e-9) and r.comparison.n == task.n_examples
    assert by[(64, "binary")].comparison.verdict == "A better"
    md = to_markdown(rows, title="t", metric="nDCG@10", n_docs=len(task.corpus))
    assert md.count("\n| ") == 1 + 20 and "1.5 GB" in md  # 1M float32 vectors of 384 dims
    png = plot(rows, tmp_path / "t.png", title="t", metric="nDCG@10")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_eval_cli_tasks_tradeoff_and_pipeline(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("\n".join((DATA / "stsb" / "stsb-en-dev.csv").read_text().splitlines()[:300]) + "\n")
    out = tmp_path / "r.json"
    data = json.loads(run("eval", "sts", str(sts), "--json", "--output", str(out)).stdout)
    assert data["task_name"] == "sts" and data["scores"]["test"][0]["main_score"] > 0.7
    assert json.loads(out.read_text()) == data
    # --vector-cache: the first run fills the shared cache, the second reads it and scores the same
    env = {"EMBEDSMITH_CACHE": str(tmp_path / "cache")}
    first = json.loads(run("eval", "sts", str(sts), "--json", "--vector-cache", env=env).stdout)
    from embedsmith import VectorCache

    entries = VectorCache(tmp_path / "cache" / "vectors.sqlite").stats()["entries"]
    assert entries > 400  # the distinct sentences of 300 pairs
    again = run("eval", "sts", str(sts), "--json", "--vector-cache", env=env)
    assert "stored result" in again.stderr  # the result cache: same model, data and settings
    assert json.loads(again.stdout)["scores"] == first["scores"] == data["scores"]
    fresh = run("eval", "sts", str(sts), "--json", "--vector-cache", "--no-cache", env=env)
    assert "stored result" not in fresh.stderr and json.loads(fresh.stdout)["scores"] == data["scores"]
    assert VectorCache(tmp_path / "cache" / "vectors.sqlite").stats()["entries"] == entries
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    rows = json.loads(run("eval", "tradeoff", str(sts), "--dims", "64,full", "--report", str(md),
                          "--plot", str(png), "--resamples", "1000", "--json").stdout)["rows"]
    assert [(r["dims"], r["precision"]) for r in rows][:2] == [(64, "float32"), (64, "float16")]
    assert len(rows) == 2 * 4 and md.read_text().startswith("### minilm") and png.stat().st_size > 1000
    assert rows[4]["significance"] is None  # full float32: the reference
    assert {"diff", "ci_low", "ci_high", "p_value", "verdict"} <= set(rows[0]["significance"])
    assert "95% interval" in md.read_text()

    store = tmp_path / "store"
    run("index", str(DATA / "cranfield" / "corpus.jsonl"), "--collection", "cran", "--store", str(store))
    rep = json.loads(run("eval", "pipeline", "--collection", "cran", "--store", str(store), "--queries",
                         str(DATA / "cranfield" / "queries.jsonl"), "--qrels",
                         str(DATA / "cranfield" / "qrels" / "dev.tsv"), "--modes", "dense,bm25", "--limit", "10",
                         "--resamples", "1000", "--json").stdout)
    assert rep["n_queries"] == 10 and rep["ann_recall_at_10"] > 0.9
    assert rep["modes"]["bm25"]["ndcg_at_10"] > 0.2
    assert rep["baseline"] == "dense" and set(rep["significance"]) == {"bm25"}
    bm25 = rep["significance"]["bm25"]
    assert set(bm25) == {"ndcg_at_10", "recall_at_100", "mrr_at_10"}
    assert bm25["ndcg_at_10"]["diff"] == pytest.approx(rep["modes"]["bm25"]["ndcg_at_10"] -
                                                       rep["modes"]["dense"]["ndcg_at_10"], abs=1e-9)

    bad = run("eval", "clustering", str(sts), check=False)
    assert bad.returncode == 1 and "cannot tell the text column" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("eval", "bitext", str(sts), check=False)
    assert "bitext needs two aligned files" in bad.stderr
