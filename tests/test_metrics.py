"""Our ranking metrics against pytrec_eval (trec_eval) on Cranfield's graded judgements."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from embedsmith import InvalidInputError
from embedsmith.evaluation import retrieval_scores
from embedsmith.evaluation.metrics import ndcg_at_k

QRELS = Path(__file__).parent / "data" / "cranfield" / "qrels" / "dev.tsv"


def cranfield_qrels() -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in QRELS.read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def test_matches_pytrec_eval_on_cranfield_judgements():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels = cranfield_qrels()
    rng = random.Random(3)
    docs = [str(i) for i in range(1, 301)]
    run: dict[str, list[str]] = {}
    for q, rel in qrels.items():
        ranked = rng.sample(docs, 150)
        for d in rel:  # put most judged documents somewhere in the list, some beyond 100, some missing
            if rng.random() < 0.8:
                if d in ranked:
                    ranked.remove(d)
                ranked.insert(rng.randrange(0, 140), d)
        run[q] = ranked
    ours = retrieval_scores(qrels, run, ks=(1, 3, 5, 10, 100))
    trec_run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in run.items()}  # distinct scores
    measures = {"ndcg_cut.1,3,5,10,100", "map_cut.1,3,5,10,100", "recall.1,3,5,10,100", "P.1,3,5,10,100"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(trec_run)
    names = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}
    for ours_name, trec_name in names.items():
        for k in (1, 3, 5, 10, 100):
            expected = sum(ref[q][f"{trec_name}_{k}"] for q in qrels) / len(qrels)
            assert ours[f"{ours_name}_at_{k}"] == pytest.approx(expected, abs=1e-9), (ours_name, k)
    for k in (1, 10):
        cut = {q: {d: s for d, s in r.items() if s > len(run[q]) - k} for q, r in trec_run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        assert ours[f"mrr_at_{k}"] == pytest.approx(sum(rr[q]["recip_rank"] for q in qrels) / len(qrels), abs=1e-9)


def test_hand_computed_cases():
    qrel = {"a": 3, "b": 1, "c": 0}
    assert ndcg_at_k(["a", "b"], qrel, 10) == pytest.approx(1.0)
    # b first, a second: DCG = 1 + 3/log2(3); ideal = 3 + 1/log2(3)
    assert ndcg_at_k(["b", "a"], qrel, 10) == pytest.approx((1 + 3 / 1.5849625) / (3 + 1 / 1.5849625), rel=1e-6)
    s = retrieval_scores({"q": qrel, "unjudged": {"x": 0}}, {"q": ["c", "b", "b", "a"]}, ks=(1, 2))
    assert s["mrr_at_1"] == 0 and s["mrr_at_2"] == 0.5 and s["precision_at_2"] == 0.5
    assert s["recall_at_2"] == 0.5  # duplicates of b are ignored; unjudged queries are left out
    with pytest.raises(InvalidInputError, match="no query with a relevant document"):
        retrieval_scores({"q": {"a": 0}}, {})
    with pytest.raises(InvalidInputError, match="cut-offs must be positive integers, got 0"):
        retrieval_scores({"q": qrel}, {}, ks=(0,))
