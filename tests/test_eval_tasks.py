"""Evaluation tasks: the same numbers as sentence-transformers', pytrec_eval's and MTEB's own evaluators."""

from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import DATA
from embedsmith import InvalidInputError
from embedsmith.evaluation import (
    TASK_TYPES,
    TASKS,
    BitextTask,
    ClassificationTask,
    ClusteringTask,
    EmbeddingCache,
    PairClassificationTask,
    RetrievalTask,
    STSTask,
    evaluate,
    load_task,
)
from embedsmith.evaluation.tasks import spearman, undersample

BANKING = DATA / "banking77" / "train-20x40.csv"
# Every task's scores as the single-file tasks.py computed them before the split into evaluation/tasks/
# (captured by running that code), for a deterministic hashing encoder and for MiniLM (ONNX).
BEFORE_SPLIT = json.loads((DATA / "eval-scores-before-split.json").read_text())


def _same_as_before_split(key, scores):
    ref = BEFORE_SPLIT[key]
    assert set(scores) == set(ref), key
    for metric, value in ref.items():
        assert scores[metric] == pytest.approx(value, abs=1e-9), (key, metric)


class Hashing:
    """Deterministic bag of words and character trigrams in 128 crc32 buckets."""

    name = "hashing"

    def encode(self, texts):
        out = np.zeros((len(texts), 128), np.float32)
        for i, t in enumerate(texts):
            t = t.lower()
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % 128] += 1
            for j in range(len(t) - 2):
                out[i, zlib.crc32(t[j : j + 3].encode()) % 128] += 0.25
        return out


def _all_tasks():
    return {
        "sts": STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv"),
        "retrieval": RetrievalTask.from_beir(DATA / "cranfield", split="dev"),
        "classification": ClassificationTask.from_file(BANKING),
        "clustering": ClusteringTask.from_file(BANKING),
        "pair-classification": PairClassificationTask.from_file(DATA / "sick" / "SICK_trial-300.txt"),
        "bitext": BitextTask.from_files(DATA / "tatoeba" / "tatoeba.deu-eng.deu",
                                        DATA / "tatoeba" / "tatoeba.deu-eng.eng"),
    }


def test_every_task_scores_as_before_the_split():
    cache = EmbeddingCache()
    for name, task in _all_tasks().items():
        assert type(task) is TASKS[name]
        _same_as_before_split(f"hashing/{name}", task.evaluate(Hashing(), cache=cache).scores)


def test_registry_builds_the_cli_help_and_columns():
    from embedsmith.cli.eval import COLUMNS, TASK_HELP

    assert list(TASK_HELP) == list(TASKS) == list(TASK_TYPES)
    assert all(COLUMNS[n] == cls.columns and TASK_HELP[n] == cls.help for n, cls in TASKS.items())


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


def test_beir_reader_counts_bad_rows_instead_of_crashing(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Wings", "text": "lift on a wing"}\n{not json\n'
        '{"_id": "d2", "text": "drag of a body"}\n{"_id": "d3", "text": "  "}\n')
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "wing lift"}\n{"_id": "q2", "text": "drag"}\n{"_id": "q3", "text": "heat"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\tmissing\t1\nq9\td1\t1\nq2\td2\tone\nq2\td2\t1\nbad line\n")
    task = RetrievalTask.from_beir(tmp_path)
    assert task.split == "test" and set(task.corpus) == {"d1", "d2"}
    assert task.corpus["d1"] == "Wings lift on a wing"
    assert task.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}
    assert task.problems == {"malformed_rows": 1, "empty_docs": 1, "qrels_unknown_doc": 1,
                             "qrels_unknown_query": 1, "malformed_qrels": 2, "queries_without_qrels": 1}
    with pytest.raises(InvalidInputError, match="no qrels for split 'dev'"):
        RetrievalTask.from_beir(tmp_path, split="dev")
    (tmp_path / "qrels" / "test.tsv").write_text("q1\tmissing\t1\n")
    with pytest.raises(InvalidInputError, match="no query has a relevant document"):
        RetrievalTask.from_beir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(InvalidInputError, match="holds no documents"):
        RetrievalTask.from_beir(tmp_path)


def test_labelled_readers_and_bad_input(tmp_path):
    f = tmp_path / "intents.csv"
    f.write_text("text,category\nhello,greet\n,greet\nbye,\nhi,greet\nciao,leave\nsee you,leave\n")
    task = ClassificationTask.from_file(f, test_size=0.5)
    assert sorted(task.train_labels + task.test_labels) == ["greet", "greet", "leave", "leave"]
    assert task.problems == {"empty_text": 1, "missing_label": 1}
    with pytest.raises(InvalidInputError, match="no column 'words'"):
        ClassificationTask.from_file(f, text_column="words")
    f.write_text("body,kind\nhello,greet\n")
    with pytest.raises(InvalidInputError, match="cannot tell the text column"):
        ClusteringTask.from_file(f)
    f.write_text("text,label\nhello,greet\nbye,greet\n")
    with pytest.raises(InvalidInputError, match="at least 2 labels"):
        ClusteringTask.from_file(f)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("eins\nzwei\n")
    b.write_text("one\n")
    with pytest.raises(InvalidInputError, match="not aligned"):
        BitextTask.from_files(a, b)
    with pytest.raises(InvalidInputError, match="unknown task 'ranking'"):
        load_task("ranking", a)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sentence1,sentence2,label\na,b,1\nc,d,1\n")
    with pytest.raises(InvalidInputError, match="positive and negative"):
        PairClassificationTask.from_file(pairs)


class _Cheap:
    """A third-party encoder: only ``encode(list[str])``, returning a list of lists."""

    name = "hashing"

    def encode(self, texts):
        out = []
        for t in texts:
            v = np.zeros(64)
            for w in t.lower().split():
                v[hash(w) % 64] += 1
            out.append(v.tolist())
        return out


def test_any_object_with_encode_can_be_evaluated(tmp_path):
    result = evaluate(_Cheap(), STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv"))
    assert result.model_name == "hashing" and 0.2 < result.main_score < 0.8
    path = tmp_path / "r.json"
    result.save(path)
    data = json.loads(path.read_text())
    assert data["task_name"] == "stsb-en-dev" and data["scores"]["dev"][0]["main_score"] == result.main_score


@pytest.mark.slow
def test_stsb_matches_sentence_transformers_evaluator(minilm_onnx, minilm_torch):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    task = STSTask.from_file(DATA / "stsb" / "stsb-en-dev.csv")
    result = task.evaluate(minilm_onnx)
    ours = result.scores
    ev = EmbeddingSimilarityEvaluator(task.sentences1, task.sentences2, task.scores,
                                      similarity_fn_names=["cosine", "manhattan", "euclidean"], write_csv=False)
    ref = ev(minilm_torch.model)
    for name in ("cosine", "manhattan", "euclidean"):
        for stat in ("spearman", "pearson"):
            assert ours[f"{stat}_{name}"] == pytest.approx(ref[f"{stat}_{name}"], abs=1e-4), (stat, name)
    _same_as_before_split("minilm/sts", ours)
    assert result.main_score == ours["spearman_cosine"] > 0.8
    assert 0 < result.encode_time <= result.evaluation_time
    # Dimension cuts and binary precision cost quality, as they should.
    cache = EmbeddingCache()
    full = task.evaluate(minilm_onnx, cache=cache).main_score
    small = task.evaluate(minilm_onnx, cache=cache, dims=64, precision="binary")
    assert small.encode_time == 0 and small.main_score < full - 0.05


@pytest.mark.slow
def test_retrieval_matches_pytrec_eval_and_sentence_transformers(minilm_onnx, minilm_torch):
    import pytrec_eval
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    task = RetrievalTask.from_beir(DATA / "cranfield", split="dev")
    cache = EmbeddingCache()
    result = task.evaluate(minilm_onnx, cache=cache)
    run = task.rank(*task.encode(lambda texts, kind: cache.encode(minilm_onnx, texts, kind=kind)))
    measures = {"ndcg_cut.1,3,5,10,100", "map_cut.10,100", "recall.1,10,100", "P.5,10", "recip_rank"}
    trec = pytrec_eval.RelevanceEvaluator(task.qrels, measures)
    per = trec.evaluate({q: {d: float(len(ids) - i) for i, d in enumerate(ids)} for q, ids in run.items()})
    for ours, theirs in [("ndcg_at_1", "ndcg_cut_1"), ("ndcg_at_10", "ndcg_cut_10"), ("ndcg_at_100", "ndcg_cut_100"),
                         ("map_at_100", "map_cut_100"), ("recall_at_10", "recall_10"), ("recall_at_100", "recall_100"),
                         ("precision_at_5", "P_5"), ("mrr_at_100", "recip_rank")]:
        ref = np.mean([v[theirs] for v in per.values()])
        assert result.scores[ours] == pytest.approx(ref, abs=1e-6), ours
    assert result.main_score == result.scores["ndcg_at_10"] > 0.3
    _same_as_before_split("minilm/retrieval", result.scores)

    ir = InformationRetrievalEvaluator(
        {q: task.queries[q] for q in task.qrels}, task.corpus,
        {q: {d for d, g in rel.items() if g > 0} for q, rel in task.qrels.items()},
        mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1, 10, 100], ndcg_at_k=[10], map_at_k=[10],
        show_progress_bar=False, write_csv=False)
    ref = ir(minilm_torch.model)
    assert result.scores["mrr_at_10"] == pytest.approx(ref["cosine_mrr@10"], abs=1e-3)
    assert result.scores["recall_at_100"] == pytest.approx(ref["cosine_recall@100"], abs=1e-3)


def _mteb_self(**kw):
    return SimpleNamespace(seed=42, samples_per_label=8, label_column_name="label", **kw)


@pytest.mark.slow
def test_classification_and_clustering_match_mteb(minilm_onnx):
    from datasets import Dataset
    from mteb._evaluators import ClusteringEvaluator, SklearnEvaluator
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.timing import TimingStack
    from sklearn.linear_model import LogisticRegression

    cache = EmbeddingCache()
    task = ClassificationTask.from_file(BANKING)
    result = task.evaluate(minilm_onnx, cache=cache)
    train = cache.encode(minilm_onnx, task.train_texts)
    test = cache.encode(minilm_onnx, task.test_texts)

    train_ds = Dataset.from_dict({"text": task.train_texts, "label": task.train_labels})
    eval_ds = Dataset.from_dict({"text": task.test_texts, "label": task.test_labels})
    idxs = None
    accs, f1s = [], []
    ours_subsets = undersample(task.train_labels, 8, 10, 42)
    for i in range(10):
        subset, idxs, chosen = AbsTaskClassification._undersample_data(_mteb_self(), train_ds, i, idxs)
        assert chosen == ours_subsets[i]
        ev = SklearnEvaluator(subset, eval_ds, label_column_name="label",
                              evaluator_model=LogisticRegression(max_iter=100, random_state=42))
        pred = ev(train[chosen], test)
        scores = AbsTaskClassification._calculate_scores(None, task.test_labels, pred)
        accs.append(scores["accuracy"])
        f1s.append(scores["f1"])
    assert result.scores["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert result.scores["f1"] == pytest.approx(np.mean(f1s), abs=1e-6)
    assert result.main_score > 0.6 and result.scores["knn_accuracy"] > 0.6
    _same_as_before_split("minilm/classification", result.scores)

    clustering = ClusteringTask.from_file(BANKING)
    cres = clustering.evaluate(minilm_onnx, cache=cache)
    vectors = cache.encode(minilm_onnx, clustering.texts)

    class _Precomputed:
        def encode(self, *args, **kwargs):
            return vectors

    ds = Dataset.from_dict({"text": clustering.texts, "label": clustering.labels})
    ev = ClusteringEvaluator(ds, input_column_name="text", label_column_name="label",
                             task_metadata=SimpleNamespace(modalities=["text"]), hf_split="test",
                             hf_subset="default", timer=TimingStack(), seed=42)
    from sklearn.metrics import v_measure_score

    ref = v_measure_score(clustering.labels, ev(_Precomputed(), encode_kwargs={}))
    assert cres.scores["v_measure"] == pytest.approx(ref, abs=1e-6)
    assert cres.main_score > 0.5
    _same_as_before_split("minilm/clustering", cres.scores)


@pytest.mark.slow
def test_pair_classification_matches_mteb(minilm_onnx):
    from mteb.abstasks.pair_classification import AbsTaskPairClassification

    cls = AbsTaskPairClassification
    mteb_self = SimpleNamespace(
        _find_best_acc_and_threshold=lambda *a: cls._find_best_acc_and_threshold(None, *a),
        _find_best_f1_and_threshold=lambda *a: cls._find_best_f1_and_threshold(None, *a))
    task = PairClassificationTask.from_file(DATA / "sick" / "SICK_trial-300.txt")
    cache = EmbeddingCache()
    result = task.evaluate(minilm_onnx, cache=cache)
    a = cache.encode(minilm_onnx, task.sentences1)
    b = cache.encode(minilm_onnx, task.sentences2)
    y = np.asarray(task.labels)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ref = cls._compute_metrics_values(mteb_self, cos.tolist(), y, True)
    for metric in ("accuracy", "f1", "precision", "recall", "ap"):
        assert result.scores[f"cosine_{metric}"] == pytest.approx(ref[metric], abs=1e-6), metric
    man = np.abs(a - b).sum(1)
    ref = cls._compute_metrics_values(mteb_self, man.tolist(), y, False)
    assert result.scores["manhattan_ap"] == pytest.approx(ref["ap"], abs=1e-6)
    assert result.main_score == result.scores["max_ap"] > 0.5
    _same_as_before_split("minilm/pair-classification", result.scores)


@pytest.mark.slow
def test_bitext_multilingual_encoders_beat_minilm(minilm_onnx):
    from embedsmith import load_encoder

    task = BitextTask.from_files(DATA / "tatoeba" / "tatoeba.deu-eng.deu", DATA / "tatoeba" / "tatoeba.deu-eng.eng")
    base = task.evaluate(minilm_onnx)
    assert set(base.scores) >= {"accuracy", "f1", "reverse_accuracy", "reverse_f1"}
    assert base.languages == ["deu", "eng"]
    _same_as_before_split("minilm/bitext", base.scores)
    for alias in ("e5-small-multilingual", "use-multilingual"):
        multi = task.evaluate(load_encoder(alias))
        assert multi.main_score > 0.8 and multi.main_score > base.main_score + 0.4, (alias, multi.main_score)
