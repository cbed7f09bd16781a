"""Fine-tuning: data readers, hard-negative mining, tiny real training runs, synthetic queries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA
from embedsmith import EmbedsmithError, InvalidInputError
from embedsmith.evaluation.stats import VERDICTS
from embedsmith.training import (
    TrainingData,
    finetune,
    finetune_reranker,
    inverse_cloze,
    load_training_data,
    mine_hard_negatives,
)
from embedsmith.training.data import read_beir
from embedsmith.training.synthetic import synthetic_queries
from test_cli import run

CRAN = DATA / "cranfield"


def test_readers_and_line_numbered_errors(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"query": "q1", "positive": "p1", "negative": "n1"}\n\n{"anchor": "a2", "positive": "p2"}\n')
    d = load_training_data(f)
    assert d.anchors == ["q1", "a2"] and d.negatives == [["n1"], []]
    f.write_text('{"query": "q1", "positive": "p1"}\n{"query": "q2"}\n')
    with pytest.raises(InvalidInputError, match=r"pairs\.jsonl:2: the query has no 'positive'"):
        load_training_data(f)
    f.write_text('{"query": "q1", "positive": ""}\n')
    with pytest.raises(InvalidInputError, match=r"pairs\.jsonl:1: field 'positive' is missing or empty"):
        load_training_data(f)
    f.write_text('{"query": "q1", "positive": "p"}\n{oops\n')
    with pytest.raises(InvalidInputError, match=r"pairs\.jsonl:2: not JSON"):
        load_training_data(f)
    f.write_text("")
    with pytest.raises(InvalidInputError, match="is empty"):
        load_training_data(f)
    csv = tmp_path / "sts.csv"
    csv.write_text("a,b,5.0\nc,d,2.5\ne,f\n")
    with pytest.raises(InvalidInputError, match=r"sts\.csv:3: expected sentence1,sentence2,score"):
        load_training_data(csv)
    csv.write_text("a,b,5.0\nc,d,2.5\n")
    assert load_training_data(csv).scores == [1.0, 0.5]
    labels = load_training_data(DATA / "banking77" / "train-20x40.csv")
    assert len(labels) == 800 and labels.scores is None
    titled = load_training_data(CRAN / "corpus.jsonl")
    assert len(titled) == 300 and titled.anchors[0].startswith("experimental investigation")
    ict = inverse_cloze(titled.positives[:50])
    assert len(ict) > 40 and all(a not in p for a, p in zip(ict.anchors, ict.positives, strict=True))


def test_beir_query_without_positive_is_an_error(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "lift"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "wing"}\n{"_id": "q2", "text": "drag"}\n')
    (tmp_path / "qrels" / "train.tsv").write_text("q1\td1\t1\nq2\td1\t0\n")
    with pytest.raises(InvalidInputError, match="1 queries have no relevant document"):
        read_beir(tmp_path, split="train")


@pytest.mark.parametrize("method", ["bm25", "dense"])
def test_mined_negatives_never_contain_a_positive(method, minilm_onnx):
    data, corpus, _ = read_beir(CRAN, split="dev")
    docs = list(corpus.values())
    index = {d: i for i, d in enumerate(docs)}
    groups: dict[str, list[int]] = {}
    for a, p in zip(data.anchors, data.positives, strict=True):
        groups.setdefault(a, []).append(index[p])
    queries = list(groups)
    negs = mine_hard_negatives(queries, docs, [groups[q] for q in queries], method=method, k=5,
                               encoder=minilm_onnx if method == "dense" else None)
    assert len(negs) == len(queries) and sum(map(len, negs)) >= 4 * len(queries)
    for q, n in zip(queries, negs, strict=True):
        assert not set(n) & set(groups[q]) and len(set(n)) == len(n)
    with pytest.raises(InvalidInputError, match="has no positive"):
        mine_hard_negatives(["q"], docs, [[]])


def test_mining_never_returns_the_document_a_pair_was_cut_from():
    from embedsmith.training import add_hard_negatives

    rows = [json.loads(x) for x in (CRAN / "corpus.jsonl").read_text().splitlines()][:120]
    full = [f"{r['title']} {r['text']}" for r in rows]
    data = inverse_cloze([r["text"] for r in rows]).extend(load_training_data(CRAN / "corpus.jsonl"))
    mined = add_hard_negatives(data, method="bm25", per_query=2, corpus=full)
    assert all(len(n) == 2 for n in mined.negatives)
    for a, p, negs in zip(mined.anchors, mined.positives, mined.negatives, strict=True):
        for n in negs:
            assert a not in n and p not in n, (a, n)


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(next(folder.rglob("model.safetensors"))))


def test_mine_negatives_cli_writes_jsonl_that_finetune_reads(tmp_path):
    out = tmp_path / "mined" / "negatives.jsonl"
    res = run("mine-negatives", "--train", str(CRAN), "--split", "dev", "--output", str(out),
              "--negatives-per-query", "3", "--skip-top", "1")
    assert "rows with 3 bm25 negatives" in res.stderr
    pairs, docs, _ = read_beir(CRAN, split="dev")
    positives: dict[str, set[str]] = {}
    for a, p in zip(pairs.anchors, pairs.positives, strict=True):
        positives.setdefault(a, set()).add(p)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(pairs) and not list(out.parent.glob("*.part"))
    corpus = set(docs.values())
    for r in rows:
        assert len(r["negatives"]) == 3 and len(set(r["negatives"])) == 3
        assert not positives[r["query"]] & set(r["negatives"])  # never a positive of that query
        assert set(r["negatives"]) <= corpus
    back = load_training_data(out)
    assert back.anchors == [r["query"] for r in rows] and back.negatives[0] == rows[0]["negatives"]
    bad = run("mine-negatives", "--train", str(CRAN), "--split", "dev", "--output", str(tmp_path / "x.jsonl"),
              "--method", "splade", check=False)
    assert bad.returncode == 1 and "unknown mining method 'splade'" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
    bad = run("mine-negatives", "--train", str(CRAN), "--split", "dev", "--output", str(tmp_path / "x.jsonl"),
              "--negatives-per-query", "0", check=False)
    assert bad.returncode == 1 and "must be >= 1" in bad.stderr
    bad = run("mine-negatives", "--train", str(CRAN), "--split", "dev", "--output", str(tmp_path / "x.jsonl"),
              "--margin", "1.5", check=False)
    assert bad.returncode == 1 and "margin 1.5 is out of range" in bad.stderr


@pytest.mark.slow
def test_tiny_finetune_changes_weights_and_loads_everywhere(tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedsmith import load_encoder
    from embedsmith.encoders.registry import _minilm_folder
    from embedsmith.evaluation import STSTask

    sts = tmp_path / "sts.csv"
    sts.write_text("\n".join((DATA / "stsb" / "stsb-en-dev.csv").read_text().splitlines()[:100]) + "\n")
    titled = load_training_data(CRAN / "corpus.jsonl")
    data = TrainingData(titled.anchors[:24], titled.positives[:24], titled.negatives[:24], source="cranfield titles")
    out = tmp_path / "ft"
    rep = finetune("minilm", data, out, max_steps=3, batch_size=8, hard_negatives="bm25", negatives_per_query=1,
                   matryoshka=[384, 128], corpus=titled.positives, eval_task=STSTask.from_file(sts), device="cpu")
    assert rep.steps == 3 and set(rep.before) == {"main_score", "main_score@128"} == set(rep.after)
    assert rep.kind == "bi-encoder" and set(rep.significance) == set(rep.before)
    for name, c in rep.significance.items():  # after (B) against before (A) over the STS pairs
        assert c.a == pytest.approx(rep.before[name], abs=1e-9) and c.b == pytest.approx(rep.after[name], abs=1e-9)
        assert c.ci_low <= c.ci_high and 0 < c.p_value <= 1
    before, after = _weights(_minilm_folder()), _weights(out)
    changed = [k for k in after if k in before and not np.allclose(before[k], after[k])]
    assert len(changed) > 10
    card = (out / "README.md").read_text()
    assert "Fine-tuned with embedsmith" in card and "mnrl + matryoshka [384, 128]" in card and "| main_score |" in card
    assert "- kind: bi-encoder" in card and "95% interval" in card
    v1 = load_encoder(str(out), backend="onnx").encode(["wing flutter"])
    v2 = SentenceTransformer(str(out), device="cpu").encode(["wing flutter"], normalize_embeddings=True)
    assert float(v1[0] @ v2[0]) > 0.9999


def beir_slice(folder: Path, n_docs: int) -> Path:
    """A BEIR folder of the Cranfield slice's first ``n_docs`` documents and the dev queries judged within them."""
    (folder / "qrels").mkdir(parents=True)
    docs = (CRAN / "corpus.jsonl").read_text().splitlines()[:n_docs]
    ids = {json.loads(d)["_id"] for d in docs}
    head, *rows = (CRAN / "qrels" / "dev.tsv").read_text().splitlines()
    rows = [r for r in rows if r.split("\t")[1] in ids]
    qids = {r.split("\t")[0] for r in rows}
    queries = [q for q in (CRAN / "queries.jsonl").read_text().splitlines() if json.loads(q)["_id"] in qids]
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("\n".join([head, *rows]) + "\n")
    return folder


@pytest.mark.slow
def test_tiny_reranker_and_cli(tmp_path):
    from embedsmith.rerankers import Reranker

    titled = load_training_data(CRAN / "corpus.jsonl")
    data = TrainingData(titled.anchors[:16], titled.positives[:16], titled.negatives[:16], source="titles")
    rep = finetune_reranker("minilm", data, tmp_path / "ce", max_steps=2, batch_size=8, negatives_per_query=1,
                            corpus=titled.positives, device="cpu")
    assert rep.steps == 2 and rep.examples == 32
    logits = Reranker(tmp_path / "ce").logits("wing flutter", ["flutter of wings", "heat in slabs"])
    assert len(logits) == 2 and np.isfinite(logits).all()
    rep = finetune_reranker("minilm", data, tmp_path / "ce-list", loss="listwise", max_steps=1, batch_size=6,
                            negatives_per_query=1, random_negatives=1, corpus=titled.positives, device="cpu")
    assert rep.steps == 1 and rep.examples == 48 and "listwise" in rep.loss and "1 random negatives" in rep.data
    with pytest.raises(InvalidInputError, match="unknown reranker loss 'hinge'"):
        finetune_reranker("minilm", data, tmp_path / "x", loss="hinge", corpus=titled.positives)
    with pytest.raises(InvalidInputError, match="batch_size must be >= 1"):
        finetune_reranker("minilm", data, tmp_path / "x", batch_size=0, corpus=titled.positives)
    # The data's own negatives (as mine-negatives writes them), and a clear error for a row without one.
    own = TrainingData(data.anchors[:4], data.positives[:4], [[p] for p in data.positives[4:8]], source="own")
    rep = finetune_reranker("minilm", own, tmp_path / "ce-own", hard_negatives="none", loss="listwise",
                            max_steps=1, batch_size=4, device="cpu")
    assert rep.steps == 1 and rep.examples == 8 and rep.hyperparameters["hard_negatives"] == "none"
    holey = TrainingData(own.anchors, own.positives, [["x"], [], ["y"], ["z"]], source="holey")
    with pytest.raises(InvalidInputError, match=r"example 2 .* has no negative"):
        finetune_reranker("minilm", holey, tmp_path / "x", hard_negatives="none")

    # With --eval, the first stage's top 10 (so its nDCG@10 is the full ranking's) is scored against the
    # same candidates reranked, and the CLI warns when the reranker makes the ranking worse.
    # (on a slice: the first 80 documents and the queries judged within them, so the two evaluations stay cheap)
    small = beir_slice(tmp_path / "small", 80)
    out = run("finetune-reranker", "--train", str(CRAN / "corpus.jsonl"), "--output", str(tmp_path / "ce-eval"),
              "--max-steps", "1", "--batch-size", "4", "--negatives-per-query", "1", "--max-length", "64",
              "--eval", str(small), "--candidates", "10", "--device", "cpu", "--json")
    res = json.loads(out.stdout)
    from embedsmith import load_encoder
    from embedsmith.evaluation import RetrievalTask

    first = RetrievalTask.from_beir(small, split="dev").evaluate(load_encoder("minilm", backend="torch",
                                                                               device="cpu"))
    assert res["before"]["ndcg_at_10"] == pytest.approx(first.scores["ndcg_at_10"], abs=1e-4)
    assert 0.0 <= res["after"]["ndcg_at_10"] <= 1.0 and set(res["after"]) == {"ndcg_at_10", "mrr_at_10"}
    assert res["hyperparameters"]["candidates"] == 10 and res["kind"] == "reranker"
    assert set(res["significance"]) == {"ndcg_at_10", "mrr_at_10"}
    for name, c in res["significance"].items():  # reranked (B) against the first stage (A), per query
        assert c["diff"] == pytest.approx(res["after"][name] - res["before"][name], abs=1e-9)
        assert c["ci_low"] <= c["ci_high"] and c["verdict"] in VERDICTS
    worse = res["after"]["ndcg_at_10"] < res["before"]["ndcg_at_10"]
    assert ("lowers nDCG@10" in out.stderr) == worse
    assert "reranked" in (tmp_path / "ce-eval" / "README.md").read_text()
    bad = run("finetune-reranker", "--train", str(CRAN / "corpus.jsonl"), "--output", str(tmp_path / "x"),
              "--eval", str(CRAN / "queries.jsonl"), check=False)
    assert bad.returncode == 1 and "takes a BEIR folder" in bad.stderr and "Traceback" not in bad.stderr

    res = json.loads(run("finetune", "--train", str(CRAN / "corpus.jsonl"), "--output", str(tmp_path / "cli"),
                         "--max-steps", "2", "--batch-size", "8", "--inverse-cloze", "--device", "cpu",
                         "--max-seq-length", "64",
                         "--json").stdout)
    assert res["steps"] == 2 and "inverse cloze" in res["data"]
    bad = run("finetune", "--train", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "x"), check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("finetune", "--train", str(CRAN / "corpus.jsonl"), "--output", str(tmp_path / "x"), "--loss",
              "triplet", check=False)
    assert "triplet loss needs a negative" in bad.stderr


class _FakeChat(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        if type(self).calls == 1:  # one transient failure, retried
            self.send_response(503)
            self.end_headers()
            return
        passage = body["messages"][0]["content"].split("Passage:\n")[1]
        reply = {"choices": [{"message": {"content": f'"what about {passage.split()[0]}?"'}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(reply).encode())

    def log_message(self, *args):
        pass


def test_synthetic_queries_against_a_local_fake_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        data = synthetic_queries(["flutter of wings", "heat in slabs"], f"openai-chat:tiny@{url}")
        assert data.anchors == ["what about flutter?", "what about heat?"]
        with pytest.raises(InvalidInputError, match="openai-chat:MODEL@BASE_URL"):
            synthetic_queries(["x"], "chat:tiny")
        with pytest.raises(EmbedsmithError, match="failed 2 times"):
            synthetic_queries(["x"], "openai-chat:tiny@http://127.0.0.1:9", retries=2, timeout=1)
    finally:
        server.shutdown()


def test_scored_pair_losses_take_scored_pairs_only(tmp_path):
    from embedsmith.training.bi_encoder import build_dataset as _dataset

    sts = tmp_path / "sts.csv"
    sts.write_text("a cat sits,a cat rests,4.5\na cat sits,stocks fell,0.5\n")
    scored = load_training_data(sts)
    for loss in ("cosent", "cosine"):
        ds = _dataset(scored, loss)
        assert ds.column_names == ["sentence1", "sentence2", "score"] and ds["score"] == [0.9, 0.1]
        with pytest.raises(InvalidInputError, match=f"{loss} needs scored pairs"):
            _dataset(TrainingData(["q"], ["p"], [[]], source="x"), loss)
    with pytest.raises(InvalidInputError, match="cosent, cosine or contrastive"):
        _dataset(scored, "mnrl")
