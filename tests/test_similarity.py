from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from embedsmith import InvalidInputError, analogy, pairwise, top_k
from embedsmith.similarity import higher_is_closer

rng = np.random.default_rng(0)
A = rng.normal(size=(7, 16)).astype(np.float32)
B = rng.normal(size=(11, 16)).astype(np.float32)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("cosine", lambda a, b: 1 - cdist(a, b, "cosine")),
        ("dot", lambda a, b: a.astype(np.float64) @ b.T),
        ("l2", lambda a, b: cdist(a, b, "euclidean")),
        ("manhattan", lambda a, b: cdist(a, b, "cityblock")),
    ],
)
def test_pairwise_matches_scipy(metric, reference):
    got = pairwise(A, B, metric)
    assert got.shape == (7, 11)
    np.testing.assert_allclose(got, reference(A, B), rtol=1e-4, atol=1e-4)


def test_pairwise_self_and_vector_input():
    m = pairwise(A)
    np.testing.assert_allclose(np.diag(m), 1, atol=1e-5)
    assert pairwise(A[0], B).shape == (1, 11)


def test_pairwise_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="dimensions differ: a has 16, b has 3"):
        pairwise(A, B[:, :3])
    with pytest.raises(InvalidInputError, match=r"unknown metric 'hamming'.*cosine, dot, l2, manhattan"):
        pairwise(A, B, "hamming")


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2", "manhattan"])
def test_top_k_matches_full_sort(metric):
    scores = pairwise(A, B, metric)
    order = np.argsort(-scores if higher_is_closer(metric) else scores, axis=1, kind="stable")[:, :4]
    res = top_k(A, B, 4, metric=metric)
    np.testing.assert_array_equal(res.indices, order)
    np.testing.assert_allclose(res.scores, np.take_along_axis(scores, order, 1))


def test_top_k_exclude_and_cap():
    res = top_k(A[:1], B, 50, exclude=[[0, 1, 2]])
    assert res.indices.shape == (1, 8)
    assert not {0, 1, 2} & set(res.indices[0].tolist())
    with pytest.raises(InvalidInputError, match="k must be a positive integer, got 0"):
        top_k(A, B, 0)


def test_analogy_on_vectors_is_a_minus_b_plus_c():
    cand = rng.normal(size=(20, 16)).astype(np.float32)
    a, b, c = cand[3], cand[4], cand[5]
    target = a - b + c
    cand[9] = target * 2  # same direction: cosine 1
    ranked = analogy(a, b, c, cand, k=3)
    assert ranked[0][0] == 9
    assert ranked[0][1] == pytest.approx(1.0, abs=1e-5)
    assert ranked[1][1] <= ranked[0][1]


def test_analogy_text_needs_encoder():
    with pytest.raises(InvalidInputError, match="needs an encoder"):
        analogy("king", "man", "woman", ["queen"])
