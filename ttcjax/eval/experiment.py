"""The paper's experiment end to end on the built-in task: `ttcjax demo` (the README's first command).

1. Difficulty. For each test question the policy samples `difficulty_samples` solutions; oracle difficulty
   is the quantile bin of their pass rate, predicted difficulty the bin of the PRM's mean final score over
   the same samples (no answers needed). Both are saved per question with their cost.
2. Search. Every strategy at every budget on every question (`ttcjax.eval.sweep.run_cell`: resumable JSONL).
3. Compute-optimal. Per bin and budget, the best strategy by 2-fold cross-validation inside the bin
   (oracle and predicted bins); the efficiency against weighted best-of-N; a saved BudgetScheduler.
4. FLOPs exchange. The 4x larger sibling answering greedily, against the small policy with search at
   the budget whose pretraining + inference FLOPs match, for the paper's R = D_inference / D_pretrain.
5. Report: report.json with its findings (`ttcjax.eval.analysis`), summary.md and plots rendered from them
   (`ttcjax.eval.report`), per-question results, scheduler.json.

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
from ttcjax.eval.analysis import analyze
from ttcjax.eval.report import markdown, plots
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
    findings = analyze(report)
    report["findings"] = findings.to_dict()
    _write_json(os.path.join(out, "report.json"), report)
    plots(report, out)
    with atomic_path(os.path.join(out, "summary.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown(report, findings))
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
