"""`ttcjax experiment --config FILE`: the paper's experiment end to end on any task, policy and verifier.
`ttcjax demo` is its named config (ttcjax/assets/experiments/demo.yaml, also configs/experiments/demo.yaml).

1. Difficulty. For each question the policy samples `difficulty_samples` full solutions; oracle difficulty is
   the quantile bin of their pass rate, predicted difficulty the bin of the verifier's mean solution score
   over the same samples (no answers needed; with no verifier, the share of samples that agree with the most
   common answer). Both are saved per question with their cost.
2. Search. Every strategy at every budget on every question (`ttcjax.eval.sweep.run_grid`: resumable JSONL).
   Revision strategies run `revision_policy` (a model fine-tuned to revise) with `revision_verifier` (an ORM
   trained on its outputs); every other strategy the policy with its verifier, as the paper compares them.
3. Compute-optimal. Per bin and budget, the best strategy by k-fold cross-validation inside the bin
   (oracle and predicted bins), search and revision strategies alike; the efficiency against weighted
   best-of-N; a saved BudgetScheduler that records the search settings, task, policy and verifier (and the
   revision model and its verifier) it was chosen with.
4. FLOPs exchange (when `large_policy` is set). The larger model answering greedily, against the policy with
   search at the budget whose pretraining + inference FLOPs match, for the paper's R = D_inference / D_pretrain,
   under both versions' constants (`FLOPS_CONSTANTS`: arXiv v1 and ICLR 2025).
5. Report: report.json with its findings (`ttcjax.eval.analysis`), summary.md and plots rendered from them
   (`ttcjax.eval.report`), per-question results, scheduler.json. With revision strategies: pass@1 by revision
   step and the right-to-wrong rate per revision cell (report["revisions"]); sequential against parallel at
   equal budget (each sequential:parallel ratio next to best-of-N weighted); the ratio sweep per oracle level
   with its best ratio (revision_ratio_by_difficulty.png); and compute-optimal revisions, the ratio chosen per
   bin by the same cross-validation among the revision strategies only, against best-of-N weighted with its
   efficiency (report["revisions_compute_optimal"], oracle and predicted bins; revisions_vs_best_of_n.png).
   report["per_question"] keeps the outcomes every number is made of (`per_question`), so the findings carry 95%
   bootstrap intervals over questions and paired comparisons, and the paper-versus-ttcjax table
   (`ttcjax.eval.analysis`, `ttcjax.eval.uncertainty`).

Every stage writes its results per question as batches finish (`ttcjax.eval.shards`), or atomically, and a
rerun skips what it finds: an interrupted experiment resumes where it stopped. The run directory belongs to one
config (run_config.json).

On several processes (`--coordinator HOST:PORT --num-processes P --process-id p`, or a TPU pod) each process
samples and searches its share of the questions (whole batches: the same draws as one process) on its own
devices, writing shards; process 0 then merges them, checking every question is there once, and does stage 3,
the FLOPs exchange and the report, so the files equal one process's.

As one of J independent jobs over the same run directory (`--job K/J`: a job array, no coordinator), the
experiment samples and searches its share of the questions (difficulty samples, every search cell, the larger
model's answers) into shards of its own and stops before the difficulty bins, which need every question; a later
run without --job samples and searches nothing there, merges every job's shards (naming the jobs whose share is
missing) and goes on to stage 3, the FLOPs exchange and the report (docs/scale-out.md).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path
from typing import ClassVar, Collection, Sequence

import jax
import numpy as np

from ttcjax.checkpoints.assets import ASSETS, check_model_name, resolve
from ttcjax.checkpoints.native import checkpoint_config
from ttcjax.decoding.engine import GREEDY
from ttcjax.distributed import barrier, bind_run, is_writer
from ttcjax.eval.analysis import BASELINE, analyze
from ttcjax.eval.plan import Estimates, Hardware, RunPlan, SampleStage, Workload, plan, policy_config, sweep_workload
from ttcjax.eval.report import markdown, plots
from ttcjax.eval.scheduler import (FLOPS_CONSTANTS, BudgetScheduler, difficulty_levels, efficiency, fold_assignment,
                                   overall, select_strategies)
from ttcjax.eval.shards import Job, check_job_rerun, job_counts, job_done, merge, run_batches
from ttcjax.eval.sweep import (Models, SweepConfig, check_positions, check_verifiers, collect_grid, grid_files,
                               load_policy, load_revision_models, plan_cells, process_mesh, revision_policy_dir,
                               revision_role, run_problems, search_grid)
from ttcjax.eval.uncertainty import encode
from ttcjax.io import (atomic_path, bound_fields, check_output_dir, finish_invocation, invocation_clock, read_yaml,
                       write_json)
from ttcjax.models.sharding import mesh_shape
from ttcjax.search.run import inference_flops, search, step_end
from ttcjax.search.sampling import MAX_NEW_TOKENS, SAMPLE_ROWS, is_nonfinite, sample_completions, sample_solutions
from ttcjax.search.strategies import Revisions, Strategy, StrategySpec
from ttcjax.tasks.base import ProblemRecord, Task
from ttcjax.tasks.registry import task_from_dict
from ttcjax.verifiers.base import Verifier
from ttcjax.verifiers.loading import is_verifier_free, verifier_by_name

EXPERIMENTS = ASSETS / "experiments"  # the named configs: demo.yaml, demo-full.yaml


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(SweepConfig):
    """Everything `ttcjax experiment --config FILE` reads (each field is a YAML key): a sweep's fields, and the
    difficulty bins, cross-validation, the larger model and the probes of the scheduler."""

    out_dir: str
    questions: int | None = 64  # the first this many of the split (after a shuffle by seed where the task has one)
    budgets: tuple[int, ...] = (4, 16, 64)
    strategies: tuple[StrategySpec, ...] = (BASELINE,)
    mesh: str = "none"
    large_policy: str | None = None  # a larger model for the FLOPs-matched comparison (None: skip it)
    difficulty_samples: int = 16  # samples per question that estimate its difficulty (the paper: 2048)
    bins: int = 5
    folds: int = 2
    max_new_tokens: int = MAX_NEW_TOKENS  # full-solution samples: difficulty, probes, the larger model
    probe_samples: int = 8  # samples a new question spends to predict its bin (ttcjax run)

    COUNTS: ClassVar[tuple[str, ...]] = ("rows_per_batch", "difficulty_samples", "bins", "folds", "max_new_tokens",
                                         "probe_samples")

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.folds < 2:
            raise ValueError(f"{source}: folds={self.folds} must be an integer >= 2: cross-validation chooses a "
                             "strategy on some folds and scores it on another.")
        has_baseline = any(s.effective() == BASELINE.effective() for s in self.strategies)
        if not has_baseline and not is_verifier_free(self.verifier):
            raise ValueError(f"{source}: strategies must include {BASELINE.to_dict()}, the baseline every "
                             "comparison is made against.")


def read_config(path: str | os.PathLike, overrides: Sequence[str] = (), shipped: bool = False) -> ExperimentConfig:
    """An experiment config from a YAML file with `key=value` overrides (`ttcjax.io.read_yaml`). `shipped`: the file
    is a named config of the package (`ttcjax demo`), so only the overrides are the user's own keys."""
    explicit = {item.partition("=")[0].split(".")[0] for item in overrides} if shipped else None
    return ExperimentConfig.from_dict(read_yaml(path, overrides), source=os.fspath(path), explicit=explicit)


def experiment_workload(config: ExperimentConfig, estimates: Estimates = Estimates()) -> Workload:
    """What `ttcjax experiment` runs, for the memory planner: the sweep's search grid, the difficulty samples and
    the verifier's one-pass scoring of them (stage 1), and the larger policy's greedy answers (stage 4)."""
    workload = sweep_workload(config, estimates)
    samples = [SampleStage("difficulty", config.difficulty_samples, config.max_new_tokens)]
    larger = None
    if config.large_policy:
        larger = policy_config(config.large_policy, "large_policy")
        samples.append(SampleStage("larger", 1, config.max_new_tokens, larger=True))
    return dataclasses.replace(workload, samples=tuple(samples), larger_policy=larger,
                               score_max_new_tokens=config.max_new_tokens if workload.verifier else None,
                               names={**workload.names, "larger_policy": config.large_policy})


def experiment_plan(config: ExperimentConfig, hardware: Hardware | None = None,
                    estimates: Estimates = Estimates()) -> RunPlan:
    """The memory plan of `ttcjax experiment` with this config on `hardware` (default: this machine's)."""
    hardware = hardware or Hardware.detect()
    return plan(experiment_workload(config, estimates), hardware, mesh_shape(config.mesh, hardware.devices))


def check_memory(config: ExperimentConfig, source: str, warn=lambda msg: print(msg, file=sys.stderr)) -> None:
    """Before any work: a one-line ValueError naming the fix where the plan says the run does not fit the memory
    an accelerator reports. Where the memory is the host's estimate (CPU devices), or the planner cannot read a
    model's config, `warn` says so and the run goes on."""
    try:
        run_plan = experiment_plan(config)
    except (ValueError, FileNotFoundError) as e:
        warn(f"ttcjax experiment: warning: no memory plan ({e})")
        return
    if run_plan.fits is not False:
        return
    message = f"{run_plan.verdict()} `ttcjax plan --config {source}` shows the plan; --skip-plan runs anyway."
    if not run_plan.hardware.measured:
        warn(f"ttcjax experiment: warning: {message}")
        return
    raise ValueError(message)


def named_config(name: str) -> Path:
    """A shipped experiment config by name ("demo", "demo-full")."""
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped experiment named {name!r} (shipped: "
                                f"{sorted(p.stem for p in EXPERIMENTS.glob('*.yaml'))}).")
    return path


def _absolute(path: str | None) -> str | None:
    """A local file or directory as an absolute path (a scheduler is applied from anywhere); names stay."""
    return os.path.abspath(path) if path is not None and os.path.exists(path) else path


def agreement(task: Task, texts: Sequence[str]) -> float:
    """The share of samples whose answer is the most common answer (no answer counts against): a
    verifier-free confidence signal."""
    keys = [task.answer_key(task.extract_answer(t)) for t in texts]
    counts = collections.Counter(k for k in keys if k is not None)
    return max(counts.values()) / len(keys) if counts else 0.0


def predicted_signal(task: Task, verifier: Verifier, problems: Sequence[ProblemRecord], texts: Sequence[Sequence[str]],
                     tokenizer) -> tuple[str, list[float]]:
    """(signal name, value per problem): the verifier's mean solution score over each problem's samples, or
    without a verifier their answers' agreement."""
    if not verifier.scores_steps:
        return "agreement", [agreement(task, ts) for ts in texts]
    prompts = [task.encode_prompt(p, tokenizer) for p in problems]  # the ids search reads
    questions = [p.question for p, ts in zip(problems, texts) for _ in ts]
    solutions = [task.split_steps(t) or [""] for ts in texts for t in ts]
    scores = verifier.score(questions, solutions, prompts=[prompt for prompt, ts in zip(prompts, texts) for _ in ts])
    broken = sum(not np.all(np.isfinite(s)) for s in scores)
    if broken:
        warnings.warn(f"predicted difficulty: the verifier's scores of {broken} of {len(scores)} samples are "
                      "non-finite (a NaN or inf in its weights or activations); their questions' predicted signal is "
                      "too.",
                      stacklevel=2)
    out, at = [], 0
    for ts in texts:
        out.append(float(np.mean([verifier.solution_score(s) for s in scores[at:at + len(ts)]])))
        at += len(ts)
    return "verifier", out


def check_run(config: ExperimentConfig) -> None:
    """What a run needs besides its config's own fields, checked before its directory is made: the models it names,
    enough questions for its bins, a mesh its devices hold and a writable out_dir."""
    for field in ("policy", "large_policy"):
        if getattr(config, field) is not None:
            check_model_name("policy", getattr(config, field), field, "experiment")
    check_verifiers(config, "experiment")
    if config.questions is not None and config.questions < config.bins:  # the split may hold fewer: checked on reading
        raise ValueError(f"experiment: questions={config.questions} cannot fill bins={config.bins} difficulty bins; "
                         "lower bins or raise questions.")
    process_mesh(config.mesh)  # a mesh this process's devices cannot hold
    check_positions(config, "experiment", [("max_new_tokens", config.max_new_tokens, field, getattr(config, field))
                                           for field in ("policy", "large_policy") if getattr(config, field)])
    check_output_dir(config.out_dir)


def run_experiment(config: ExperimentConfig, progress: bool = True, rerun: str = "resume",
                   job: Job | None = None) -> dict | None:
    """The experiment, resumable; its report. With several processes each samples and searches its share of the
    questions on its own devices (`ttcjax.eval.shards`: difficulty samples, every search cell, the larger model's
    answers), then process 0 merges the shares, selects and writes the report (the others return None). One job of
    an array (`job`) samples and searches its share of every stage, writes its shards and returns None: the
    difficulty bins and all that follows need every question. A run without a job then merges every job's shards
    (sampling and searching nothing) and goes on to the selection and the report."""
    started = time.perf_counter()
    out = config.out_dir
    check_job_rerun(job, rerun)
    check_run(config)
    task = config.make_task()
    problems = run_problems(config, task)
    if len(problems) < config.bins:
        raise ValueError(f"task {task.name}: {len(problems)} questions in split {config.split!r} cannot fill "
                         f"{config.bins} difficulty bins; lower bins or raise questions.")
    mesh = process_mesh(config.mesh)
    invocation = bind_run(out, bound_fields(config.to_dict()), "experiment", rerun, job)
    with invocation_clock(out, invocation):
        return _experiment(config, task, problems, mesh, invocation, started, progress, job)


def _experiment(config: ExperimentConfig, task, problems: list[ProblemRecord], mesh, invocation: str | None,
                started: float, progress: bool, job: Job | None) -> dict | None:
    """`run_experiment` in its bound run directory, from loading the models to the report."""
    out = config.out_dir
    settings = config.search.for_task(task)
    engine, tok, _ = load_policy(config.policy, mesh)
    step_end(tok, settings.delimiter)  # before any work
    verifier = verifier_by_name(config.verifier, tok, mesh=engine.mesh, rules=engine.rules)
    revision = revision_role(config, tok, engine.mesh)  # revision cells run the revision model and its verifier
    log = (lambda msg: print(msg, file=sys.stderr)) if progress and is_writer() else (lambda msg: None)
    stages = 4 if config.large_policy else 3
    difficulty_path = os.path.join(out, "difficulty.jsonl")
    results_dir = os.path.join(out, "results")
    large_path = os.path.join(out, "large_policy.jsonl")
    cells = plan_cells(config.strategies, config.budgets)
    # where jobs wrote the stages, a run without a job merges their shares and samples and searches nothing
    counts = () if job is not None else job_counts([difficulty_path, large_path,
                                                    *grid_files(cells, verifier, results_dir)])
    if counts:
        log(f"merging the shards of the jobs (arrays of {', '.join(map(str, counts))}): nothing is sampled or "
            "searched")
    share = f" (job {job}'s share)" if job is not None else ""
    stage_log = log if not counts else (lambda msg: None)

    # 1. difficulty ------------------------------------------------------------------------------------
    stage_log(f"[1/{stages}] difficulty: {config.difficulty_samples} samples per question for {len(problems)} "
              "questions" + share)
    t0 = time.perf_counter()

    def difficulty(start: int, batch: Sequence[ProblemRecord]) -> list[dict]:
        completions = sample_completions(task, engine, tok, batch, n=config.difficulty_samples,
                                         sampling=settings.sampling, key=jax.random.key(config.seed),
                                         max_new_tokens=config.max_new_tokens, first_index=start)
        texts = [[tok.decode(c.tokens) for c in cs] for cs in completions]
        signal, predicted = predicted_signal(task, verifier, batch, texts, tok)
        return [{"id": p.id, "difficulty": p.difficulty,
                 "pass_rate": float(np.mean(task.grade(p, [task.extract_answer(t) for t in ts]))),
                 "signal": signal, "predicted": value, "generated_tokens": int(sum(len(tok.encode(t)) for t in ts)),
                 "nonfinite": sum(map(is_nonfinite, cs))}  # samples that ended on non-finite logits (warned of)
                for p, ts, cs, value in zip(batch, texts, completions, predicted)]

    difficulty_batch = max(1, SAMPLE_ROWS // config.difficulty_samples)
    if not counts:
        run_batches(difficulty_path, problems, difficulty_batch, difficulty, job=job)
    stage_log(f"      {time.perf_counter() - t0:.0f} s")

    # 2. search every strategy at every budget -------------------------------------------------------------
    stage_log(f"[2/{stages}] search: {len(cells)} (strategy, budget) cells x {len(problems)} questions" + share)
    if not counts:
        search_grid(cells, task, problems, engine, verifier, tok, results_dir, settings=settings, seed=config.seed,
                    rows_per_batch=config.rows_per_batch, progress=progress, revision=revision, job=job)

    # 3. the larger model's greedy answers (the FLOPs exchange compares them with search) ----------------------
    if config.large_policy:
        stage_log(f"[3/{stages}] the larger model, greedy" + share)
        large_engine, large_tok, large_dir = load_policy(config.large_policy, mesh)
        if large_tok.vocab_size != tok.vocab_size:
            raise ValueError(f"large_policy {large_dir}: its tokenizer differs from the policy's.")

        def greedy(start: int, batch: Sequence[ProblemRecord]) -> list[dict]:
            texts = sample_solutions(task, large_engine, large_tok, batch, n=1, sampling=GREEDY,
                                     key=jax.random.key(config.seed), max_new_tokens=config.max_new_tokens,
                                     first_index=start)
            return [{"id": p.id, "correct": task.is_correct(p, task.extract_answer(t[0]))}
                    for p, t in zip(batch, texts)]

        if not counts:
            run_batches(large_path, problems, SAMPLE_ROWS, greedy, job=job)

    barrier("ttcjax-experiment")  # every process's share written: one process merges and reports
    if job is not None and is_writer():
        finish_invocation(out, time.perf_counter() - started, invocation)
        print(job_done("experiment", job, out, "the difficulty bins (and the selection and report after them)"),
              file=sys.stderr)
    if job is not None or not is_writer():
        return None
    diff = merge(difficulty_path, problems, difficulty_batch, counts, fields=("pass_rate", "signal", "predicted"))
    signal = diff[0]["signal"]
    pass_rate = np.array([d["pass_rate"] for d in diff])
    predicted = np.array([d["predicted"] for d in diff])
    oracle_levels, oracle_edges = difficulty_levels(pass_rate, config.bins, seed=config.seed)
    predicted_levels, predicted_edges = difficulty_levels(predicted, config.bins, seed=config.seed)
    grid = collect_grid(cells, problems, verifier, results_dir, config.rows_per_batch, counts)

    # compute-optimal selection ---------------------------------------------------------------------------
    log(f"[{stages}/{stages}] compute-optimal selection ({config.folds}-fold cross-validation inside each bin)"
        + (" and the FLOPs exchange" if config.large_policy else ""))
    specs = {s.name: s for s in config.strategies}
    baseline = next((s.name for s in config.strategies if s.effective() == BASELINE.effective()),
                    config.strategies[0].name)
    weighted = next((s.name for s in config.strategies if s.effective() == BASELINE.effective()), None)
    revision_names = {s.name for s in config.strategies if s.kind == Revisions.kind}
    revision_correct = {cell: c for cell, c in grid.correct.items() if cell[0] in revision_names}
    selections, revision_selections = {}, {}
    for name, levels in (("oracle", oracle_levels), ("predicted", predicted_levels)):
        sel = select_strategies(grid.correct, levels, folds=config.folds, seed=config.seed, baseline=baseline)
        selections[name] = {"selection": sel, "levels": levels, "efficiency": efficiency(sel, levels)}
        if revision_correct:  # the ratio per bin, among revision strategies only, against best-of-N weighted
            rev = select_strategies(revision_correct, levels, folds=config.folds, seed=config.seed)
            rev = dataclasses.replace(rev, best_of_n_accuracy=sel.best_of_n_accuracy if weighted else {})
            revision_selections[name] = {"selection": rev, "levels": levels,
                                         "efficiency": efficiency(rev, levels) if weighted else None}
    task_form = task.to_dict()
    if "path" in task_form:
        task_form["path"] = _absolute(task_form["path"])
    scheduler = BudgetScheduler.from_selection(
        selections["predicted"]["selection"], predicted_edges, specs, signal=signal,
        probe_samples=config.probe_samples, search=settings, policy=_absolute(config.policy),
        verifier=_absolute(config.verifier), task=task_form, max_new_tokens=config.max_new_tokens,
        revision_policy=_absolute(config.revision_policy), revision_verifier=_absolute(config.revision_verifier))
    scheduler.save(os.path.join(out, "scheduler.json"))

    # the FLOPs exchange with the larger model --------------------------------------------------------------
    small_params = engine.config.num_params()
    large_params, large_correct, exchange = None, None, []
    if config.large_policy:
        large_params = large_engine.config.num_params()
        large_correct = np.array([r["correct"] for r in merge(large_path, problems, SAMPLE_ROWS, counts,
                                                              fields=("correct",))], int)
        sel = selections["oracle"]["selection"]
        for constants, ratio in ((c, r) for c in FLOPS_CONSTANTS for r in c.ratios):
            budget = constants.matched_generations(small_params, large_params, ratio)
            usable = [b for b in config.budgets if b <= budget]
            row = {"constants": constants.name, "inference_flops": constants.inference_flops, "R": ratio,
                   "matched_generations": budget, "budget_used": usable[-1] if usable else None, "by_level": {}}
            for lv in range(1, config.bins + 1):
                mask = oracle_levels == lv
                row["by_level"][str(lv)] = {
                    "large_greedy": float(large_correct[mask].mean()) if mask.any() else None,
                    "small_compute_optimal": sel.cv_accuracy.get((lv, row["budget_used"])) if usable else None}
            exchange.append(row)

    report = _report(config, problems, diff, oracle_levels, predicted_levels, grid.correct, grid.tokens, selections,
                     exchange, small_params, large_params, verifier.num_params, large_correct,
                     time.perf_counter() - started)
    report["baseline"] = baseline
    if revision is not None:
        report["params"].update(revision_policy=revision.engine.config.num_params(),
                                revision_verifier=revision.verifier.num_params)
        report["revisions"] = revision_summary(grid.records, config.strategies)
    if revision_selections:
        report["revisions_compute_optimal"] = {signal: selection_summary(s)
                                               for signal, s in revision_selections.items()}
    report["coverage"] = {n: {str(b): c for (m, b), c in grid.coverage.items() if m == n}
                          for n in dict.fromkeys(m for m, _ in grid.coverage)}
    report["per_question"] = per_question(grid.correct, grid.records, {"oracle": oracle_levels,
                                                                       "predicted": predicted_levels},
                                          config.folds, config.seed, large_correct, revision_names)
    # questions whose search met non-finite logits or verifier scores (warned of), and difficulty samples that did
    report["nonfinite_questions"] = {f"{n}/{b}": k for (n, b), k in grid.nonfinite.items() if k}
    report["nonfinite_difficulty_samples"] = int(sum(d.get("nonfinite", 0) for d in diff))

    # a rerun reuses finished work: the totals count every invocation of this run directory (run_log.jsonl)
    report["invocations"] = finish_invocation(out, report["seconds"], invocation)
    report["seconds_total"] = report["invocations"]["seconds"]
    findings = analyze(report)
    report["findings"] = findings.to_dict()
    write_json(os.path.join(out, "report.json"), report)
    plots(report, out, findings)
    with atomic_path(os.path.join(out, "summary.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown(report, findings))
    log(f"done in {time.perf_counter() - started:.0f} s: {os.path.join(out, 'summary.md')}")
    return report


def revision_summary(records: dict[tuple[str, int], list[dict]], specs: Sequence[StrategySpec]) -> dict:
    """Per revision strategy and budget (name -> budget -> ...): pass@1 at each revision step (the mean over
    questions of each record's `pass_by_attempt`), and the right-to-wrong counts summed over questions."""
    names = {s.name for s in specs if s.kind == Revisions.kind}
    out: dict[str, dict] = {}
    for (name, budget), rows in records.items():
        if name in names:
            out.setdefault(name, {})[str(budget)] = {
                "pass_by_attempt": np.mean([r["pass_by_attempt"] for r in rows], axis=0).tolist(),
                "right_to_wrong": int(sum(r["right_to_wrong"] for r in rows)),
                "right_followed": int(sum(r["right_followed"] for r in rows))}
    return out


def per_question(correct: dict[tuple[str, int], np.ndarray], records: dict[tuple[str, int], list[dict]],
                 levels: dict[str, np.ndarray], folds: int, seed: int, large_correct: np.ndarray | None,
                 revision_names: Collection[str]) -> dict:
    """report.json's per-question outcomes, every list in question order, from which `ttcjax.eval.analysis`
    bootstraps its intervals (`ttcjax.eval.uncertainty`): each signal's levels and cross-validation folds (those
    `select_strategies` used), each cell's 0/1 correctness and coverage (a right answer among its candidates) as
    strings of 0 and 1, the larger model's greedy correctness, and per revision cell each question's pass@1 at the
    first and last attempt (the share of its chains right there) and its right-to-wrong counts."""
    cells: dict[str, dict] = {"correct": {}, "pass": {}}
    for (name, budget), right in correct.items():
        cells["correct"].setdefault(name, {})[str(budget)] = encode(right)
        cells["pass"].setdefault(name, {})[str(budget)] = encode([r["pass"] for r in records[(name, budget)]])
    revisions: dict[str, dict] = {}
    for (name, budget), rows in records.items():
        if name in revision_names:
            revisions.setdefault(name, {})[str(budget)] = {
                "first": [r["pass_by_attempt"][0] for r in rows], "last": [r["pass_by_attempt"][-1] for r in rows],
                "right_to_wrong": [r["right_to_wrong"] for r in rows],
                "right_followed": [r["right_followed"] for r in rows]}
    return {"levels": {signal: lv.tolist() for signal, lv in levels.items()},
            "folds": {signal: fold_assignment(lv, folds, seed).tolist() for signal, lv in levels.items()},
            **cells, "large_greedy": None if large_correct is None else encode(large_correct),
            "revisions": revisions}


def selection_summary(selected: dict) -> dict:
    """A selection in report.json's form (`compute_optimal.<signal>`): the choice per "level/budget", and per
    budget the held-out accuracy, best-of-N weighted's and the efficiency (those two None where the selection has
    no best-of-N to compare with)."""
    sel, levels = selected["selection"], selected["levels"]
    budgets = sorted({b for _, b in sel.cv_accuracy})
    compared = selected["efficiency"] is not None
    return {"choice": {f"{lv}/{b}": name for (lv, b), name in sel.choice.items()},
            "cv_accuracy": {str(b): overall(sel.cv_accuracy, levels, b) for b in budgets},
            "best_of_n_weighted": ({str(b): overall(sel.best_of_n_accuracy, levels, b) for b in budgets}
                                   if compared else None),
            "efficiency": {str(b): v for b, v in selected["efficiency"].items()} if compared else None}


def _report(config, problems, diff, oracle_levels, predicted_levels, correct, tokens, selections, exchange,
            small_params, large_params, verifier_params, large_correct, seconds) -> dict:
    budgets = sorted({b for _, b in correct})
    names = list(dict.fromkeys(n for n, _ in correct))
    accuracy = {n: {str(b): float(correct[(n, b)].mean()) for b in budgets if (n, b) in correct} for n in names}
    per_level = {}
    for signal, levels in (("oracle", oracle_levels), ("predicted", predicted_levels)):
        per_level[signal] = {str(lv): {n: {str(b): float(correct[(n, b)][levels == lv].mean())
                                          for b in budgets if (n, b) in correct} for n in names}
                             for lv in range(1, config.bins + 1) if (levels == lv).any()}
    optimal = {signal: selection_summary(s) for signal, s in selections.items()}
    return {"config": config.to_dict(), "questions": len(problems), "seconds": seconds,
            "strategies": {s.name: s.to_dict() for s in config.strategies},
            "params": {"policy": small_params, "large_policy": large_params, "verifier": verifier_params},
            "difficulty_cost_tokens": int(sum(d["generated_tokens"] for d in diff)),
            "difficulty_signal": diff[0]["signal"],
            "accuracy": accuracy, "mean_generated_tokens": {f"{n}/{b}": t for (n, b), t in tokens.items()},
            "per_level": per_level, "compute_optimal": optimal, "flops_exchange": exchange,
            "large_policy_greedy": None if large_correct is None else float(large_correct.mean())}


# ---- applying a saved scheduler to new questions ------------------------------------------------------------


def check_scheduler_positions(scheduler: BudgetScheduler, policy: str, revision_policy: str | None,
                              source: str = "scheduler") -> None:
    """What a scheduler's run fills against the positions of the models that fill it, read from their configs
    before any weights: the probe samples (max_new_tokens) and a search row (search.max_len) in the policy, and a
    revision chain (search.revision_max_len) in the revision model where a choice revises."""
    check_model_name("policy", policy, "policy", "ttcjax run")
    model = checkpoint_config(resolve("policy", policy), "policy")
    for field, tokens in (("max_new_tokens", scheduler.max_new_tokens), ("search.max_len", scheduler.search.max_len)):
        model.check_fits(field, tokens, f"policy {policy}", source)
    revises = any(spec.get("kind") == Revisions.kind for spec in scheduler.choices.values())
    if revises and revision_policy is not None and scheduler.search.revision_max_len is not None:
        checkpoint_config(revision_policy_dir(revision_policy, source), "revision_policy").check_fits(
            "search.revision_max_len", scheduler.search.revision_max_len, f"revision_policy {revision_policy}", source)


def answer_with_scheduler(scheduler: BudgetScheduler, problems: Sequence[ProblemRecord], budget: int, *,
                          task: Task | None = None, policy: str | None = None, verifier: str | None = None,
                          revision_policy: str | None = None, revision_verifier: str | None = None,
                          seed: int = 0, mesh=None, warn=lambda msg: print(msg, file=sys.stderr),
                          source: str = "scheduler") -> list[dict]:
    """Answer `problems` under `budget` generations each, as the scheduler was chosen: its policy, verifier,
    revision model and revision verifier (what a level's revision strategy runs), task and search settings
    unless given here. `scheduler.probe_samples` samples predict each question's
    level (their generated tokens and the verifier's reading of them are counted), then the level's strategy
    runs with what is left of the budget. Where that strategy does not fit the budget left, weighted best-of-N
    (majority without a verifier) runs instead: `warn` says so and the record names both. Questions that share
    a strategy are searched together. `source` names the scheduler (its file) in errors."""
    if scheduler.signal == "oracle":
        raise ValueError("a scheduler binned by oracle difficulty cannot bin new questions (that needs their "
                         "answers); use the one binned by predicted difficulty (scheduler.json).")
    k = scheduler.probe_samples
    remaining = budget - k
    if remaining < 1:  # before any model is loaded
        raise ValueError(f"budget {budget} does not cover the scheduler's {k} probe samples; use a budget of at "
                         f"least {k + 1}.")
    task = task or task_from_dict(scheduler.task, "scheduler task")
    policy = policy or scheduler.policy
    check_scheduler_positions(scheduler, policy, revision_policy or scheduler.revision_policy, source)  # pre-weights
    engine, tok, _ = load_policy(policy, mesh)
    judge = verifier_by_name(verifier or scheduler.verifier, tok, mesh=engine.mesh, rules=engine.rules)
    texts = sample_solutions(task, engine, tok, problems, n=k, sampling=scheduler.search.sampling,
                             key=jax.random.key(seed), max_new_tokens=scheduler.max_new_tokens)
    signal, values = predicted_signal(task, judge, problems, texts, tok)
    if signal != scheduler.signal:
        raise ValueError(f"the scheduler bins by {scheduler.signal!r} and this verifier gives {signal!r}; apply it "
                         "with the verifier it was chosen with.")
    fallback = (BASELINE if judge.scores_steps else StrategySpec.from_dict({"kind": "best_of_n",
                                                                            "selection": "majority"})).at(remaining)
    out: list[dict] = []
    groups: dict[Strategy, list[int]] = {}  # questions that run the same strategy
    policy_params = engine.config.num_params()
    for i, (p, ts, value) in enumerate(zip(problems, texts, values)):
        level = scheduler.level(value)
        try:
            chosen = scheduler.spec(level, remaining)
        except ValueError:  # below every budget the scheduler was chosen at
            chosen = None
        strategy = chosen.at(remaining) if chosen is not None else None
        note = None
        if strategy is None:
            strategy = fallback
            note = (f"{chosen.to_dict() if chosen else 'no choice of the scheduler'} does not fit the {remaining} "
                    f"generations left after {k} probe samples; ran {strategy.to_dict()}")
            warn(f"ttcjax run: question {p.id}: {note}")
        prompt_tokens = len(task.encode_prompt(p, tok))
        probe_tokens = int(sum(len(tok.encode(t)) for t in ts))
        out.append({"id": p.id, "question": p.question, "level": level, "signal": value,
                    "chosen": chosen.to_dict() if chosen else None,
                    "strategy": strategy.to_dict(), "fallback": note, "probe_tokens": probe_tokens,
                    "probe_verifier_tokens": k * prompt_tokens + probe_tokens if judge.scores_steps else 0,
                    "probe_policy_tokens": prompt_tokens + probe_tokens})
        groups.setdefault(strategy, []).append(i)
    revision: Models | None = None  # loaded when a level's strategy revises
    for strategy, members in groups.items():
        role = Models(engine, judge)
        if isinstance(strategy, Revisions):
            if revision is None:
                revision = load_revision_models(revision_policy or scheduler.revision_policy,
                                                revision_verifier or scheduler.revision_verifier, tok, engine.mesh)
            role = revision
        results = search(strategy, role.engine, role.verifier, tok,
                         [task.encode_prompt(problems[i], tok) for i in members],
                         jax.random.fold_in(jax.random.key(seed), 1), extract_answer=task.extract_answer,
                         equal=task.same_answer, settings=scheduler.search,
                         questions=[problems[i].question for i in members])
        for i, r in zip(members, results):
            o, p = out[i], problems[i]
            probe_verifier_tokens = o["probe_verifier_tokens"]
            # the probes are the policy's and its verifier's; the search is its role's (the revision model's)
            o.update({"answer": r.answer, "correct": task.is_correct(p, r.answer) if p.answer else None,
                      "solution": r.solution, "role": "revision" if role is revision else "search",
                      "generated_tokens": r.generated_tokens + o["probe_tokens"],
                      "verifier_tokens": r.verifier_tokens + probe_verifier_tokens,
                      "policy_flops": r.policy_flops + inference_flops(policy_params, o.pop("probe_policy_tokens")),
                      "verifier_flops": (inference_flops(role.verifier.num_params, r.verifier_tokens)
                                         + inference_flops(judge.num_params, probe_verifier_tokens))})
    return out
