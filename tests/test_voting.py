"""Answer selection (best-of-N vanilla, weighted, majority) and ROC-AUC."""

import numpy as np
import pytest

from ttcjax.search.selection import best_of_n, group_answers, majority, weighted
from ttcjax.verifiers.base import roc_auc


def test_the_three_selections_disagree_where_they_should():
    answers = [7, 5, 5, 5, 7, None]
    scores = [0.95, 0.3, 0.3, 0.3, 0.5, 0.99]
    assert best_of_n(scores) == 5  # the highest score, even without an answer
    assert answers[majority(answers)] == 5  # three votes against two
    assert answers[weighted(answers, scores)] == 7  # 1.45 against 0.9
    assert weighted(answers, scores) == 0  # the group's best-scored member


def test_equivalence_and_ties():
    answers = ["1/2", "0.5", "2"]
    half = lambda a, b: float(eval(a)) == float(eval(b))  # noqa: E731
    assert group_answers(answers, half) == [0, 0, 1]
    assert majority(answers, half) == 0
    assert majority([3, 4]) == 0  # a tie goes to the answer seen first
    assert majority([None, None]) == 0
    assert group_answers([None, 1, None, 1]) == [-1, 0, -1, 0]


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 400), rng.normal(0, 1, 300)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(np.r_[pos, neg], np.r_[np.ones(400), np.zeros(300)]) == pytest.approx(brute)
