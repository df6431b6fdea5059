"""`ttcjax sweep --config FILE`: strategies x budgets on the built-in task, per-question results as JSONL,
accuracy-versus-budget tables and plots. Resumable: each (strategy, budget) cell appends one line per
question as soon as its batch is done; a rerun skips the questions already written (a line cut by an
interruption is dropped and redone), so nothing is lost or computed twice.

Output directory:
    results/<cell>.jsonl     one record per question: id, difficulty, answer, correct, costs
    summary.json, summary.md accuracy per strategy and budget, overall and per difficulty
    accuracy_vs_budget.png   the paper's Figure-3-style curves (and one panel per difficulty)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import zlib
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from ttcjax.checkpoints.assets import model_dir
from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer
from ttcjax.decoding.engine import Engine, Sampling
from ttcjax.io import atomic_path, check_options
from ttcjax.models.sharding import parse_mesh
from ttcjax.search.episode import DVTS, Beam, BestOfN, Lookahead, Strategy, search
from ttcjax.search.selection import best_of_n, majority, weighted
from ttcjax.tasks import arithmetic
from ttcjax.verifiers.reward_model import load_prm

DEFAULT_STRATEGIES = (
    {"kind": "best_of_n", "selection": "weighted"},
    {"kind": "best_of_n", "selection": "majority"},
    {"kind": "beam", "width": 4},
    {"kind": "dvts", "width": 4},
    {"kind": "lookahead", "width": 4, "k": 1},
)


def strategy_name(spec: dict) -> str:
    kind = spec["kind"]
    extra = "".join(f"-{k}{v}" for k, v in sorted(spec.items()) if k != "kind")
    return f"{kind}{extra}"


def make_strategy(spec: dict, budget: int, max_rounds: int = 40) -> Strategy | None:
    """The strategy `spec` at a budget of `budget` generations; None where it does not fit the budget
    (e.g. a beam wider than the budget). width "sqrt" is sqrt(budget), as in the paper."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "best_of_n":
        return BestOfN(budget, **spec)
    width = spec.pop("width", 4)
    if width == "sqrt":
        width = max(1, int(round(math.sqrt(budget))))
    if not isinstance(width, int):
        raise ValueError(f"strategy {kind}: width must be an integer or 'sqrt', got {width!r}.")
    if kind == "lookahead":
        k = spec.pop("k", 1)
        n = budget // (k + 1) // width * width  # the budget counts each rollout step: N * (k + 1)
        return Lookahead(n, width, k=k, max_rounds=max_rounds, **spec) if n >= width else None
    if kind in ("beam", "dvts"):
        if budget < width or budget % width:
            return None
        return (Beam if kind == "beam" else DVTS)(budget, width, max_rounds=max_rounds, **spec)
    raise ValueError(f"unknown strategy kind {kind!r}; use best_of_n, beam, lookahead or dvts.")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    out_dir: str
    policy: str = "tiny"  # a shipped asset name or a checkpoint directory
    prm: str = "tiny"
    split: str = "test"
    per_difficulty: int = 25
    difficulties: tuple[int, ...] = (2, 3, 4, 5)
    strategies: tuple[dict, ...] = DEFAULT_STRATEGIES
    budgets: tuple[int, ...] = (4, 16, 64, 256)
    temperature: float = 0.8
    max_rounds: int = 12
    max_step_tokens: int = 24
    max_len: int = 160
    rows_per_batch: int = 1024  # questions per compiled episode = rows_per_batch // N
    seed: int = 0
    mesh: str = "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SweepConfig":
        check_options(cls, data, source, required=("out_dir",))
        data = dict(data)
        for key in ("difficulties", "budgets", "strategies"):
            if key in data:
                data[key] = tuple(data[key])
        for i, spec in enumerate(data.get("strategies", ())):
            if not isinstance(spec, dict) or "kind" not in spec:
                raise ValueError(f"{source}: strategies[{i}] must be a mapping with a 'kind' "
                                 "(best_of_n, beam, lookahead, dvts).")
        return cls(**data)


def _read_done(path: str) -> dict[str, dict]:
    """Complete records already written; a trailing partial line is dropped (and the file cut there)."""
    done: dict[str, dict] = {}
    if not os.path.exists(path):
        return done
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n")[:-1] if not data.endswith(b"\n") else data.split(b"\n"):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        done[record["id"]] = record
        good += len(line) + 1
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(min(good, len(data)))
    return done


def run_cell(strategy: Strategy, name: str, budget: int, problems, engine, prm, tokenizer, path: str, *,
             seed: int, temperature: float, max_step_tokens: int, max_len: int, rows_per_batch: int,
             aggregation: str = "last", bar=None) -> list[dict]:
    """Search every problem with `strategy`, appending one record per problem to `path` (JSONL) after each
    batch; problems already in `path` are not searched again. Returns the records in problem order."""

    done = _read_done(path)
    if bar is not None:
        bar.update(sum(p.id in done for p in problems))
    todo = [p for p in problems if p.id not in done]
    per_batch = max(1, rows_per_batch // strategy.n)
    cell = f"{name}-b{budget}"
    with open(path, "a") as out:
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            first = batch[0].id  # the batch's key depends on its first question, not on what ran before
            t0 = time.perf_counter()
            results = search(strategy, engine, prm, tokenizer, [arithmetic.format_prompt(p) for p in batch],
                             jax.random.fold_in(jax.random.key(seed), zlib.crc32(f"{cell}/{first}".encode())),
                             extract_answer=arithmetic.extract_answer, sampling=Sampling(temperature=temperature),
                             max_step_tokens=max_step_tokens, max_len=max_len, aggregation=aggregation)
            seconds = (time.perf_counter() - t0) / len(batch)
            for p, r in zip(batch, results):
                answers = [c.answer for c in r.candidates]
                scores = [c.score for c in r.candidates]
                # every answer-selection rule over the same candidates: best-of-N variants share one sampling
                by_selection = {"weighted": answers[weighted(answers, scores)] == p.answer,
                                "vanilla": answers[best_of_n(scores)] == p.answer,
                                "majority": answers[majority(answers)] == p.answer}
                record = {"id": p.id, "question": p.expression, "difficulty": p.difficulty, "strategy": name,
                          "budget": budget, "answer": r.answer, "correct": r.answer == p.answer,
                          "pass": any(c.answer == p.answer for c in r.candidates), "by_selection": by_selection,
                          "generations": r.generations,
                          "generated_tokens": r.generated_tokens, "prm_tokens": r.prm_tokens,
                          "policy_flops": r.policy_flops, "verifier_flops": r.verifier_flops, "seconds": seconds,
                          "solution": r.solution}
                out.write(json.dumps(record) + "\n")
                done[p.id] = record
            out.flush()
            os.fsync(out.fileno())
            if bar is not None:
                bar.update(len(batch))
    return [done[p.id] for p in problems]


def _load(config: SweepConfig):

    policy_dir = config.policy if os.path.isdir(config.policy) else model_dir("policy", config.policy)
    prm_dir = config.prm if os.path.isdir(config.prm) else model_dir("prm", config.prm)
    policy = load_any(policy_dir)
    prm, meta = load_prm(prm_dir)
    return policy, prm, meta, load_tokenizer(policy_dir)


def run_sweep(config: SweepConfig, progress: bool = True) -> dict:

    policy, prm, meta, tokenizer = _load(config)
    engine = Engine(policy, mesh=parse_mesh(config.mesh), pad_id=tokenizer.pad_id)
    task = arithmetic.TaskConfig(difficulties=config.difficulties)
    problems = arithmetic.generate(task, config.per_difficulty * len(config.difficulties), seed=config.seed,
                                   split=config.split)
    os.makedirs(os.path.join(config.out_dir, "results"), exist_ok=True)
    cells = [(spec, b, make_strategy(spec, b, config.max_rounds)) for spec in config.strategies
             for b in config.budgets]
    cells = [(spec, b, s) for spec, b, s in cells if s is not None]
    total = len(cells) * len(problems)
    bar = tqdm(total=total, desc="sweep", unit="question", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    by_cell: dict[str, list[dict]] = {}
    for spec, budget, strategy in cells:
        name = f"{strategy_name(spec)}-b{budget}"
        by_cell[name] = run_cell(strategy, strategy_name(spec), budget, problems, engine, prm, tokenizer,
                                 os.path.join(config.out_dir, "results", f"{name}.jsonl"), seed=config.seed,
                                 temperature=config.temperature, max_step_tokens=config.max_step_tokens,
                                 max_len=config.max_len, rows_per_batch=config.rows_per_batch,
                                 aggregation=meta.get("aggregation", "last"), bar=bar)
    bar.close()
    summary = summarize(config, by_cell)
    with atomic_path(os.path.join(config.out_dir, "summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    with atomic_path(os.path.join(config.out_dir, "summary.md")) as tmp, open(tmp, "w") as f:
        f.write(summary_markdown(summary))
    plot(summary, os.path.join(config.out_dir, "accuracy_vs_budget.png"))
    return summary


def summarize(config: SweepConfig, by_cell: dict[str, list[dict]]) -> dict:
    table: dict[str, dict] = {}
    for records in by_cell.values():
        if not records:
            continue
        strategy, budget = records[0]["strategy"], records[0]["budget"]
        row = table.setdefault(strategy, {})
        acc = {"all": float(np.mean([r["correct"] for r in records]))}
        for d in config.difficulties:
            sub = [r["correct"] for r in records if r["difficulty"] == d]
            acc[str(d)] = float(np.mean(sub)) if sub else None
        row[str(budget)] = {"accuracy": acc, "questions": len(records),
                            "generated_tokens": float(np.mean([r["generated_tokens"] for r in records])),
                            "seconds_per_question": float(np.mean([r["seconds"] for r in records]))}
    return {"config": dataclasses.asdict(config), "table": table}


def summary_markdown(summary: dict) -> str:
    table = summary["table"]
    budgets = sorted({int(b) for row in table.values() for b in row})
    lines = ["# Sweep: accuracy versus generation budget", "",
             "| strategy | " + " | ".join(f"N={b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for name, row in table.items():
        cells = [f"{row[str(b)]['accuracy']['all']:.3f}" if str(b) in row else "" for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diffs = [str(d) for d in summary["config"]["difficulties"]]
    for d in diffs:
        lines += ["", f"## Difficulty {d}", "", "| strategy | " + " | ".join(f"N={b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name, row in table.items():
            cells = [f"{row[str(b)]['accuracy'][d]:.3f}" if str(b) in row and row[str(b)]['accuracy'][d] is not None
                     else "" for b in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    diffs = ["all"] + [str(d) for d in summary["config"]["difficulties"]]
    fig, axes = plt.subplots(1, len(diffs), figsize=(3.2 * len(diffs), 3.2), sharey=True)
    for ax, d in zip(np.atleast_1d(axes), diffs):
        for name, row in table.items():
            budgets = sorted(int(b) for b in row)
            ax.plot(budgets, [row[str(b)]["accuracy"][d] for b in budgets], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title("all questions" if d == "all" else f"difficulty {d}")
        ax.set_xlabel("generation budget N")
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
