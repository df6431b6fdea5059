"""Answer selection (best-of-N vanilla, weighted, majority) and ROC-AUC."""

import numpy as np
import pytest

from ttcjax.search.selection import best_of_n, group_answers, majority, weighted
from ttcjax.verifiers.base import concordance, concordance_within_groups, roc_auc


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


def test_concordance_weighs_pairs_by_how_far_apart_their_labels_are():
    assert concordance([1, 2, 3], [0, 0.5, 1]) == 1.0
    assert concordance([3, 2, 1], [0, 0.5, 1]) == 0.0
    # pairs (0,1) weigh 1 and (0,2) 0.5, both ordered right; (1,2) weighs 0.5, ordered wrong: 1.5 of 2
    assert concordance([1, 2, 3], [0, 1, 0.5]) == pytest.approx(0.75)
    assert concordance([1, 1, 2], [0, 1, 1]) == pytest.approx(0.75)  # a score tie counts half
    assert np.isnan(concordance([1, 2], [0.3, 0.3]))
    assert np.isnan(concordance([np.nan, 1, 2], [0, 0.5, 1]))  # a NaN score is ordered neither way
    assert np.isnan(concordance_within_groups([np.nan, 1, 2, 3], [0, 1, 0, 1], [0, 0, 1, 1]))
    rng = np.random.default_rng(1)  # with labels 0 and 1 it is the ROC-AUC
    scores, labels = rng.normal(size=300).round(1), rng.integers(0, 2, 300)
    assert concordance(scores, labels) == pytest.approx(roc_auc(scores, labels))


def test_concordance_within_groups_sees_past_how_hard_each_group_is():
    """A score that knows each question's difficulty and nothing else orders the steps of all questions well, and
    those of one question no better than chance; one that ranks within a question does both."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 8)
    hardness = rng.uniform(0, 1, 50)[groups]
    labels = np.clip(hardness + rng.normal(0, 0.2, len(groups)), 0, 1)
    knows_hardness = hardness + 0.0
    assert concordance(knows_hardness, labels) > 0.75
    assert concordance_within_groups(knows_hardness, labels, groups) == pytest.approx(0.5)
    assert concordance_within_groups(labels, labels, groups) == 1.0
    one_group = groups == 3
    assert concordance_within_groups(-labels, labels, groups) == 0.0
    assert concordance_within_groups(labels[one_group] * 0 + 1, labels[one_group], groups[one_group]) == 0.5
    assert np.isnan(concordance_within_groups([1, 2, 3], [0.5, 0.5, 1.0], ["a", "a", "b"]))  # no group varies
