"""How sure an experiment's numbers are: percentile-bootstrap 95% intervals over questions, and paired comparisons
(the same questions) of one quantity against another.

Every number of a report is a function of per-question outcomes (each strategy's 0/1 correctness at each budget,
the larger model's greedy answers, each revision chain's pass@1, ...). `Resamples` draws the questions with
replacement `resamples` times, seeded, as a matrix of counts [1 + resamples, questions] whose row 0 is the questions
themselves (every count 1). A quantity is computed once on all rows, so row 0 is its value and rows 1: its bootstrap
distribution; every quantity of one report reads the same rows, so two of them over the same questions are paired:
on each row their difference is the difference on the same drawn questions. An interval is the 2.5th and 97.5th
percentiles over the resamples where the quantity is defined (a level none of whose questions was drawn is left
out of that level's numbers).

`cross_validated` redoes the compute-optimal choice (`ttcjax.eval.scheduler.select_strategies`: the best strategy per
difficulty level by k-fold cross-validation inside the level) on every row, so the interval on a compute-optimal
curve includes the noise of the choice itself.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 2000  # bootstrap resamples of the questions
CONFIDENCE = 0.95  # the intervals' coverage


@dataclasses.dataclass(frozen=True)
class Interval:
    """A number and its 95% bootstrap interval: `value` on the questions themselves, [lo, hi] the percentiles over
    the resamples (lo <= hi; the value lies between them unless the distribution is very skewed)."""

    value: float
    lo: float
    hi: float

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


class Verdict(enum.StrEnum):
    BETTER = "better"  # the interval of a - b lies above 0
    WORSE = "worse"  # it lies below 0
    WITHIN_NOISE = "within_noise"  # it contains 0


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`a` minus `b` on the same questions: the difference and its paired bootstrap interval, and what it says."""

    a: str
    b: str
    difference: Interval
    verdict: Verdict


def verdict(difference: Interval) -> Verdict:
    return (Verdict.BETTER if difference.lo > 0 else Verdict.WORSE if difference.hi < 0 else Verdict.WITHIN_NOISE)


@dataclasses.dataclass(frozen=True, eq=False)
class Resamples:
    """The questions drawn with replacement: `counts[r, q]` is how often question q is in row r; row 0 is the
    questions themselves. Every method returns one value per row, [1 + resamples]."""

    counts: np.ndarray  # [1 + resamples, questions]
    seed: int

    @classmethod
    def draw(cls, questions: int, resamples: int = RESAMPLES, seed: int = 0) -> "Resamples":
        if questions < 1 or resamples < 1:
            raise ValueError(f"a bootstrap needs questions >= 1 and resamples >= 1 (got {questions}, {resamples}).")
        drawn = np.random.default_rng(seed).integers(0, questions, (resamples, questions))  # [resamples, questions]
        rows = np.arange(resamples)[:, None] * questions
        counts = np.bincount((drawn + rows).ravel(), minlength=resamples * questions).reshape(resamples, questions)
        return cls(np.concatenate([np.ones((1, questions), np.int64), counts]).astype(np.float64), seed)

    @property
    def resamples(self) -> int:
        return self.counts.shape[0] - 1

    @property
    def questions(self) -> int:
        return self.counts.shape[1]

    def total(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The sum of `values` [questions] over each row's drawn questions (those in `mask`)."""
        values = np.asarray(values, np.float64)
        if mask is None:
            return self.counts @ values
        return self.counts[:, mask] @ values[mask]

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The mean of `values` [questions] over each row's drawn questions (those in `mask`); NaN in a row that
        draws none of them."""
        return self.ratio(values, np.ones(self.questions), mask)

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """sum(numerator) / sum(denominator) over each row's drawn questions (those in `mask`); NaN where the
        denominator sums to 0."""
        num, den = self.total(numerator, mask), self.total(denominator, mask)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    def interval(self, values: np.ndarray) -> Interval:
        """`values` [1 + resamples] (a quantity on every row) as its value and percentile interval."""
        values = np.asarray(values, np.float64)
        drawn = values[1:][np.isfinite(values[1:])]
        tail = (1 - CONFIDENCE) / 2
        lo, hi = np.quantile(drawn, [tail, 1 - tail]) if drawn.size else (np.nan, np.nan)
        return Interval(value=float(values[0]), lo=float(lo), hi=float(hi))

    def compare(self, a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> Comparison:
        """`a` minus `b`, two quantities on every row (over the same questions), with its paired interval."""
        difference = self.interval(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        return Comparison(a=a_name, b=b_name, difference=difference, verdict=verdict(difference))


def mean_of(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of quantities on every row (each [1 + resamples]), over those defined in each row (NaN where none
    is): the mean over levels of per-level accuracies, as the report averages them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row where every quantity is undefined
        return np.nanmean(np.stack(rows), axis=0)


def cross_validated(resamples: Resamples, correct: Mapping[str, np.ndarray], levels: np.ndarray,
                    folds: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The held-out accuracy of choosing a strategy per level by cross-validation, the choice redone on every row:
    per level and over all questions (levels weighted by their drawn questions), each [1 + resamples].

    `correct`: strategy -> [questions] 0/1 at one budget, in the order `select_strategies` lists them (ties go to the
    first); `levels`, `folds`: [questions] each question's level and fold. Inside a level each fold's strategy is the
    one right most often on the level's other folds, scored on the fold; a level's accuracy is the mean over its
    folds with a drawn question. On row 0 this is `select_strategies`' cv_accuracy."""
    names = list(correct)
    right = np.stack([np.asarray(correct[n], np.float64) for n in names], axis=1)  # [questions, strategies]
    levels, folds = np.asarray(levels), np.asarray(folds)
    rows = np.arange(resamples.counts.shape[0])
    by_level: dict[int, np.ndarray] = {}
    total = np.zeros(len(rows))
    for level in sorted(set(levels.tolist())):
        scores = []
        for fold in sorted(set(folds[levels == level].tolist())):
            train = (levels == level) & (folds != fold)
            test = (levels == level) & (folds == fold)
            # equal train weights for every strategy: the most right answers is the highest accuracy
            pick = np.argmax(resamples.counts[:, train] @ right[train], axis=1)  # [rows]; ties: the first listed
            hits = (resamples.counts[:, test] @ right[test])[rows, pick]
            weight = resamples.counts[:, test].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                scores.append(np.where(weight > 0, hits / np.where(weight > 0, weight, 1), np.nan))
        by_level[level] = mean_of(scores)
        drawn = resamples.total(np.ones(len(levels)), levels == level)
        total += np.where(drawn > 0, np.nan_to_num(by_level[level]) * drawn, 0.0)
    return by_level, total / resamples.counts.sum(axis=1)


def saving(compute_optimal: Sequence[np.ndarray], best_of_n: Sequence[np.ndarray], budgets: Sequence[int]
           ) -> np.ndarray:
    """How many times fewer generations compute-optimal needs than best-of-N for best-of-N's accuracy at the top
    budget, on every row: (the smallest budget where best-of-N itself reaches it) / (the smallest budget where
    compute-optimal does); 0 where compute-optimal does not reach it within the budgets. `compute_optimal`,
    `best_of_n`: one [1 + resamples] array per budget of `budgets` (ascending)."""
    co, bon = np.stack(compute_optimal), np.stack(best_of_n)  # [budgets, rows]
    target = bon[-1] - 1e-12
    sizes = np.asarray(budgets, np.float64)[:, None]
    own = np.min(np.where(bon >= target, sizes, np.inf), axis=0)  # the top budget reaches it: finite
    matched = np.min(np.where(co >= target, sizes, np.inf), axis=0)
    return np.where(np.isfinite(matched), own / matched, 0.0)


def encode(outcomes: Sequence[int | bool]) -> str:
    """0/1 per question as one string of "0" and "1", in question order (report.json's per-question outcomes)."""
    return "".join("1" if x else "0" for x in outcomes)


def decode(text: str) -> np.ndarray:
    """`encode`'s string back to [questions] 0/1."""
    if set(text) - {"0", "1"}:
        raise ValueError(f"per-question outcomes {text[:20]!r}...: expected a string of 0 and 1, one per question.")
    return np.frombuffer(text.encode(), np.uint8) - ord("0")
