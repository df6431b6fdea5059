"""An experiment's report rendered: summary.md from the report and its findings, and the plots.

Nothing here decides anything: every comparison and verdict comes from `ttcjax.eval.analysis.Findings`; this
module only formats them and the report's tables.
"""

from __future__ import annotations

import os

import numpy as np

from ttcjax.eval.analysis import (BeamOnHardBins, BeamVerdict, Efficiency, EfficiencyVerdict, Findings, FlopsMatched,
                                  PaperFinding, RatioAccuracy, RatioPlace, Reproduction, RevisionChains,
                                  RevisionsComputeOptimal, Winner, analyze, baseline_name)
from ttcjax.eval.uncertainty import CONFIDENCE, Comparison, Interval, Verdict
from ttcjax.io import atomic_path


def _machines(report: dict) -> str:
    """' Run on ...': the machines the run log recorded (none before runs recorded them)."""
    machines = report.get("invocations", {}).get("machines") or []
    described = [f"{m.get('cpu', 'an unknown CPU')} ({m.get('cpu_cores', '?')} cores"
                 + (f", {m['memory_gib']:g} GiB" if isinstance(m.get("memory_gib"), (int, float)) else "")
                 + f"; {m.get('devices', '?')}" + (f", {m['processes']} processes" if m.get("processes", 1) > 1 else "")
                 + ")" for m in machines]
    return f" Run on {'; '.join(dict.fromkeys(described))}." if described else ""


def markdown(report: dict, findings: Findings) -> str:
    """summary.md: the report's tables with the findings stated in words."""
    r = report
    budgets = findings.budgets
    head = "| | " + " | ".join(f"N={b}" for b in budgets) + " |"
    sep = "|---|" + "---|" * len(budgets)
    label = baseline_label(r)
    params = r["params"]
    models = (f"policy {params['policy']:,} parameters, "
              + (f"verifier {params['verifier']:,}" if params["verifier"] else "no verifier (majority voting)")
              + (f", larger model {params['large_policy']:,}" if params.get("large_policy") else ""))
    config = r["config"]
    lines = [
        f"# Scaling test-time compute: task {config['task']['name']}, split {config['split']}", "",
        f"{r['questions']} questions; {models}; difficulty from {r['difficulty_signal']}. "
        + (f"{r['seconds']:.0f} s." if r.get("seconds_total", r["seconds"]) == r["seconds"] else
           f"{r['seconds']:.0f} s in this invocation, {r['seconds_total']:.0f} s in all (a rerun reuses finished "
           "work).") + _machines(r), "",
        _uncertainty(findings), "", "## Accuracy versus generation budget", "", head, sep]
    ci = findings.intervals
    for name, row in r["accuracy"].items():
        lines.append(_table_row(name, row, budgets, ci.accuracy.get(name) if ci else None))
    lines += ["", "![](accuracy_vs_budget.png)", "", "## Per difficulty level (oracle bins, 1 = easiest)", ""]
    for lv, table in r["per_level"]["oracle"].items():
        lines += [f"### Level {lv}", "", head, sep]
        for name, row in table.items():
            lines.append(_table_row(name, row, budgets, ci.per_level["oracle"].get(lv, {}).get(name) if ci else None))
        lines.append("")
    lines += ["![](accuracy_by_difficulty.png)", "", "## Compute-optimal versus best-of-N (held-out folds)", "",
              head, sep]
    for signal in ("oracle", "predicted"):
        opt = r["compute_optimal"][signal]
        lines.append(_table_row(f"compute-optimal ({signal} bins)", opt["cv_accuracy"], budgets,
                                ci.compute_optimal.get(signal) if ci else None))
    base = r["compute_optimal"]["oracle"]["best_of_n_weighted"]
    lines.append(_table_row(label, base, budgets, ci.accuracy.get(r.get("baseline")) if ci else None))
    lines += [""]
    for signal in ("oracle", "predicted"):
        eff = r["compute_optimal"][signal]["efficiency"]
        lines.append(f"- Efficiency ({signal} bins): the smallest budget at which compute-optimal matches "
                     f"{label} at " + ", ".join(f"N={b}: {eff[str(b)]}" for b in budgets) + "."
                     + _saving(findings.efficiency[signal].saving, label))
    shows = _efficiency(findings.efficiency["oracle"], label)
    if findings.coverage is not None:
        c = findings.coverage
        shows += (f" At N={c.budget} a right answer is among best-of-N's candidates for {c.coverage:.0%}"
                  f"{_pct(c.coverage_interval)} of the questions and weighted selection picks one for {c.accuracy:.0%}"
                  f"{_pct(c.accuracy_interval)}: the difference is the verifier's to win"
                  + (f" ({_difference(c.gap_interval)})." if c.gap_interval else "."))
    lines += ["", "**What this run shows.** " + shows + " " + _beam(findings.beam_on_hard_bins)
              + " Choices per bin are in report.json (`compute_optimal.*.choice`); with few questions per bin the "
              "held-out estimates are noisy, which more questions reduce.", "",
              "![](compute_optimal_vs_best_of_n.png)", ""]
    if findings.revisions:
        lines += _revisions_section(findings.revisions)
    if findings.sequential_vs_parallel:
        lines += _sequential_vs_parallel_section(findings, label)
    if findings.ratio_by_difficulty:
        lines += _ratio_by_difficulty_section(findings)
    if findings.revisions_compute_optimal:
        lines += _revisions_compute_optimal_section(findings, label)
    if r["flops_exchange"]:
        lines += _flops_section(r, findings)
    if findings.paper:
        lines += _paper_section(findings.paper)
    lines += ["Raw per-question results: results/*.jsonl, difficulty.jsonl"
              + (", large_policy.jsonl" if r["flops_exchange"] else "") + "; the scheduler: "
              "scheduler.json (`ttcjax run --scheduler ...`).", ""]
    return "\n".join(lines)


def _flops_section(r: dict, findings: Findings) -> list[str]:
    lines = [f"## Test-time compute versus a {r['params']['large_policy'] / r['params']['policy']:.1f}x larger "
             "model at matched FLOPs", "",
             f"The larger model answers greedily (accuracy {r['large_policy_greedy']:.3f} overall). The small "
             "policy may spend B generations where 6 N_s D_p + f N_s D_i B = 6 N_l D_p + f N_l D_i, R = D_i / D_p, "
             "under both versions of the paper: arXiv v1 (f = 2, R = 0.16 / 0.79 / 22) and ICLR 2025 (f = 4, the "
             "verifier's queries counted, R = 0.08 / 0.40 / 11); the largest computed budget not above B is used.",
             ""]
    levels = sorted(r["flops_exchange"][0]["by_level"], key=int)
    lines += ["| constants | R | matched B | budget used | "
              + " | ".join(f"L{k} large / small+search" for k in levels) + " |",
              "|---|---|---|---|" + "---|" * len(levels)]
    ci = findings.intervals
    for row in r["flops_exchange"]:
        used = str(row["budget_used"])

        def cell(k: str) -> str:
            large = ci.large_greedy_by_level.get(k) if ci else None
            small = ci.compute_optimal_by_level["oracle"].get(k, {}).get(used) if ci else None
            return (f"{_two(row['by_level'][k]['large_greedy'], large)} / "
                    f"{_two(row['by_level'][k]['small_compute_optimal'], small)}")

        cells = [cell(k) for k in sorted(row["by_level"], key=int)]
        lines.append(f"| {row.get('constants', 'arxiv_v1')} | {row['R']} | {row['matched_generations']:.1f} | "
                     f"{row['budget_used']} | "
                     + " | ".join(cells) + " |")
    lines += ["", _flops_matched(findings.flops_matched), "", "![](flops_matched.png)", ""]
    return lines


def _revisions_section(rows: tuple[RevisionChains, ...]) -> list[str]:
    steps = max(len(row.pass_by_step) for row in rows)
    lines = ["## Revisions: pass@1 by revision step", "",
             "The revision model's chains (its own verifier selects): the share of chains right at each attempt, and "
             "how often a right attempt is revised into a wrong one.", "",
             "| strategy | budget | " + " | ".join(f"step {k + 1}" for k in range(steps)) + " | right-to-wrong |",
             "|---|---|" + "---|" * (steps + 1)]
    for row in rows:
        cells = [f"{p:.3f}" for p in row.pass_by_step] + [""] * (steps - len(row.pass_by_step))
        if row.first_step is not None:  # intervals on the first and last steps, the ones the finding compares
            cells[0] = _ci(row.pass_by_step[0], row.first_step)
            cells[len(row.pass_by_step) - 1] = _ci(row.pass_by_step[-1], row.last_step)
        rate = ("-" if row.right_to_wrong_rate is None else
                f"{_ci(row.right_to_wrong_rate, row.right_to_wrong_interval)} ({row.right_to_wrong}/"
                f"{row.right_followed})")
        lines.append(f"| {row.strategy} | {row.budget} | " + " | ".join(cells) + f" | {rate} |")
    better = [f"{row.strategy} at N={row.budget}" for row in rows if row.improves]
    lines += ["", ("pass@1 rises from the first attempt to the last for " + ", ".join(better) + "." if better else
                   "pass@1 does not rise from the first attempt to the last on this run.")]
    compared = [f"{row.strategy} at N={row.budget} {_difference(row.last_minus_first)}" for row in rows
                if row.last_minus_first is not None]
    if compared:
        lines[-1] += " Last attempt minus first, paired: " + "; ".join(compared) + "."
    return lines + [""]


def _ratio_name(row: RatioAccuracy, side: str) -> str:
    """The most sequential or parallel ratio (`side`) as the summary names it: "fully sequential (16:1)", "fully
    parallel (1:16)" or "the most sequential ratio (4:4)"."""
    if row.chains == 1:
        return f"fully sequential ({row.ratio})"
    return f"fully parallel ({row.ratio})" if row.sequential == 1 else f"the most {side} ratio ({row.ratio})"


def _ratio_cells(ratios: tuple[RatioAccuracy, ...]) -> str:
    return ", ".join(f"{r.ratio} {_ci(r.accuracy, r.interval)}" for r in ratios)


_BEATS = {Winner.SEQUENTIAL: "beats", Winner.PARALLEL: "loses to", Winner.TIE: "ties with"}


def _versus(winner: Winner, difference: Comparison | None) -> str:
    """How a side compares: "beats", "loses to", "ties with"; with a paired interval, "is within noise of" for a tie,
    and the difference is given after the other side."""
    return "is within noise of" if difference is not None and winner is Winner.TIE else _BEATS[winner]


def _sequential_vs_parallel_section(findings: Findings, label: str) -> list[str]:
    lines = ["## Revisions: sequential versus parallel at equal budget", "",
             "Accuracy of the revision strategies at each budget N by their sequential:parallel ratio (attempts per "
             f"chain : N / attempts parallel chains), next to {label} from the policy (the paper's figure 6 right).",
             "", f"| N | revision strategies | accuracy by ratio, most parallel first | {label} |", "|---|---|---|---|"]
    words = []
    for row in findings.sequential_vs_parallel:
        best_of_n = (_ci(row.best_of_n, findings.intervals.accuracy[findings.baseline][str(row.budget)])
                     if findings.intervals and row.best_of_n is not None else _three(row.best_of_n))
        lines.append(f"| {row.budget} | {row.family} | {_ratio_cells(row.ratios)} | {best_of_n} |")
        most_sequential, most_parallel = row.ratios[-1], row.ratios[0]
        against = []
        if row.sequential_vs_parallel is not None:
            against.append(f"{_versus(row.sequential_vs_parallel, row.sequential_minus_parallel)} "
                           f"{_ratio_name(most_parallel, 'parallel')} {most_parallel.accuracy:.3f}"
                           + _paired(row.sequential_minus_parallel))
        if row.sequential_vs_best_of_n is not None:
            against.append(f"{_versus(row.sequential_vs_best_of_n, row.sequential_minus_best_of_n)} {label} "
                           f"{row.best_of_n:.3f}" + _paired(row.sequential_minus_best_of_n))
        if against:
            words.append(f"at N={row.budget} ({row.family}) {_ratio_name(most_sequential, 'sequential')} "
                         f"{most_sequential.accuracy:.3f} " + " and ".join(against))
    text = "; ".join(words)
    lines += ["", (text[:1].upper() + text[1:] + ". " if text else "")
              + "The paper found sequential revisions narrowly ahead of parallel samples at equal budget.", ""]
    if findings.baseline is None:
        lines += ["This run has no best-of-N weighted strategy, so the revisions are not compared with it.", ""]
    return lines


_PLACES = {RatioPlace.FULLY_SEQUENTIAL: "fully sequential", RatioPlace.INTERIOR: "at an interior ratio",
           RatioPlace.FULLY_PARALLEL: "fully parallel"}


def _ratio_by_difficulty_section(findings: Findings) -> list[str]:
    lines = ["## Revisions: the sequential:parallel ratio by difficulty (oracle bins, 1 = easiest)", "",
             "| level | N | revision strategies | accuracy by ratio, most parallel first | best ratio |",
             "|---|---|---|---|---|"]
    for row in findings.ratio_by_difficulty:
        lines.append(f"| {row.level} | {row.budget} | {row.family} | {_ratio_cells(row.ratios)} | "
                     f"{row.best.ratio}{' (tied)' if row.tied else ''} |")
    parts = [f"level {row.level} at N={row.budget} does best {_PLACES[row.place]} ({row.best.ratio}, "
             f"{row.best.accuracy:.3f}{', tied' if row.tied else ''})" for row in findings.ratio_by_difficulty]
    lines += ["", "By level: " + "; ".join(parts) + ". The paper found easy questions best fully sequential and "
              "hard ones at an interior ratio (ties go to the more sequential ratio here).", "",
              "![](revision_ratio_by_difficulty.png)", ""]
    return lines


def _revisions_compute_optimal_section(findings: Findings, label: str) -> list[str]:
    by_signal = findings.revisions_compute_optimal
    budgets = [row.budget for row in next(iter(by_signal.values())).by_budget]
    lines = ["## Compute-optimal revisions versus best-of-N (held-out folds)", "",
             "The sequential:parallel ratio chosen per bin by the same cross-validation, among the revision strategies "
             "only (the paper's figure 7 left).", "",
             "| | " + " | ".join(f"N={b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for signal, opt in by_signal.items():
        lines.append(f"| compute-optimal revisions ({signal} bins) | "
                     + " | ".join(_ci(row.compute_optimal, row.interval) for row in opt.by_budget) + " |")
    if any(opt.efficiency is None for opt in by_signal.values()):
        return lines + ["", "This run has no best-of-N weighted strategy, so compute-optimal revisions are not "
                        "compared with it.", ""]
    first = next(iter(by_signal.values()))
    base = findings.intervals.accuracy.get(findings.baseline, {}) if findings.intervals else {}
    lines += [f"| {label} | " + " | ".join(_ci(row.best_of_n, base.get(str(row.budget))) for row in first.by_budget)
              + " |", ""]
    for signal, opt in by_signal.items():
        lines.append(f"- Efficiency ({signal} bins): the smallest budget at which compute-optimal revisions match "
                     f"{label} at " + ", ".join(f"N={row.budget}: " + _matched(row.matched_at, row.factor)
                                                for row in opt.by_budget) + "."
                     + _most_saved(opt) + _saving(opt.efficiency.saving, label))
    lines += ["", "**What this shows.** " + _efficiency(by_signal["oracle"].efficiency, label,
                                                          subject="The compute-optimal ratio", method="revisions")
              + " The paper: compute-optimal revisions outperform best-of-N with up to 4x less test-time compute "
              "(64 samples against 256). Choices per bin are in report.json (`revisions_compute_optimal.*.choice`).",
              "", "![](revisions_vs_best_of_n.png)", ""]
    return lines


def _matched(budget: int | None, factor: float | None) -> str:
    if budget is None:
        return "not reached"
    return (f"{budget}" if factor == 1 else f"{budget} ({factor:g}x fewer)" if factor > 1 else
            f"{budget} ({1 / factor:g}x more)")


def _most_saved(opt: RevisionsComputeOptimal) -> str:
    return "" if opt.best_factor is None or opt.best_factor <= 1 else f" At most {opt.best_factor:g}x fewer."


def baseline_label(report: dict) -> str:
    """How the summary names the strategy compute-optimal is measured against."""
    name = report.get("baseline")
    return "best-of-N weighted" if name is None or name == baseline_name(report) else f"the baseline {name}"


def _table_row(name: str, row: dict, budgets, intervals: dict[str, Interval] | None = None) -> str:
    """One table row: the accuracy per budget, with its interval where there is one."""
    intervals = intervals or {}
    return f"| {name} | " + " | ".join(_ci(row[str(b)], intervals.get(str(b))) if str(b) in row else ""
                                      for b in budgets) + " |"


def _two(x: float | None, interval: Interval | None = None) -> str:
    return "-" if x is None else f"{x:.2f}" + (f" [{interval.lo:.2f}, {interval.hi:.2f}]" if interval else "")


def _ci(value: float, interval: Interval | None) -> str:
    """A number and its interval: "0.594 [0.47, 0.71]" (the number alone without one)."""
    return f"{value:.3f}" if interval is None else f"{value:.3f} [{interval.lo:.2f}, {interval.hi:.2f}]"


def _pct(interval: Interval | None) -> str:
    return "" if interval is None else f" [{interval.lo:.0%}, {interval.hi:.0%}]"


_WORDS = {Verdict.BETTER: "better", Verdict.WORSE: "worse", Verdict.WITHIN_NOISE: "within noise"}


def _difference(c: Comparison) -> str:
    """A paired difference: "+0.062 [-0.03, +0.16], within noise"."""
    d = c.difference
    return f"{d.value:+.3f} [{d.lo:+.2f}, {d.hi:+.2f}], {_WORDS[c.verdict]}"


def _paired(c: Comparison | None) -> str:
    return "" if c is None else f" ({_difference(c)})"


def _saving(saving: Interval | None, label: str) -> str:
    if saving is None:
        return ""
    return (f" Saving over {label} (its own smallest budget for its top-budget accuracy over compute-optimal's; 0 "
            f"where not reached; the choice redone on each resample): {saving.value:g}x [{saving.lo:g}x, "
            f"{saving.hi:g}x].")


def _uncertainty(findings: Findings) -> str:
    ci = findings.intervals
    if ci is None:
        return ("This report has no per-question outcomes (report.json's per_question), so it shows no intervals and "
                "compares points: a difference above 1e-9 counts.")
    return (f"Every accuracy comes with its {CONFIDENCE:.0%} interval, a percentile bootstrap over questions "
            f"({ci.resamples} resamples, seed {ci.seed}); comparisons are paired (the same questions in every "
            "resample) and are \"within noise\" where the interval of the difference contains 0. The compute-optimal "
            "curves and the saving redo the cross-validated choice on every resample.")


_REPRODUCTION = {Reproduction.REPRODUCED: "reproduced", Reproduction.NOT_REPRODUCED: "not reproduced",
                 Reproduction.INCONCLUSIVE: "inconclusive"}


def _paper_section(rows: tuple[PaperFinding, ...]) -> list[str]:
    lines = ["## Paper versus ttcjax", "",
             "One row per finding of the paper. A comparison is paired and oriented the paper's way (the paper claims "
             "its first side above its second): a finding is reproduced where every comparison goes its way beyond "
             "noise, not reproduced where one goes the other way beyond noise, and inconclusive where one is within "
             "noise or the run lacks the data. The thresholds are the paper's own figures.", "",
             "| finding (the paper) | ttcjax | verdict |", "|---|---|---|"]
    for row in rows:
        numbers = [f"{c.a} minus {c.b}: {_difference(c)}" for c in row.comparisons]
        if row.estimate is not None:
            e = row.estimate
            numbers.append(f"{e.value:.3g} [{e.lo:.3g}, {e.hi:.3g}]")
        lines.append(f"| {row.claim} | {'; '.join(numbers) or '-'} | **{_REPRODUCTION[row.verdict]}**: "
                     f"{row.reason} |")
    return lines + [""]


def _efficiency(e: Efficiency, label: str, subject: str = "Compute-optimal", method: str = "search strategies"
                ) -> str:
    top, label_ = e.top_budget, label[0].upper() + label[1:]
    if e.verdict is EfficiencyVerdict.SEARCH_ADDS_NOTHING:
        return (f"{subject} matches {label}'s accuracy at N={top} with N={e.compute_optimal_budget} "
                f"generations, but {label} itself already does so at N={e.best_of_n_budget}: on this run "
                f"{method} add nothing over best-of-N at that budget.")
    if e.verdict is EfficiencyVerdict.FEWER_GENERATIONS:
        text = (f"{subject} reaches {label}'s accuracy at N={top} with N={e.compute_optimal_budget} "
                f"generations ({e.factor:.0f}x fewer).")
    else:
        text = f"{subject} does not reach {label}'s accuracy at N={top} within these budgets."
    if e.best_of_n_saturates:
        text += (f" {label_} itself already reaches its N={top} accuracy at N={e.best_of_n_budget} "
                 f"({e.best_of_n_accuracy:.3f} against {e.best_of_n_top_accuracy:.3f}).")
    return text


_BEAM_VERDICTS = {BeamVerdict.BEATS: "beam search beats best-of-N there",
                  BeamVerdict.BEATS_AT_SOME: "beam search beats best-of-N at some of them",
                  BeamVerdict.DOES_NOT_BEAT: "beam search does not beat best-of-N there"}


def _beam(b: BeamOnHardBins | None) -> str:
    if b is None:
        return ""
    parts = [f"N={row.budget}: " + ", ".join(f"{name} {v:.3f}" + _paired(row.comparisons.get(name))
                                             for name, v in row.beams.items() if v is not None)
             + f" vs best-of-N weighted {_three(row.best_of_n)}" for row in b.by_budget]
    return (f"On the hardest bins (levels {', '.join(b.hard_levels)}, mean accuracy) at the lowest budgets, "
            f"{_BEAM_VERDICTS[b.verdict]} ({'; '.join(parts)}).")


def _three(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _flops_matched(rows: tuple[FlopsMatched, ...]) -> str:
    if not rows:
        return "No ratio R leaves the small policy a computed budget, so this run makes no comparison."

    def say(ks):
        return "no level" if not ks else f"level {ks[0]}" if len(ks) == 1 else f"levels {', '.join(ks)}"

    parts = [f"at R={row.ratio} ({row.constants}, N={row.budget}) search wins on {say(row.search_wins)} and the "
             f"larger model on {say(row.larger_wins)}" for row in rows]
    return ("Level by level (1 = easiest), " + "; ".join(parts) + ". The paper found test-time compute the better "
            "use of FLOPs on easy and intermediate questions when R is small, and pretraining on the hardest.")


def plots(report: dict, out: str, findings: Findings | None = None) -> None:
    """The report's figures as PNG files in `out` (`findings`: analyze(report), computed here when not given).
    With revision strategies also revision_ratio_by_difficulty.png (where a budget has two ratios or more) and
    revisions_vs_best_of_n.png."""
    findings = findings or analyze(report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        with atomic_path(os.path.join(out, name)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)

    # one look per strategy in every figure: ten colours, then the same colours dashed, then dotted
    style = {name: dict(color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3])
             for i, name in enumerate(report["accuracy"])}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, row in report["accuracy"].items():
        b = sorted(int(x) for x in row)
        ax.plot(b, [row[str(x)] for x in b], marker="o", label=name, **style[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title("accuracy versus budget")
    save(fig, "accuracy_vs_budget.png")

    levels = report["per_level"]["oracle"]
    fig, axes = plt.subplots(1, len(levels), figsize=(2.8 * len(levels), 3.4), sharey=True, squeeze=False)
    for ax, (lv, table) in zip(axes[0], levels.items()):
        for name, row in table.items():
            b = sorted(int(x) for x in row)
            ax.plot(b, [row[str(x)] for x in b], marker=".", label=name, **style.get(name, {}))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generation budget")
        ax.set_title(f"level {lv} (oracle)")
    axes[0, 0].set_ylabel("accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    columns = max(1, min(6, len(labels), int(2.8 * len(levels) / 1.6)))  # as many as the figure's width holds
    fig.tight_layout(rect=(0, 0.1 + 0.035 * ((len(labels) - 1) // columns), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=6, frameon=False)
    with atomic_path(os.path.join(out, "accuracy_by_difficulty.png")) as tmp:  # laid out above the legend already
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)

    def band(ax, line, budgets, intervals):
        """The 95% intervals of a curve, shaded in its colour (none without per-question outcomes)."""
        if intervals:
            ax.fill_between(budgets, [intervals[str(x)].lo for x in budgets], [intervals[str(x)].hi for x in budgets],
                            color=line.get_color(), alpha=0.15, linewidth=0)

    ci = findings.intervals
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for signal, dash in (("oracle", "-"), ("predicted", "--")):
        opt = report["compute_optimal"][signal]
        b = sorted(int(x) for x in opt["cv_accuracy"])
        [line] = ax.plot(b, [opt["cv_accuracy"][str(x)] for x in b], dash, marker="o",
                         label=f"compute-optimal ({signal})")
        band(ax, line, b, ci.compute_optimal.get(signal) if ci else None)
    base = report["compute_optimal"]["oracle"]["best_of_n_weighted"]
    b = sorted(int(x) for x in base)
    [line] = ax.plot(b, [base[str(x)] for x in b], ":", marker="s", label=baseline_label(report))
    band(ax, line, b, ci.accuracy.get(report.get("baseline")) if ci else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget")
    ax.set_ylabel("accuracy (held-out folds)" + (", 95% intervals" if ci else ""))
    ax.legend(fontsize=7)
    save(fig, "compute_optimal_vs_best_of_n.png")

    if findings.ratio_by_difficulty:
        sweep_levels = list(dict.fromkeys(row.level for row in findings.ratio_by_difficulty))
        families = {row.family for row in findings.ratio_by_difficulty}
        fig, axes = plt.subplots(1, len(sweep_levels), figsize=(2.8 * len(sweep_levels), 3), sharey=True)
        for ax, lv in zip(np.atleast_1d(axes), sweep_levels):
            for row in findings.ratio_by_difficulty:
                if row.level == lv:
                    ax.plot([r.sequential for r in row.ratios], [r.accuracy for r in row.ratios], marker="o",
                            label=f"N={row.budget}" + (f" {row.family}" if len(families) > 1 else ""))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequential attempts per chain")
            ax.set_title(f"level {lv} (oracle)")
        np.atleast_1d(axes)[0].set_ylabel("accuracy")
        np.atleast_1d(axes)[0].legend(fontsize=5)
        save(fig, "revision_ratio_by_difficulty.png")

    if findings.revisions_compute_optimal:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for (signal, opt), dash in zip(findings.revisions_compute_optimal.items(), ("-", "--")):
            ax.plot([r.budget for r in opt.by_budget], [r.compute_optimal for r in opt.by_budget], dash, marker="o",
                    label=f"compute-optimal revisions ({signal})")
        opt = next(iter(findings.revisions_compute_optimal.values()))
        if opt.efficiency is not None:
            ax.plot([r.budget for r in opt.by_budget], [r.best_of_n for r in opt.by_budget], ":", marker="s",
                    label=baseline_label(report))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generation budget")
        ax.set_ylabel("accuracy (held-out folds)")
        ax.legend(fontsize=7)
        save(fig, "revisions_vs_best_of_n.png")

    ex = report["flops_exchange"]
    if not ex:
        return
    versions = list(dict.fromkeys(row.get("constants", "arxiv_v1") for row in ex))  # a row of panels per version
    per_version = [[row for row in ex if row.get("constants", "arxiv_v1") == v] for v in versions]
    columns = max(map(len, per_version))
    fig, axes = plt.subplots(len(versions), columns, figsize=(3.2 * columns, 3 * len(versions)), sharey=True,
                             squeeze=False)
    for i, rows in enumerate(per_version):
        for j in range(len(rows), columns):
            axes[i, j].set_visible(False)
    for ax, row in ((axes[i, j], row) for i, rows in enumerate(per_version) for j, row in enumerate(rows)):
        lv = sorted(row["by_level"], key=int)
        x = np.arange(len(lv))
        large = [row["by_level"][k]["large_greedy"] or 0 for k in lv]
        small = [row["by_level"][k]["small_compute_optimal"] or 0 for k in lv]
        ax.bar(x - 0.2, large, 0.4, label="larger sibling, greedy")
        ax.bar(x + 0.2, small, 0.4, label=f"small + search (N={row['budget_used']})")
        ax.set_xticks(x, [f"L{k}" for k in lv])
        ax.set_title(f"{row.get('constants', 'arxiv_v1')}: R = {row['R']}", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    save(fig, "flops_matched.png")
