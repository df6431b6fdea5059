"""`ttcjax sweep --config FILE`: strategies x budgets on any task, per-question results as JSONL,
accuracy-versus-budget tables and plots. Also the grid of (strategy, budget) cells that `ttcjax experiment`
runs.

Resumable: each (strategy, budget) cell appends one line per question as soon as its batch is done; a rerun
skips the questions already written (a line cut by an interruption is dropped and redone), so nothing is
lost or computed twice. The run directory belongs to one config (run_config.json); a rerun with another
config stops before any work.

On several processes (`ttcjax sweep --coordinator HOST:PORT --num-processes P --process-id p`, or a TPU pod),
the questions are split on batch boundaries: process p searches batches p, p + P, ... on its own devices (the
config's mesh over `jax.local_devices()`: its data axis splits each batch's rows), writes
results/<cell>.shard-p-of-P.jsonl, and after every process is done process 0 merges the shards into
results/<cell>.jsonl, checking that every question is there exactly once, and writes the summary
(`ttcjax.eval.shards`). The files equal a single process's: a batch draws the same whoever runs it. A rerun,
with any number of processes, resumes from the file and every shard.

As one of J independent jobs over the same run directory (`ttcjax sweep --job K/J`: a job array, no coordinator),
the sweep searches batches K, K + J, ... of every cell into results/<cell>.job-K-of-J[.shard-p-of-P].jsonl and
merges nothing; a later `ttcjax sweep` without --job searches nothing there, merges every job's shards (naming the
jobs whose share is missing) and writes the summary (docs/scale-out.md).

Best-of-N is sampled once per budget: its selection rules (weighted, vanilla, majority) are applied to the
same candidates (`by_selection` in each record), so they differ only in how they choose.

Output directory:
    results/<cell>.jsonl     one record per question: id, difficulty, answer, correct, costs, ...
    summary.json, summary.md accuracy per strategy and budget, overall and per difficulty
    accuracy_vs_budget.png   the paper's Figure-3-style curves (and one panel per difficulty)
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
import zlib
from typing import Any, ClassVar, Collection, Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from ttcjax.checkpoints.assets import check_model_name, resolve
from ttcjax.checkpoints.native import checkpoint_config, load_any
from ttcjax.checkpoints.tokenizer import check_tokenizer_fits, load_tokenizer
from ttcjax.decoding.engine import Engine
from ttcjax.distributed import barrier, bind_run, is_writer
from ttcjax.eval.shards import Job, check_job_rerun, job_counts, job_done, merge, my_questions, run_batches
from ttcjax.io import atomic_path, bound_fields, check_options, finish_invocation, invocation_clock, write_json
from ttcjax.models.sharding import parse_mesh
from ttcjax.search.run import search, step_end
from ttcjax.search.selection import SELECTION_RULES, select
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import STRATEGIES, BestOfN, Revisions, Strategy, StrategySpec
from ttcjax.tasks.base import ProblemRecord, Task
from ttcjax.tasks.registry import task_from_dict
from ttcjax.training.revisions import load_revision_settings
from ttcjax.verifiers.base import Verifier
from ttcjax.verifiers.loading import check_verifier_name, is_verifier_free, verifier_by_name

DEFAULT_STRATEGIES = tuple(StrategySpec.from_dict(s) for s in (
    {"kind": "best_of_n", "selection": "weighted"},
    {"kind": "best_of_n", "selection": "majority"},
    {"kind": "beam", "width": 4},
    {"kind": "dvts", "width": 4},
    {"kind": "lookahead", "width": 4, "k": 1},
))
SHARED_BEST_OF_N = StrategySpec("best_of_n")  # the one best-of-N sampling per budget


def read_strategies(items: Any, source: str) -> tuple[StrategySpec, ...]:
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{source}: strategies must be a non-empty list of mappings such as {{kind: beam, width: 4}}.")
    specs = tuple(StrategySpec.from_dict(s, f"{source}: strategies[{i}]") for i, s in enumerate(items))
    for i, spec in enumerate(specs):
        for j in range(i):
            if specs[j].effective() == spec.effective():
                raise ValueError(f"{source}: strategies[{j}] and strategies[{i}] are the same strategy "
                                 f"({spec.effective()}); list it once.")
    return specs


def read_budgets(items: Any, source: str) -> tuple[int, ...]:
    if (not isinstance(items, (list, tuple)) or not items
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in items)):
        raise ValueError(f"{source}: budgets must be a non-empty list of integers >= 1 (generations per question); "
                         f"got {items!r}.")
    return tuple(sorted(set(items)))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (strategy, budget) cell of a grid: the strategy the spec gives at the budget."""

    spec: StrategySpec
    budget: int
    strategy: Strategy

    @property
    def name(self) -> str:
        return f"{self.spec.name}-b{self.budget}"


def plan_cells(specs: Sequence[StrategySpec], budgets: Sequence[int], source: str = "config") -> list[Cell]:
    """Every (spec, budget) that fits; a spec that fits none of the budgets is an error naming it."""
    cells = []
    for spec in specs:
        fitting = [Cell(spec, b, s) for b in budgets if (s := spec.at(b)) is not None]
        if not fitting:
            raise ValueError(f"{source}: strategy {spec.to_dict()} fits none of the budgets {list(budgets)} (it "
                             f"needs {STRATEGIES[spec.kind].budget_rule}).")
        cells += fitting
    return cells


def dropped_cells(specs: Sequence[StrategySpec], budgets: Sequence[int]) -> list[tuple[StrategySpec, list[int]]]:
    """(spec, the budgets it does not fit) for every spec that fits some of the budgets but not all: `plan_cells`
    leaves those cells out of the grid."""
    out = [(spec, [b for b in budgets if spec.at(b) is None]) for spec in specs]
    return [(spec, unfit) for spec, unfit in out if 0 < len(unfit) < len(budgets)]


def warn_of_dropped_cells(specs: Sequence[StrategySpec], budgets: Sequence[int], source: str) -> None:
    """One line on stderr for each strategy that fits some of the budgets but not all: the cells `plan_cells` leaves
    out, named where the config is read."""
    for spec, unfit in dropped_cells(specs, budgets):
        print(f"{source}: warning: strategy {spec.to_dict()} does not fit budgets {unfit} (it needs "
              f"{STRATEGIES[spec.kind].budget_rule}): those cells are not run, and strategies are compared there "
              "without it.", file=sys.stderr)


def check_verifier_fits(specs: Sequence[StrategySpec], verifier_name: str | None, source: str) -> None:
    """Strategies that read verifier scores refused, when read, for a verifier-free config."""
    if not is_verifier_free(verifier_name):
        return
    for spec in specs:
        if spec.needs_verifier:
            raise ValueError(f"{source}: strategy {spec.to_dict()} reads verifier scores and verifier is none; use "
                             "{kind: best_of_n, selection: majority} or name a verifier.")


def is_revision(spec: StrategySpec) -> bool:
    """Whether a spec runs the revision model (and the revision verifier) rather than the policy."""
    return spec.kind == Revisions.kind


def check_revision_models(specs: Sequence[StrategySpec], revision_policy: str | None, revision_verifier: str | None,
                          source: str) -> None:
    """Revision strategies need a model fine-tuned to revise (the policy never saw its own earlier attempts in
    context), and the verifier they read must be a revision verifier."""
    for spec in filter(is_revision, specs):
        if revision_policy is None:
            raise ValueError(f"{source}: strategy {spec.to_dict()} revises with a revision model and revision_policy "
                             "is not set; name one (a shipped revision model or a `ttcjax train revision` model "
                             "directory).")
        if spec.needs_verifier and is_verifier_free(revision_verifier):
            raise ValueError(f"{source}: strategy {spec.to_dict()} reads verifier scores and revision_verifier is "
                             "none; name an ORM trained on the revision model's outputs or use selection: majority.")


def revision_policy_dir(name_or_dir: str, source: str = "config") -> str:
    """The directory of a revision model a config names (a shipped name or a directory), checked to hold one."""
    try:
        directory = resolve("revision", name_or_dir)
        load_revision_settings(directory)
    except FileNotFoundError as e:
        raise ValueError(f"{source}: revision_policy={name_or_dir!r}: {e}") from None
    return directory


def _positions_of(policy: Any) -> int | None:
    """The positions of the policy a config names, read from its config (None where it cannot be read yet: the
    name is checked later, with its own message)."""
    if not isinstance(policy, str) or not policy:
        return None
    try:
        return checkpoint_config(resolve("policy", policy)).max_position_embeddings
    except (FileNotFoundError, ValueError, TypeError, OSError):
        return None


def check_positions(config: SweepConfig, source: str, more: Sequence[tuple[str, int, str, str]] = ()) -> None:
    """Every cache a run fills against the positions of the model that fills it (max_position_embeddings), when the
    config is read: a search row (search.max_len) in the policy, a revision chain (search.revision_max_len) in the
    revision model, and `more` as (field, tokens, model field, model name). Past its positions a model's rotary
    embeddings go where it was never trained: the results would be silently wrong."""
    needs = [("search.max_len", config.search.max_len, "policy", config.policy)]
    if config.search.revision_max_len is not None and any(map(is_revision, config.strategies)) \
            and config.revision_policy is not None:
        needs.append(("search.revision_max_len", config.search.revision_max_len, "revision_policy",
                      revision_policy_dir(config.revision_policy, source)))
    for field, tokens, model_field, name in [*needs, *more]:
        kind = "revision" if model_field == "revision_policy" else "policy"
        checkpoint_config(resolve(kind, name), model_field).check_fits(field, tokens, f"{model_field} {name}", source)


def revision_verifier_name(name: str | None) -> str | None:
    """A config's revision_verifier as `verifier_by_name` reads it: a bare shipped name is an ORM's."""
    if is_verifier_free(name) or os.path.isdir(name) or ":" in name:
        return name
    return f"orm:{name}"


DEFAULT_TASK = {"name": "arithmetic"}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything `ttcjax sweep --config FILE` reads (each field is a YAML key)."""

    out_dir: str
    policy: str = "tiny"  # a shipped asset name or a checkpoint directory
    verifier: str = "tiny"  # a shipped reward model, a directory, or "none" (verifier-free selection)
    # revision strategies run these instead: a revision model (a shipped name or a directory with revision.json)
    # and an ORM trained on its outputs (a directory, a shipped ORM name, or "none")
    revision_policy: str | None = None
    revision_verifier: str | None = None
    task: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TASK))
    split: str = "test"
    questions: int | None = 100  # the first this many of the split (after a shuffle by seed where the task has one)
    seed: int = 0
    strategies: tuple[StrategySpec, ...] = DEFAULT_STRATEGIES
    budgets: tuple[int, ...] = (4, 16, 64, 256)
    search: SearchSettings = SearchSettings()
    rows_per_batch: int = 1024  # rows per compiled episode: questions per episode = rows_per_batch // the rows a
    # question counts for (`Strategy.batch_rows`: N; a revision strategy's episodes hold 1/sequential of that)
    mesh: str = "auto"

    COUNTS: ClassVar[tuple[str, ...]] = ("rows_per_batch",)  # fields that must be integers >= 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config",
                  explicit: Collection[str] | None = None) -> "SweepConfig":
        """The config of a YAML mapping, checked whole before any work: every key, count, strategy, budget,
        search setting and the task; one ValueError naming `source` and the field otherwise.

        A strategy the user listed that does not fit some budgets the user listed is named on stderr (those cells
        are not run): where the keys the user set (`explicit`; by default every key of `data`) hold both
        `strategies` and `budgets`. A grid of defaults (or of a shipped config) skips such cells without a word."""
        check_options(cls, data, source, required=("out_dir",))
        asked = {"strategies", "budgets"} <= set(data if explicit is None else explicit)
        data = dict(data)
        seed = data.get("seed", cls.seed)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{source}: seed={seed!r} must be an integer >= 0.")
        for key in ("revision_policy", "revision_verifier"):
            if not (data.get(key) is None or isinstance(data[key], str) and data[key]):
                raise ValueError(f"{source}: {key}={data[key]!r} must be a name or a directory (or null).")
        if "strategies" in data:
            data["strategies"] = read_strategies(data["strategies"], source)
        if "budgets" in data:
            data["budgets"] = read_budgets(data["budgets"], source)
        search = data.get("search")
        if search is None or isinstance(search, Mapping):  # what the config leaves out, the task's defaults give
            task = task_from_dict(data.get("task", DEFAULT_TASK), "task")
            revision = data.get("revision_policy")  # the separator it was trained with, unless search sets one
            separator = ({} if revision is None else {"revision_separator": load_revision_settings(
                revision_policy_dir(revision, source))["separator"]})
            defaults = dict(task.search_defaults)
            if "max_len" not in (search or {}):  # a task's default row fits the policy's positions
                positions = _positions_of(data.get("policy", cls.policy))
                if positions is not None and defaults.get("max_len", 0) > positions:
                    defaults["max_len"] = positions
            search = {**defaults, **separator, **(search or {})}
        data["search"] = SearchSettings.from_dict(search, f"{source}: search")
        for key in cls.COUNTS:
            value = data.get(key, getattr(cls, key))
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{source}: {key}={value!r} must be an integer >= 1.")
        questions = data.get("questions", cls.questions)
        if questions is not None and (not isinstance(questions, int) or isinstance(questions, bool) or questions < 1):
            raise ValueError(f"{source}: questions={questions!r} must be an integer >= 1 (or null: the whole split).")
        config = cls(**data)
        config.validate(source)
        if asked:
            warn_of_dropped_cells(config.strategies, config.budgets, source)
        return config

    def validate(self, source: str) -> None:
        task = self.make_task()  # a bad task or split is an error now, not after the models load
        try:
            task.check_split(self.split)
        except ValueError as e:
            raise ValueError(f"{source}: split={self.split!r}: {e}") from None
        plan_cells(self.strategies, self.budgets, source)
        check_verifier_fits([s for s in self.strategies if not is_revision(s)], self.verifier, source)
        check_revision_models(self.strategies, self.revision_policy, self.revision_verifier, source)

    def make_task(self) -> Task:
        return task_from_dict(self.task, "task")

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "task": dict(self.task), "strategies": [s.to_dict() for s in self.strategies],
                "budgets": list(self.budgets), "search": self.search.to_dict()}


# ---- running cells --------------------------------------------------------------------------------------


def run_cell(cell: Cell, task: Task, problems: Sequence[ProblemRecord], engine: Engine, verifier: Verifier,
             tokenizer, path: str, *, settings: SearchSettings, seed: int, rows_per_batch: int, bar=None,
             job: Job | None = None) -> None:
    """Search this process's batches of `problems` (of `job`'s share, for one job of an array) with the cell's
    strategy, appending one record per problem to `path` (JSONL; with several processes or a job, this process's
    shard of it) after each batch; problems already written are not searched again
    (`ttcjax.eval.shards.run_batches`). `merge` then reads the cell's records.

    Batches are fixed by the problem list (`cell_batch` questions each) and a batch's random key
    depends on the cell and its first question only, so a resumed cell, or one split across processes, draws
    what one uninterrupted process would have."""
    strategy = cell.strategy
    equal = task.same_answer
    rules = SELECTION_RULES if verifier.scores_steps else {r: SELECTION_RULES[r] for r in ("majority",)}

    def work(start: int, batch: Sequence[ProblemRecord]) -> list[dict]:
        t0 = time.perf_counter()
        results = search(strategy, engine, verifier, tokenizer, [task.encode_prompt(p, tokenizer) for p in batch],
                         jax.random.fold_in(jax.random.key(seed), zlib.crc32(f"{cell.name}/{batch[0].id}".encode())),
                         extract_answer=task.extract_answer, equal=equal, settings=settings,
                         questions=[p.question for p in batch])
        seconds = (time.perf_counter() - t0) / len(batch)
        records = []
        for p, r in zip(batch, results):
            answers = [c.answer for c in r.candidates]
            scores = [c.score for c in r.candidates]
            right = task.grade(p, answers)
            # every answer-selection rule over the same candidates: best-of-N variants share one sampling
            chains = [c.chain for c in r.candidates]
            by_selection = {rule: right[select(rule, answers, scores, equal, chains)] for rule in rules}
            record = {"id": p.id, "question": p.question, "difficulty": p.difficulty, "strategy": cell.spec.name,
                      "budget": cell.budget, "answer": r.answer, "correct": right[r.chosen],
                      "pass": any(right), "by_selection": by_selection,
                      "generations": r.generations, "generated_tokens": r.generated_tokens,
                      "verifier_tokens": r.verifier_tokens, "policy_flops": r.policy_flops,
                      "verifier_flops": r.verifier_flops, "seconds": seconds, "solution": r.solution,
                      "nonfinite_logits": r.nonfinite_logits, "nonfinite_scores": r.nonfinite_scores}
            if isinstance(strategy, Revisions):
                record.update(revision_record(r.candidates, right, strategy.sequential),
                              reread_tokens=r.reread_tokens, overflowed_contexts=r.overflowed_contexts)
            records.append(record)
        return records

    run_batches(path, problems, cell_batch(cell, rows_per_batch), work, bar=bar, job=job)


def cell_batch(cell: Cell, rows_per_batch: int) -> int:
    """Questions per batch of a cell: as many as fill `rows_per_batch` rows (at least one), each counting for its
    strategy's `batch_rows` (a revision strategy's n generations: its episodes are 1/sequential as wide)."""
    return max(1, rows_per_batch // cell.strategy.batch_rows)


def revision_record(candidates, right: Sequence[bool], sequential: int) -> dict:
    """What a revision cell adds to a question's record: the fraction of chains right at each attempt
    (`pass_by_attempt`, pass@1 by revision step), and how many right attempts were followed by a wrong one
    (`right_to_wrong` of `right_followed`: the correct-to-incorrect rate)."""
    grid = np.zeros((max(c.chain for c in candidates) + 1, sequential), bool)  # [chains, sequential]
    for c, ok in zip(candidates, right):
        grid[c.chain, c.attempt] = ok
    return {"pass_by_attempt": grid.mean(axis=0).tolist(),
            "right_to_wrong": int(np.sum(grid[:, :-1] & ~grid[:, 1:])), "right_followed": int(grid[:, :-1].sum())}


@dataclasses.dataclass
class GridResult:
    """Per (strategy name, budget): 0/1 per question [Q], the mean generated tokens, coverage (a right answer
    among the candidates), and the questions whose search met non-finite logits or verifier scores."""

    correct: dict[tuple[str, int], np.ndarray]
    tokens: dict[tuple[str, int], float]
    coverage: dict[tuple[str, int], float]
    records: dict[tuple[str, int], list[dict]]
    nonfinite: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)


def is_nonfinite_record(record: dict) -> bool:
    """Whether a question's search met non-finite policy logits or verifier scores (`SearchResult.nonfinite_*`):
    its answer is not the models' work."""
    return bool(record.get("nonfinite_logits") or record.get("nonfinite_scores"))


def memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, the kernel's limit vm.max_map_count), or None where /proc says neither."""
    try:
        with open("/proc/self/maps", "rb") as f:
            held = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return held, int(f.read())
    except (OSError, ValueError):
        return None


def release_compiled_programs_when_crowded(fraction: float = 0.5) -> bool:
    """Drop JAX's compiled programs (``jax.clear_caches``) once this process holds more than ``fraction`` of the
    memory maps the kernel allows; True if it did. Every compiled XLA CPU program holds maps of its own, and a
    long sweep compiles one per strategy and budget: at the limit the compiler's next mmap fails and the process
    dies (a segfault, not an error). Recompiling a program is cheaper than losing the run."""
    maps = memory_maps()
    if maps is None or maps[0] <= fraction * maps[1]:
        return False
    jax.clear_caches()
    gc.collect()
    return True


@dataclasses.dataclass(frozen=True)
class Models:
    """The policy and verifier of one role: search (the base policy and its PRM) or revision (a revision model and
    an ORM trained on its outputs). Both roles read the one tokenizer."""

    engine: Engine
    verifier: Verifier


def cell_file(cell: Cell, verifier: Verifier) -> tuple[Cell, str]:
    """(the cell that runs, its results file name): best-of-N is sampled once per budget (`SHARED_BEST_OF_N`,
    weighted, or majority without a verifier), and every best-of-N spec reads that file by its own rule."""
    if cell.spec.kind == BestOfN.kind:
        rule = "weighted" if verifier.scores_steps else "majority"
        cell = Cell(SHARED_BEST_OF_N, cell.budget, BestOfN(cell.budget, selection=rule))
    return cell, results_file(cell)


def results_file(cell: Cell) -> str:
    """The name of the file that holds a cell's records in the results directory: every best-of-N spec at a budget
    reads the one sampling of that budget (`cell_file`)."""
    spec = SHARED_BEST_OF_N if cell.spec.kind == BestOfN.kind else cell.spec
    return f"{spec.name}-b{cell.budget}.jsonl"


def grid_questions(cells: Sequence[Cell], verifier: Verifier, problems: Sequence[ProblemRecord],
                   rows_per_batch: int, job: Job | None = None) -> int:
    """The questions this process searches over the grid's distinct cells (what its progress bar counts)."""
    runs = {cell_file(c, verifier)[0] for c in cells}
    return sum(my_questions(len(problems), cell_batch(c, rows_per_batch), job) for c in runs)


def grid_files(cells: Sequence[Cell], verifier: Verifier, results_dir: str) -> list[str]:
    """The results file of each distinct cell the grid runs."""
    return list(dict.fromkeys(os.path.join(results_dir, cell_file(c, verifier)[1]) for c in cells))


def search_grid(cells: Sequence[Cell], task: Task, problems: Sequence[ProblemRecord], engine: Engine,
                verifier: Verifier, tokenizer, results_dir: str, *, settings: SearchSettings, seed: int,
                rows_per_batch: int, progress: bool = True, revision: Models | None = None,
                job: Job | None = None) -> None:
    """This process's share (of `job`'s share, for one job of an array) of every cell on every problem
    (`run_cell`), best-of-N sampled once per budget; results in results_dir/<cell>.jsonl (or this process's shards
    of them). Revision cells run `revision`'s model and verifier (their costs are theirs), every other cell
    `engine` and `verifier`."""
    if revision is None and any(isinstance(c.strategy, Revisions) for c in cells):
        raise ValueError("run_grid: revision cells need the revision model and verifier (revision=Models(...)); "
                         "set revision_policy in the config.")
    os.makedirs(results_dir, exist_ok=True)
    bar = tqdm(total=grid_questions(cells, verifier, problems, rows_per_batch, job), desc="search", unit="question",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    ran: set[str] = set()
    for cell in cells:
        run, name = cell_file(cell, verifier)
        if name in ran:
            continue
        ran.add(name)
        role = revision if isinstance(cell.strategy, Revisions) else Models(engine, verifier)
        run_cell(run, task, problems, role.engine, role.verifier, tokenizer, os.path.join(results_dir, name),
                 settings=settings, seed=seed, rows_per_batch=rows_per_batch, bar=bar, job=job)
        release_compiled_programs_when_crowded()
    bar.close()


def collect_grid(cells: Sequence[Cell], problems: Sequence[ProblemRecord], verifier: Verifier, results_dir: str,
                 rows_per_batch: int | None = None, counts: Sequence[int] = ()) -> GridResult:
    """Every cell's records merged (`ttcjax.eval.shards.merge`: each problem exactly once, in problem order, in
    results_dir/<cell>.jsonl) and read into a GridResult. One process calls it, once every process's (and job's)
    share is written; with `rows_per_batch`, a question missing where jobs wrote (job counts `counts`, or those of
    the shards on disk) names the jobs to rerun."""
    out = GridResult({}, {}, {}, {})
    for cell in cells:
        key = (cell.spec.name, cell.budget)
        run, name = cell_file(cell, verifier)
        per_batch = cell_batch(run, rows_per_batch) if rows_per_batch is not None else None
        fields = ("correct", "generated_tokens", "pass", "seconds") + (
            ("by_selection",) if cell.spec.kind == BestOfN.kind else ())
        records = merge(os.path.join(results_dir, name), problems, per_batch, counts, fields)
        if cell.spec.kind == BestOfN.kind:
            out.correct[key] = np.array([r["by_selection"][cell.strategy.selection] for r in records], int)
        else:
            out.correct[key] = np.array([r["correct"] for r in records], int)
        out.tokens[key] = float(np.mean([r["generated_tokens"] for r in records]))
        out.coverage[key] = float(np.mean([r["pass"] for r in records]))
        out.records[key] = records
        out.nonfinite[key] = sum(map(is_nonfinite_record, records))
        if out.nonfinite[key]:
            print(f"ttcjax: warning: {cell.name}: {out.nonfinite[key]} of {len(records)} questions met non-finite "
                  "policy logits or verifier scores (a NaN or inf in a model's weights or activations); the accuracy "
                  "counts their answers as they are (nonfinite_questions in the summary).", file=sys.stderr)
    return out


def run_grid(cells: Sequence[Cell], task: Task, problems: Sequence[ProblemRecord], engine: Engine,
             verifier: Verifier, tokenizer, results_dir: str, *, settings: SearchSettings, seed: int,
             rows_per_batch: int, progress: bool = True, revision: Models | None = None,
             job: Job | None = None) -> GridResult | None:
    """Every cell on every problem (`search_grid`), then, once every process's share is written, the merged
    results (`collect_grid`) on process 0; None on the other processes. One job of an array (`job`) searches its
    share and merges nothing (None). Where jobs wrote the grid, a run without a job searches nothing: it merges
    their shares (naming the jobs whose share is missing)."""
    counts = () if job is not None else job_counts(grid_files(cells, verifier, results_dir))
    if not counts:
        search_grid(cells, task, problems, engine, verifier, tokenizer, results_dir, settings=settings, seed=seed,
                    rows_per_batch=rows_per_batch, progress=progress, revision=revision, job=job)
    barrier("ttcjax-grid")
    if job is not None or not is_writer():
        return None
    return collect_grid(cells, problems, verifier, results_dir, rows_per_batch, counts)


# ---- the sweep command ------------------------------------------------------------------------------------


def load_policy(name_or_dir: str, mesh=None) -> tuple[Engine, Any, str]:
    """(engine, tokenizer, directory) of a shipped policy name, a checkpoint directory (its tokenizer beside it) or
    a GGUF file (its tokenizer inside it; "directory" is then the file)."""
    directory = resolve("policy", name_or_dir)
    tokenizer = load_tokenizer(directory)
    model = load_any(directory, mesh=mesh)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, source=directory)
    return Engine(model, mesh=mesh, pad_id=tokenizer.pad_id), tokenizer, directory


def process_mesh(spec: str | None):
    """A config's mesh over this process's own devices: sweeps and experiments split the questions across
    processes, each searching its share alone (one process: every device)."""
    return parse_mesh(spec, jax.local_devices())


TOKENIZER_PROBE = "Q: 12+3*4=\nThe answer is 24.\n\n"  # text two tokenizers that agree encode alike


def load_revision_models(revision_policy: str, revision_verifier: str | None, tokenizer, mesh=None) -> Models:
    """The revision role: the revision model, which must read the policy's tokenizer (prompts, answers and the
    verifier's reading are the policy's), and the revision verifier."""
    directory = revision_policy_dir(revision_policy, "revision_policy")
    engine, revision_tokenizer, _ = load_policy(directory, mesh)
    if (revision_tokenizer.vocab_size != tokenizer.vocab_size
            or revision_tokenizer.encode(TOKENIZER_PROBE) != tokenizer.encode(TOKENIZER_PROBE)):
        raise ValueError(f"revision_policy {directory}: its tokenizer differs from the policy's; use a revision model "
                         "fine-tuned from this policy (`ttcjax train revision` with init_from the policy).")
    verifier = verifier_by_name(revision_verifier_name(revision_verifier), tokenizer, mesh=engine.mesh,
                                rules=engine.rules)
    return Models(engine, verifier)


def revision_role(config: SweepConfig, tokenizer, mesh=None) -> Models | None:
    """The revision models where the config's strategies revise (None otherwise)."""
    if not any(map(is_revision, config.strategies)):
        return None
    return load_revision_models(config.revision_policy, config.revision_verifier, tokenizer, mesh)


def check_verifiers(config: SweepConfig, source: str) -> None:
    """The verifiers a config names, checked to exist before its run directory is bound (nothing is loaded; a
    config names checkpoints that may be fetched after it is written, so reading it checks none)."""
    check_verifier_name(config.verifier, "verifier", source)
    check_verifier_name(revision_verifier_name(config.revision_verifier), "revision_verifier", source)


def run_problems(config: SweepConfig, task: Task) -> list[ProblemRecord]:
    """The questions a sweep or an experiment asks (the first `questions` of its split), read before its run
    directory is bound: a split the task lacks, data it cannot read or no questions at all stop it there."""
    problems = task.problems(config.split, limit=config.questions, seed=config.seed)
    if not problems:
        raise ValueError(f"task {task.name}: split {config.split!r} holds no questions.")
    return problems


def run_sweep(config: SweepConfig, progress: bool = True, rerun: str = "resume", job: Job | None = None) -> dict | None:
    """The sweep, resumable; its summary. With several processes each searches its share of the questions on its
    own devices (`ttcjax.eval.shards`) and process 0 merges and summarizes (the others return None). One job of an
    array (`job`) searches its share, writes its shards and returns None; then a run without a job merges every
    job's shards (searching nothing) and summarizes."""
    started = time.perf_counter()
    check_job_rerun(job, rerun)
    check_model_name("policy", config.policy, "policy", "sweep")  # before the run directory is made
    check_verifiers(config, "sweep")
    check_positions(config, "sweep")
    task = config.make_task()
    problems = run_problems(config, task)
    mesh = process_mesh(config.mesh)
    invocation = bind_run(config.out_dir, bound_fields(config.to_dict()), "sweep", rerun, job)
    with invocation_clock(config.out_dir, invocation):
        return _sweep(config, task, problems, mesh, invocation, started, progress, job)


def _sweep(config: SweepConfig, task, problems: list[ProblemRecord], mesh, invocation: str | None, started: float,
           progress: bool, job: Job | None) -> dict | None:
    """`run_sweep` in its bound run directory, from loading the models to the summary."""
    engine, tokenizer, _ = load_policy(config.policy, mesh)
    settings = config.search.for_task(task)
    step_end(tokenizer, settings.delimiter)  # before any work
    verifier = verifier_by_name(config.verifier, tokenizer, mesh=engine.mesh, rules=engine.rules)
    revision = revision_role(config, tokenizer, engine.mesh)
    cells = plan_cells(config.strategies, config.budgets)
    grid = run_grid(cells, task, problems, engine, verifier, tokenizer, os.path.join(config.out_dir, "results"),
                    settings=settings, seed=config.seed, rows_per_batch=config.rows_per_batch,
                    progress=progress, revision=revision, job=job)
    if job is not None and is_writer():
        finish_invocation(config.out_dir, time.perf_counter() - started, invocation)
        print(job_done("sweep", job, config.out_dir, "the summary"), file=sys.stderr)
    if grid is None:
        return None
    summary = summarize(config.to_dict(), problems, grid)
    summary["invocations"] = finish_invocation(config.out_dir, time.perf_counter() - started, invocation)
    write_json(os.path.join(config.out_dir, "summary.json"), summary)
    with atomic_path(os.path.join(config.out_dir, "summary.md")) as tmp, open(tmp, "w") as f:
        f.write(summary_markdown(summary))
    plot(summary, os.path.join(config.out_dir, "accuracy_vs_budget.png"))
    return summary


def summarize(config: dict, problems: Sequence[ProblemRecord], grid: GridResult) -> dict:
    difficulties = sorted({p.difficulty for p in problems if p.difficulty is not None})
    level = np.array([-1 if p.difficulty is None else p.difficulty for p in problems])
    table: dict[str, dict] = {}
    for (name, budget), correct in grid.correct.items():
        acc = {"all": float(correct.mean())}
        for d in difficulties:
            acc[str(d)] = float(correct[level == d].mean())
        records = grid.records[(name, budget)]
        table.setdefault(name, {})[str(budget)] = {
            "accuracy": acc, "questions": len(correct), "coverage": grid.coverage[(name, budget)],
            "generated_tokens": grid.tokens[(name, budget)],
            "seconds_per_question": float(np.mean([r["seconds"] for r in records])),
            "nonfinite_questions": grid.nonfinite.get((name, budget), 0)}
    return {"config": config, "difficulties": difficulties, "table": table}


def summary_markdown(summary: dict) -> str:
    table = summary["table"]
    budgets = sorted({int(b) for row in table.values() for b in row})
    lines = ["# Sweep: accuracy versus generation budget", "",
             "| strategy | " + " | ".join(f"N={b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for name, row in table.items():
        cells = [f"{row[str(b)]['accuracy']['all']:.3f}" if str(b) in row else "" for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for d in map(str, summary["difficulties"]):
        lines += ["", f"## Difficulty {d}", "", "| strategy | " + " | ".join(f"N={b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name, row in table.items():
            cells = [f"{row[str(b)]['accuracy'][d]:.3f}" if str(b) in row else "" for b in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    broken = [f"{name} N={b}: {cell['nonfinite_questions']} of {cell['questions']}" for name, row in table.items()
              for b, cell in row.items() if cell.get("nonfinite_questions")]
    if broken:
        lines += ["", "**Warning:** questions whose search met non-finite policy logits or verifier scores (a NaN or "
                  "inf in a model's weights or activations; counted in the accuracies as they are): "
                  + "; ".join(broken) + "."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    diffs = ["all"] + [str(d) for d in summary["difficulties"]]
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
