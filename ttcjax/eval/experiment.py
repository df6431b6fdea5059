"""The paper's experiment end to end on the built-in task: `ttcjax demo` (the README's first command).

1. Difficulty. For each test question the policy samples `difficulty_samples` solutions; oracle difficulty
   is the quantile bin of their pass rate, predicted difficulty the bin of the PRM's mean final score over
   the same samples (no answers needed). Both are saved per question with their cost.
2. Search. Every strategy at every budget on every question (`ttcjax.eval.sweep.run_cell`: resumable JSONL).
3. Compute-optimal. Per bin and budget, the best strategy by 2-fold cross-validation inside the bin
   (oracle and predicted bins); the efficiency against weighted best-of-N; a saved BudgetScheduler.
4. FLOPs exchange. The 4x larger sibling answering greedily, against the small policy with search at
   the budget whose pretraining + inference FLOPs match, for the paper's R = D_inference / D_pretrain.
5. Report: summary.md, plots, per-question results, scheduler.json.

Every stage writes its results atomically and is skipped when a rerun finds them: an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from ttcjax.checkpoints.assets import model_dir
from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer
from ttcjax.decoding.engine import GREEDY, Engine, Sampling
from ttcjax.eval.scheduler import (PAPER_RATIOS, BudgetScheduler, difficulty_levels, efficiency, matched_generations,
                                   overall, select_strategies)
from ttcjax.eval.sweep import make_strategy, run_cell, strategy_name
from ttcjax.io import atomic_path, write_jsonl
from ttcjax.search.episode import search
from ttcjax.tasks import arithmetic
from ttcjax.training.labels import split_steps
from ttcjax.training.policy import sample_solutions
from ttcjax.verifiers.reward_model import StepFormat, aggregate, load_prm, score_inputs

BASELINE = {"kind": "best_of_n", "selection": "weighted"}
DEMO_STRATEGIES = (
    BASELINE,
    {"kind": "best_of_n", "selection": "majority"},
    {"kind": "beam", "width": 4},
    {"kind": "beam", "width": "sqrt"},
    {"kind": "lookahead", "width": 4, "k": 1},
)
FULL_STRATEGIES = DEMO_STRATEGIES + ({"kind": "dvts", "width": 4},)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    out_dir: str = "runs/demo"
    policy: str = "tiny"
    prm: str = "tiny"
    large_policy: str = "small"
    per_difficulty: int = 16
    difficulties: tuple[int, ...] = (2, 3, 4, 5)
    difficulty_samples: int = 16  # the paper used 2048
    bins: int = 5
    folds: int = 2
    budgets: tuple[int, ...] = (4, 16, 64)
    strategies: tuple[dict, ...] = DEMO_STRATEGIES
    temperature: float = 0.8
    max_rounds: int = 12
    max_step_tokens: int = 20
    max_len: int = 160
    rows_per_batch: int = 1024
    probe_samples: int = 8  # samples a new question spends to predict its bin (ttcjax run)
    seed: int = 0

    @classmethod
    def full(cls, **overrides) -> "ExperimentConfig":
        return cls(**{"out_dir": "runs/demo-full", "per_difficulty": 100, "difficulty_samples": 64,
                      "budgets": (4, 16, 64, 256), "strategies": FULL_STRATEGIES, **overrides})


def _model_dir(kind: str, name: str) -> str:
    return name if os.path.isdir(name) else model_dir(kind, name)


def _write_json(path: str, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)


def run_experiment(config: ExperimentConfig, progress: bool = True) -> dict:

    started = time.perf_counter()
    out = config.out_dir
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    policy_dir = _model_dir("policy", config.policy)
    tok = load_tokenizer(policy_dir)
    policy = load_any(policy_dir)
    engine = Engine(policy, pad_id=tok.pad_id)
    prm, meta = load_prm(_model_dir("prm", config.prm))
    aggregation = meta.get("aggregation", "last")
    task = arithmetic.TaskConfig(difficulties=config.difficulties)
    problems = arithmetic.generate(task, config.per_difficulty * len(config.difficulties), seed=config.seed,
                                   split="test")
    log = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)

    # 1. difficulty ------------------------------------------------------------------------------------
    difficulty_path = os.path.join(out, "difficulty.jsonl")
    if not os.path.exists(difficulty_path):
        log(f"[1/4] difficulty: {config.difficulty_samples} samples per question for {len(problems)} questions")
        t0 = time.perf_counter()
        texts = sample_solutions(engine, tok, problems, n=config.difficulty_samples,
                                 sampling=Sampling(temperature=config.temperature), key=jax.random.key(config.seed))
        fmt = StepFormat()
        inputs = [fmt.encode(tok, arithmetic.format_prompt(p), split_steps(t) or [""])
                  for p, ts in zip(problems, texts) for t in ts]
        scores = score_inputs(prm, inputs)
        records = []
        for i, (p, ts) in enumerate(zip(problems, texts)):
            s = scores[i * config.difficulty_samples:(i + 1) * config.difficulty_samples]
            records.append({"id": p.id, "difficulty": p.difficulty,
                            "pass_rate": float(np.mean([arithmetic.is_correct_answer(p, t) for t in ts])),
                            "verifier_mean": float(np.mean([aggregate(x, aggregation) for x in s])),
                            "generated_tokens": int(sum(len(tok.encode(t)) for t in ts))})
        write_jsonl(difficulty_path, records)
        log(f"      {time.perf_counter() - t0:.0f} s")
    with open(difficulty_path) as f:
        diff = [json.loads(line) for line in f if line.strip()]
    pass_rate = np.array([d["pass_rate"] for d in diff])
    verifier_mean = np.array([d["verifier_mean"] for d in diff])
    oracle_levels, oracle_edges = difficulty_levels(pass_rate, config.bins, seed=config.seed)
    predicted_levels, predicted_edges = difficulty_levels(verifier_mean, config.bins, seed=config.seed)

    # 2. search every strategy at every budget -------------------------------------------------------------
    cells = [(spec, b, make_strategy(spec, b, config.max_rounds)) for spec in config.strategies
             for b in config.budgets]
    cells = [(spec, b, s) for spec, b, s in cells if s is not None]
    log(f"[2/4] search: {len(cells)} (strategy, budget) cells x {len(problems)} questions")
    bar = tqdm(total=len(cells) * len(problems), desc="search", unit="question", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    correct: dict[tuple[str, int], np.ndarray] = {}
    tokens: dict[tuple[str, int], float] = {}
    coverage: dict[tuple[str, int], float] = {}  # a right answer among the candidates
    shared: dict[int, list[dict]] = {}  # best-of-N samples per budget, shared by its selection rules
    for spec, budget, strategy in cells:
        name = strategy_name(spec)
        if spec["kind"] == "best_of_n":
            if budget not in shared:
                shared[budget] = run_cell(
                    make_strategy({"kind": "best_of_n"}, budget), "best_of_n", budget, problems, engine, prm, tok,
                    os.path.join(out, "results", f"best_of_n-b{budget}.jsonl"), seed=config.seed,
                    temperature=config.temperature, max_step_tokens=config.max_step_tokens, max_len=config.max_len,
                    rows_per_batch=config.rows_per_batch, aggregation=aggregation, bar=bar)
            else:
                bar.update(len(problems))
            records = shared[budget]
            correct[(name, budget)] = np.array([r["by_selection"][spec.get("selection", "weighted")]
                                                for r in records], int)
        else:
            records = run_cell(strategy, name, budget, problems, engine, prm, tok,
                               os.path.join(out, "results", f"{name}-b{budget}.jsonl"), seed=config.seed,
                               temperature=config.temperature, max_step_tokens=config.max_step_tokens,
                               max_len=config.max_len, rows_per_batch=config.rows_per_batch,
                               aggregation=aggregation, bar=bar)
            correct[(name, budget)] = np.array([r["correct"] for r in records], int)
        tokens[(name, budget)] = float(np.mean([r["generated_tokens"] for r in records]))
        coverage[(name, budget)] = float(np.mean([r["pass"] for r in records]))
    bar.close()

    # 3. compute-optimal selection ---------------------------------------------------------------------------
    log("[3/4] compute-optimal selection (2-fold cross-validation inside each bin)")
    baseline = strategy_name(BASELINE)
    specs = {strategy_name(s): s for s in config.strategies}
    selections = {}
    for signal, levels in (("oracle", oracle_levels), ("predicted", predicted_levels)):
        sel = select_strategies(correct, levels, folds=config.folds, seed=config.seed, baseline=baseline)
        selections[signal] = {"selection": sel, "levels": levels, "efficiency": efficiency(sel, levels)}
    scheduler = BudgetScheduler.from_selection(selections["predicted"]["selection"], predicted_edges, specs,
                                               signal="verifier", probe_samples=config.probe_samples)
    scheduler.save(os.path.join(out, "scheduler.json"))

    # 4. FLOPs exchange with the larger sibling ----------------------------------------------------------------
    log("[4/4] the larger sibling, greedy, against search at matched FLOPs")
    large_path = os.path.join(out, "large_policy.jsonl")
    large_dir = _model_dir("policy", config.large_policy)
    large = load_any(large_dir)
    if not os.path.exists(large_path):
        texts = sample_solutions(Engine(large, pad_id=tok.pad_id), tok, problems, n=1, sampling=GREEDY,
                                 key=jax.random.key(config.seed))
        write_jsonl(large_path, [{"id": p.id, "correct": arithmetic.is_correct_answer(p, t[0])}
                                 for p, t in zip(problems, texts)])
    with open(large_path) as f:
        large_correct = np.array([json.loads(line)["correct"] for line in f if line.strip()], int)
    small_params, large_params = policy.config.num_params(), large.config.num_params()
    prm_params = prm.config.num_params()
    exchange = []
    for ratio in PAPER_RATIOS:
        budget = matched_generations(small_params, large_params, ratio, verifier_params=prm_params)
        usable = [b for b in config.budgets if b <= budget]
        row = {"R": ratio, "matched_generations": budget, "budget_used": usable[-1] if usable else None,
               "by_level": {}}
        sel = selections["oracle"]["selection"]
        for lv in range(1, config.bins + 1):
            mask = oracle_levels == lv
            row["by_level"][str(lv)] = {
                "large_greedy": float(large_correct[mask].mean()) if mask.any() else None,
                "small_compute_optimal": sel.cv_accuracy.get((lv, row["budget_used"])) if usable else None}
        exchange.append(row)

    report = _report(config, problems, diff, oracle_levels, predicted_levels, correct, tokens, selections,
                     exchange, small_params, large_params, prm_params, large_correct,
                     time.perf_counter() - started)
    report["coverage"] = {n: {str(b): c for (m, b), c in coverage.items() if m == n}
                          for n in dict.fromkeys(m for m, _ in coverage)}
    # a rerun reuses finished work: the total counts the earlier invocations whose report was written
    earlier = os.path.join(out, "report.json")
    if os.path.exists(earlier):
        with open(earlier) as f:
            before = json.load(f)
        report["seconds_total"] = before.get("seconds_total", before.get("seconds", 0.0)) + report["seconds"]
    else:
        report["seconds_total"] = report["seconds"]
    _write_json(os.path.join(out, "report.json"), report)
    _plots(report, out)
    with atomic_path(os.path.join(out, "summary.md")) as tmp, open(tmp, "w") as f:
        f.write(_markdown(report))
    log(f"done in {time.perf_counter() - started:.0f} s: {os.path.join(out, 'summary.md')}")
    return report


def _report(config, problems, diff, oracle_levels, predicted_levels, correct, tokens, selections, exchange,
            small_params, large_params, prm_params, large_correct, seconds) -> dict:
    budgets = sorted({b for _, b in correct})
    names = list(dict.fromkeys(n for n, _ in correct))
    accuracy = {n: {str(b): float(correct[(n, b)].mean()) for b in budgets if (n, b) in correct} for n in names}
    per_level = {}
    for signal, levels in (("oracle", oracle_levels), ("predicted", predicted_levels)):
        per_level[signal] = {str(lv): {n: {str(b): float(correct[(n, b)][levels == lv].mean())
                                          for b in budgets if (n, b) in correct} for n in names}
                             for lv in range(1, config.bins + 1) if (levels == lv).any()}
    optimal = {}
    for signal, s in selections.items():
        sel, levels = s["selection"], s["levels"]
        optimal[signal] = {
            "choice": {f"{lv}/{b}": name for (lv, b), name in sel.choice.items()},
            "cv_accuracy": {str(b): overall(sel.cv_accuracy, levels, b) for b in budgets},
            "best_of_n_weighted": {str(b): overall(sel.best_of_n_accuracy, levels, b) for b in budgets},
            "efficiency": {str(b): v for b, v in s["efficiency"].items()},
        }
    return {"config": dataclasses.asdict(config), "questions": len(problems), "seconds": seconds,
            "params": {"policy": small_params, "large_policy": large_params, "prm": prm_params},
            "difficulty_cost_tokens": int(sum(d["generated_tokens"] for d in diff)),
            "accuracy": accuracy, "mean_generated_tokens": {f"{n}/{b}": t for (n, b), t in tokens.items()},
            "per_level": per_level, "compute_optimal": optimal, "flops_exchange": exchange,
            "large_policy_greedy": float(large_correct.mean())}


def _plots(report: dict, out: str) -> None:
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
    ax.plot(b, [base[str(x)] for x in b], ":", marker="s", label="best-of-N weighted")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget")
    ax.set_ylabel("accuracy (held-out folds)")
    ax.legend(fontsize=7)
    save(fig, "compute_optimal_vs_best_of_n.png")

    ex = report["flops_exchange"]
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


def _weighted_best_of_n(names) -> str | None:
    """The weighted best-of-N strategy among `names` (the baseline every summary line compares against)."""
    return next((n for n in names if n.startswith("best_of_n") and "weighted" in n), None)


def _baseline_name(r: dict) -> str:
    return _weighted_best_of_n(r["accuracy"]) or ""


def _beam_on_hard_bins(r: dict, budgets: list[int]) -> str:
    """The paper's second claim, as this run measured it: beam search against best-of-N weighted on the
    hardest bins (the upper half of the oracle levels, equal-sized) at the lowest budgets."""
    levels = sorted(r["per_level"]["oracle"], key=int)
    hard = levels[-max(1, len(levels) // 2):]
    low = budgets[:2]
    tables = [r["per_level"]["oracle"][lv] for lv in hard]
    beams = sorted({name for t in tables for name in t if name.startswith("beam")})
    base = _weighted_best_of_n(tables[0])
    if not beams or base is None:
        return ""

    def mean(name, b):
        vals = [t[name][str(b)] for t in tables if str(b) in t.get(name, {})]
        return sum(vals) / len(vals) if vals else None

    parts, wins = [], 0
    for b in low:
        ref = mean(base, b)
        got = {name: mean(name, b) for name in beams}
        wins += any(v is not None and ref is not None and v > ref + 1e-9 for v in got.values())
        parts.append(f"N={b}: " + ", ".join(f"{name} {v:.3f}" for name, v in got.items() if v is not None)
                     + f" vs best-of-N weighted {ref:.3f}")
    verdict = ("beam search beats best-of-N there" if wins == len(low) else
               "beam search beats best-of-N at some of them" if wins else "beam search does not beat best-of-N there")
    return (f"On the hardest bins (levels {', '.join(hard)}, mean accuracy) at the lowest budgets, {verdict} "
            f"({'; '.join(parts)}).")


def _flops_matched_statement(r: dict) -> str:
    """The paper's exchange of pretraining for test-time compute, as this run measured it: per FLOPs ratio R
    with a usable budget, the levels where the small policy with search beats the larger model, and those where
    the larger model wins."""
    def say(ks):
        return "no level" if not ks else f"level {ks[0]}" if len(ks) == 1 else f"levels {', '.join(ks)}"

    parts = []
    for row in r["flops_exchange"]:
        if row["budget_used"] is None:
            continue
        pairs = [(k, v["small_compute_optimal"], v["large_greedy"]) for k, v in
                 sorted(row["by_level"].items(), key=lambda kv: int(kv[0])) if v["small_compute_optimal"] is not None]
        small = [k for k, ours, theirs in pairs if ours > theirs + 1e-9]
        large = [k for k, ours, theirs in pairs if theirs > ours + 1e-9]
        parts.append(f"at R={row['R']} (N={row['budget_used']}) search wins on {say(small)} and the larger model "
                     f"on {say(large)}")
    if not parts:
        return "No ratio R leaves the small policy a computed budget, so this run makes no comparison."
    return ("Level by level (1 = easiest), " + "; ".join(parts) + ". The paper found test-time compute the better "
            "use of FLOPs on easy and intermediate questions when R is small, and pretraining on the hardest.")


def _markdown(r: dict) -> str:
    budgets = sorted({int(b) for row in r["accuracy"].values() for b in row})
    head = "| | " + " | ".join(f"N={b}" for b in budgets) + " |"
    sep = "|---|" + "---|" * len(budgets)
    lines = [
        "# ttcjax demo: scaling test-time compute on the built-in task", "",
        f"{r['questions']} test questions; policy {r['params']['policy']:,} parameters, PRM "
        f"{r['params']['prm']:,}, larger sibling {r['params']['large_policy']:,}. "
        + (f"{r['seconds']:.0f} s." if r.get("seconds_total", r["seconds"]) == r["seconds"] else
           f"{r['seconds']:.0f} s in this invocation, {r['seconds_total']:.0f} s in all (a rerun reuses finished "
           "work)."), "",
        "## Accuracy versus generation budget", "", head, sep]
    for name, row in r["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[str(b)]:.3f}" if str(b) in row else "" for b in budgets)
                     + " |")
    lines += ["", "![](accuracy_vs_budget.png)", "", "## Per difficulty level (oracle bins, 1 = easiest)", ""]
    for lv, table in r["per_level"]["oracle"].items():
        lines += [f"### Level {lv}", "", head, sep]
        for name, row in table.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[str(b)]:.3f}" if str(b) in row else "" for b in budgets)
                         + " |")
        lines.append("")
    lines += ["![](accuracy_by_difficulty.png)", "", "## Compute-optimal versus best-of-N (held-out folds)", "",
              "| | " + " | ".join(f"N={b}" for b in budgets) + " |", sep]
    for signal in ("oracle", "predicted"):
        opt = r["compute_optimal"][signal]
        lines.append(f"| compute-optimal ({signal} bins) | "
                     + " | ".join(f"{opt['cv_accuracy'][str(b)]:.3f}" for b in budgets) + " |")
    base = r["compute_optimal"]["oracle"]["best_of_n_weighted"]
    lines.append("| best-of-N weighted | " + " | ".join(f"{base[str(b)]:.3f}" for b in budgets) + " |")
    lines += [""]
    for signal in ("oracle", "predicted"):
        eff = r["compute_optimal"][signal]["efficiency"]
        lines.append(f"- Efficiency ({signal} bins): the smallest budget at which compute-optimal matches "
                     "best-of-N weighted at " + ", ".join(f"N={b}: {eff[str(b)]}" for b in budgets) + ".")
    top = str(budgets[-1])
    eff = r["compute_optimal"]["oracle"]["efficiency"].get(top)
    # best-of-N's own efficiency: where it already reaches its accuracy at the top budget
    self_eff = next((b for b in budgets if base[str(b)] >= base[top] - 1e-12), None)
    if eff and self_eff is not None and self_eff <= eff:
        shows = (f"Compute-optimal matches best-of-N weighted's accuracy at N={top} with N={eff} generations, but "
                 f"best-of-N weighted itself already does so at N={self_eff}: on this run search strategies add "
                 "nothing over best-of-N at that budget.")
    elif eff:
        shows = (f"Compute-optimal reaches best-of-N weighted's accuracy at N={top} with N={eff} generations "
                 f"({int(top) / eff:.0f}x fewer).")
    else:
        shows = f"Compute-optimal does not reach best-of-N weighted's accuracy at N={top} within these budgets."
    if self_eff is not None and self_eff < int(top) and not (eff and self_eff <= eff):
        shows += (f" Best-of-N weighted itself already reaches its N={top} accuracy at N={self_eff} "
                  f"({base[str(self_eff)]:.3f} against {base[top]:.3f}).")
    cov = r.get("coverage", {}).get(_baseline_name(r), {}).get(top)
    if cov is not None:
        acc = r["accuracy"][_baseline_name(r)][top]
        shows += (f" At N={top} a right answer is among best-of-N's candidates for {cov:.0%} of the questions and "
                  f"weighted selection picks one for {acc:.0%}: the difference is the verifier's to win.")
    lines += ["", "**What this run shows.** " + shows + " " + _beam_on_hard_bins(r, budgets)
        + " Choices per bin are in report.json (`compute_optimal.*.choice`); with few questions per bin the "
        "held-out estimates are noisy, which `--full` reduces.", "",
        "![](compute_optimal_vs_best_of_n.png)", "",
        f"## Test-time compute versus a {r['params']['large_policy'] / r['params']['policy']:.1f}x larger model at "
        "matched FLOPs", "",
        f"The larger sibling answers greedily (accuracy {r['large_policy_greedy']:.3f} overall). The small "
        "policy may spend B generations (with its PRM) where 6 N_s D_p + 2 (N_s + N_prm) D_i B = "
        "6 N_l D_p + 2 N_l D_i, R = D_i / D_p; the largest computed budget not above B is used.", "",
        "| R | matched B | budget used | " + " | ".join(f"L{k} large / small+search"
                                                      for k in sorted(r["flops_exchange"][0]["by_level"], key=int))
        + " |", "|---|---|---|" + "---|" * len(r["flops_exchange"][0]["by_level"])]
    for row in r["flops_exchange"]:
        cells = []
        for k in sorted(row["by_level"], key=int):
            v = row["by_level"][k]
            fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            cells.append(f"{fmt(v['large_greedy'])} / {fmt(v['small_compute_optimal'])}")
        lines.append(f"| {row['R']} | {row['matched_generations']:.1f} | {row['budget_used']} | "
                     + " | ".join(cells) + " |")
    lines += ["", _flops_matched_statement(r), "", "![](flops_matched.png)", "",
              "Raw per-question results: results/*.jsonl, difficulty.jsonl, large_policy.jsonl; the scheduler: "
              "scheduler.json (`ttcjax run --scheduler ...`).", ""]
    return "\n".join(lines)


# ---- applying a saved scheduler to new questions ------------------------------------------------------------


def answer_with_scheduler(scheduler: BudgetScheduler, problems, budget: int, *, policy: str = "tiny",
                          prm: str = "tiny", temperature: float = 0.8, seed: int = 0, max_rounds: int = 12,
                          max_step_tokens: int = 24, max_len: int = 160) -> list[dict]:
    """Answer built-in-task problems under `budget` generations each: `scheduler.probe_samples` samples
    predict each question's level (their tokens are counted), then the level's strategy is searched with what
    is left of the budget. Questions that share a strategy are searched together."""

    if scheduler.signal != "verifier":
        raise ValueError("only a scheduler binned by the verifier's score ('verifier') can be applied to new "
                         "questions; oracle bins need the answers.")
    policy_dir = _model_dir("policy", policy)
    tok = load_tokenizer(policy_dir)
    engine = Engine(load_any(policy_dir), pad_id=tok.pad_id)
    reward_model, meta = load_prm(_model_dir("prm", prm))
    aggregation = meta.get("aggregation", "last")
    k = scheduler.probe_samples
    remaining = budget - k
    if remaining < 1:
        raise ValueError(f"budget {budget} does not cover the scheduler's {k} probe samples.")
    texts = sample_solutions(engine, tok, problems, n=k, sampling=Sampling(temperature=temperature),
                             key=jax.random.key(seed))
    fmt = StepFormat()
    scores = score_inputs(reward_model, [fmt.encode(tok, arithmetic.format_prompt(p), split_steps(t) or [""])
                                         for p, ts in zip(problems, texts) for t in ts])
    out: list[dict | None] = [None] * len(problems)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        mean = float(np.mean([aggregate(s, aggregation) for s in scores[i * k:(i + 1) * k]]))
        level = scheduler.level(mean)
        spec = scheduler.spec(level, remaining)
        out[i] = {"id": p.id, "question": p.expression, "level": level, "strategy": spec,
                  "probe_tokens": int(sum(len(tok.encode(t)) for t in texts[i]))}
        groups.setdefault(json.dumps(spec, sort_keys=True), []).append(i)
    for key, members in groups.items():
        spec = json.loads(key)
        strategy = make_strategy(spec, remaining, max_rounds) or make_strategy(BASELINE, remaining, max_rounds)
        results = search(strategy, engine, reward_model, tok, [arithmetic.format_prompt(problems[i]) for i in members],
                         jax.random.fold_in(jax.random.key(seed), 1), extract_answer=arithmetic.extract_answer,
                         sampling=Sampling(temperature=temperature), max_step_tokens=max_step_tokens,
                         max_len=max_len, aggregation=aggregation)
        for i, r in zip(members, results):
            out[i].update({"answer": r.answer, "correct": r.answer == problems[i].answer, "solution": r.solution,
                           "generated_tokens": r.generated_tokens + out[i]["probe_tokens"],
                           "prm_tokens": r.prm_tokens})
    return out  # type: ignore[return-value]
