"""Findings as data: `analyze` on reports whose right conclusions are known by construction, and on the reduced
demo's report; the markdown only renders them."""

import json
import pathlib

import pytest
from known_study import known_study

from ttcjax.eval.analysis import (BeamAtBudget, BeamVerdict, EfficiencyVerdict, Findings, FlopsMatched, RatioPlace,
                                  Reproduction, Winner, analyze, baseline_name)
from ttcjax.eval.report import markdown, plots
from ttcjax.eval.uncertainty import Verdict

GOLDEN = pathlib.Path(__file__).parent / "data" / "demo_reduced_golden.json"
BON, BEAM = "best_of_n-selectionweighted", "beam-width4"


def spec_of(name: str) -> dict:
    """The YAML form behind a strategy's name ("beam-width4" -> {kind: beam, width: 4})."""
    kind, *options = name.split("-")
    spec = {"kind": kind}
    for option in options:
        key = next(k for k in ("selection", "width", "k", "sequential") if option.startswith(k))
        value = option[len(key):]
        spec[key] = int(value) if value.isdigit() else value
    return spec


def make_report(per_level: dict[str, dict[str, dict[str, float]]], *, best_of_n: dict[str, float] | None = None,
                efficiency: dict[str, int | None] | None = None, coverage: float | None = 0.9,
                flops: list[dict] | None = None) -> dict:
    """A report with report.json's shape. Overall accuracy is the mean over levels (equal-sized bins);
    `best_of_n` and `efficiency` override best-of-N weighted's held-out accuracy and compute-optimal's efficiency."""
    names = list(dict.fromkeys(n for table in per_level.values() for n in table))
    budgets = sorted({b for table in per_level.values() for row in table.values() for b in row}, key=int)
    accuracy = {n: {b: sum(t[n][b] for t in per_level.values()) / len(per_level) for b in budgets
                    if all(b in t[n] for t in per_level.values())} for n in names}
    best_of_n = best_of_n or accuracy[BON]
    optimal = {"choice": {}, "cv_accuracy": dict(best_of_n), "best_of_n_weighted": dict(best_of_n),
               "efficiency": efficiency or {b: int(b) for b in budgets}}
    levels = sorted(per_level, key=int)
    report = {
        "questions": 10 * len(levels), "seconds": 12.0, "seconds_total": 12.0,
        "strategies": {n: spec_of(n) for n in names},
        "params": {"policy": 1000, "large_policy": 4000, "verifier": 1000}, "difficulty_cost_tokens": 1,
        "difficulty_signal": "verifier", "config": {"task": {"name": "arithmetic"}, "split": "test"},
        "accuracy": accuracy, "mean_generated_tokens": {}, "per_level": {"oracle": per_level, "predicted": per_level},
        "compute_optimal": {"oracle": optimal, "predicted": json.loads(json.dumps(optimal))},
        "flops_exchange": flops or [flops_row(0.16, int(budgets[-1]), {int(k): (0.5, 0.5) for k in levels})],
        "large_policy_greedy": 0.5}
    if coverage is not None:
        report["coverage"] = {BON: {b: coverage for b in budgets}}
    return report


def flops_row(ratio: float, used: int | None, pairs: dict[int, tuple[float | None, float | None]]) -> dict:
    """pairs: level -> (large_greedy, small_compute_optimal)."""
    return {"R": ratio, "matched_generations": 1.0 if used is None else used + 0.5, "budget_used": used,
            "by_level": {str(k): {"large_greedy": a, "small_compute_optimal": b} for k, (a, b) in pairs.items()}}


def level(bon: tuple[float, float, float], beam: tuple[float, float, float]) -> dict:
    return {BON: dict(zip(("4", "16", "64"), bon)), BEAM: dict(zip(("4", "16", "64"), beam))}


def five_levels(**overrides) -> dict:
    per_level = {"1": level((0.9, 0.9, 0.9), (0.1, 0.1, 0.5)), "2": level((0.8, 0.8, 0.9), (0.1, 0.1, 0.5)),
                 "3": level((0.5, 0.5, 0.9), (0.5, 0.5, 0.5)), "4": level((0.2, 0.3, 0.9), (0.4, 0.5, 0.5)),
                 "5": level((0.0, 0.1, 0.9), (0.2, 0.1, 0.5))}
    return {**per_level, **overrides}


def test_beam_beats_best_of_n_on_the_hard_levels_at_both_low_budgets():
    beam = analyze(make_report(five_levels())).beam_on_hard_bins
    # levels 4 and 5 only: beam 0.3 vs 0.1 at N=4 and 0.3 vs 0.2 at N=16; the easy levels and N=64 do not count
    assert beam.hard_levels == ("4", "5") and beam.low_budgets == (4, 16) and beam.baseline == BON
    assert beam.verdict is BeamVerdict.BEATS
    assert [row.budget for row in beam.by_budget] == [4, 16] and all(row.beats for row in beam.by_budget)
    assert beam.by_budget[0].best_of_n == pytest.approx(0.1) and beam.by_budget[0].beams[BEAM] == pytest.approx(0.3)
    assert beam.by_budget[1].best_of_n == pytest.approx(0.2) and beam.by_budget[1].beams[BEAM] == pytest.approx(0.3)


def test_beam_beats_best_of_n_at_some_low_budgets_or_none():
    beam = analyze(make_report(five_levels(**{"5": level((0.0, 0.5, 0.9), (0.2, 0.1, 0.5))}))).beam_on_hard_bins
    assert [row.beats for row in beam.by_budget] == [True, False] and beam.verdict is BeamVerdict.BEATS_AT_SOME
    # a tie (0.25 against 0.25 at N=4) is not a win
    beam = analyze(make_report(five_levels(**{"4": level((0.3, 0.9, 0.9), (0.3, 0.1, 0.5)),
                                              "5": level((0.2, 0.9, 0.9), (0.2, 0.1, 0.5))}))).beam_on_hard_bins
    assert beam.by_budget[0] == BeamAtBudget(budget=4, best_of_n=pytest.approx(0.25), beams={BEAM: pytest.approx(0.25)},
                                             beats=False)
    assert beam.verdict is BeamVerdict.DOES_NOT_BEAT


def test_no_beam_strategy_means_no_beam_finding():
    per_level = {k: {BON: t[BON]} for k, t in five_levels().items()}
    assert analyze(make_report(per_level)).beam_on_hard_bins is None


def test_best_of_n_already_at_its_top_accuracy_at_the_lowest_budget_means_search_adds_nothing():
    report = make_report(five_levels(), best_of_n={"4": 0.6, "16": 0.6, "64": 0.6},
                         efficiency={"4": 4, "16": 4, "64": 16})
    eff = analyze(report).efficiency["oracle"]
    assert eff.verdict is EfficiencyVerdict.SEARCH_ADDS_NOTHING and eff.factor is None
    assert (eff.top_budget, eff.compute_optimal_budget, eff.best_of_n_budget) == (64, 16, 4)
    assert eff.best_of_n_saturates and eff.best_of_n_accuracy == eff.best_of_n_top_accuracy == 0.6


def test_compute_optimal_with_fewer_generations_than_best_of_n_needs():
    report = make_report(five_levels(), best_of_n={"4": 0.2, "16": 0.4, "64": 0.6},
                         efficiency={"4": 4, "16": 4, "64": 16})
    eff = analyze(report).efficiency["oracle"]
    assert eff.verdict is EfficiencyVerdict.FEWER_GENERATIONS and eff.factor == 4.0
    assert eff.best_of_n_budget == 64 and not eff.best_of_n_saturates
    # best-of-N reaches its top accuracy (within 1e-12) at N=16, compute-optimal at N=4: still 16x fewer
    report = make_report(five_levels(), best_of_n={"4": 0.2, "16": 0.6 - 1e-13, "64": 0.6},
                         efficiency={"4": 4, "16": 4, "64": 4})
    eff = analyze(report).efficiency["oracle"]
    assert eff.verdict is EfficiencyVerdict.FEWER_GENERATIONS and eff.factor == 16.0
    assert eff.best_of_n_budget == 16 and eff.best_of_n_saturates


def test_compute_optimal_not_reaching_best_of_n():
    report = make_report(five_levels(), best_of_n={"4": 0.2, "16": 0.4, "64": 0.6},
                         efficiency={"4": 4, "16": None, "64": None})
    findings = analyze(report)
    assert {s: e.verdict for s, e in findings.efficiency.items()} == {"oracle": EfficiencyVerdict.NOT_REACHED,
                                                                      "predicted": EfficiencyVerdict.NOT_REACHED}
    assert findings.efficiency["oracle"].compute_optimal_budget is None


def test_coverage_against_weighted_selection_at_the_top_budget():
    findings = analyze(make_report(five_levels(), coverage=0.95))
    cov = findings.coverage
    assert (cov.strategy, cov.budget, cov.coverage) == (BON, 64, 0.95)
    assert cov.accuracy == pytest.approx(0.9) and cov.gap == pytest.approx(0.05)
    assert analyze(make_report(five_levels(), coverage=None)).coverage is None


def test_flops_matched_levels_won_by_search_and_by_the_larger_model():
    flops = [flops_row(0.16, 16, {1: (0.5, 0.9), 2: (0.5, 0.6), 3: (0.5, 0.5), 4: (0.7, 0.4), 5: (0.3, 0.0)}),
             flops_row(22.0, None, {k: (0.5, None) for k in range(1, 6)}),
             flops_row(0.79, 4, {1: (0.5, 0.9), 2: (0.5, None), 3: (0.5, 0.5 + 1e-10), 4: (0.7, 0.4), 5: (0.3, 0.0)})]
    rows = analyze(make_report(five_levels(), flops=flops)).flops_matched
    # R=22 has no usable budget and is left out; a tie (level 3) counts for neither side
    assert rows[0] == FlopsMatched(ratio=0.16, matched_generations=16.5, budget=16, levels=("1", "2", "3", "4", "5"),
                                   search_wins=("1", "2"), larger_wins=("4", "5"))
    assert rows[1] == FlopsMatched(ratio=0.79, matched_generations=4.5, budget=4, levels=("1", "3", "4", "5"),
                                   search_wins=("1",), larger_wins=("4", "5"))
    assert len(rows) == 2


def test_no_usable_budget_means_no_flops_comparison():
    flops = [flops_row(22.0, None, {k: (0.5, None) for k in range(1, 6)})]
    findings = analyze(make_report(five_levels(), flops=flops))
    assert findings.flops_matched == ()
    assert "no comparison" in markdown(make_report(five_levels(), flops=flops), findings)


def test_findings_to_dict_is_plain_json():
    findings = analyze(make_report(five_levels()))
    data = findings.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["beam_on_hard_bins"]["verdict"] == "beats" and data["beam_on_hard_bins"]["hard_levels"] == ["4", "5"]
    assert data["efficiency"]["oracle"]["verdict"] in {v.value for v in EfficiencyVerdict}
    assert data["budgets"] == [4, 16, 64] and data["baseline"] == BON


def golden_report() -> dict:
    report = json.loads(GOLDEN.read_text())["report"]
    params = {"policy": report["params"]["policy"], "large_policy": report["params"]["large_policy"],
              "verifier": report["params"]["prm"]}  # the golden report predates the Verifier interface
    return {**report, "params": params, "seconds": 30.0, "seconds_total": 30.0, "difficulty_signal": "verifier",
            "strategies": {n: spec_of(n) for n in report["accuracy"]},
            "config": {"task": {"name": "arithmetic"}, "split": "test"}}


def test_the_reduced_demos_findings():
    report = golden_report()
    findings = analyze(report)
    assert isinstance(findings, Findings) and findings.budgets == (2, 4) and findings.baseline == BON
    # best-of-N weighted's held-out accuracy is 0.75 at N=2 and 0.667 at N=4: it is at its top accuracy already
    for signal in ("oracle", "predicted"):
        eff = findings.efficiency[signal]
        assert eff.verdict is EfficiencyVerdict.SEARCH_ADDS_NOTHING
        assert (eff.compute_optimal_budget, eff.best_of_n_budget) == (2, 2)
    cov = findings.coverage
    assert (cov.budget, cov.coverage, cov.accuracy) == (4, 0.75, report["accuracy"][BON]["4"])
    assert cov.gap == pytest.approx(0.75 - 2 / 3)
    beam = findings.beam_on_hard_bins
    assert beam.hard_levels == ("2",) and beam.low_budgets == (2, 4) and beam.verdict is BeamVerdict.DOES_NOT_BEAT
    assert beam.by_budget[1].beams == {"beam-width2": 1 / 3, "beam-widthsqrt": 0.5}
    assert beam.by_budget[1].best_of_n == 0.5 and not any(row.beats for row in beam.by_budget)
    # level 1 at N=4: 0.8333333333333333 against 0.8333333333333334 is a tie, not a win for the larger model
    assert [(r.ratio, r.budget, r.search_wins, r.larger_wins) for r in findings.flops_matched] == [
        (0.16, 4, (), ("2",)), (0.79, 4, (), ("2",)), (22.0, 2, ("1",), ("2",))]
    assert baseline_name(report) == BON


def test_the_summary_states_the_findings():
    report = golden_report()
    text = markdown(report, analyze(report))
    assert ("Compute-optimal matches best-of-N weighted's accuracy at N=4 with N=2 generations, but best-of-N weighted "
            "itself already does so at N=2") in text
    assert "a right answer is among best-of-N's candidates for 75% of the questions and weighted selection picks " \
           "one for 67%" in text
    assert ("On the hardest bins (levels 2, mean accuracy) at the lowest budgets, beam search does not beat "
            "best-of-N there (N=2: beam-width2 0.500, beam-widthsqrt 0.500 vs best-of-N weighted 0.500;") in text
    assert ("Level by level (1 = easiest), at R=0.16 (arxiv_v1, N=4) search wins on no level and the larger model on "
            "level 2; at R=0.79 (arxiv_v1, N=4) search wins on no level and the larger model on level 2; at R=22.0 "
            "(arxiv_v1, N=2) search wins on level 1 and the larger model on level 2.") in text


def test_the_summary_states_a_saving_and_the_beam_verdict():
    report = make_report(five_levels(), best_of_n={"4": 0.2, "16": 0.6, "64": 0.6},
                         efficiency={"4": 4, "16": 4, "64": 4})
    text = markdown(report, analyze(report))
    assert "Compute-optimal reaches best-of-N weighted's accuracy at N=64 with N=4 generations (16x fewer)." in text
    assert "Best-of-N weighted itself already reaches its N=64 accuracy at N=16 (0.600 against 0.600)." in text
    assert "beam search beats best-of-N there (N=4: beam-width4 0.300 vs best-of-N weighted 0.100;" in text


# ---- revisions: sequential against parallel, the ratio by difficulty, compute-optimal revisions -----------------

PARALLEL, SEQ4, SEQ16 = "revisions-sequential1", "revisions-sequential4", "revisions-sequential16"
FAMILY = "selection hierarchical, window 4"


def revision_levels() -> dict:
    """Three oracle levels at N=4 (ratios 1:4, 4:1) and N=16 (1:16, 4:4, 16:1). At N=16 the easy level does best
    fully sequential and the others at 4:4; at N=4 level 1 ties (0.6 both) and levels 2, 3 do best fully parallel."""
    def lv(bon, parallel, seq4, seq16):
        return {BON: dict(zip(("4", "16"), bon)), PARALLEL: dict(zip(("4", "16"), parallel)),
                SEQ4: dict(zip(("4", "16"), seq4)), SEQ16: {"16": seq16}}

    return {"1": lv((0.7, 0.8), (0.6, 0.6), (0.6, 0.8), 1.0), "2": lv((0.4, 0.5), (0.5, 0.5), (0.3, 0.7), 0.6),
            "3": lv((0.1, 0.2), (0.1, 0.2), (0.0, 0.4), 0.0)}


def revision_report(with_best_of_n: bool = True) -> dict:
    """Overall (mean of the levels) at N=4: best-of-N 0.4, 1:4 0.4, 4:1 0.3; at N=16: best-of-N 0.5, 1:16 0.433,
    4:4 0.633, 16:1 0.533. Compute-optimal revisions, oracle bins: 0.5 and 0.6 against best-of-N's 0.4 and 0.5, so
    N=4 matches best-of-N at 4 and at 16 (4x fewer); predicted bins: 0.3 and 0.45, reaching best-of-N's N=4
    accuracy only at N=16 and its N=16 accuracy never."""
    report = make_report(revision_levels())
    bon = {"4": 0.4, "16": 0.5}
    report["revisions_compute_optimal"] = {
        "oracle": {"choice": {"1/4": SEQ4, "1/16": SEQ16, "2/4": PARALLEL, "2/16": SEQ4, "3/4": PARALLEL,
                              "3/16": SEQ4},
                   "cv_accuracy": {"4": 0.5, "16": 0.6}, "best_of_n_weighted": bon, "efficiency": {"4": 4, "16": 4}},
        "predicted": {"choice": {}, "cv_accuracy": {"4": 0.3, "16": 0.45}, "best_of_n_weighted": bon,
                      "efficiency": {"4": 16, "16": None}}}
    if not with_best_of_n:
        del report["strategies"][BON]
        for opt in report["revisions_compute_optimal"].values():
            opt["best_of_n_weighted"] = opt["efficiency"] = None
    return report


def test_sequential_against_parallel_and_best_of_n_at_equal_budget():
    findings = analyze(revision_report())
    low, high = findings.sequential_vs_parallel
    assert (low.budget, low.family, high.budget, high.family) == (4, FAMILY, 16, FAMILY)
    assert [(r.strategy, r.ratio) for r in low.ratios] == [(PARALLEL, "1:4"), (SEQ4, "4:1")]
    assert [(r.strategy, r.ratio) for r in high.ratios] == [(PARALLEL, "1:16"), (SEQ4, "4:4"), (SEQ16, "16:1")]
    assert [r.accuracy for r in high.ratios] == pytest.approx([1.3 / 3, 1.9 / 3, 1.6 / 3])
    assert low.best_of_n == pytest.approx(0.4) and high.best_of_n == pytest.approx(0.5)
    # N=4: fully sequential 0.3 loses to fully parallel 0.4 and to best-of-N 0.4; N=16: 0.533 beats 0.433 and 0.5
    assert (low.sequential_vs_parallel, low.sequential_vs_best_of_n) == (Winner.PARALLEL, Winner.PARALLEL)
    assert (high.sequential_vs_parallel, high.sequential_vs_best_of_n) == (Winner.SEQUENTIAL, Winner.SEQUENTIAL)


def test_the_best_ratio_per_difficulty_level():
    sweep = {(row.level, row.budget): row for row in analyze(revision_report()).ratio_by_difficulty}
    assert sorted(sweep) == [("1", 4), ("1", 16), ("2", 4), ("2", 16), ("3", 4), ("3", 16)]
    best = {key: (row.best.ratio, row.place, row.tied) for key, row in sweep.items()}
    assert best == {("1", 16): ("16:1", RatioPlace.FULLY_SEQUENTIAL, False),  # easy: fully sequential
                    ("2", 16): ("4:4", RatioPlace.INTERIOR, False), ("3", 16): ("4:4", RatioPlace.INTERIOR, False),
                    ("1", 4): ("4:1", RatioPlace.FULLY_SEQUENTIAL, True),  # 0.6 both: the more sequential
                    ("2", 4): ("1:4", RatioPlace.FULLY_PARALLEL, False),
                    ("3", 4): ("1:4", RatioPlace.FULLY_PARALLEL, False)}
    assert [r.accuracy for r in sweep[("3", 16)].ratios] == [0.2, 0.4, 0.0]


def test_compute_optimal_revisions_against_best_of_n():
    opt = analyze(revision_report()).revisions_compute_optimal
    oracle, predicted = opt["oracle"], opt["predicted"]
    assert [(r.budget, r.compute_optimal, r.best_of_n, r.matched_at, r.factor) for r in oracle.by_budget] == [
        (4, 0.5, 0.4, 4, 1.0), (16, 0.6, 0.5, 4, 4.0)]
    assert oracle.best_factor == 4.0 and oracle.choice["1/16"] == SEQ16
    assert oracle.efficiency.verdict is EfficiencyVerdict.FEWER_GENERATIONS and oracle.efficiency.factor == 4.0
    assert [(r.matched_at, r.factor) for r in predicted.by_budget] == [(16, 0.25), (None, None)]
    assert predicted.efficiency.verdict is EfficiencyVerdict.NOT_REACHED and predicted.best_factor == 0.25


def test_the_summary_states_the_revision_findings(tmp_path):
    report = revision_report()
    text = markdown(report, analyze(report))
    assert "## Revisions: sequential versus parallel at equal budget" in text
    assert (f"| 16 | {FAMILY} | 1:16 0.433, 4:4 0.633, 16:1 0.533 | 0.500 |") in text
    assert ("At N=4 (selection hierarchical, window 4) fully sequential (4:1) 0.300 loses to fully parallel (1:4) "
            "0.400 and loses to best-of-N weighted 0.400; at N=16 (selection hierarchical, window 4) fully sequential "
            "(16:1) 0.533 beats fully parallel (1:16) 0.433 and beats best-of-N weighted 0.500.") in text
    assert "| 2 | 16 | selection hierarchical, window 4 | 1:16 0.500, 4:4 0.700, 16:1 0.600 | 4:4 |" in text
    assert "| 1 | 4 | selection hierarchical, window 4 | 1:4 0.600, 4:1 0.600 | 4:1 (tied) |" in text
    assert ("By level: level 1 at N=4 does best fully sequential (4:1, 0.600, tied); level 1 at N=16 does best fully "
            "sequential (16:1, 1.000); level 2 at N=4 does best fully parallel (1:4, 0.500); level 2 at N=16 does best "
            "at an interior ratio (4:4, 0.700);") in text
    assert "| compute-optimal revisions (oracle bins) | 0.500 | 0.600 |" in text
    assert ("- Efficiency (oracle bins): the smallest budget at which compute-optimal revisions match best-of-N "
            "weighted at N=4: 4, N=16: 4 (4x fewer). At most 4x fewer.") in text
    assert "N=4: 16 (4x more), N=16: not reached." in text
    assert ("The compute-optimal ratio reaches best-of-N weighted's accuracy at N=16 with N=4 generations "
            "(4x fewer).") in text
    assert "![](revision_ratio_by_difficulty.png)" in text and "![](revisions_vs_best_of_n.png)" in text
    plots(report, str(tmp_path))
    assert (tmp_path / "revision_ratio_by_difficulty.png").stat().st_size > 0
    assert (tmp_path / "revisions_vs_best_of_n.png").stat().st_size > 0


def test_without_best_of_n_weighted_the_revisions_are_not_compared_with_it(tmp_path):
    report = revision_report(with_best_of_n=False)
    findings = analyze(report)
    assert findings.baseline is None
    assert all(row.best_of_n is None and row.sequential_vs_best_of_n is None
               for row in findings.sequential_vs_parallel)
    assert findings.sequential_vs_parallel[1].sequential_vs_parallel is Winner.SEQUENTIAL
    opt = findings.revisions_compute_optimal["oracle"]
    assert opt.efficiency is None and opt.best_factor is None
    assert [(r.best_of_n, r.matched_at) for r in opt.by_budget] == [(None, None), (None, None)]
    text = markdown(report, findings)
    assert "This run has no best-of-N weighted strategy, so compute-optimal revisions are not compared with it." in text
    assert "This run has no best-of-N weighted strategy, so the revisions are not compared with it." in text
    assert "(16:1) 0.533 beats fully parallel (1:16) 0.433. The paper found" in text
    plots(report, str(tmp_path))
    assert (tmp_path / "revisions_vs_best_of_n.png").exists()
    assert "| compute-optimal revisions (predicted bins) | 0.300 | 0.450 |" in text


def test_a_report_without_revisions_has_no_revision_findings():
    report = make_report(five_levels())
    findings = analyze(report)
    assert findings.sequential_vs_parallel == () and findings.ratio_by_difficulty == ()
    assert findings.revisions_compute_optimal == {}
    assert "## Revisions" not in markdown(report, findings) and "## Compute-optimal revisions" not in markdown(
        report, findings)
    data = analyze(revision_report()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ratio_by_difficulty"][0]["place"] in {p.value for p in RatioPlace}
    assert data["revisions_compute_optimal"]["oracle"]["efficiency"]["verdict"] == "fewer_generations"


# ---- intervals, paired verdicts and the paper-versus-ttcjax table on a study whose truth is known ---------------

PAPER_ROWS = ["beam_beats_best_of_n_on_hard_bins", "beam_degrades_on_easy_bins", "compute_optimal_search_oracle",
              "compute_optimal_search_predicted", "revisions_improve_pass_at_1", "right_to_wrong_rate",
              "sequential_beats_parallel", "ratio_by_difficulty", "compute_optimal_revisions_oracle",
              "compute_optimal_revisions_predicted", "flops_matched"]


@pytest.fixture(scope="module")
def known():
    """effect -> (report, findings) of tests/known_study.py's study."""
    return {effect: (report := known_study(effect), analyze(report)) for effect in (1, -1, 0)}


@pytest.mark.parametrize("effect, verdict", [(1, Reproduction.REPRODUCED), (-1, Reproduction.NOT_REPRODUCED),
                                             (0, Reproduction.INCONCLUSIVE)])
def test_every_row_of_the_paper_table_says_what_the_study_was_built_to_show(known, effect, verdict):
    report, findings = known[effect]
    assert [row.finding for row in findings.paper] == PAPER_ROWS
    assert {row.finding: row.verdict for row in findings.paper} == {key: verdict for key in PAPER_ROWS}
    for row in findings.paper:
        assert row.reason and (row.comparisons or row.estimate is not None), row.finding
        for c in row.comparisons:  # oriented the paper's way: its verdict is the row's where the row is decided
            assert c.difference.lo <= c.difference.value <= c.difference.hi
            if verdict is Reproduction.REPRODUCED:
                assert c.verdict is Verdict.BETTER, row.finding


def test_the_old_verdicts_follow_the_paired_intervals(known):
    _, up = known[1]
    assert up.beam_on_hard_bins.verdict is BeamVerdict.BEATS
    assert all(row.sequential_vs_parallel is Winner.SEQUENTIAL for row in up.sequential_vs_parallel)
    assert up.flops_matched[0].search_wins == ("1", "2") and "4" in up.flops_matched[0].larger_wins
    assert all(row.improves for row in up.revisions)
    _, down = known[-1]
    assert down.beam_on_hard_bins.verdict is BeamVerdict.DOES_NOT_BEAT
    assert all(row.sequential_vs_parallel is Winner.PARALLEL for row in down.sequential_vs_parallel)
    assert not any(row.improves for row in down.revisions)
    # equal accuracies on independently drawn questions: within noise is a tie, not a win for either side
    _, noise = known[0]
    low = next(row for row in noise.sequential_vs_parallel if row.budget == 4)
    assert low.sequential_vs_parallel is Winner.TIE and low.sequential_minus_parallel.verdict is Verdict.WITHIN_NOISE
    assert low.sequential_minus_parallel.difference.value == 0.0
    assert noise.beam_on_hard_bins.verdict is BeamVerdict.DOES_NOT_BEAT
    assert [c.verdict for c in noise.beam_on_hard_bins.by_budget[0].comparisons.values()] == [Verdict.WITHIN_NOISE]


def test_every_accuracy_has_an_interval_around_the_reports_own_number(known):
    report, findings = known[0]
    intervals = findings.intervals
    assert (intervals.resamples, intervals.seed) == (2000, 0)
    for name, row in report["accuracy"].items():
        for b, acc in row.items():
            i = intervals.accuracy[name][b]
            assert i.value == pytest.approx(acc) and i.lo <= acc <= i.hi and i.hi - i.lo > 0.02, (name, b)
    for signal, levels in report["per_level"].items():
        for lv, table in levels.items():
            for name, row in table.items():
                assert {b: i.value for b, i in intervals.per_level[signal][lv][name].items()} == pytest.approx(row)
    for signal, opt in report["compute_optimal"].items():  # the choice redone on each resample, row 0 the report's
        assert {b: i.value for b, i in intervals.compute_optimal[signal].items()} == pytest.approx(opt["cv_accuracy"])
        assert all(i.lo <= i.value <= i.hi for i in intervals.compute_optimal[signal].values())
    for signal, opt in report["revisions_compute_optimal"].items():
        assert {b: i.value for b, i in intervals.revisions_compute_optimal[signal].items()} == pytest.approx(
            opt["cv_accuracy"])
    assert intervals.large_greedy.value == pytest.approx(report["large_policy_greedy"])
    cov = findings.coverage
    assert cov.coverage_interval.value == pytest.approx(cov.coverage) and cov.gap_interval.verdict is Verdict.BETTER
    [chains] = findings.revisions
    assert (chains.first_step.value, chains.last_step.value) == pytest.approx(
        (chains.pass_by_step[0], chains.pass_by_step[-1]))
    # the efficiency saving: row 0 is the report's own (best-of-N at N=64 is not matched below it here)
    eff = findings.efficiency["oracle"]
    assert eff.saving.lo <= eff.saving.value <= eff.saving.hi
    data = findings.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["paper"][0]["verdict"] == "inconclusive" and data["paper"][0]["comparisons"][0]["verdict"] == (
        "within_noise")


def test_a_report_without_per_question_outcomes_has_no_intervals_and_an_inconclusive_table():
    findings = analyze(make_report(five_levels()))
    assert findings.intervals is None and findings.efficiency["oracle"].saving is None
    assert [row.finding for row in findings.paper] == PAPER_ROWS
    assert all(row.verdict is Reproduction.INCONCLUSIVE and "no per-question outcomes" in row.reason
               for row in findings.paper)


def test_the_summary_shows_the_intervals_and_the_paper_table(known, tmp_path):
    report, findings = known[0]
    text = markdown(report, findings)
    i = findings.intervals.accuracy[BON]["64"]
    assert f"| {BON} | 0.375 [" in text and f"0.575 [{i.lo:.2f}, {i.hi:.2f}] |" in text
    assert "percentile bootstrap over questions (2000 resamples, seed 0)" in text
    assert "fully sequential (4:1) 0.475 is within noise of fully parallel (1:4) 0.475 (+0.000 [" in text
    assert "0x where not reached" not in text and "Saving over best-of-N weighted" in text
    table = text[text.index("## Paper versus ttcjax"):]
    assert table.count("**inconclusive**") == len(PAPER_ROWS) and "**reproduced**" not in table
    assert "| About 38% of right answers are revised into wrong ones (v1 section 6.1) | 0.333 [0, 1] |" in table
    up = markdown(known[1][0], known[1][1])
    assert up[up.index("## Paper versus ttcjax"):].count("**reproduced**") == len(PAPER_ROWS)
    plots(report, str(tmp_path), findings)
    assert (tmp_path / "compute_optimal_vs_best_of_n.png").stat().st_size > 0
