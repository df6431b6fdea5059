"""What an experiment's report shows, as data: `analyze(report) -> Findings`.

The report (`ttcjax.eval.experiment`'s report.json) holds the measurements; the findings are the paper's
claims checked against them: whether compute-optimal search saves generations over best-of-N weighted, how
much of best-of-N's coverage its verifier turns into accuracy, whether beam search beats best-of-N on the
hardest questions at low budgets, where the small policy with search beats a larger model at matched FLOPs, and
for revision strategies (the paper's section 6) sequential against parallel at equal budget, the best
sequential:parallel ratio per difficulty level, and compute-optimal revisions against best-of-N weighted.
Every comparison is made here, once; `ttcjax.eval.report` only renders the result, and tests check these
fields rather than prose.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from ttcjax.search.strategies import Revisions, StrategySpec

# accuracies are means of 0/1 over a few questions: differences below these are ties, not findings
_BETTER = 1e-9
_REACHED = 1e-12


class EfficiencyVerdict(enum.StrEnum):
    SEARCH_ADDS_NOTHING = "search_adds_nothing"  # best-of-N alone reaches it at a budget <= compute-optimal's
    FEWER_GENERATIONS = "fewer_generations"  # compute-optimal reaches it with `factor` times fewer generations
    NOT_REACHED = "not_reached"  # compute-optimal does not reach it within the budgets


class Winner(enum.StrEnum):
    SEQUENTIAL = "sequential"  # the more sequential side is above the other by more than a tie
    PARALLEL = "parallel"
    TIE = "tie"


class RatioPlace(enum.StrEnum):
    FULLY_SEQUENTIAL = "fully_sequential"  # one chain of every attempt
    INTERIOR = "interior"  # some chains of some attempts each
    FULLY_PARALLEL = "fully_parallel"  # one attempt per chain


class BeamVerdict(enum.StrEnum):
    BEATS = "beats"  # some beam beats best-of-N at every low budget
    BEATS_AT_SOME = "beats_at_some"
    DOES_NOT_BEAT = "does_not_beat"


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


@dataclasses.dataclass(frozen=True)
class Coverage:
    """At one budget: how often a right answer is among best-of-N weighted's candidates, and how often its
    selection picks one; the gap is what a better verifier could win."""

    strategy: str
    budget: int
    coverage: float
    accuracy: float
    gap: float  # coverage - accuracy


@dataclasses.dataclass(frozen=True)
class BeamAtBudget:
    """Mean accuracy over the hard levels at one budget."""

    budget: int
    best_of_n: float | None  # best-of-N weighted; None where no hard level has this budget
    beams: dict[str, float | None]  # each beam strategy, by name (sorted); None where no hard level has it
    beats: bool  # some beam is above best-of-N by more than a tie


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
    improves: bool  # pass@1 at the last step above the first's by more than a tie


@dataclasses.dataclass(frozen=True)
class RatioAccuracy:
    """One revision strategy at one budget: its sequential:parallel ratio and its accuracy."""

    strategy: str
    sequential: int  # attempts per chain
    chains: int  # budget / sequential parallel chains
    accuracy: float

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


def analyze(report: dict) -> Findings:
    """The findings of an experiment report (report.json's content; a "findings" key in it is ignored)."""
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    return Findings(
        budgets=tuple(budgets), baseline=baseline_name(report),
        efficiency={signal: _efficiency(report["compute_optimal"][signal], signal, budgets)
                    for signal in ("oracle", "predicted")},
        coverage=_coverage(report, budgets[-1]), beam_on_hard_bins=_beam_on_hard_bins(report, budgets),
        flops_matched=_flops_matched(report), revisions=_revisions(report),
        sequential_vs_parallel=_sequential_vs_parallel(report), ratio_by_difficulty=_ratio_by_difficulty(report),
        revisions_compute_optimal={signal: _revisions_compute_optimal(opt, signal)
                                   for signal, opt in report.get("revisions_compute_optimal", {}).items()})


def _revisions(report: dict) -> tuple[RevisionChains, ...]:
    rows = []
    for name, by_budget in report.get("revisions", {}).items():
        for budget, cell in sorted(by_budget.items(), key=lambda kv: int(kv[0])):
            steps = tuple(cell["pass_by_attempt"])
            followed = cell["right_followed"]
            rows.append(RevisionChains(
                strategy=name, budget=int(budget), pass_by_step=steps, right_to_wrong=cell["right_to_wrong"],
                right_followed=followed, right_to_wrong_rate=cell["right_to_wrong"] / followed if followed else None,
                improves=steps[-1] > steps[0] + _BETTER))
    return tuple(rows)


def _efficiency(opt: dict, signal: str, budgets: list[int]) -> Efficiency:
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
                      factor=top / eff if verdict is EfficiencyVerdict.FEWER_GENERATIONS else None)


def revision_families(report: dict) -> dict[str, dict[str, StrategySpec]]:
    """The report's revision strategies grouped by what they share but the ratio (selection and window): family
    label -> name -> spec."""
    out: dict[str, dict[str, StrategySpec]] = {}
    for name, spec in strategies(report).items():
        if spec.kind == Revisions.kind:
            shared = {k: v for k, v in spec.effective().items() if k not in ("kind", "sequential")}
            out.setdefault(", ".join(f"{k} {v}" for k, v in sorted(shared.items())), {})[name] = spec
    return out


def _ratios(specs: dict[str, StrategySpec], accuracy: dict[str, dict[str, float]], budget: int
            ) -> tuple[RatioAccuracy, ...]:
    """The family's strategies that ran at `budget` (accuracy: name -> budget -> accuracy), the most parallel
    first."""
    rows = []
    for name, spec in specs.items():
        if str(budget) in accuracy.get(name, {}):
            sequential = spec.at(budget).sequential
            rows.append(RatioAccuracy(strategy=name, sequential=sequential, chains=budget // sequential,
                                      accuracy=accuracy[name][str(budget)]))
    return tuple(sorted(rows, key=lambda r: (r.sequential, r.strategy)))


def _winner(sequential: float, parallel: float) -> Winner:
    return (Winner.SEQUENTIAL if sequential > parallel + _BETTER else Winner.PARALLEL if parallel > sequential + _BETTER
            else Winner.TIE)


def _place(row: RatioAccuracy) -> RatioPlace:
    return (RatioPlace.FULLY_SEQUENTIAL if row.chains == 1 else RatioPlace.FULLY_PARALLEL if row.sequential == 1
            else RatioPlace.INTERIOR)


def _sequential_vs_parallel(report: dict) -> tuple[SequentialVsParallel, ...]:
    base = baseline_name(report)
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    rows = []
    for budget in budgets:
        for family, specs in revision_families(report).items():
            ratios = _ratios(specs, report["accuracy"], budget)
            if not ratios:
                continue
            best_of_n = report["accuracy"].get(base or "", {}).get(str(budget))
            rows.append(SequentialVsParallel(
                budget=budget, family=family, ratios=ratios, best_of_n=best_of_n,
                sequential_vs_parallel=(_winner(ratios[-1].accuracy, ratios[0].accuracy)
                                        if ratios[-1].sequential > ratios[0].sequential else None),
                sequential_vs_best_of_n=None if best_of_n is None else _winner(ratios[-1].accuracy, best_of_n)))
    return tuple(rows)


def _ratio_by_difficulty(report: dict) -> tuple[RatioSweep, ...]:
    budgets = sorted({int(b) for row in report["accuracy"].values() for b in row})
    rows = []
    for family, specs in revision_families(report).items():
        for level, table in sorted(report["per_level"]["oracle"].items(), key=lambda kv: int(kv[0])):
            for budget in budgets:
                ratios = _ratios(specs, table, budget)
                if len({r.sequential for r in ratios}) < 2:
                    continue
                top = max(r.accuracy for r in ratios)
                best = [r for r in ratios if r.accuracy >= top - _BETTER]
                rows.append(RatioSweep(level=level, budget=budget, family=family, ratios=ratios, best=best[-1],
                                       tied=len(best) > 1, place=_place(best[-1])))
    return tuple(rows)


def _revisions_compute_optimal(opt: dict, signal: str) -> RevisionsComputeOptimal:
    """`opt`: report["revisions_compute_optimal"][signal], shaped as report["compute_optimal"][signal]; its
    best_of_n_weighted and efficiency are None where the run had no best-of-N weighted."""
    budgets = sorted(int(b) for b in opt["cv_accuracy"])
    base, matched = opt.get("best_of_n_weighted"), opt.get("efficiency")
    rows = []
    for b in budgets:
        at = matched.get(str(b)) if matched else None
        rows.append(RevisionsAtBudget(budget=b, compute_optimal=opt["cv_accuracy"][str(b)],
                                      best_of_n=base[str(b)] if base else None, matched_at=at,
                                      factor=b / at if at else None))
    factors = [r.factor for r in rows if r.factor is not None]
    return RevisionsComputeOptimal(signal=signal, choice=dict(opt["choice"]), by_budget=tuple(rows),
                                   efficiency=_efficiency(opt, signal, budgets) if base and matched else None,
                                   best_factor=max(factors) if factors else None)


def _coverage(report: dict, budget: int) -> Coverage | None:
    name = baseline_name(report)
    cov = report.get("coverage", {}).get(name or "", {}).get(str(budget))
    if cov is None:
        return None
    acc = report["accuracy"][name][str(budget)]
    return Coverage(strategy=name, budget=budget, coverage=cov, accuracy=acc, gap=cov - acc)


def _beam_on_hard_bins(report: dict, budgets: list[int]) -> BeamOnHardBins | None:
    levels = sorted(report["per_level"]["oracle"], key=int)
    if not levels:
        return None
    hard = levels[-max(1, len(levels) // 2):]
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
    for b in low:
        ref = mean(base, b)
        got = {name: mean(name, b) for name in beams}
        beats = any(v is not None and ref is not None and v > ref + _BETTER for v in got.values())
        rows.append(BeamAtBudget(budget=b, best_of_n=ref, beams=got, beats=beats))
    wins = sum(r.beats for r in rows)
    verdict = (BeamVerdict.BEATS if wins == len(low) else BeamVerdict.BEATS_AT_SOME if wins else
               BeamVerdict.DOES_NOT_BEAT)
    return BeamOnHardBins(hard_levels=tuple(hard), low_budgets=tuple(low), baseline=base, by_budget=tuple(rows),
                          verdict=verdict)


def _flops_matched(report: dict) -> tuple[FlopsMatched, ...]:
    rows = []
    for row in report["flops_exchange"]:
        if row["budget_used"] is None:
            continue
        pairs = [(k, v["small_compute_optimal"], v["large_greedy"]) for k, v in
                 sorted(row["by_level"].items(), key=lambda kv: int(kv[0]))
                 if v["small_compute_optimal"] is not None and v["large_greedy"] is not None]
        rows.append(FlopsMatched(
            ratio=row["R"], matched_generations=row["matched_generations"], budget=row["budget_used"],
            levels=tuple(k for k, _, _ in pairs),
            search_wins=tuple(k for k, ours, theirs in pairs if ours > theirs + _BETTER),
            larger_wins=tuple(k for k, ours, theirs in pairs if theirs > ours + _BETTER)))
    return tuple(rows)
