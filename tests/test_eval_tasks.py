"""STS evaluation against sentence-transformers' EmbeddingSimilarityEvaluator on STSb dev."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import DATA
from embedsmith import InvalidInputError
from embedsmith.evaluation import STSTask
from embedsmith.evaluation.tasks import spearman


def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_reads_sick_tsv_and_rejects_bad_files(tmp_path):
    tsv = tmp_path / "sick.txt"
    tsv.write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                   "1\tA dog runs\tA dog is running\t4.8\tENTAILMENT\n2\tA cat\tA car\t1.2\tNEUTRAL\n")
    task = STSTask.from_file(tsv)
    assert task.sentences2 == ["A dog is running", "A car"] and task.scores == [4.8, 1.2]
    bad = tmp_path / "bad.csv"
    bad.write_text("only,two\n")
    with pytest.raises(InvalidInputError, match="expected sentence1,sentence2,score"):
        STSTask.from_file(bad)
    bad.write_text("a,b,high\nc,d,1\n")
    with pytest.raises(InvalidInputError, match="score 'high' is not a number"):
        STSTask.from_file(bad)
    with pytest.raises(InvalidInputError, match="does not exist"):
        STSTask.from_file(tmp_path / "nope.csv")


@pytest.mark.slow
def test_stsb_matches_sentence_transformers_evaluator(minilm_onnx, minilm_torch):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    task = STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv")
    ours = task.evaluate(minilm_onnx)
    ev = EmbeddingSimilarityEvaluator(task.sentences1, task.sentences2, task.scores,
                                      similarity_fn_names=["cosine", "manhattan", "euclidean"], write_csv=False)
    ref = ev(minilm_torch.model)
    for name in ("cosine", "manhattan", "euclidean"):
        for stat in ("spearman", "pearson"):
            assert ours[f"{stat}_{name}"] == pytest.approx(ref[f"{stat}_{name}"], abs=1e-4), (stat, name)
    assert ours["main_score"] == ours["spearman_cosine"] > 0.8
