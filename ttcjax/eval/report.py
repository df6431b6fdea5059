"""An experiment's report rendered: summary.md from the report and its findings, and the plots.

Nothing here decides anything: every comparison and verdict comes from `ttcjax.eval.analysis.Findings`; this
module only formats them and the report's tables.
"""

from __future__ import annotations

import os

import numpy as np

from ttcjax.eval.analysis import (BeamOnHardBins, BeamVerdict, Efficiency, EfficiencyVerdict, Findings, FlopsMatched,
                                  RevisionChains, baseline_name)
from ttcjax.io import atomic_path


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
           "work)."), "",
        "## Accuracy versus generation budget", "", head, sep]
    for name, row in r["accuracy"].items():
        lines.append(_table_row(name, row, budgets))
    lines += ["", "![](accuracy_vs_budget.png)", "", "## Per difficulty level (oracle bins, 1 = easiest)", ""]
    for lv, table in r["per_level"]["oracle"].items():
        lines += [f"### Level {lv}", "", head, sep]
        for name, row in table.items():
            lines.append(_table_row(name, row, budgets))
        lines.append("")
    lines += ["![](accuracy_by_difficulty.png)", "", "## Compute-optimal versus best-of-N (held-out folds)", "",
              head, sep]
    for signal in ("oracle", "predicted"):
        opt = r["compute_optimal"][signal]
        lines.append(f"| compute-optimal ({signal} bins) | "
                     + " | ".join(f"{opt['cv_accuracy'][str(b)]:.3f}" for b in budgets) + " |")
    base = r["compute_optimal"]["oracle"]["best_of_n_weighted"]
    lines.append(f"| {label} | " + " | ".join(f"{base[str(b)]:.3f}" for b in budgets) + " |")
    lines += [""]
    for signal in ("oracle", "predicted"):
        eff = r["compute_optimal"][signal]["efficiency"]
        lines.append(f"- Efficiency ({signal} bins): the smallest budget at which compute-optimal matches "
                     f"{label} at " + ", ".join(f"N={b}: {eff[str(b)]}" for b in budgets) + ".")
    shows = _efficiency(findings.efficiency["oracle"], label)
    if findings.coverage is not None:
        c = findings.coverage
        shows += (f" At N={c.budget} a right answer is among best-of-N's candidates for {c.coverage:.0%} of the "
                  f"questions and weighted selection picks one for {c.accuracy:.0%}: the difference is the "
                  "verifier's to win.")
    lines += ["", "**What this run shows.** " + shows + " " + _beam(findings.beam_on_hard_bins)
              + " Choices per bin are in report.json (`compute_optimal.*.choice`); with few questions per bin the "
              "held-out estimates are noisy, which more questions reduce.", "",
              "![](compute_optimal_vs_best_of_n.png)", ""]
    if findings.revisions:
        lines += _revisions_section(findings.revisions)
    if r["flops_exchange"]:
        lines += _flops_section(r, findings)
    lines += ["Raw per-question results: results/*.jsonl, difficulty.jsonl"
              + (", large_policy.jsonl" if r["flops_exchange"] else "") + "; the scheduler: "
              "scheduler.json (`ttcjax run --scheduler ...`).", ""]
    return "\n".join(lines)


def _flops_section(r: dict, findings: Findings) -> list[str]:
    lines = [f"## Test-time compute versus a {r['params']['large_policy'] / r['params']['policy']:.1f}x larger "
             "model at matched FLOPs", "",
             f"The larger model answers greedily (accuracy {r['large_policy_greedy']:.3f} overall). The small "
             "policy may spend B generations (with its verifier) where 6 N_s D_p + 2 (N_s + N_v) D_i B = "
             "6 N_l D_p + 2 N_l D_i, R = D_i / D_p; the largest computed budget not above B is used.", ""]
    levels = sorted(r["flops_exchange"][0]["by_level"], key=int)
    lines += ["| R | matched B | budget used | " + " | ".join(f"L{k} large / small+search" for k in levels) + " |",
              "|---|---|---|" + "---|" * len(levels)]
    for row in r["flops_exchange"]:
        cells = [f"{_two(row['by_level'][k]['large_greedy'])} / {_two(row['by_level'][k]['small_compute_optimal'])}"
                 for k in sorted(row["by_level"], key=int)]
        lines.append(f"| {row['R']} | {row['matched_generations']:.1f} | {row['budget_used']} | "
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
        rate = ("-" if row.right_to_wrong_rate is None else
                f"{row.right_to_wrong_rate:.3f} ({row.right_to_wrong}/{row.right_followed})")
        lines.append(f"| {row.strategy} | {row.budget} | " + " | ".join(cells) + f" | {rate} |")
    better = [f"{row.strategy} at N={row.budget}" for row in rows if row.improves]
    lines += ["", ("pass@1 rises from the first attempt to the last for " + ", ".join(better) + "." if better else
                   "pass@1 does not rise from the first attempt to the last on this run."), ""]
    return lines


def baseline_label(report: dict) -> str:
    """How the summary names the strategy compute-optimal is measured against."""
    name = report.get("baseline")
    return "best-of-N weighted" if name is None or name == baseline_name(report) else f"the baseline {name}"


def _table_row(name: str, row: dict, budgets) -> str:
    return f"| {name} | " + " | ".join(f"{row[str(b)]:.3f}" if str(b) in row else "" for b in budgets) + " |"


def _two(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _efficiency(e: Efficiency, label: str) -> str:
    top, label_ = e.top_budget, label[0].upper() + label[1:]
    if e.verdict is EfficiencyVerdict.SEARCH_ADDS_NOTHING:
        return (f"Compute-optimal matches {label}'s accuracy at N={top} with N={e.compute_optimal_budget} "
                f"generations, but {label} itself already does so at N={e.best_of_n_budget}: on this run "
                "search strategies add nothing over best-of-N at that budget.")
    if e.verdict is EfficiencyVerdict.FEWER_GENERATIONS:
        text = (f"Compute-optimal reaches {label}'s accuracy at N={top} with N={e.compute_optimal_budget} "
                f"generations ({e.factor:.0f}x fewer).")
    else:
        text = f"Compute-optimal does not reach {label}'s accuracy at N={top} within these budgets."
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
    parts = [f"N={row.budget}: " + ", ".join(f"{name} {v:.3f}" for name, v in row.beams.items() if v is not None)
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

    parts = [f"at R={row.ratio} (N={row.budget}) search wins on {say(row.search_wins)} and the larger model on "
             f"{say(row.larger_wins)}" for row in rows]
    return ("Level by level (1 = easiest), " + "; ".join(parts) + ". The paper found test-time compute the better "
            "use of FLOPs on easy and intermediate questions when R is small, and pretraining on the hardest.")


def plots(report: dict, out: str) -> None:
    """The report's four figures as PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        with atomic_path(os.path.join(out, name)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, row in report["accuracy"].items():
        b = sorted(int(x) for x in row)
        ax.plot(b, [row[str(x)] for x in b], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6)
    ax.set_title("accuracy versus budget")
    save(fig, "accuracy_vs_budget.png")

    levels = report["per_level"]["oracle"]
    fig, axes = plt.subplots(1, len(levels), figsize=(2.8 * len(levels), 3), sharey=True)
    for ax, (lv, table) in zip(np.atleast_1d(axes), levels.items()):
        for name, row in table.items():
            b = sorted(int(x) for x in row)
            ax.plot(b, [row[str(x)] for x in b], marker=".", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"level {lv} (oracle)")
    np.atleast_1d(axes)[0].legend(fontsize=5)
    save(fig, "accuracy_by_difficulty.png")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for signal, style in (("oracle", "-"), ("predicted", "--")):
        opt = report["compute_optimal"][signal]
        b = sorted(int(x) for x in opt["cv_accuracy"])
        ax.plot(b, [opt["cv_accuracy"][str(x)] for x in b], style, marker="o", label=f"compute-optimal ({signal})")
    base = report["compute_optimal"]["oracle"]["best_of_n_weighted"]
    b = sorted(int(x) for x in base)
    ax.plot(b, [base[str(x)] for x in b], ":", marker="s", label=baseline_label(report))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget")
    ax.set_ylabel("accuracy (held-out folds)")
    ax.legend(fontsize=7)
    save(fig, "compute_optimal_vs_best_of_n.png")

    ex = report["flops_exchange"]
    if not ex:
        return
    fig, axes = plt.subplots(1, len(ex), figsize=(3.2 * len(ex), 3), sharey=True)
    for ax, row in zip(np.atleast_1d(axes), ex):
        lv = sorted(row["by_level"], key=int)
        x = np.arange(len(lv))
        large = [row["by_level"][k]["large_greedy"] or 0 for k in lv]
        small = [row["by_level"][k]["small_compute_optimal"] or 0 for k in lv]
        ax.bar(x - 0.2, large, 0.4, label="larger sibling, greedy")
        ax.bar(x + 0.2, small, 0.4, label=f"small + search (N={row['budget_used']})")
        ax.set_xticks(x, [f"L{k}" for k in lv])
        ax.set_title(f"R = {row['R']}")
    np.atleast_1d(axes)[0].legend(fontsize=6)
    save(fig, "flops_matched.png")
