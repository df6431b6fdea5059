"""Bootstrap intervals and paired comparisons where the truth is known: Bernoulli questions whose intervals must cover
the true rate about 95% of the time with the binomial width, identical strategies within noise, a strategy right on
every question the other is and more, and the cross-validated choice redone on resamples equal to the scheduler's on
the questions themselves."""

import numpy as np
import pytest

from ttcjax.eval.scheduler import fold_assignment, overall, select_strategies
from ttcjax.eval.uncertainty import CONFIDENCE, Interval, Resamples, Verdict, cross_validated, decode, encode, saving


def test_intervals_cover_a_known_rate_about_95_percent_of_the_time_with_the_binomial_width():
    p, n, trials = 0.3, 60, 2000
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for trial in range(trials):
        outcomes = rng.random(n) < p  # [questions] Bernoulli(p)
        rows = Resamples.draw(n, seed=trial)
        interval = rows.interval(rows.mean(outcomes))
        assert interval.value == outcomes.mean() and interval.lo <= interval.value <= interval.hi
        covered += interval.contains(p)
        widths.append(interval.hi - interval.lo)
    # the coverage of `trials` independent intervals is binomial around 95%: within 3.5 standard deviations
    tolerance = 3.5 * np.sqrt(CONFIDENCE * (1 - CONFIDENCE) / trials)
    assert abs(covered / trials - CONFIDENCE) <= tolerance, covered / trials
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.1)


def test_the_width_shrinks_with_the_square_root_of_the_questions():
    rng = np.random.default_rng(1)
    for n in (100, 400):
        outcomes = rng.random(n) < 0.5
        rows = Resamples.draw(n, seed=n)
        interval = rows.interval(rows.mean(outcomes))
        assert interval.hi - interval.lo == pytest.approx(2 * 1.96 * np.sqrt(0.25 / n), rel=0.15), n


def test_the_row_zero_is_the_questions_themselves_and_the_draws_are_seeded():
    rows = Resamples.draw(7, resamples=50, seed=3)
    assert rows.counts.shape == (51, 7) and (rows.counts[0] == 1).all()
    assert (rows.counts.sum(axis=1) == 7).all()  # every resample draws as many questions as there are
    assert (Resamples.draw(7, resamples=50, seed=3).counts == rows.counts).all()
    assert not (Resamples.draw(7, resamples=50, seed=4).counts == rows.counts).all()
    # a level none of whose questions a resample draws is undefined there and left out of the interval
    mask = np.arange(7) == 0
    means = rows.mean(np.ones(7), mask)
    assert np.isnan(means[rows.counts[:, 0] == 0]).all() and rows.interval(means) == Interval(1.0, 1.0, 1.0)


def test_identical_strategies_are_within_noise_and_a_strategy_right_more_often_is_better():
    rng = np.random.default_rng(2)
    a = (rng.random(200) < 0.5).astype(int)
    rows = Resamples.draw(200)
    same = rows.compare(rows.mean(a), rows.mean(a.copy()), "a", "a again")
    assert same.verdict is Verdict.WITHIN_NOISE and same.difference == Interval(0.0, 0.0, 0.0)
    # right wherever a is, and on 30 more questions: better on every resample that draws one of them
    better = a.copy()
    better[np.flatnonzero(a == 0)[:30]] = 1
    c = rows.compare(rows.mean(better), rows.mean(a), "better", "a")
    assert c.verdict is Verdict.BETTER and c.difference.value == pytest.approx(0.15) and c.difference.lo > 0
    assert rows.compare(rows.mean(a), rows.mean(better), "a", "better").verdict is Verdict.WORSE
    # two independent strategies of the same skill: their difference is noise
    other = (rng.random(200) < 0.5).astype(int)
    assert rows.compare(rows.mean(other), rows.mean(a), "other", "a").verdict is Verdict.WITHIN_NOISE


def test_paired_beats_unpaired_when_the_strategies_share_their_hard_questions():
    """Two strategies right on nearly the same questions: the paired interval of their difference is far narrower
    than the two accuracies' intervals suggest, so a small but consistent gain is told from noise."""
    rng = np.random.default_rng(3)
    a = (rng.random(300) < 0.5).astype(int)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:12]] = 1  # +0.04, on 12 questions
    rows = Resamples.draw(300)
    ia, ib = rows.interval(rows.mean(a)), rows.interval(rows.mean(b))
    assert ia.hi > ib.lo  # the two intervals overlap ...
    assert rows.compare(rows.mean(b), rows.mean(a), "b", "a").verdict is Verdict.BETTER  # ... the paired one does not


def test_the_cross_validated_choice_on_the_questions_themselves_is_the_schedulers():
    rng = np.random.default_rng(4)
    q, budgets = 90, (4, 16)
    levels = rng.integers(1, 4, q)
    correct = {(name, b): (rng.random(q) < p).astype(int) for name, p in (("x", 0.4), ("y", 0.5), ("z", 0.45))
               for b in budgets}
    selection = select_strategies(correct, levels, folds=3, seed=5, baseline="x")
    folds = fold_assignment(levels, 3, seed=5)
    rows = Resamples.draw(q, resamples=200)
    for b in budgets:
        by_level, total = cross_validated(rows, {n: c for (n, bb), c in correct.items() if bb == b}, levels, folds)
        assert {lv: v[0] for lv, v in by_level.items()} == pytest.approx(
            {lv: selection.cv_accuracy[(lv, b)] for lv in (1, 2, 3)})
        assert total[0] == pytest.approx(overall(selection.cv_accuracy, levels, b))
        assert np.isfinite(total).all() and ((0 <= total) & (total <= 1)).all()


def test_the_saving_of_compute_optimal_over_best_of_n():
    budgets = (4, 16, 64)
    one = lambda *xs: [np.array([x]) for x in xs]  # noqa: E731  one row per budget
    # compute-optimal reaches best-of-N's N=64 accuracy at N=16: 4x
    assert saving(one(0.3, 0.6, 0.7), one(0.2, 0.4, 0.6), budgets) == [4.0]
    # best-of-N itself is already there at N=16: no saving over it
    assert saving(one(0.3, 0.6, 0.7), one(0.2, 0.6, 0.6), budgets) == [1.0]
    # never reached: 0
    assert saving(one(0.1, 0.2, 0.5), one(0.2, 0.4, 0.6), budgets) == [0.0]


def test_outcomes_are_strings_of_zeros_and_ones():
    assert encode([1, 0, True, False]) == "1010"
    assert decode("1010").tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="a string of 0 and 1"):
        decode("10x")
