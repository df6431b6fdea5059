"""`ttcjax train revision`: the paper's revision model (section 6.1). Sample many answers per training question from
the policy at a high temperature, pair each correct answer with up to four of the question's incorrect ones in
context, and fine-tune a model on the correct answer as the final turn.

The recipe, as the paper gives it: answers without a final answer are dropped; for each correct answer the number
of incorrect answers in context, k, is drawn uniformly from {0, ..., min(4, incorrect answers of the question)};
when k > 0 the last of them (the one just before the correct answer) is the incorrect answer nearest to the correct
one by character edit distance, and the other k - 1 are drawn at random without replacement from the rest, in a
random order. A training example is

    context = revision_context(prompt, the k incorrect attempts, separator)   (ttcjax.search.revisions)
    target  = the correct attempt's tokens without a final EOS, then EOS      (the only tokens the loss covers)

Output directory (besides the training loop's checkpoints/ and metrics.jsonl):
    data/samples/<split>-<start>.json  the policy's samples, one shard per generate call (a rerun reuses them)
    data/train.jsonl                   the training examples (one JSON object per line; see `example_record`)
    data/validation.jsonl              held-out examples from split "validation", built the same way
    data/summary.json                  what the data cost (samples, tokens, questions without a correct answer,
                                       examples per k, seconds); written last, so the data are complete with it
    model/                             the fine-tuned model, its tokenizer and revision.json (separator, window)
    train_summary.json                 config, command, time, metrics
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from ttcjax.checkpoints.native import checkpoint_config, load_any, save_model
from ttcjax.checkpoints.tokenizer import Tokenizer, check_tokenizer_fits, load_tokenizer, save_tokenizer_beside
from ttcjax.decoding.engine import Engine
from ttcjax.distributed import barrier, bind_run, is_writer
from ttcjax.io import (bound_fields, check_inputs_exist, check_options, invocation_clock, read_json, write_json,
                       write_jsonl)
from ttcjax.models import Transformer
from ttcjax.models.sharding import mesh_shape, parse_mesh
from ttcjax.search.revisions import REVISION_SEPARATOR, REVISION_WINDOW, revision_context, without_eos
from ttcjax.search.run import search
from ttcjax.search.selection import select
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import BestOfN, Revisions
from ttcjax.tasks.base import ProblemRecord, Task
from ttcjax.tasks.registry import training_task
from ttcjax.training.labels import LabelledSolution
from ttcjax.training.loop import (OptimConfig, PackedRows, check_processes_meshed, epoch_batches, finish_training,
                                  lm_loss, pack_examples, train_loop)
from ttcjax.verifiers.base import NoVerifier, Verifier, roc_auc

DATA_DIR = "data"
SAMPLES_DIR = "samples"
DATA_SUMMARY_FILE = "summary.json"
REVISION_FILE = "revision.json"  # beside a revision model: {"separator": text, "window": 4}
SPLITS = ("train", "validation")


# ---- pairing ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One training example's choice of attempts: `context` indexes the incorrect answers in context order (the
    last is the nearest to the correct answer), `correct` the correct answer trained on; `distance` is the
    character edit distance between that last incorrect answer and the correct one (None when k = 0)."""

    k: int
    context: tuple[int, ...]
    correct: int
    distance: int | None


def pair_attempts(correct: Sequence[str], incorrect: Sequence[str], rng: np.random.Generator,
                  max_k: int = REVISION_WINDOW) -> list[Pairing]:
    """One `Pairing` per correct answer, in order: k uniform on {0, ..., min(max_k, len(incorrect))}; when k > 0
    the last incorrect answer in context is the one nearest to the correct answer by character edit distance
    (ties: the lowest index), the other k - 1 drawn without replacement from the rest, in a random order."""
    if max_k < 0:
        raise ValueError(f"max_k={max_k} must be >= 0.")
    top = min(max_k, len(incorrect))
    distances = (cdist(list(correct), list(incorrect), scorer=Levenshtein.distance, dtype=np.int64)
                 if correct and incorrect else np.zeros((len(correct), 0), np.int64))  # [correct, incorrect]
    out = []
    for c in range(len(correct)):
        k = int(rng.integers(0, top + 1))
        if k == 0:
            out.append(Pairing(0, (), c, None))
            continue
        nearest = int(np.argmin(distances[c]))  # the first of equal minima
        rest = np.delete(np.arange(len(incorrect)), nearest)
        others = rng.choice(rest, size=k - 1, replace=False).tolist()
        out.append(Pairing(k, tuple(others) + (nearest,), c, int(distances[c, nearest])))
    return out


# ---- the config ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RevisionTrainConfig:
    """Everything `ttcjax train revision --config FILE` reads (each field is a YAML key)."""

    out_dir: str
    init_from: str  # the checkpoint to fine-tune (the paper fine-tunes the base model)
    policy: str | None = None  # the checkpoint whose samples make the data; default: init_from
    tokenizer: str | None = None  # default: the policy directory's tokenizer
    task: dict = dataclasses.field(default_factory=dict)  # the task as YAML ({name: gsm8k, path: ...}); without a
    #   name, the built-in arithmetic task's fields
    num_questions: int = 1000  # training-split questions to sample
    eval_questions: int = 100  # validation-split questions whose examples give the validation loss (0: none)
    samples_per_question: int = 64  # answers sampled in parallel per question (the paper's 64)
    temperature: float = 1.0  # "a higher temperature" than the policy's usual 0.8
    search: dict | None = None  # the search settings the answers are sampled with (max_step_tokens, max_rounds,
    #   max_len, answer_marks, ...), which should be those the revision chains run with; left out: the task's
    sample_batch_size: int = 256  # rows per generate call (questions per call: this // samples_per_question)
    separator: str = REVISION_SEPARATOR  # text after each earlier attempt in context (saved with the model)
    seq_len: int = 512  # packed row length; longer examples are dropped (counted in data/summary.json)
    batch_size: int = 32  # packed rows per step (global; split over the mesh's data axis)
    steps: int = 300
    lr: float = 1e-3  # the paper: 1e-5 at batch 128 for a large model; a tiny char model wants more
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50  # validation loss every this many steps (0: at the end only); the paper picks a checkpoint
    #   slightly after it starts rising
    mesh: str = "auto"

    def __post_init__(self):
        for name in ("num_questions", "samples_per_question", "sample_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.eval_questions < 0:
            raise ValueError(f"eval_questions={self.eval_questions} must be >= 0 (0: no validation loss).")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (the data need varied answers).")
        if self.seq_len < 8:
            raise ValueError(f"seq_len={self.seq_len} must be >= 8.")
        if not isinstance(self.separator, str) or not self.separator:
            raise ValueError(f"separator={self.separator!r} must be non-empty text (e.g. {REVISION_SEPARATOR!r}).")
        for name in ("init_from", "policy"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f"{name}: {path} does not exist; point it at a checkpoint directory "
                                        "(e.g. ttcjax/assets/policies/tiny/model).")
        self.optim  # the schedule's settings (steps >= 1, warmup within them, ...)
        mesh_shape(self.mesh, 1)  # its grammar ('auto', 'none' or DATA,MODEL), refused now
        task = self.make_task()
        self.search_settings(task)  # checks the search settings
        task.check_split("train")
        if self.eval_questions:
            task.check_split("validation")
        check_separator(load_tokenizer(self.tokenizer_path), self.separator)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RevisionTrainConfig":
        check_options(cls, data, source, required=("out_dir", "init_from"))
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    def search_settings(self, task: Task) -> SearchSettings:
        """The settings the answers are sampled with: the task's, then the config's `search`, at `temperature`."""
        data = {**task.search_defaults, "temperature": self.temperature, **(self.search or {})}
        return SearchSettings.from_dict(data, source="search").for_task(task)

    def make_task(self) -> Task:
        return training_task(self.task)

    @property
    def policy_path(self) -> str:
        return self.policy or self.init_from

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.policy_path

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig.from_fields(self)


def check_separator(tokenizer: Tokenizer, separator: str) -> list[int]:
    """The separator's ids; ValueError naming the field when the tokenizer cannot write it (it would read back as
    other text, e.g. an unknown character)."""
    ids = tokenizer.encode(separator)
    if not ids or tokenizer.decode(ids, skip_special=False) != separator:
        raise ValueError(f"separator={separator!r}: tokenizer {tokenizer!r} cannot encode it (it reads back as "
                         f"{tokenizer.decode(ids, skip_special=False)!r}); choose text it can write, e.g. "
                         f"{REVISION_SEPARATOR!r}.")
    return ids


def save_revision_settings(model_dir: str, separator: str, window: int = REVISION_WINDOW) -> None:
    """`model_dir/revision.json`: what a revision model reads between attempts, so inference uses the same."""
    write_json(os.path.join(model_dir, REVISION_FILE), {"separator": separator, "window": window})


def load_revision_settings(model_dir: str) -> dict[str, Any]:
    """{"separator": text, "window": int} from `model_dir/revision.json` (ValueError naming the file if bad)."""
    path = os.path.join(model_dir, REVISION_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a revision model (ttcjax train revision "
                                "writes one).")
    data = read_json(path, "train the revision model again (ttcjax train revision writes it).")
    if not (isinstance(data, dict) and isinstance(data.get("separator"), str) and isinstance(data.get("window"), int)
            and data["window"] >= 1):
        raise ValueError(f"{path}: expected {{\"separator\": text, \"window\": int >= 1}}; got {data!r}.")
    return data


# ---- sampling -----------------------------------------------------------------------------------------------


def _shard_path(config: RevisionTrainConfig, split: str, start: int) -> str:
    return os.path.join(config.out_dir, DATA_DIR, SAMPLES_DIR, f"{split}-{start:06d}.json")


def first_attempts(engine: Engine, tokenizer: Tokenizer, task: Task, prompts: Sequence[Sequence[int]], key: jax.Array,
                   *, n: int, settings: SearchSettings) -> tuple[list[list[list[int]]], int]:
    """`n` answers per prompt (ids as generated), and the tokens generated: best-of-N in the search loop, so an
    answer ends exactly where a revision chain's attempt ends (EOS, an empty step, a step holding a final-answer
    mark, the cache) and the data's attempts read as the chains' will."""
    results = search(BestOfN(n, selection="majority"), engine, NoVerifier(), tokenizer, prompts, key,
                     extract_answer=task.extract_answer, settings=settings)
    return [[list(c.tokens) for c in r.candidates] for r in results], sum(r.generated_tokens for r in results)


def sample_attempts(config: RevisionTrainConfig, task: Task, engine: Engine, tokenizer: Tokenizer,
                    problems: Sequence[ProblemRecord], split: str, progress: bool = False) -> list[dict]:
    """`samples_per_question` generated token lists per problem, problem-major, as shards of one generate call each
    ({"start", "tokens": [[ids] per sample of each problem], "generated_tokens", "seconds"}); each shard is written
    atomically and reused by a rerun. A call's key is the seed folded with the split and the call's first problem,
    so a resumed build draws exactly what an uninterrupted one would have. On several processes every one takes
    part in each call (the mesh spans them) and holds its results; process 0 writes the shards."""
    n = config.samples_per_question
    per_call = max(1, config.sample_batch_size // n)
    key = jax.random.fold_in(jax.random.key(config.seed), SPLITS.index(split))
    settings = config.search_settings(task)
    starts = range(0, len(problems), per_call)
    written = {start for start in starts if os.path.exists(_shard_path(config, split, start))}
    barrier(f"ttcjax-revision-{split}-samples-found")  # every process has looked before process 0 writes a shard
    shards = []
    for start in starts:
        path = _shard_path(config, split, start)
        if start in written:
            shards.append(read_json(path, "delete it to sample its questions again."))
            continue
        started = time.perf_counter()
        chunk = problems[start:start + per_call]
        tokens, generated = first_attempts(engine, tokenizer, task, [task.encode_prompt(p, tokenizer) for p in chunk],
                                           jax.random.fold_in(key, start), n=n, settings=settings)
        shard = {"start": start, "problem_ids": [p.id for p in chunk], "tokens": tokens,
                 "generated_tokens": generated, "seconds": time.perf_counter() - started}
        if is_writer():
            write_json(path, shard)
        shards.append(shard)
        if progress:
            print(f"revision data ({split}): sampled {min(start + per_call, len(problems))}/{len(problems)} "
                  "questions", flush=True)
    return shards


# ---- examples -----------------------------------------------------------------------------------------------


def example_record(problem: ProblemRecord, prompt: list[int], attempts: Sequence[list[int]],
                   texts: Sequence[str], pairing: Pairing, incorrect: Sequence[int], correct: Sequence[int]) -> dict:
    """One line of data/<split>.jsonl: the question, its prompt ids, the k incorrect attempts in context order
    (ids as generated, and text), the correct attempt, k and the nearest edit distance. `incorrect` and `correct`
    map the pairing's indices to sample indices."""
    context = [incorrect[i] for i in pairing.context]
    target = correct[pairing.correct]
    return {"problem_id": problem.id, "question": problem.question, "prompt_tokens": prompt, "k": pairing.k,
            "incorrect": [{"tokens": attempts[s], "text": texts[s]} for s in context],
            "correct": {"tokens": attempts[target], "text": texts[target]},
            "nearest_distance": pairing.distance}


def encode_revision_example(record: dict, separator_ids: Sequence[int], eos_ids: Sequence[int],
                            eos_id: int | None) -> tuple[list[int], list[int]]:
    """(context ids, target ids) of one data record: the context as `revision_context` writes it, the target the
    correct attempt without a final EOS, then `eos_id` (when the tokenizer has one). The loss covers the target."""
    context = revision_context(record["prompt_tokens"], [a["tokens"] for a in record["incorrect"]], separator_ids,
                               eos_ids=eos_ids, window=REVISION_WINDOW)
    target = without_eos(record["correct"]["tokens"], eos_ids) + ([] if eos_id is None else [eos_id])
    return context, target


def build_split(config: RevisionTrainConfig, task: Task, engine: Engine, tokenizer: Tokenizer, split: str,
                progress: bool = False) -> tuple[list[dict], dict]:
    """Sample, grade and pair one split's questions: (records, cost)."""
    count = config.num_questions if split == "train" else config.eval_questions
    problems = task.problems(split, limit=count, seed=config.seed)
    shards = sample_attempts(config, task, engine, tokenizer, problems, split, progress)
    sep, eos_ids = check_separator(tokenizer, config.separator), tuple(tokenizer.eos_ids)
    records, per_k = [], [0] * (REVISION_WINDOW + 1)
    dropped = no_correct = correct_total = incorrect_total = too_long = 0
    attempts_of = [attempts for shard in shards for attempts in shard["tokens"]]
    for index, (problem, attempts) in enumerate(zip(problems, attempts_of)):
        texts = [tokenizer.decode(without_eos(a, eos_ids)) for a in attempts]
        answers = [task.extract_answer(t) for t in texts]
        valid = [s for s, a in enumerate(answers) if a is not None]
        dropped += len(attempts) - len(valid)
        verdicts = task.grade(problem, [answers[s] for s in valid])
        correct = [s for s, ok in zip(valid, verdicts) if ok]
        incorrect = [s for s, ok in zip(valid, verdicts) if not ok]
        correct_total, incorrect_total = correct_total + len(correct), incorrect_total + len(incorrect)
        no_correct += not correct
        rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
        prompt = task.encode_prompt(problem, tokenizer)
        for pairing in pair_attempts([texts[s] for s in correct], [texts[s] for s in incorrect], rng):
            record = example_record(problem, prompt, attempts, texts, pairing, incorrect, correct)
            context, target = encode_revision_example(record, sep, eos_ids, tokenizer.eos_id)
            if len(context) + len(target) > config.seq_len + 1:
                too_long += 1
                continue
            records.append(record)
            per_k[pairing.k] += 1
    cost = {"questions": len(problems), "samples_drawn": len(problems) * config.samples_per_question,
            "generated_tokens": sum(s["generated_tokens"] for s in shards),
            "sampling_seconds": sum(s["seconds"] for s in shards),
            "answers_without_final_answer": dropped, "correct_answers": correct_total,
            "incorrect_answers": incorrect_total, "questions_without_correct": no_correct,
            "examples": len(records), "examples_per_k": {str(k): c for k, c in enumerate(per_k)},
            "examples_too_long": too_long}
    return records, cost


def read_examples(path: str) -> list[dict]:
    """The records of a data/<split>.jsonl (ValueError naming the file and line if one is malformed)."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
                fields = [record["prompt_tokens"], record["correct"]["tokens"]]
                fields += [a["tokens"] for a in record["incorrect"]]
                if not all(isinstance(ids, list) for ids in fields):
                    raise TypeError("token ids are not lists")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a revision example ({e!r}); delete "
                                 f"{os.path.dirname(path)} to build the data again.") from None
            records.append(record)
    return records


def build_revision_data(config: RevisionTrainConfig, tokenizer: Tokenizer, mesh=None,
                        progress: bool = False) -> tuple[dict[str, list[dict]], dict]:
    """The examples of each split and data/summary.json's cost record. Reuses complete data (summary.json present);
    otherwise samples what is missing (completed shards are kept), pairs and writes every file atomically, the
    summary last."""
    data_dir = os.path.join(config.out_dir, DATA_DIR)
    summary_path = os.path.join(data_dir, DATA_SUMMARY_FILE)
    splits = SPLITS if config.eval_questions else SPLITS[:1]
    built = os.path.exists(summary_path)
    barrier("ttcjax-revision-data-found")  # every process has looked before process 0 writes the data
    if built:
        summary = read_json(summary_path, f"delete {data_dir} to build the data again.")
        return {s: read_examples(os.path.join(data_dir, f"{s}.jsonl")) for s in splits}, summary
    started = time.perf_counter()
    task = config.make_task()
    policy = load_any(config.policy_path, mesh=mesh)
    check_tokenizer_fits(tokenizer, policy.config.vocab_size, source=f"policy {config.policy_path}")
    engine = Engine(policy, mesh=mesh, pad_id=tokenizer.pad_id)
    data, summary = {}, {"policy": config.policy_path, "temperature": config.temperature,
                         "samples_per_question": config.samples_per_question, "separator": config.separator,
                         "window": REVISION_WINDOW}
    for split in splits:
        data[split], summary[split] = build_split(config, task, engine, tokenizer, split, progress)
        if is_writer():
            write_jsonl(os.path.join(data_dir, f"{split}.jsonl"), data[split])
    summary["wall_seconds_this_run"] = time.perf_counter() - started
    summary["sampling_seconds"] = sum(summary[s]["sampling_seconds"] for s in splits)  # over every run's shards
    if is_writer():
        write_json(summary_path, summary)
    return data, summary


# ---- training -----------------------------------------------------------------------------------------------


_eval_batch = jax.jit(lambda graphdef, state, batch: lm_loss(nnx.merge(graphdef, state), batch)[:2],
                      static_argnums=(0,))


def validation_loss(model: Transformer, packed: PackedRows, batch_size: int) -> float:
    """Mean next-token cross-entropy over the targets of `packed` (every row once, in batches of `batch_size`)."""
    graphdef, state = nnx.split(model)
    total, weight = 0.0, 0.0
    for start in range(0, len(packed), batch_size):
        index = np.arange(start, min(start + batch_size, len(packed)))
        index = np.pad(index, (0, batch_size - len(index)), constant_values=-1)
        batch = packed.rows(np.maximum(index, 0))
        batch["loss_mask"] = batch["loss_mask"] * (index >= 0)[:, None]  # padding rows count for nothing
        loss, w = _eval_batch(graphdef, state, batch)  # host arrays: placed beside the parameters, wherever
        total, weight = total + float(loss), weight + float(w)
    return total / max(weight, 1.0)


ChainEval = Callable[[Transformer, int], dict]


def evaluate_revision(model: Transformer, tokenizer: Tokenizer, task: Task, problems: Sequence[ProblemRecord], *,
                      settings: SearchSettings, separator: str = REVISION_SEPARATOR, chains: int = 4,
                      sequential: int = 8, window: int = REVISION_WINDOW, seed: int = 0, mesh=None,
                      questions_per_batch: int = 64, verifier: Verifier | None = None) -> dict[str, Any]:
    """A revision model on a task's problems (the paper's figure 6, left): `chains` chains of `sequential` attempts
    per question, sampled at `settings`; pass@1 at each revision step (the fraction of chains right at that
    attempt), majority over all attempts, pass@n (some attempt right), and the right-to-wrong rate (how often a
    right attempt is followed by a wrong one), overall and per difficulty. With a `verifier` (the revision
    verifier: it reads each attempt after its chain's earlier ones) every attempt is scored too, and the result
    adds the accuracy of each selection rule over all of a question's attempts (`by_selection`: hierarchical,
    weighted, vanilla, majority) and how well the scores separate right attempts from wrong ones (`attempt_auc`)."""
    engine = Engine(model, mesh=mesh, pad_id=tokenizer.pad_id)
    rules = ("majority",) if verifier is None else ("hierarchical", "weighted", "vanilla", "majority")
    strategy = Revisions(chains * sequential, sequential, window=window, selection=rules[0])
    settings = dataclasses.replace(settings, revision_separator=separator)
    results = search(strategy, engine, verifier or NoVerifier(), tokenizer,
                     [task.encode_prompt(p, tokenizer) for p in problems], jax.random.key(seed),
                     extract_answer=task.extract_answer, settings=settings, questions=[p.question for p in problems],
                     questions_per_batch=questions_per_batch, equal=task.same_answer)
    grids, chosen, scores = [], [], []  # [Q, chains, sequential] right, [Q, rules] right, [Q, chains, sequential]
    for problem, result in zip(problems, results):
        cands = result.candidates
        right = task.grade(problem, [c.answer for c in cands])
        grid, score = np.zeros((chains, sequential), bool), np.zeros((chains, sequential))
        for c, ok in zip(cands, right):
            grid[c.chain, c.attempt], score[c.chain, c.attempt] = ok, c.score
        grids.append(grid)
        scores.append(score)
        chosen.append([bool(right[select(rule, [c.answer for c in cands], [c.score for c in cands],
                                         task.same_answer, [c.chain for c in cands])]) for rule in rules])
    grids, chosen, scores = np.asarray(grids), np.asarray(chosen), np.asarray(scores)

    def summary(mask) -> dict[str, Any]:
        g = grids[mask]
        followed = int(g[:, :, :-1].sum())
        out = {"problems": int(mask.sum()), "pass@1_by_step": g.mean(axis=(0, 1)).round(4).tolist(),
               "majority": float(chosen[mask, rules.index("majority")].mean()),
               f"pass@{chains * sequential}": float(g.any(axis=(1, 2)).mean()),
               "right_to_wrong": (int((g[:, :, :-1] & ~g[:, :, 1:]).sum()) / followed) if followed else None}
        if verifier is not None:
            out["by_selection"] = {rule: float(chosen[mask, k].mean()) for k, rule in enumerate(rules)}
            out["attempt_auc"] = roc_auc(scores[mask].ravel(), g.ravel())
        return out

    difficulties = np.array([-1 if p.difficulty is None else p.difficulty for p in problems])
    return {"chains": chains, "sequential": sequential, "window": window, "temperature": settings.temperature,
            "separator": separator, "all": summary(np.ones(len(problems), bool)),
            "by_difficulty": {str(d): summary(difficulties == d) for d in sorted(set(difficulties.tolist()) - {-1})},
            "generated_tokens": int(sum(r.generated_tokens for r in results)),
            "reread_tokens": int(sum(r.reread_tokens for r in results))}


def revision_labels(model_dir: str, tokenizer: Tokenizer, task: Task, problems: Sequence[ProblemRecord], *,
                    chains: int, sequential: int, temperature: float, seed: int, mesh=None,
                    search_settings: dict | None = None, questions_per_batch: int = 64
                    ) -> tuple[list[LabelledSolution], dict[str, Any]]:
    """The revision verifier's data (the paper's appendix: an ORM trained on the revision model's outputs, with
    the earlier attempts in context): `chains` chains of `sequential` attempts of the revision model in
    `model_dir` per problem; every attempt with steps becomes a labelled solution whose question is the text
    the attempt was written after (the prompt and the chain's window of earlier attempts, `revision_context`),
    labelled by its outcome on every step (an ORM reads the last). An attempt whose context was cut to fit the
    chain's cache is left out (it was written after something else; counted in the cost). `search_settings`:
    settings other than the task's. Returns (labelled, cost)."""
    started = time.perf_counter()
    revision = load_revision_settings(model_dir)
    settings = SearchSettings.from_dict({**task.search_defaults, **(search_settings or {}), "temperature": temperature,
                                         "revision_separator": revision["separator"]}).for_task(task)
    engine = Engine(load_any(model_dir, mesh=mesh), mesh=mesh, pad_id=tokenizer.pad_id)
    strategy = Revisions(chains * sequential, sequential, window=revision["window"], selection="majority")
    prompts = [task.encode_prompt(p, tokenizer) for p in problems]
    results = search(strategy, engine, NoVerifier(), tokenizer, prompts, jax.random.key(seed),
                     extract_answer=task.extract_answer, settings=settings, questions=[p.question for p in problems],
                     questions_per_batch=questions_per_batch)
    sep, eos_ids = tokenizer.encode(revision["separator"]), tuple(tokenizer.eos_ids)
    cache = settings.chain_max_len(engine.config)
    labelled, cut = [], 0  # an attempt whose context did not fit the chain's cache is left out (search warns)
    for problem, prompt, result in zip(problems, prompts, results):
        right = task.grade(problem, [c.answer for c in result.candidates])
        earlier: dict[int, list[list[int]]] = {}
        for cand, ok in zip(result.candidates, right):
            context = revision_context(prompt, earlier.setdefault(cand.chain, []), sep, eos_ids=eos_ids,
                                       window=revision["window"])
            earlier[cand.chain].append(list(cand.tokens))
            if len(context) + len(cand.tokens) > cache:  # its context was cut: the chain read something else
                cut += 1
            elif cand.steps:
                labelled.append(LabelledSolution(
                    problem_id=problem.id, question=tokenizer.decode(context), steps=tuple(cand.steps),
                    step_labels=(float(ok),) * len(cand.steps), correct=bool(ok), difficulty=problem.difficulty or 0))
    cost = {"revision_model": model_dir, "chains": chains, "sequential": sequential, "questions": len(problems),
            "attempts": len(problems) * chains * sequential, "labelled_solutions": len(labelled),
            "left_out_cut_contexts": cut,
            "generated_tokens": int(sum(r.generated_tokens for r in results)),
            "reread_tokens": int(sum(r.reread_tokens for r in results)), "seconds": time.perf_counter() - started}
    return labelled, cost


def train_revision(config: RevisionTrainConfig, *, command: str | None = None, stop_after: int | None = None,
                   progress: bool = True, chain_eval: ChainEval | None = None,
                   rerun: str = "resume") -> dict[str, Any]:
    """Build (or reuse) the revision data, then fine-tune `init_from` on it; returns (and writes) the summary.

    Rerunning with the same `out_dir` reuses the data and resumes from the last checkpoint; another config there is
    refused. The validation loss is logged every `eval_every` steps and at the end. `chain_eval(model, step)` is the
    hook for pass@1 per revision step (the compiled chain episode, ttcjax.search.chains): its metrics join each
    evaluation's. On several processes the mesh spans them all: every process takes part in sampling the data and
    in every training step (data parallel, `train_loop`), and process 0 writes every file but the checkpoints'
    shards.
    """
    started = time.perf_counter()
    check_inputs_exist(config, ("policy", "init_from", "tokenizer"), "train revision")
    mesh = parse_mesh(config.mesh)  # a mesh the devices cannot hold stops here, before the run directory
    checkpoint_config(config.init_from, "init_from").check_fits("seq_len", config.seq_len,
                                                                f"init_from {config.init_from}", "train revision")
    check_processes_meshed(mesh)
    invocation = bind_run(config.out_dir, bound_fields(config), "train revision", rerun)
    # the run directory is held (and the invocation's time recorded) until the block ends, however it ends
    with invocation_clock(config.out_dir, invocation):
        tokenizer = load_tokenizer(config.tokenizer_path)
        model = load_any(config.init_from, mesh=mesh)
        check_tokenizer_fits(tokenizer, model.config.vocab_size, source=f"init_from {config.init_from}")
        data, data_summary = build_revision_data(config, tokenizer, mesh, progress)
        sep, eos_ids = check_separator(tokenizer, config.separator), tuple(tokenizer.eos_ids)

        def packed_split(split):
            return pack_examples([encode_revision_example(r, sep, eos_ids, tokenizer.eos_id) for r in data[split]],
                                 config.seq_len, tokenizer.pad_id)

        if not data["train"]:
            raise ValueError(f"no training examples: the policy {config.policy_path} answered none of "
                             f"{config.num_questions} questions correctly; raise num_questions or "
                             "samples_per_question.")
        packed = packed_split("train")
        packed_val = packed_split("validation") if data.get("validation") else None
        rows_of = epoch_batches(len(packed), config.batch_size, config.seed)

        def evaluate(model, step):
            result = {} if packed_val is None else {"loss": validation_loss(model, packed_val, config.batch_size)}
            return {**result, **(chain_eval(model, step) if chain_eval is not None else {})}

        evaluates = packed_val is not None or chain_eval is not None  # eval_questions 0 and no hook: nothing to log

        result = train_loop(model, optim=config.optim, loss_fn=lm_loss, batch_at=lambda s: packed.rows(rows_of(s)),
                            out_dir=config.out_dir, checkpoint_every=config.checkpoint_every,
                            keep_checkpoints=config.keep_checkpoints, log_every=config.log_every, mesh=mesh,
                            evaluate=evaluate if evaluates else None, eval_every=config.eval_every,
                            stop_after=stop_after, progress=progress, desc="train revision")
        summary: dict[str, Any] = {
            "kind": "revision",
            "command": command,
            "config": dataclasses.asdict(config),
            "model": {"params": result.model.config.num_params(), **result.model.config.to_dict()},
            "data": {"train_examples": len(data["train"]), "packed_rows": len(packed),
                     "target_tokens": int(packed.loss_mask.sum()),
                     "validation_examples": len(data.get("validation", [])), "cost": data_summary},
            **result.summary(started),
            "finished": result.final_step == config.steps,
            "validation": [m for m in result.metrics if "eval" in m],
        }

        def write_model(model, model_dir):  # the model, its tokenizer and revision.json
            save_model(model, model_dir)
            save_tokenizer_beside(tokenizer, config.tokenizer_path, model_dir)
            save_revision_settings(model_dir, config.separator)

        return finish_training(config.out_dir, result.model, summary, invocation, write_model)
