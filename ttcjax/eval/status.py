"""Where a run stands while it runs: `ttcjax experiment --status` and `ttcjax sweep --status`.

A long run (the study takes hours and resumes across machines) is read from its run directory alone: its bound
config, its run log, who holds it now, and the complete records of each stage and each (strategy, budget) cell, its
shards included. For each cell it gives the questions done and, over them, the accuracy and pass@N with 95%
bootstrap intervals (`ttcjax.eval.uncertainty`), and the difference from best-of-N weighted at the same budget on
the questions both have done (paired). These are interim figures: the report's compute-optimal selection and
findings need every cell. Nothing is written and no hold is taken, so it runs beside the run.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ttcjax.eval.shards import read_lines, shard_paths
from ttcjax.eval.sweep import SHARED_BEST_OF_N, Cell, SweepConfig, plan_cells, results_file, run_problems
from ttcjax.eval.uncertainty import Interval, Resamples
from ttcjax.io import bound_fields, config_changes, read_run_log, run_holder, run_totals
from ttcjax.search.strategies import BestOfN

RESAMPLES = 1000  # enough for an interim interval to 0.01
BASELINE = ("best_of_n", "weighted")  # what each cell is compared with at its budget (paired)


def records_done(path: str, ids: Sequence[str]) -> dict[str, dict]:
    """The complete records of a stage (its merged file and any shards on disk) of the questions `ids`, by id; a
    last line still being written is left out."""
    wanted, out = set(ids), {}
    for file in [path, *shard_paths(path)]:
        if os.path.exists(file):
            for record in read_lines(file):
                if record["id"] in wanted:
                    out.setdefault(record["id"], record)
    return out


def _interval(values: np.ndarray, seed: int) -> Interval:
    """The mean of `values` [questions] and its bootstrap interval (NaN where there are none)."""
    if not len(values):
        return Interval(float("nan"), float("nan"), float("nan"))
    drawn = Resamples.draw(len(values), RESAMPLES, seed)
    return drawn.interval(drawn.mean(values))


def _correct(cell: Cell, record: dict) -> bool:
    if cell.spec.kind == BestOfN.kind:
        return bool(record["by_selection"][cell.strategy.selection])
    return bool(record["correct"])


def run_status(config: SweepConfig, seed: int = 0) -> dict[str, Any]:
    """Where the run of `config` (an experiment's or a sweep's) stands, from its out_dir: a dict that
    `status_markdown` renders."""
    out = config.out_dir
    if not os.path.isdir(out):
        raise ValueError(f"{out}: no such run directory (out_dir of this config); nothing has run yet.")
    ids = [p.id for p in run_problems(config, config.make_task())]
    changes = config_changes(out, bound_fields(config.to_dict()))
    log = read_run_log(out)
    status: dict[str, Any] = {
        "out_dir": out, "questions": len(ids), "holder": run_holder(out),
        "bound": changes is not None, "other_config": changes or [],
        "totals": run_totals(log),
        "commits": list(dict.fromkeys(((e.get("code") or {}).get("commit") or "?")[:12] for e in log)),
        "stages": {}, "cells": []}
    for stage, name in (("difficulty", "difficulty.jsonl"), ("larger model", "large_policy.jsonl")):
        path = os.path.join(out, name)
        if stage == "difficulty" and not hasattr(config, "difficulty_samples"):
            continue
        if stage == "larger model" and not getattr(config, "large_policy", None):
            continue
        done = records_done(path, ids)
        entry = {"done": len(done)}
        if stage == "larger model" and done:
            entry["accuracy"] = _interval(np.array([r["correct"] for r in done.values()], float), seed)
        status["stages"][stage] = entry
    results = os.path.join(out, "results")
    cells = plan_cells(config.strategies, config.budgets)
    read = {}
    for cell in cells:
        name = results_file(cell)
        if name not in read:
            read[name] = records_done(os.path.join(results, name), ids)
    baseline = {c.budget: c for c in cells if c.spec.kind == BASELINE[0] and c.strategy.selection == BASELINE[1]}
    for cell in cells:
        done = read[results_file(cell)]
        order = [i for i in ids if i in done]
        correct = np.array([_correct(cell, done[i]) for i in order], float)
        row = {"cell": cell.name, "strategy": cell.spec.name, "budget": cell.budget, "done": len(order),
               "accuracy": _interval(correct, seed),
               "pass": _interval(np.array([bool(done[i]["pass"]) for i in order if "pass" in done[i]], float), seed),
               "tokens": float(np.mean(tokens)) if (tokens := [done[i]["generated_tokens"] for i in order
                                                               if "generated_tokens" in done[i]]) else None,
               "vs_baseline": None}
        base = baseline.get(cell.budget)
        if base is not None and base is not cell and order:
            base_done = read[results_file(base)]
            both = [i for i in order if i in base_done]
            if both:
                diff = np.array([_correct(cell, done[i]) - _correct(base, base_done[i]) for i in both], float)
                row["vs_baseline"] = {"questions": len(both), "difference": _interval(diff, seed)}
        status["cells"].append(row)
    status["time"] = time_left(cells, read, len(ids))
    return status


def time_left(cells: Sequence[Cell], read: dict[str, dict[str, dict]], questions: int) -> dict[str, Any]:
    """The search's seconds so far (its records' `seconds`, each results file once) and an estimate of the seconds
    left at the pace so far: a file under way at its own seconds per question; one not started at those of the same
    strategy at the largest lower budget done, times the budget ratio (the work grows with N). The rest, strategies
    not started (`unknown`: their files), take at least best-of-N's pace at their budget (`floor`): it samples N
    solutions and nothing else."""
    first = {}
    for cell in cells:
        first.setdefault(results_file(cell), cell)
    pace = {}  # (strategy, budget) -> seconds per question
    spent = 0.0
    for name, cell in first.items():
        seconds = [r["seconds"] for r in read[name].values() if isinstance(r.get("seconds"), (int, float))]
        spent += sum(seconds)
        if seconds:
            pace[(_run_name(name, cell), cell.budget)] = sum(seconds) / len(seconds)
    left, floor, unknown = 0.0, 0.0, []
    for name, cell in first.items():
        missing = questions - len(read[name])
        if missing <= 0:
            continue
        run = _run_name(name, cell)
        if (rate := pace.get((run, cell.budget))) is None:
            lower = [b for s, b in pace if s == run and b < cell.budget]
            rate = pace[(run, max(lower))] * cell.budget / max(lower) if lower else None
        if rate is not None:
            left += rate * missing
            continue
        unknown.append(name)
        floor += pace.get((SHARED_BEST_OF_N.name, cell.budget), 0.0) * missing
    return {"spent": spent, "left": left, "unknown": unknown, "floor": floor}


def _run_name(name: str, cell: Cell) -> str:
    """The strategy a results file runs: its name without the budget (best-of-N's specs share one)."""
    return name[:-len(f"-b{cell.budget}.jsonl")]


def _ci(x: Interval, digits: int = 3) -> str:
    if not np.isfinite(x.value):
        return "-"
    return f"{x.value:.{digits}f} [{x.lo:.{digits}f}, {x.hi:.{digits}f}]"


def status_markdown(status: dict[str, Any]) -> str:
    """The status as markdown: the run, its stages, and a table of the cells."""
    q, totals = status["questions"], status["totals"]
    lines = [f"# {status['out_dir']}: interim status", ""]
    if not status["bound"]:
        lines.append("No run has bound this directory yet.")
    elif status["other_config"]:
        lines.append(f"**Made by another config** (keys that differ: {status['other_config']}): what follows is "
                     "that run's, read with this config's cells.")
    lines.append(f"- {'running now: ' + status['holder'] if status['holder'] else 'not running now'}")
    lines.append(f"- {totals['invocations']} invocations ({totals['interrupted_invocations']} interrupted or running), "
                 f"{totals['seconds'] / 3600:.2f} h in all; commits {', '.join(status['commits']) or '-'}")
    for stage, entry in status["stages"].items():
        extra = f", accuracy {_ci(entry['accuracy'])}" if "accuracy" in entry else ""
        lines.append(f"- {stage}: {entry['done']} of {q} questions{extra}")
    cells = status["cells"]
    finished = sum(c["done"] == q for c in cells)
    lines.append(f"- search: {finished} of {len(cells)} (strategy, budget) cells done, "
                 f"{sum(0 < c['done'] < q for c in cells)} under way; "
                 f"{sum(c['done'] for c in cells)} of {len(cells) * q} question-cells")
    t = status["time"]
    more = (f"; {len(t['unknown'])} cells of strategies not started yet, at least {t['floor'] / 3600:.1f} h more "
            "(best-of-N's pace at their budgets)") if t["unknown"] else ""
    lines.append(f"- search time: {t['spent'] / 3600:.2f} h in its records so far; at that pace about "
                 f"{t['left'] / 3600:.1f} h left for the cells under way or started at a lower budget{more}. Each "
                 "record holds its batch's seconds on the process that searched it: where several processes or jobs "
                 "share a run, these are summed over them (process-hours), not wall time")
    lines += ["", "Interim: accuracy and pass@N over the questions each cell has done, with 95% bootstrap "
              "intervals; 'vs best-of-N' is the paired difference from best-of-N weighted at the same budget on the "
              "questions both have done. The report's figures need every cell.", "",
              "| cell | questions | accuracy [95%] | pass@N [95%] | tokens / question | vs best-of-N weighted |",
              "|---|---:|---|---|---:|---|"]
    for c in cells:
        if not c["done"]:
            lines.append(f"| {c['cell']} | 0 | | | | |")
            continue
        vs = c["vs_baseline"]
        versus = f"{vs['difference'].value:+.3f} [{vs['difference'].lo:+.3f}, {vs['difference'].hi:+.3f}] " \
                 f"({vs['questions']})" if vs else ""
        tokens = f"{c['tokens']:.0f}" if c["tokens"] is not None else "-"
        lines.append(f"| {c['cell']} | {c['done']} | {_ci(c['accuracy'])} | {_ci(c['pass'])} | {tokens} | {versus} |")
    return "\n".join(lines) + "\n"
