"""What an experiment's report shows, as data: `analyze(report) -> Findings`.

The report (`ttcjax.eval.experiment`'s report.json) holds the measurements; the findings are the paper's
claims checked against them: whether compute-optimal search saves generations over best-of-N weighted, how
much of best-of-N's coverage its verifier turns into accuracy, whether beam search beats best-of-N on the
hardest questions at low budgets, where the small policy with search beats a larger model at matched FLOPs, and
for revision strategies (the paper's section 6) sequential against parallel at equal budget, the best
sequential:parallel ratio per difficulty level, and compute-optimal revisions against best-of-N weighted.
Every comparison is made here, once; `ttcjax.eval.report` only renders the result, and tests check these
fields rather than prose.

Where the report holds its per-question outcomes (report["per_question"], written by `ttcjax experiment`), every
accuracy gets a 95% bootstrap interval over questions and every comparison is paired (the same questions, the same
resamples: `ttcjax.eval.uncertainty`): a side wins only where the interval of the difference excludes 0, and a
difference whose interval contains 0 is within noise (a tie). The compute-optimal curves and the efficiency saving
redo the cross-validated choice on every resample. A report without per-question outcomes (written before them, or
made by hand) keeps point comparisons (a difference above 1e-9 wins) and has no intervals, and its rows of the
paper-versus-ttcjax table (`PaperFinding`) are inconclusive for want of data.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Sequence

import numpy as np

from ttcjax.eval.uncertainty import (RESAMPLES, Comparison, Interval, Resamples, Verdict, cross_validated, decode,
                                     mean_of, saving)
from ttcjax.search.strategies import Revisions, StrategySpec

# accuracies are means of 0/1 over a few questions: differences below these are ties, not findings
_BETTER = 1e-9
_REACHED = 1e-12


class EfficiencyVerdict(enum.StrEnum):
    SEARCH_ADDS_NOTHING = "search_adds_nothing"  # best-of-N alone reaches it at a budget <= compute-optimal's
    FEWER_GENERATIONS = "fewer_generations"  # compute-optimal reaches it with `factor` times fewer generations
    NOT_REACHED = "not_reached"  # compute-optimal does not reach it within the budgets


class Winner(enum.StrEnum):
    SEQUENTIAL = "sequential"  # the more sequential side is above the other: the paired interval excludes 0
    PARALLEL = "parallel"
    TIE = "tie"  # within noise (the interval contains 0); without per-question outcomes, within 1e-9


class RatioPlace(enum.StrEnum):
    FULLY_SEQUENTIAL = "fully_sequential"  # one chain of every attempt
    INTERIOR = "interior"  # some chains of some attempts each
    FULLY_PARALLEL = "fully_parallel"  # one attempt per chain


class BeamVerdict(enum.StrEnum):
    BEATS = "beats"  # some beam beats best-of-N (beyond noise, where intervals exist) at every low budget
    BEATS_AT_SOME = "beats_at_some"
    DOES_NOT_BEAT = "does_not_beat"


class Reproduction(enum.StrEnum):
    REPRODUCED = "reproduced"  # every comparison the finding makes goes its way beyond noise
    NOT_REPRODUCED = "not_reproduced"  # some comparison goes the other way beyond noise
    INCONCLUSIVE = "inconclusive"  # some comparison is within noise, or the data to make it are missing


@dataclasses.dataclass(frozen=True)
class Intervals:
    """95% bootstrap intervals over questions (`ttcjax.eval.uncertainty`, every one from the same resamples) on
    every accuracy the report shows. Budgets and levels are strings, as in report.json."""

    resamples: int
    seed: int
    accuracy: dict[str, dict[str, Interval]]  # strategy -> budget
    per_level: dict[str, dict[str, dict[str, dict[str, Interval]]]]  # signal -> level -> strategy -> budget
    compute_optimal: dict[str, dict[str, Interval]]  # signal -> budget: held-out, the choice redone per resample
    compute_optimal_by_level: dict[str, dict[str, dict[str, Interval]]]  # signal -> level -> budget
    revisions_compute_optimal: dict[str, dict[str, Interval]]  # signal -> budget, among revision strategies
    coverage: dict[str, Interval]  # the baseline's (a right answer among its candidates), by budget
    large_greedy: Interval | None  # the larger model answering greedily; None without it
    large_greedy_by_level: dict[str, Interval]  # by oracle level


@dataclasses.dataclass(frozen=True)
class Efficiency:
    """Compute-optimal against best-of-N weighted's accuracy at the top budget, for one difficulty signal."""

    signal: str  # "oracle" or "predicted" bins
    top_budget: int
    compute_optimal_budget: int | None  # the smallest budget where compute-optimal matches it; None: never
    best_of_n_budget: int  # the smallest budget where best-of-N weighted itself reaches it
    best_of_n_accuracy: float  # best-of-N weighted's accuracy at best_of_n_budget
    best_of_n_top_accuracy: float  # best-of-N weighted's accuracy at top_budget
    best_of_n_saturates: bool  # best_of_n_budget < top_budget
    verdict: EfficiencyVerdict
    factor: float | None  # top_budget / compute_optimal_budget, for FEWER_GENERATIONS
    # best_of_n_budget / compute_optimal_budget (0 where not reached), with the choice redone on each resample
    saving: Interval | None = None


@dataclasses.dataclass(frozen=True)
class Coverage:
    """At one budget: how often a right answer is among best-of-N weighted's candidates, and how often its
    selection picks one; the gap is what a better verifier could win."""

    strategy: str
    budget: int
    coverage: float
    accuracy: float
    gap: float  # coverage - accuracy
    coverage_interval: Interval | None = None
    accuracy_interval: Interval | None = None
    gap_interval: Comparison | None = None  # coverage minus accuracy, paired


@dataclasses.dataclass(frozen=True)
class BeamAtBudget:
    """Mean accuracy over the hard levels at one budget."""

    budget: int
    best_of_n: float | None  # best-of-N weighted; None where no hard level has this budget
    beams: dict[str, float | None]  # each beam strategy, by name (sorted); None where no hard level has it
    beats: bool  # some beam is above best-of-N beyond noise
    comparisons: dict[str, Comparison] = dataclasses.field(default_factory=dict)  # each beam minus best-of-N


@dataclasses.dataclass(frozen=True)
class BeamOnHardBins:
    """The paper's second claim: beam search against best-of-N weighted on the hardest oracle levels (the upper
    half, equal-sized bins) at the lowest budgets (the first two)."""

    hard_levels: tuple[str, ...]
    low_budgets: tuple[int, ...]
    baseline: str
    by_budget: tuple[BeamAtBudget, ...]  # one per low budget
    verdict: BeamVerdict


@dataclasses.dataclass(frozen=True)
class FlopsMatched:
    """One FLOPs ratio R = D_inference / D_pretrain with a usable budget: per oracle level (1 = easiest), the small
    policy with compute-optimal search against the larger model answering greedily. A tie is in neither list."""

    ratio: float
    matched_generations: float
    budget: int  # the largest computed budget not above matched_generations
    levels: tuple[str, ...]  # the levels compared (those with a small-policy accuracy)
    search_wins: tuple[str, ...]
    larger_wins: tuple[str, ...]
    comparisons: dict[str, Comparison] = dataclasses.field(default_factory=dict)  # level -> small+search - larger
    constants: str = "arxiv_v1"  # the paper's version whose FLOPs constants gave the budget (`FLOPS_CONSTANTS`)


@dataclasses.dataclass(frozen=True)
class RevisionChains:
    """One revision strategy at one budget (the paper's figure 6): pass@1 at each revision step (the share of
    chains right at that attempt), and how often a right attempt is followed by a wrong one."""

    strategy: str
    budget: int
    pass_by_step: tuple[float, ...]  # one per attempt of a chain, first attempt first
    right_to_wrong: int  # right attempts followed by a wrong one, over every chain of every question
    right_followed: int  # right attempts followed by any attempt
    right_to_wrong_rate: float | None  # right_to_wrong / right_followed; None where no right attempt was followed
    improves: bool  # pass@1 at the last step above the first's beyond noise
    first_step: Interval | None = None  # pass@1 at the first attempt
    last_step: Interval | None = None
    last_minus_first: Comparison | None = None
    right_to_wrong_interval: Interval | None = None


@dataclasses.dataclass(frozen=True)
class RatioAccuracy:
    """One revision strategy at one budget: its sequential:parallel ratio and its accuracy."""

    strategy: str
    sequential: int  # attempts per chain
    chains: int  # budget / sequential parallel chains
    accuracy: float
    interval: Interval | None = None

    @property
    def ratio(self) -> str:
        return f"{self.sequential}:{self.chains}"


@dataclasses.dataclass(frozen=True)
class SequentialVsParallel:
    """At one budget, one family of revision strategies (the same selection and window): accuracy by ratio, next to
    best-of-N weighted from the policy (the paper's figure 6 right)."""

    budget: int
    family: str  # what the family's strategies share, e.g. "selection hierarchical, window 4"
    ratios: tuple[RatioAccuracy, ...]  # the most parallel first
    best_of_n: float | None  # best-of-N weighted's accuracy; None without it
    sequential_vs_parallel: Winner | None  # the most sequential ratio against the most parallel; None with one ratio
    sequential_vs_best_of_n: Winner | None  # the most sequential ratio against best-of-N; None without it
    sequential_minus_parallel: Comparison | None = None  # the paired differences behind the two winners
    sequential_minus_best_of_n: Comparison | None = None


@dataclasses.dataclass(frozen=True)
class RatioSweep:
    """One oracle level (1 = easiest) at one budget, one family with two or more ratios: accuracy by ratio and the
    best (the paper's figure 7 right: easy questions best fully sequential, hard ones at an interior ratio)."""

    level: str
    budget: int
    family: str
    ratios: tuple[RatioAccuracy, ...]  # the most parallel first
    best: RatioAccuracy  # the highest accuracy; among ties the more sequential
    tied: bool  # another ratio has the best accuracy too
    place: RatioPlace  # where the best ratio lies


@dataclasses.dataclass(frozen=True)
class RevisionsAtBudget:
    """Compute-optimal revisions (the ratio chosen per bin by cross-validation) at one budget against best-of-N
    weighted, held-out."""

    budget: int
    compute_optimal: float
    best_of_n: float | None  # None without best-of-N weighted
    matched_at: int | None  # the smallest budget where compute-optimal revisions reach best_of_n; None: never
    factor: float | None  # budget / matched_at: how many times fewer generations
    interval: Interval | None = None  # compute_optimal's, the choice redone per resample


@dataclasses.dataclass(frozen=True)
class RevisionsComputeOptimal:
    """Compute-optimal revisions against parallel best-of-N weighted for one difficulty signal (the paper's figure 7
    left and figure 1 right: about 4x fewer generations)."""

    signal: str  # "oracle" or "predicted" bins
    choice: dict[str, str]  # "level/budget" -> the revision strategy chosen on all of the level's questions
    by_budget: tuple[RevisionsAtBudget, ...]  # every budget with a revision strategy, ascending
    efficiency: Efficiency | None  # at the top revision budget; None without best-of-N weighted
    best_factor: float | None  # the most generations saved at any budget ("up to Kx fewer"); None: never matched


@dataclasses.dataclass(frozen=True)
class PaperFinding:
    """One finding of the paper against this run. Each comparison is oriented so that the paper claims its `a` above
    its `b`; a value claim (a saving, a rate) has its number in `estimate`."""

    finding: str  # a stable key
    claim: str  # the paper's claim, and where it makes it
    comparisons: tuple[Comparison, ...]
    estimate: Interval | None
    verdict: Reproduction
    reason: str  # why the verdict, in words


@dataclasses.dataclass(frozen=True)
class Findings:
    budgets: tuple[int, ...]  # every budget in the report, ascending
    baseline: str | None  # the weighted best-of-N strategy's name
    efficiency: dict[str, Efficiency]  # by signal: "oracle", "predicted"
    coverage: Coverage | None  # at the top budget; None when the report has no coverage for the baseline
    beam_on_hard_bins: BeamOnHardBins | None  # None without a beam strategy or the baseline
    flops_matched: tuple[FlopsMatched, ...]  # ratios without a usable budget are left out
    revisions: tuple[RevisionChains, ...] = ()  # per revision strategy and budget; () without revision cells
    sequential_vs_parallel: tuple[SequentialVsParallel, ...] = ()  # per budget and family; () without revisions
    ratio_by_difficulty: tuple[RatioSweep, ...] = ()  # per family, level and budget with two or more ratios
    revisions_compute_optimal: dict[str, RevisionsComputeOptimal] = dataclasses.field(default_factory=dict)
    intervals: Intervals | None = None  # None without per-question outcomes
    paper: tuple[PaperFinding, ...] = ()  # the paper's findings against this run, one row each

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: dicts, lists, strings, numbers, booleans and None."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


BASELINE = StrategySpec.from_dict({"kind": "best_of_n", "selection": "weighted"})  # what every finding compares to


def strategies(report: dict) -> dict[str, StrategySpec]:
    """The report's strategies by name (report["strategies"]: name -> its YAML form)."""
    return {name: StrategySpec.from_dict(spec) for name, spec in report["strategies"].items()}


def baseline_name(report: dict) -> str | None:
    """The name of weighted best-of-N among the report's strategies (None without it)."""
    return next((name for name, spec in strategies(report).items() if spec.effective() == BASELINE.effective()), None)


class Outcomes:
    """A report's per-question outcomes (report["per_question"]) on every row of one `Resamples` (row 0: the
    questions themselves), and the report's numbers recomputed from them, [1 + resamples] each."""

    def __init__(self, report: dict, resamples: int = RESAMPLES, seed: int = 0):
        data = report["per_question"]
        self.levels = {signal: np.asarray(lv) for signal, lv in data["levels"].items()}  # signal -> [Q]
        self.folds = {signal: np.asarray(f) for signal, f in data["folds"].items()}
        self.correct = {n: {int(b): decode(v) for b, v in row.items()} for n, row in data["correct"].items()}
        self.covered = {n: {int(b): decode(v) for b, v in row.items()} for n, row in data.get("pass", {}).items()}
        self.large_greedy = None if data.get("large_greedy") is None else decode(data["large_greedy"])
        self.revisions = {n: {int(b): {k: np.asarray(v, np.float64) for k, v in cell.items()}
                              for b, cell in row.items()} for n, row in data.get("revisions", {}).items()}
        self.rows = Resamples.draw(len(self.levels["oracle"]), resamples, seed)
        self.baseline = report.get("baseline") or baseline_name(report)
        self.revision_names = [n for n, spec in strategies(report).items() if spec.kind == Revisions.kind]
        self._cv: dict[tuple[str, bool, int], tuple[dict[int, np.ndarray], np.ndarray]] = {}

    def accuracy(self, name: str, budget: int, signal: str | None = None, level: str | None = None) -> np.ndarray:
        """A strategy's accuracy at a budget, over every question or one level's."""
        mask = None if level is None else self.levels[signal] == int(level)
        return self.rows.mean(self.correct[name][budget], mask)

    def mean_over_levels(self, name: str, budget: int, levels: Sequence[str]) -> np.ndarray:
        """The mean over oracle `levels` of the strategy's per-level accuracy (as the beam finding averages)."""
        return mean_of([self.accuracy(name, budget, "oracle", lv) for lv in levels])

    def compute_optimal(self, signal: str, budget: int, revisions: bool = False
                        ) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """The held-out accuracy of the cross-validated choice per level (among the revision strategies only with
        `revisions`) at `budget`, redone on every row: (level -> accuracy, overall)."""
        key = (signal, revisions, budget)
        if key not in self._cv:
            names = self.revision_names if revisions else list(self.correct)
            competing = {n: self.correct[n][budget] for n in names if budget in self.correct.get(n, {})}
            self._cv[key] = cross_validated(self.rows, competing, self.levels[signal], self.folds[signal])
        return self._cv[key]

    def saving(self, signal: str, budgets: Sequence[int], revisions: bool = False) -> Interval:
        """`ttcjax.eval.uncertainty.saving` of compute-optimal (revisions) against the baseline over `budgets`."""
        return self.rows.interval(saving([self.compute_optimal(signal, b, revisions)[1] for b in budgets],
                                         [self.accuracy(self.baseline, b) for b in budgets], budgets))


def analyze(report: dict, resamples: int = RESAMPLES, seed: int = 0) -> Findings:
    """The findings of an experiment report (report.json's content; a "findings" key in it is ignored). With its
    per-question outcomes, intervals from `resamples` bootstrap resamples of the questions drawn by `seed`."""
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    outcomes = Outcomes(report, resamples, seed) if report.get("per_question") else None
    findings = Findings(
        budgets=tuple(budgets), baseline=baseline_name(report),
        efficiency={signal: _efficiency(report["compute_optimal"][signal], signal, budgets,
                                        outcomes.saving(signal, budgets) if outcomes else None)
                    for signal in ("oracle", "predicted")},
        coverage=_coverage(report, budgets[-1], outcomes),
        beam_on_hard_bins=_beam_on_hard_bins(report, budgets, outcomes),
        flops_matched=_flops_matched(report, outcomes), revisions=_revisions(report, outcomes),
        sequential_vs_parallel=_sequential_vs_parallel(report, outcomes),
        ratio_by_difficulty=_ratio_by_difficulty(report, outcomes),
        revisions_compute_optimal={signal: _revisions_compute_optimal(opt, signal, outcomes)
                                   for signal, opt in report.get("revisions_compute_optimal", {}).items()},
        intervals=_intervals(report, outcomes) if outcomes else None)
    return dataclasses.replace(findings, paper=paper_findings(report, findings, outcomes))


def _intervals(report: dict, outcomes: Outcomes) -> Intervals:
    rows = outcomes.rows
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    revision_budgets = sorted({b for n in outcomes.revision_names for b in outcomes.correct.get(n, {})})
    large = outcomes.large_greedy
    return Intervals(
        resamples=rows.resamples, seed=rows.seed,
        accuracy={n: {str(b): rows.interval(outcomes.accuracy(n, b)) for b in row}
                  for n, row in outcomes.correct.items()},
        per_level={signal: {str(lv): {n: {str(b): rows.interval(outcomes.accuracy(n, b, signal, str(lv)))
                                           for b in row} for n, row in outcomes.correct.items()}
                            for lv in sorted(set(levels.tolist()))}
                   for signal, levels in outcomes.levels.items()},
        compute_optimal={signal: {str(b): rows.interval(outcomes.compute_optimal(signal, b)[1]) for b in budgets}
                         for signal in outcomes.levels},
        compute_optimal_by_level={
            signal: {str(lv): {str(b): rows.interval(outcomes.compute_optimal(signal, b)[0][lv]) for b in budgets}
                     for lv in sorted(set(levels.tolist()))} for signal, levels in outcomes.levels.items()},
        revisions_compute_optimal={signal: {str(b): rows.interval(outcomes.compute_optimal(signal, b, True)[1])
                                            for b in revision_budgets}
                                   for signal in outcomes.levels} if revision_budgets else {},
        coverage={str(b): rows.interval(rows.mean(v)) for b, v in outcomes.covered.get(outcomes.baseline, {}).items()},
        large_greedy=None if large is None else rows.interval(rows.mean(large)),
        large_greedy_by_level={} if large is None else {
            str(lv): rows.interval(rows.mean(large, outcomes.levels["oracle"] == lv))
            for lv in sorted(set(outcomes.levels["oracle"].tolist()))})


def _revisions(report: dict, outcomes: Outcomes | None) -> tuple[RevisionChains, ...]:
    rows = []
    for name, by_budget in report.get("revisions", {}).items():
        for budget, cell in sorted(by_budget.items(), key=lambda kv: int(kv[0])):
            steps = tuple(cell["pass_by_attempt"])
            followed = cell["right_followed"]
            row = RevisionChains(
                strategy=name, budget=int(budget), pass_by_step=steps, right_to_wrong=cell["right_to_wrong"],
                right_followed=followed, right_to_wrong_rate=cell["right_to_wrong"] / followed if followed else None,
                improves=steps[-1] > steps[0] + _BETTER)
            data = outcomes.revisions.get(name, {}).get(int(budget)) if outcomes is not None else None
            if data is not None:
                draws = outcomes.rows
                first, last = draws.mean(data["first"]), draws.mean(data["last"])
                change = draws.compare(last, first, f"{name} (N={budget}) pass@1 at attempt {len(steps)}",
                                       "at attempt 1")
                row = dataclasses.replace(
                    row, improves=change.verdict is Verdict.BETTER, first_step=draws.interval(first),
                    last_step=draws.interval(last), last_minus_first=change,
                    right_to_wrong_interval=draws.interval(draws.ratio(data["right_to_wrong"], data["right_followed"])))
            rows.append(row)
    return tuple(rows)


def _efficiency(opt: dict, signal: str, budgets: list[int], saving_interval: Interval | None = None) -> Efficiency:
    """`opt`: a report["compute_optimal"][signal]-shaped dict (held-out accuracy, best-of-N's, efficiency)."""
    top = budgets[-1]
    base = opt["best_of_n_weighted"]
    eff = opt["efficiency"].get(str(top))
    # best-of-N's own efficiency: where it already reaches its accuracy at the top budget (top itself does)
    own = next(b for b in budgets if base[str(b)] >= base[str(top)] - _REACHED)
    if eff and own <= eff:
        verdict = EfficiencyVerdict.SEARCH_ADDS_NOTHING
    elif eff:
        verdict = EfficiencyVerdict.FEWER_GENERATIONS
    else:
        verdict = EfficiencyVerdict.NOT_REACHED
    return Efficiency(signal=signal, top_budget=top, compute_optimal_budget=eff, best_of_n_budget=own,
                      best_of_n_accuracy=base[str(own)], best_of_n_top_accuracy=base[str(top)],
                      best_of_n_saturates=own < top, verdict=verdict,
                      factor=top / eff if verdict is EfficiencyVerdict.FEWER_GENERATIONS else None,
                      saving=saving_interval)


def revision_families(report: dict) -> dict[str, dict[str, StrategySpec]]:
    """The report's revision strategies grouped by what they share but the ratio (selection and window): family
    label -> name -> spec."""
    out: dict[str, dict[str, StrategySpec]] = {}
    for name, spec in strategies(report).items():
        if spec.kind == Revisions.kind:
            shared = {k: v for k, v in spec.effective().items() if k not in ("kind", "sequential")}
            out.setdefault(", ".join(f"{k} {v}" for k, v in sorted(shared.items())), {})[name] = spec
    return out


def _ratios(specs: dict[str, StrategySpec], accuracy: dict[str, dict[str, float]], budget: int,
            interval: Callable[[str], Interval | None] = lambda name: None) -> tuple[RatioAccuracy, ...]:
    """The family's strategies that ran at `budget` (accuracy: name -> budget -> accuracy; `interval`: a strategy's
    at this budget), the most parallel first."""
    rows = []
    for name, spec in specs.items():
        if str(budget) in accuracy.get(name, {}):
            sequential = spec.at(budget).sequential
            rows.append(RatioAccuracy(strategy=name, sequential=sequential, chains=budget // sequential,
                                      accuracy=accuracy[name][str(budget)], interval=interval(name)))
    return tuple(sorted(rows, key=lambda r: (r.sequential, r.strategy)))


def _winner(sequential: float, parallel: float, difference: Comparison | None = None) -> Winner:
    """Which side wins: by the paired interval of sequential - parallel where there is one, else by the points."""
    if difference is not None:
        return {Verdict.BETTER: Winner.SEQUENTIAL, Verdict.WORSE: Winner.PARALLEL,
                Verdict.WITHIN_NOISE: Winner.TIE}[difference.verdict]
    return (Winner.SEQUENTIAL if sequential > parallel + _BETTER else Winner.PARALLEL if parallel > sequential + _BETTER
            else Winner.TIE)


def _place(row: RatioAccuracy) -> RatioPlace:
    return (RatioPlace.FULLY_SEQUENTIAL if row.chains == 1 else RatioPlace.FULLY_PARALLEL if row.sequential == 1
            else RatioPlace.INTERIOR)


def _sequential_vs_parallel(report: dict, outcomes: Outcomes | None) -> tuple[SequentialVsParallel, ...]:
    base = baseline_name(report)
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    rows = []
    for budget in budgets:
        for family, specs in revision_families(report).items():
            ratios = _ratios(specs, report["accuracy"], budget,
                             lambda name: outcomes.rows.interval(outcomes.accuracy(name, budget)) if outcomes else None)
            if not ratios:
                continue
            best_of_n = report["accuracy"].get(base or "", {}).get(str(budget))
            most_sequential, most_parallel = ratios[-1], ratios[0]
            versus_parallel = versus_best_of_n = None
            if outcomes is not None:
                sequential = outcomes.accuracy(most_sequential.strategy, budget)
                name = f"{most_sequential.strategy} ({most_sequential.ratio}, N={budget})"
                if most_sequential.sequential > most_parallel.sequential:
                    versus_parallel = outcomes.rows.compare(
                        sequential, outcomes.accuracy(most_parallel.strategy, budget), name,
                        f"{most_parallel.strategy} ({most_parallel.ratio})")
                if best_of_n is not None:
                    versus_best_of_n = outcomes.rows.compare(sequential, outcomes.accuracy(base, budget), name, base)
            rows.append(SequentialVsParallel(
                budget=budget, family=family, ratios=ratios, best_of_n=best_of_n,
                sequential_vs_parallel=(_winner(most_sequential.accuracy, most_parallel.accuracy, versus_parallel)
                                        if most_sequential.sequential > most_parallel.sequential else None),
                sequential_vs_best_of_n=(None if best_of_n is None else
                                         _winner(most_sequential.accuracy, best_of_n, versus_best_of_n)),
                sequential_minus_parallel=versus_parallel, sequential_minus_best_of_n=versus_best_of_n))
    return tuple(rows)


def _ratio_by_difficulty(report: dict, outcomes: Outcomes | None) -> tuple[RatioSweep, ...]:
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    rows = []
    for family, specs in revision_families(report).items():
        for level, table in sorted(report["per_level"]["oracle"].items(), key=lambda kv: int(kv[0])):
            for budget in budgets:
                ratios = _ratios(specs, table, budget, lambda name: outcomes.rows.interval(
                    outcomes.accuracy(name, budget, "oracle", level)) if outcomes else None)
                if len({r.sequential for r in ratios}) < 2:
                    continue
                top = max(r.accuracy for r in ratios)
                best = [r for r in ratios if r.accuracy >= top - _BETTER]
                rows.append(RatioSweep(level=level, budget=budget, family=family, ratios=ratios, best=best[-1],
                                       tied=len(best) > 1, place=_place(best[-1])))
    return tuple(rows)


def _revisions_compute_optimal(opt: dict, signal: str, outcomes: Outcomes | None = None) -> RevisionsComputeOptimal:
    """`opt`: report["revisions_compute_optimal"][signal], shaped as report["compute_optimal"][signal]; its
    best_of_n_weighted and efficiency are None where the run had no best-of-N weighted."""
    budgets = sorted(int(b) for b in opt["cv_accuracy"])
    base, matched = opt.get("best_of_n_weighted"), opt.get("efficiency")
    rows = []
    for b in budgets:
        at = matched.get(str(b)) if matched else None
        rows.append(RevisionsAtBudget(
            budget=b, compute_optimal=opt["cv_accuracy"][str(b)], best_of_n=base[str(b)] if base else None,
            matched_at=at, factor=b / at if at else None,
            interval=outcomes.rows.interval(outcomes.compute_optimal(signal, b, True)[1]) if outcomes else None))
    factors = [r.factor for r in rows if r.factor is not None]
    saving_interval = outcomes.saving(signal, budgets, True) if outcomes and base and matched else None
    return RevisionsComputeOptimal(signal=signal, choice=dict(opt["choice"]), by_budget=tuple(rows),
                                   efficiency=(_efficiency(opt, signal, budgets, saving_interval) if base and matched
                                               else None),
                                   best_factor=max(factors) if factors else None)


def _coverage(report: dict, budget: int, outcomes: Outcomes | None) -> Coverage | None:
    name = baseline_name(report)
    cov = report.get("coverage", {}).get(name or "", {}).get(str(budget))
    if cov is None:
        return None
    acc = report["accuracy"][name][str(budget)]
    out = Coverage(strategy=name, budget=budget, coverage=cov, accuracy=acc, gap=cov - acc)
    if outcomes is None or budget not in outcomes.covered.get(name, {}):
        return out
    covered, right = outcomes.rows.mean(outcomes.covered[name][budget]), outcomes.accuracy(name, budget)
    return dataclasses.replace(out, coverage_interval=outcomes.rows.interval(covered),
                               accuracy_interval=outcomes.rows.interval(right),
                               gap_interval=outcomes.rows.compare(covered, right, f"coverage (N={budget})",
                                                                  f"{name} accuracy"))


def hard_levels(levels: Sequence[str]) -> list[str]:
    """The harder half of the oracle levels (ascending, 1 = easiest; at least the hardest one)."""
    return list(levels)[-max(1, len(levels) // 2):]


def easy_levels(levels: Sequence[str]) -> list[str]:
    """The easier half of the oracle levels (at least the easiest one)."""
    return list(levels)[:max(1, len(levels) // 2)]


def _beam_on_hard_bins(report: dict, budgets: list[int], outcomes: Outcomes | None) -> BeamOnHardBins | None:
    levels = sorted(report["per_level"]["oracle"], key=int)
    if not levels:
        return None
    hard = hard_levels(levels)
    low = budgets[:2]
    tables = [report["per_level"]["oracle"][lv] for lv in hard]
    kinds = {name: spec.kind for name, spec in strategies(report).items()}
    beams = sorted({name for t in tables for name in t if kinds.get(name) == "beam"})
    base = baseline_name(report)
    if not beams or base is None:
        return None

    def mean(name, b):
        vals = [t[name][str(b)] for t in tables if str(b) in t.get(name, {})]
        return sum(vals) / len(vals) if vals else None

    rows = []
    where = f"levels {', '.join(hard)}"
    for b in low:
        ref = mean(base, b)
        got = {name: mean(name, b) for name in beams}
        beats = any(v is not None and ref is not None and v > ref + _BETTER for v in got.values())
        comparisons = {}
        if outcomes is not None and b in outcomes.correct[base]:
            comparisons = {name: outcomes.rows.compare(outcomes.mean_over_levels(name, b, hard),
                                                       outcomes.mean_over_levels(base, b, hard),
                                                       f"{name} (N={b}, {where})", base)
                           for name in beams if b in outcomes.correct.get(name, {})}
            beats = any(c.verdict is Verdict.BETTER for c in comparisons.values())
        rows.append(BeamAtBudget(budget=b, best_of_n=ref, beams=got, beats=beats, comparisons=comparisons))
    wins = sum(r.beats for r in rows)
    verdict = (BeamVerdict.BEATS if wins == len(low) else BeamVerdict.BEATS_AT_SOME if wins else
               BeamVerdict.DOES_NOT_BEAT)
    return BeamOnHardBins(hard_levels=tuple(hard), low_budgets=tuple(low), baseline=base, by_budget=tuple(rows),
                          verdict=verdict)


def _flops_matched(report: dict, outcomes: Outcomes | None) -> tuple[FlopsMatched, ...]:
    rows = []
    for row in report["flops_exchange"]:
        if row["budget_used"] is None:
            continue
        pairs = [(k, v["small_compute_optimal"], v["large_greedy"]) for k, v in
                 sorted(row["by_level"].items(), key=lambda kv: int(kv[0]))
                 if v["small_compute_optimal"] is not None and v["large_greedy"] is not None]
        found = FlopsMatched(
            ratio=row["R"], matched_generations=row["matched_generations"], budget=row["budget_used"],
            constants=row.get("constants", "arxiv_v1"),
            levels=tuple(k for k, _, _ in pairs),
            search_wins=tuple(k for k, ours, theirs in pairs if ours > theirs + _BETTER),
            larger_wins=tuple(k for k, ours, theirs in pairs if theirs > ours + _BETTER))
        if outcomes is not None and outcomes.large_greedy is not None:
            by_level, _ = outcomes.compute_optimal("oracle", row["budget_used"])
            draws, oracle = outcomes.rows, outcomes.levels["oracle"]
            comparisons = {k: draws.compare(by_level[int(k)], draws.mean(outcomes.large_greedy, oracle == int(k)),
                                            f"small policy + search (N={row['budget_used']}, level {k})",
                                            "the larger model, greedy") for k, _, _ in pairs}
            found = dataclasses.replace(
                found, comparisons=comparisons,
                search_wins=tuple(k for k, c in comparisons.items() if c.verdict is Verdict.BETTER),
                larger_wins=tuple(k for k, c in comparisons.items() if c.verdict is Verdict.WORSE))
        rows.append(found)
    return tuple(rows)


# ---- the paper against this run ---------------------------------------------------------------------------------

PAPER_SAVING = 2.0  # compute-optimal's saving the paper claims at least: "2-4x" (its discussion), "about 4x"
PAPER_RIGHT_TO_WRONG = 0.38  # "around 38% of correct answers get converted back to incorrect ones"
_ORDER = {Verdict.BETTER: 0, Verdict.WITHIN_NOISE: 1, Verdict.WORSE: 2}


def paper_findings(report: dict, findings: Findings, outcomes: Outcomes | None) -> tuple[PaperFinding, ...]:
    """The paper's findings (shared/PAPER.md) against this run, one row each in the paper's order. A finding is a set
    of paired comparisons each oriented so that the paper claims its `a` above its `b` (`judge`), or a number with
    its interval (a saving, a rate) against the paper's; the thresholds are the paper's own figures, fixed here and
    never fitted to a run. Without per-question outcomes every row is inconclusive."""
    revisions = findings.revisions_compute_optimal
    rows = [_beam_at_low_budgets(findings), _beam_degrades(report, outcomes),
            *(_saving_row("compute_optimal_search", findings.efficiency[signal], signal,
                          "Compute-optimal search (the strategy per bin, chosen by cross-validation) needs 2-4x fewer "
                          "generations than best-of-N weighted for the same accuracy (v1 Fig. 4: 16 against 64)")
              for signal in ("oracle", "predicted")),
            _revisions_improve(findings), _right_to_wrong(findings), _sequential_beats_parallel(findings),
            _ratio_by_difficulty_row(report, outcomes),
            *(_saving_row("compute_optimal_revisions", revisions[signal].efficiency if signal in revisions else None,
                          signal, "Compute-optimal revisions (the sequential:parallel ratio per bin) need about 4x "
                          "fewer generations than best-of-N weighted (v1 Fig. 8: 64 against 256)",
                          missing="this run has no revision strategies, or no best-of-N weighted to save on")
              for signal in ("oracle", "predicted")),
            _flops_row(findings)]
    if outcomes is None:
        rows = [dataclasses.replace(row, verdict=Reproduction.INCONCLUSIVE,
                                    reason="this report has no per-question outcomes (report.json's per_question, "
                                           "written by ttcjax experiment), so no difference can be told from noise")
                for row in rows]
    return tuple(rows)


def judge(comparisons: Sequence[Comparison]) -> tuple[Reproduction, str]:
    """Reproduced where every comparison is better beyond noise, not reproduced where one is worse beyond noise,
    inconclusive where one is within noise or there is none; and why."""
    if not comparisons:
        return Reproduction.INCONCLUSIVE, "this run has no data for it"
    against = [c for c in comparisons if c.verdict is Verdict.WORSE]
    if against:
        return Reproduction.NOT_REPRODUCED, f"the other way beyond noise: {against[0].a} minus {against[0].b}"
    noise = [c for c in comparisons if c.verdict is Verdict.WITHIN_NOISE]
    if noise:
        return (Reproduction.INCONCLUSIVE, f"{len(noise)} of {len(comparisons)} within noise (the interval contains "
                f"0), first {noise[0].a} minus {noise[0].b}")
    return Reproduction.REPRODUCED, "every comparison the paper's way beyond noise"


def strongest(group: Sequence[Comparison]) -> Comparison:
    """Of alternatives the finding needs only one of (some beam), the one that goes most the paper's way."""
    return min(group, key=lambda c: (_ORDER[c.verdict], -c.difference.value))


def flip(c: Comparison) -> Comparison:
    """b minus a."""
    d = c.difference
    return Comparison(a=c.b, b=c.a, difference=Interval(value=-d.value, lo=-d.hi, hi=-d.lo),
                      verdict={Verdict.BETTER: Verdict.WORSE, Verdict.WORSE: Verdict.BETTER}.get(c.verdict, c.verdict))


def _row(finding: str, claim: str, comparisons: Sequence[Comparison], estimate: Interval | None = None,
         why: str = "") -> PaperFinding:
    verdict, reason = judge(comparisons)
    return PaperFinding(finding=finding, claim=claim, comparisons=tuple(comparisons), estimate=estimate,
                        verdict=verdict, reason=f"{why}; {reason}" if why else reason)


def _beam_at_low_budgets(findings: Findings) -> PaperFinding:
    beam = findings.beam_on_hard_bins
    groups = [list(row.comparisons.values()) for row in beam.by_budget] if beam else []
    return _row("beam_beats_best_of_n_on_hard_bins",
                "Beam search beats best-of-N weighted at low budgets on the harder bins (v1 Fig. 3)",
                [strongest(g) for g in groups if g],
                why=(f"the harder half of the levels ({', '.join(beam.hard_levels)}) at the two lowest budgets, the "
                     "best beam at each" if beam else "no beam strategy or no best-of-N weighted"))


def _beam_degrades(report: dict, outcomes: Outcomes | None) -> PaperFinding:
    claim = "Beam search degrades as its budget grows on the easy bins, over-optimising the verifier (v1 Fig. 3 right)"
    levels = sorted(report["per_level"]["oracle"], key=int)
    beams = [name for name, spec in strategies(report).items() if spec.kind == "beam"]
    if outcomes is None or not beams or not levels:
        return _row("beam_degrades_on_easy_bins", claim, [], why="no beam strategy" if not beams else "")
    easy = easy_levels(levels)
    comparisons = []
    for name in beams:
        budgets = sorted(outcomes.correct.get(name, {}))
        if len(budgets) > 1:
            low, high = budgets[0], budgets[-1]
            comparisons.append(outcomes.rows.compare(
                outcomes.mean_over_levels(name, low, easy), outcomes.mean_over_levels(name, high, easy),
                f"{name} at N={low} (levels {', '.join(easy)})", f"at N={high}"))
    return _row("beam_degrades_on_easy_bins", claim, [strongest(comparisons)] if comparisons else [],
                why=f"the easier half of the levels ({', '.join(easy)}), lowest against highest budget, the beam that "
                    "degrades most")


def _saving_row(finding: str, efficiency: Efficiency | None, signal: str, claim: str,
                missing: str = "this run has no best-of-N weighted to save on") -> PaperFinding:
    key, claim = f"{finding}_{signal}", f"{claim}; {signal} bins"
    estimate = efficiency.saving if efficiency is not None else None
    if estimate is None:
        return PaperFinding(finding=key, claim=claim, comparisons=(), estimate=None,
                            verdict=Reproduction.INCONCLUSIVE, reason=missing)
    if estimate.lo >= PAPER_SAVING:
        verdict, why = Reproduction.REPRODUCED, f"the interval lies at or above {PAPER_SAVING:g}x"
    elif estimate.hi < PAPER_SAVING:
        verdict, why = Reproduction.NOT_REPRODUCED, f"the interval lies below {PAPER_SAVING:g}x"
    else:
        verdict, why = Reproduction.INCONCLUSIVE, f"the interval crosses {PAPER_SAVING:g}x"
    return PaperFinding(finding=key, claim=claim, comparisons=(), estimate=estimate, verdict=verdict,
                        reason=f"the saving is best-of-N's budget for its top-budget accuracy over compute-optimal's "
                               f"(0: not reached), the choice redone on each resample; {why}")


def _longest_chains(findings: Findings) -> RevisionChains | None:
    """The revision cell with the most attempts per chain (then the largest budget): the paper's long chains."""
    rows = [row for row in findings.revisions if row.last_minus_first is not None]
    return max(rows, key=lambda row: (len(row.pass_by_step), row.budget)) if rows else None


def _revisions_improve(findings: Findings) -> PaperFinding:
    row = _longest_chains(findings)
    return _row("revisions_improve_pass_at_1",
                "Revisions improve pass@1 from one revision step to the next (v1 Fig. 6 left)",
                [row.last_minus_first] if row else [],
                why=f"the longest chains ({row.strategy} at N={row.budget}), last attempt against first" if row else
                "no revision strategy")


def _right_to_wrong(findings: Findings) -> PaperFinding:
    claim = f"About {PAPER_RIGHT_TO_WRONG:.0%} of right answers are revised into wrong ones (v1 section 6.1)"
    row = _longest_chains(findings)
    rate = row.right_to_wrong_interval if row else None
    if rate is None or not np.isfinite(rate.lo):
        return PaperFinding(finding="right_to_wrong_rate", claim=claim, comparisons=(), estimate=rate,
                            verdict=Reproduction.INCONCLUSIVE,
                            reason="no revision strategy" if row is None else "no right attempt was followed")
    where = f"{row.strategy} at N={row.budget}"
    if not rate.contains(PAPER_RIGHT_TO_WRONG):
        verdict, why = Reproduction.NOT_REPRODUCED, f"the interval excludes {PAPER_RIGHT_TO_WRONG:g}"
    elif rate.contains(0.0) or rate.contains(2 * PAPER_RIGHT_TO_WRONG):
        verdict, why = (Reproduction.INCONCLUSIVE, f"the interval holds {PAPER_RIGHT_TO_WRONG:g} but also none or "
                        "twice as many")
    else:
        verdict, why = (Reproduction.REPRODUCED,
                        f"the interval holds {PAPER_RIGHT_TO_WRONG:g}, and neither 0 nor twice it")
    return PaperFinding(finding="right_to_wrong_rate", claim=claim, comparisons=(), estimate=rate, verdict=verdict,
                        reason=f"{where}; {why}")


def _sequential_beats_parallel(findings: Findings) -> PaperFinding:
    comparisons = [row.sequential_minus_parallel for row in findings.sequential_vs_parallel
                   if row.sequential_minus_parallel is not None]
    return _row("sequential_beats_parallel",
                "Sequential revisions narrowly beat parallel samples at equal budget (v1 Fig. 6 right)", comparisons,
                why="the most sequential ratio against the most parallel, at every budget and family" if comparisons
                else "no budget with two sequential:parallel ratios")


def _ratio_by_difficulty_row(report: dict, outcomes: Outcomes | None) -> PaperFinding:
    """Easy levels: the most sequential ratio against the best of the others; hard levels: the best interior ratio
    against the better of the two extremes (the bests taken on each resample), at each family's largest budget with an
    interior ratio (else its largest with two ratios, and the hard half is missing)."""
    claim = ("The best sequential:parallel ratio depends on difficulty: fully sequential on easy bins, an interior "
             "ratio on hard ones (v1 Fig. 7)")
    levels = sorted(report["per_level"]["oracle"], key=int)
    if outcomes is None or not levels:
        return _row("ratio_by_difficulty", claim, [])
    easy, hard = easy_levels(levels), hard_levels(levels)
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    comparisons, missing = [], []
    for family, specs in revision_families(report).items():
        by_budget = {b: _ratios(specs, report["accuracy"], b) for b in budgets}
        by_budget = {b: r for b, r in by_budget.items() if len({x.sequential for x in r}) > 1}
        if not by_budget:
            continue
        interior = [b for b, r in by_budget.items() if len(r) > 2]
        budget = interior[-1] if interior else max(by_budget)
        ratios = by_budget[budget]

        def best(rs, on):
            return np.fmax.reduce([outcomes.mean_over_levels(r.strategy, budget, on) for r in rs])

        names = ", ".join(r.ratio for r in ratios[:-1])
        comparisons.append(outcomes.rows.compare(
            best(ratios[-1:], easy), best(ratios[:-1], easy),
            f"{ratios[-1].ratio} (N={budget}, levels {', '.join(easy)})", f"the best of {names}"))
        if interior:
            comparisons.append(outcomes.rows.compare(
                best(ratios[1:-1], hard), best((ratios[0], ratios[-1]), hard),
                f"the best of {', '.join(r.ratio for r in ratios[1:-1])} (N={budget}, levels {', '.join(hard)})",
                f"the better of {ratios[0].ratio}, {ratios[-1].ratio}"))
        else:
            missing.append(family)
    row = _row("ratio_by_difficulty", claim, comparisons,
               why="no budget with two sequential:parallel ratios" if not comparisons else
               "the easier half of the levels, then the harder half")
    if missing and row.verdict is not Reproduction.NOT_REPRODUCED:
        row = dataclasses.replace(row, verdict=Reproduction.INCONCLUSIVE,
                                  reason=f"no interior ratio to compare on the hard levels ({'; '.join(missing)}); "
                                         + row.reason)
    return row


def _flops_row(findings: Findings) -> PaperFinding:
    claim = ("At matched FLOPs with small R, test-time compute beats a larger model on the easy and medium bins, and "
             "pretraining wins on the hardest (v1 Fig. 9)")
    usable = [row for row in findings.flops_matched if row.comparisons]
    if not usable:
        return _row("flops_matched", claim, [], why="no larger model, or no ratio R with a computed budget")
    # the claim is v1's, so v1's constants where they leave a budget
    row = min(usable, key=lambda r: (r.constants != "arxiv_v1", r.ratio))
    levels = sorted(row.comparisons, key=int)
    hard = hard_levels(levels)
    comparisons = [row.comparisons[k] for k in levels if k not in hard] + [flip(row.comparisons[levels[-1]])]
    return _row("flops_matched", claim, comparisons,
                why=f"the smallest R with a budget, R={row.ratio} ({row.constants} constants, N={row.budget}): levels "
                    f"{', '.join(k for k in levels if k not in hard) or 'none'} for search, level {levels[-1]} for the "
                    "larger model")
