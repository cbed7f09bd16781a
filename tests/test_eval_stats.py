"""Significance of differences: paired bootstrap and permutation p-values, and `embedsmith eval compare`."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, v_measure_score

from embedsmith.errors import ResultMismatchError
from embedsmith.evaluation import STSTask
from embedsmith.evaluation.compare import compare_results
from embedsmith.evaluation.stats import STATISTICS, paired_bootstrap, spearman
from test_cli import run
from test_eval_tasks import DATA, Hashing


def test_interval_equals_a_direct_numpy_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.random(200)
    b = a + 0.05 + 0.1 * rng.normal(size=200)
    c = paired_bootstrap(a, b, resamples=2000, seed=7)
    direct = np.random.default_rng(7)
    boot = (b - a)[direct.integers(0, 200, size=(2000, 200))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert c.ci_low == pytest.approx(lo, abs=1e-12) and c.ci_high == pytest.approx(hi, abs=1e-12)
    assert c.diff == pytest.approx((b - a).mean()) and c.verdict == "B better" and c.p_value < 0.01
    same = paired_bootstrap(a, a, resamples=500)
    assert same.diff == 0 and same.verdict == "no significant difference" and same.p_value == 1.0
    assert paired_bootstrap(b, a, resamples=500).verdict == "A better"


def test_corpus_statistics_equal_their_references():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=300), rng.integers(0, 5, 300).astype(float)
    rows = np.stack([x, y], 1)[None]
    assert STATISTICS["spearman"](rows)[0] == pytest.approx(spearman(x, y), abs=1e-12)
    labels = (rng.random(300) < 0.4).astype(float)
    scores = np.round(rng.random(300), 2)  # ties
    ap = STATISTICS["average_precision"](np.stack([scores, labels], 1)[None])[0]
    assert ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    gold, pred = rng.integers(0, 6, 300), rng.integers(0, 4, 300)
    vm = STATISTICS["v_measure"](np.stack([gold, pred], 1)[None].astype(float))[0]
    assert vm == pytest.approx(v_measure_score(gold, pred), abs=1e-12)


def test_compare_cli_same_encoder_and_refused_data(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("\n".join((DATA / "stsb" / "stsb-en-dev.csv").read_text().splitlines()[:300]) + "\n")
    task = STSTask.from_file(sts)
    r1, r2 = task.evaluate(Hashing()), task.evaluate(Hashing())
    r1.save(tmp_path / "a.json")
    r2.save(tmp_path / "b.json")
    assert "embedsmith" in json.loads((tmp_path / "a.json").read_text())  # the MTEB JSON itself is unchanged
    out = json.loads(run("eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json",
                         "--resamples", "1000").stdout)
    assert set(out) == {"main_score", "spearman_cosine", "pearson_cosine"}
    assert all(v["verdict"] == "no significant difference" and v["diff"] == 0 for v in out.values())
    other = tmp_path / "other.csv"
    other.write_text(sts.read_text().replace("5.000", "4.000", 1) + "x,y,1\n")
    STSTask.from_file(other, name="sts").evaluate(Hashing()).save(tmp_path / "c.json")
    bad = run("eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "c.json"), check=False)
    assert bad.returncode == 1 and "different data" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(ResultMismatchError):
        compare_results(r1, STSTask.from_file(other, name="sts").evaluate(Hashing()))


class CountingHashing(Hashing):
    """The hashing encoder with a fingerprint (so its results are cached), counting its encode calls."""

    fingerprint = "hashing-v1"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().encode(texts)


def test_result_cache_hit_and_invalidation(tmp_path):
    from embedsmith.evaluation.result_cache import ResultCache

    sts = tmp_path / "sts.csv"
    sts.write_text("\n".join((DATA / "stsb" / "stsb-en-dev.csv").read_text().splitlines()[:200]) + "\n")
    cache = ResultCache(tmp_path / "results")
    enc = CountingHashing()
    first = STSTask.from_file(sts).evaluate(enc, result_cache=cache)
    assert not first.cached and enc.calls == 1 and len(list((tmp_path / "results").glob("*.json"))) == 1
    hit = STSTask.from_file(sts).evaluate(enc, result_cache=cache)  # same model, file content and settings
    assert hit.cached and enc.calls == 1
    assert hit.scores == first.scores and hit.items is not None and hit.items.ids == first.items.ids
    # The stored per-item data compares as the computed one does.
    assert [c.diff for c in compare_results(first, hit, resamples=200)] == [0.0, 0.0, 0.0]
    # A setting that changes the result is another entry: dims, precision.
    assert not STSTask.from_file(sts).evaluate(enc, dims=64, result_cache=cache).cached and enc.calls == 2
    assert not STSTask.from_file(sts).evaluate(enc, precision="int8", result_cache=cache).cached
    assert STSTask.from_file(sts).evaluate(enc, dims=64, result_cache=cache).cached and enc.calls == 3
    # Another model (fingerprint) or prompt.
    other = CountingHashing()
    other.fingerprint = "hashing-v2"
    assert not STSTask.from_file(sts).evaluate(other, result_cache=cache).cached
    prompted = CountingHashing()
    prompted.prompts = {"query": "query: "}  # type: ignore[attr-defined]
    assert not STSTask.from_file(sts).evaluate(prompted, result_cache=cache).cached
    # The file's content changed under the same name: computed again, and the new score differs.
    lines = sts.read_text().splitlines()
    sts.write_text("\n".join(lines[:-1]) + "\n")
    changed = STSTask.from_file(sts).evaluate(enc, result_cache=cache)
    assert not changed.cached and changed.n_examples == first.n_examples - 1
    # No cache given (the CLI's --no-cache) computes; an encoder without a fingerprint is never stored.
    calls = enc.calls
    assert not STSTask.from_file(sts).evaluate(enc).cached and enc.calls == calls + 1
    before = len(list((tmp_path / "results").glob("*.json")))
    STSTask.from_file(sts).evaluate(Hashing(), result_cache=cache)
    assert len(list((tmp_path / "results").glob("*.json"))) == before
    # A torn entry is a miss, computed and stored again.
    for f in (tmp_path / "results").glob("*.json"):
        f.write_text("{")
    assert not STSTask.from_file(sts).evaluate(enc, result_cache=cache).cached
    assert STSTask.from_file(sts).evaluate(enc, result_cache=cache).cached


def test_every_metric_with_item_data_reproduces_its_score_and_a_rerun_is_no_different():
    from embedsmith.evaluation import EmbeddingCache
    from test_eval_tasks import _all_tasks

    cache = EmbeddingCache()
    covered = {}
    for name, task in _all_tasks().items():
        first, again = task.evaluate(Hashing(), cache=cache), task.evaluate(Hashing(), cache=cache)
        assert first.items is not None
        covered[name] = set(first.items.metrics)
        for metric, m in first.items.metrics.items():  # the statistic on all items is the reported score
            value = STATISTICS[m.statistic](m.rows[None])[0]
            assert value == pytest.approx(first.scores[metric], abs=1e-9), (name, metric)
        rows = compare_results(first, again, resamples=300)  # two runs of the same model
        assert {c.metric for c in rows} == covered[name]
        assert all(c.diff == 0 and c.p_value == 1 and c.verdict == "no significant difference" for c in rows)
    assert {"accuracy", "f1", "knn_accuracy", "knn_f1"} <= covered["classification"]
    assert {"max_ap", "max_accuracy", "max_f1", "cosine_accuracy", "cosine_f1"} <= covered["pair-classification"]
    assert {"f1", "reverse_f1", "accuracy"} <= covered["bitext"] and "v_measure" in covered["clustering"]


class RandomEncoder:
    """A vector per text drawn from a generator seeded by the text: no meaning at all."""

    name = "random"

    def encode(self, texts):  # type: ignore[no-untyped-def]
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=64) for t in texts]
                        ).astype(np.float32)


@pytest.mark.slow
def test_compare_minilm_against_a_random_encoder_is_significant(minilm_onnx, tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("\n".join((DATA / "stsb" / "stsb-en-dev.csv").read_text().splitlines()[:200]) + "\n")
    task = STSTask.from_file(sts)
    task.evaluate(RandomEncoder()).save(tmp_path / "random.json")
    task.evaluate(minilm_onnx).save(tmp_path / "minilm.json")
    out = json.loads(run("eval", "compare", str(tmp_path / "random.json"), str(tmp_path / "minilm.json"), "--json",
                         "--resamples", "2000").stdout)
    assert set(out) == {"main_score", "spearman_cosine", "pearson_cosine"}
    for metric, c in out.items():
        assert c["verdict"] == "B better" and c["ci_low"] > 0 and c["p_value"] < 0.01, metric


def test_counted_resamples_equal_gathered_ones():
    # Mean, Pearson and Spearman resample as item counts over a pool (no sort per resample); the same draws
    # gathered and scored row by row give the same interval and p-value.
    from scipy.stats import rankdata

    from embedsmith.evaluation.stats import compare_metric, weighted_ranks

    rng = np.random.default_rng(0)
    values = np.round(rng.random(40) * 4)  # ties
    w = rng.integers(0, 3, (5, 40)).astype(float)
    for row, weights in zip(weighted_ranks(values, w), w, strict=True):
        expanded = np.repeat(values, weights.astype(int))
        ranks = rankdata(expanded)
        assert np.allclose(row[weights > 0], [ranks[expanded == v][0] for v in values[weights > 0]])
    a = np.column_stack([rng.random(300), np.round(rng.random(300) * 5)])
    b = a.copy()
    b[:, 0] += 0.3 * rng.normal(size=300)
    for name, xa, xb in (("spearman", a, b), ("pearson", a, b), ("mean", a[:, 0], b[:, 0])):
        fast = compare_metric(name, xa, xb, statistic=name, resamples=1000, seed=3)
        slow = compare_metric(name, xa, xb, statistic=STATISTICS[name], resamples=1000, seed=3)
        assert fast.ci_low == pytest.approx(slow.ci_low, abs=1e-12) and fast.p_value == slow.p_value, name
        assert fast.ci_high == pytest.approx(slow.ci_high, abs=1e-12), name
