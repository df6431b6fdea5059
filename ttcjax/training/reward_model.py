"""`ttcjax train prm` / `ttcjax train orm`: label the policy's own samples by Monte-Carlo rollouts, then train
a reward model with binary cross-entropy on the soft labels, early-stopped on a validation split.

Output directory (besides the training loop's checkpoints/ and metrics.jsonl):
    labels.jsonl        the labelled solutions (written once, atomically; a rerun reuses them)
    labels_cost.json    what labelling cost (solutions, rollouts, generated and prefilled tokens, seconds)
    best/               the reward model at the best validation loss (updated during training)
    model/              the final reward model (= best/), with its tokenizer
    train_summary.json  config, command, wall time, metrics
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from ttcjax.checkpoints.native import checkpoint_config, load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer, save_tokenizer_beside
from ttcjax.decoding.engine import Engine, Sampling
from ttcjax.distributed import barrier, bind_run, gathered, is_writer, to_host
from ttcjax.io import (BOUND_WHEN_SET, bound_fields, check_inputs_exist, check_options, invocation_clock, json_text,
                       read_json, replace_dir, write_json)
from ttcjax.models.sharding import mesh_shape, parse_mesh
from ttcjax.search.sampling import solution_stop
from ttcjax.tasks.base import Task
from ttcjax.tasks.registry import training_task
from ttcjax.training.labels import (LabelledSolution, LabellingCost, flip_labels, label_solutions, load_labels,
                                    save_labels)
from ttcjax.training.loop import (MODEL_DIR, OptimConfig, PackedArrays, check_processes_meshed, epoch_batches,
                                  train_loop, write_summary)
from ttcjax.training.revisions import revision_labels
from ttcjax.verifiers.base import AGGREGATIONS, concordance_within_groups, same_depth_groups
from ttcjax.verifiers.reward_model import (BACKBONE_DIR, LikelihoodHead, RewardModel, ScoringInput, StepFormat,
                                           ValueHead, pack_rows, save_prm)

# ---- examples ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackedScores(PackedArrays):
    """Scoring inputs packed into rows [rows, seq_len]: tokens, positions, segment_ids, which tokens are the
    solutions' (`solution`, 1; not their prompts'), and at each read position its soft label, weight 1 and the
    index of its example (-1 elsewhere)."""

    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    solution: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    example: np.ndarray

    def rows(self, index) -> dict[str, np.ndarray]:
        """A batch of rows, without `example` (the host maps scores back to their examples; no device needs it)."""
        batch = super().rows(index)
        del batch["example"]
        return batch


def pack_scoring(examples: Sequence[tuple[ScoringInput, Sequence[float]]], seq_len: int, pad_id: int = 0
                 ) -> PackedScores:
    """First-fit packing of (input, one label per read position) pairs into rows of seq_len tokens."""
    for e, (x, labels) in enumerate(examples):
        if len(labels) != len(x.read_at):
            raise ValueError(f"example {e}: {len(labels)} labels for {len(x.read_at)} read positions.")
        if len(x.tokens) > seq_len:
            raise ValueError(f"example {e} has {len(x.tokens)} tokens, more than seq_len={seq_len}; raise seq_len.")
    rows = pack_rows([len(x.tokens) for x, _ in examples], seq_len)
    n = len(rows)
    out = PackedScores(np.full((n, seq_len), pad_id, np.int32), np.zeros((n, seq_len), np.int32),
                       np.zeros((n, seq_len), np.int32), np.zeros((n, seq_len), np.int32),
                       np.zeros((n, seq_len), np.float32),
                       np.zeros((n, seq_len), np.float32), np.full((n, seq_len), -1, np.int32))
    for r, members in enumerate(rows):
        at = 0
        for s, e in enumerate(members, start=1):
            x, labels = examples[e]
            length = len(x.tokens)
            out.tokens[r, at:at + length] = x.tokens
            out.positions[r, at:at + length] = np.arange(length)
            out.segment_ids[r, at:at + length] = s
            out.solution[r, at + x.start:at + length] = 1
            out.labels[r, at + np.array(x.read_at, int)] = labels
            out.weights[r, at + np.array(x.read_at, int)] = 1.0
            out.example[r, at + np.array(x.read_at, int)] = e
            at += length
    return out


def bce_loss(prm: RewardModel, batch: dict) -> tuple[jax.Array, jax.Array, dict]:
    """Binary cross-entropy of the score logits against soft labels at the read positions."""
    logits = prm(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                 solution=batch["solution"] > 0)
    w = batch["weights"]
    losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
    err = jnp.abs(jax.nn.sigmoid(logits) - batch["labels"])
    weight = w.sum()
    return (losses * w).sum(), weight, {"abs_error": (err * w).sum() / jnp.maximum(weight, 1.0)}


def bce_loss_head_only(prm: RewardModel, batch: dict) -> tuple[jax.Array, jax.Array, dict]:
    """`bce_loss` with no gradient into the backbone (`freeze_backbone`): its backward pass is not computed."""
    nnx.update(prm.backbone, jax.lax.stop_gradient(nnx.state(prm.backbone)))
    return bce_loss(prm, batch)


def _eval_batch(prm: RewardModel, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A validation batch's summed loss, its weight and the score logits [rows, seq_len]."""
    logits = prm(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                 solution=batch["solution"] > 0)
    w = batch["weights"]
    return (optax.sigmoid_binary_cross_entropy(logits, batch["labels"]) * w).sum(), w.sum(), logits


_eval_batch_jit = jax.jit(lambda graphdef, state, batch: _eval_batch(nnx.merge(graphdef, state), batch),
                          static_argnums=(0,))

# the heads `ttcjax train prm|orm` trains (`head:`)
TRAINED_HEADS = {"value": ValueHead, "likelihood": LikelihoodHead}

# what `select_by` may choose a reward model's best checkpoint by
VALIDATION_METRICS = ("loss", "misordered", "misordered_same_depth")


def validation_metrics(prm: RewardModel, packed: PackedScores, batch_size: int, questions: Sequence[str]
                       ) -> dict[str, float]:
    """The validation split's `loss` (the mean binary cross-entropy per read position), `misordered`: 1 minus the
    step concordance within a question (`concordance_within_groups` of the scores against the soft labels, grouped
    by `questions[example]`), the share of a question's label-weighted step pairs that the scores order against
    their labels, and `misordered_same_depth`: the same among the steps a question's solutions wrote at the same
    depth (their k-th steps). Lower is better for all three. The loss also rewards knowing how hard each question is,
    which ranks no step of a question above another; `misordered` also rewards knowing that later steps are more
    often wrong; only `misordered_same_depth` needs the verifier to check a step against the ones beside it."""
    graphdef, state = nnx.split(prm)
    total, weight, scores = 0.0, 0.0, np.full(packed.labels.shape, np.nan, np.float32)
    for start in range(0, len(packed), batch_size):
        index = np.arange(start, min(start + batch_size, len(packed)))
        index = np.pad(index, (0, batch_size - len(index)), constant_values=-1)
        batch = packed.rows(np.maximum(index, 0))
        batch["weights"] = batch["weights"] * (index >= 0)[:, None]  # padding rows count for nothing
        loss, w, logits = to_host(_eval_batch_jit(graphdef, state, batch))  # host arrays: placed beside the
        total, weight = total + float(loss), weight + float(w)  # parameters, wherever they are
        scores[index[index >= 0]] = logits[index >= 0]
    read = packed.example >= 0
    example = packed.example[read]  # row-major: an example's read positions lie in one row, in order
    _, question = np.unique(np.asarray(questions, object), return_inverse=True)
    question = question.reshape(-1)[example]
    examples, first = np.unique(example, return_index=True)
    depth = np.arange(len(example)) - first[np.searchsorted(examples, example)]  # the step's index in its example
    scores, labels = scores[read], packed.labels[read]
    return {"loss": total / max(weight, 1.0),
            "misordered": 1.0 - concordance_within_groups(scores, labels, question),
            "misordered_same_depth": 1.0 - concordance_within_groups(scores, labels, same_depth_groups(question, depth))}


def examples_from_labels(labelled: Sequence[LabelledSolution], tokenizer, step_format: StepFormat, *,
                         orm: bool) -> list[tuple[ScoringInput, list[float]]]:
    """PRM: every step with its soft label. ORM: the final step only, labelled by the outcome."""
    out = []
    for x in labelled:
        inp = step_format.encode(tokenizer, x.question, x.steps)
        if orm:
            inp = ScoringInput(inp.tokens, inp.read_at[-1:], inp.start)
            out.append((inp, [float(x.correct)]))
        else:
            out.append((inp, list(x.step_labels)))
    return out


def check_examples_fit(examples: Sequence[tuple[ScoringInput, Sequence[float]]], problem_ids: Sequence[str],
                       config: "PRMTrainConfig", source: str) -> None:
    """The longest example (of the labels file `source`) within seq_len and within the positions of the backbone it
    trains (init_from, else the policy; read from its config, before its weights): one ValueError naming the file,
    the field, the length and the fix.

    A packed row restarts positions at each example, so seq_len itself may exceed the backbone's positions (the
    revision verifier packs 528-token rows on 512 positions); an example longer than them would read positions
    its rotary embeddings were never trained at."""
    if not examples:
        return
    length, at = max((len(x.tokens), i) for i, (x, _) in enumerate(examples))
    which = f"the longest example (problem {problem_ids[at]!r}, question and steps) has {length} tokens"
    if length > config.seq_len:
        raise ValueError(f"{source}: {which}, more than seq_len={config.seq_len}; raise seq_len to at least "
                         f"{length}.")
    field = "init_from" if config.init_from else "policy"
    backbone = getattr(config, field)
    positions = checkpoint_config(backbone, field).max_position_embeddings
    if length > positions:
        raise ValueError(f"{source}: {which}, more than the {positions} positions of {field} {backbone} "
                         "(max_position_embeddings); lower max_new_tokens (or label shorter solutions), or train from a "
                         f"backbone with at least {length} positions (init_from).")


def _is_validation(problem_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(("prm-val:" + problem_id).encode()).digest()[:8], "big") / 2.0**64
    return h < fraction


# ---- the command ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PRMTrainConfig:
    """Everything `ttcjax train prm|orm --config FILE` reads (each field is a YAML key)."""

    out_dir: str
    policy: str  # the policy checkpoint whose samples are labelled (and, by default, the backbone's start)
    init_from: str | None = None  # backbone initialisation; default: the policy
    tokenizer: str | None = None  # default: the policy directory's tokenizer
    labels: str | tuple[str, ...] | None = None  # reuse this labels.jsonl (e.g. a PRM run's, for an ORM) instead of
    #   sampling; a list: the labels of several runs that drew other questions (`reused_labels`)
    revision_chains: dict | None = None  # (orm) {chains: 4, sequential: 4}: label the chains of the revision model
    #   `policy` (each attempt after its chain's earlier ones, by its outcome), the paper's revision verifier
    task: dict = dataclasses.field(default_factory=dict)  # the task as YAML ({name: gsm8k, path: ...}); without a
    #   name, the built-in arithmetic task's fields
    num_questions: int = 1000  # training-split questions to sample
    samples: int = 4  # solutions sampled per question
    rollouts: int = 8  # Monte-Carlo continuations per step prefix
    distinct_solutions: bool = False  # train on each distinct (question, steps) once, not once per sample that wrote
    #   it (the labels file keeps every sample)
    label_flips: float = 0.0  # train on labels each flipped (y -> 1 - y) with this probability: the paper's weaker
    #   verifier (20% i.i.d. flips); the labels file keeps the true labels
    temperature: float = 0.8
    max_new_tokens: int = 128
    validation_fraction: float = 0.1  # of questions, by hash of the problem id
    seq_len: int = 256
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    eval_every: int = 50
    patience: int = 4  # evaluations without improvement before early stopping
    # the validation metric that picks the best checkpoint and stops early: "loss" (the paper's), "misordered" (how
    # often the scores order a question's steps against their labels) or "misordered_same_depth" (the same among
    # the steps its solutions wrote at one depth: whether the verifier checks a step)
    select_by: str = dataclasses.field(default="loss", metadata=BOUND_WHEN_SET)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mesh: str = "auto"
    aggregation: str = "last"
    # the head: "value" (a linear value head on the last hidden state, the paper's) or "likelihood" (that, plus a
    # learned weight on the lowest log-probability the backbone's LM head gave a solution token so far:
    # `ttcjax.verifiers.reward_model.LikelihoodHead`)
    head: str = dataclasses.field(default="value", metadata=BOUND_WHEN_SET)
    # train the head alone: the backbone keeps its parameters (a likelihood head then reads the next-token
    # distribution of the backbone as it was trained), and a step costs about a forward pass
    freeze_backbone: bool = dataclasses.field(default=False, metadata=BOUND_WHEN_SET)

    def __post_init__(self):
        if isinstance(self.labels, (list, tuple)):
            if not self.labels or not all(isinstance(p, str) and p for p in self.labels):
                raise ValueError(f"labels={self.labels!r}: write one labels file or a non-empty list of them.")
            object.__setattr__(self, "labels", self.labels[0] if len(self.labels) == 1 else tuple(self.labels))
        elif self.labels is not None and not isinstance(self.labels, str):
            raise ValueError(f"labels={self.labels!r}: write one labels file or a non-empty list of them.")
        if not isinstance(self.distinct_solutions, bool):
            raise ValueError(f"distinct_solutions={self.distinct_solutions!r} must be true or false.")
        if self.select_by not in VALIDATION_METRICS:
            raise ValueError(f"select_by={self.select_by!r} is not one of {VALIDATION_METRICS}.")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r} is not one of {AGGREGATIONS}.")
        if not isinstance(self.freeze_backbone, bool):
            raise ValueError(f"freeze_backbone={self.freeze_backbone!r} must be true or false.")
        if self.head not in TRAINED_HEADS:
            raise ValueError(f"head={self.head!r} is not one of {sorted(TRAINED_HEADS)}.")
        if self.samples < 1 or self.rollouts < 1:
            raise ValueError(f"samples and rollouts must be >= 1; got {self.samples}, {self.rollouts}.")
        if not 0 <= self.label_flips < 1:
            raise ValueError(f"label_flips={self.label_flips} must be in [0, 1) (0.2: a fifth of the labels flipped).")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction} must be in (0, 1).")
        self.make_task().check_split("train")
        Sampling(temperature=self.temperature)  # the labels' samples: a finite temperature >= 0
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1.")
        self.optim  # the schedule's settings (steps >= 1, warmup within them, ...)
        mesh_shape(self.mesh, 1)  # its grammar ('auto', 'none' or DATA,MODEL), refused now
        chains = self.revision_chains
        if chains is not None and not (isinstance(chains, dict) and set(chains) == {"chains", "sequential"} and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in chains.values())):
            raise ValueError(f"revision_chains={chains!r}: write {{chains: 4, sequential: 4}} (integers >= 1).")
        if chains is not None and self.head == "likelihood":
            raise ValueError("revision_chains with head: likelihood: a likelihood head cannot follow a revision chain "
                             "(it cannot go back to an earlier token between attempts); use head: value.")
        if chains is not None and self.labels:
            raise ValueError("set one of revision_chains (label the revision model's chains) and labels (reuse "
                             "labels.jsonl).")

    def make_task(self) -> Task:
        return training_task(self.task)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "PRMTrainConfig":
        check_options(cls, data, source, required=("out_dir", "policy"))
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @property
    def optim(self) -> OptimConfig:
        return dataclasses.replace(OptimConfig.from_fields(self), frozen=("backbone",) if self.freeze_backbone else ())


# The options a labels file is made with (labels_cost.json records them as "options"): a labels file is reused only
# by a config that names the same.
LABEL_CHUNK = 100  # questions labelled (and written) at a time: what an interruption can cost
LABEL_PARTS_DIR = "labels.parts"  # OUT_DIR/labels.parts/START.jsonl and START.cost.json: the chunks written so far
LABEL_OPTIONS = ("policy", "tokenizer", "task", "num_questions", "samples", "rollouts", "temperature", "max_new_tokens",
                 "seed", "revision_chains")
QUESTION_OPTIONS = ("num_questions", "seed")  # which questions a run drew: the files of a `labels` list differ in them
LABELS_COST_FILE = "labels_cost.json"


REUSE_FIX = "set those options as the run that made the labels did, or drop `labels` to sample new ones."


def label_options(config: PRMTrainConfig) -> dict[str, Any]:
    """`LABEL_OPTIONS` of a config in JSON form, checkpoint paths as real paths (a run from elsewhere names the same
    policy by another relative path)."""
    options = {field: getattr(config, field) for field in LABEL_OPTIONS}
    for field in ("policy", "tokenizer"):
        if options[field] not in (None, "char"):
            options[field] = os.path.realpath(options[field])
    return json.loads(json_text(options))


def _as_compared(key: str, value: Any) -> Any:
    """A recorded option as labels are matched by: a checkpoint inside the package's assets by its place there (a
    shipped labels file names the shipped policy wherever the package was installed)."""
    if key in ("policy", "tokenizer") and isinstance(value, str):
        parts = Path(value).parts
        for i in range(len(parts) - 2, -1, -1):
            if parts[i:i + 2] == ("ttcjax", "assets"):
                return "ttcjax/assets/" + "/".join(parts[i + 2:])
    return value


def reused_labels_cost(path: str, config: PRMTrainConfig, fix: str, required: bool, ignore: Sequence[str] = ()) -> dict:
    """The cost record beside labels file `path` (labels_cost.json), checked to record the options `config` would
    label with (all but `ignore`): one ValueError naming the file, the keys that differ and `fix` otherwise. A labels
    file without a cost record beside it (written by `save_labels` alone) is taken as it is, unless `required`."""
    cost_path = os.path.join(os.path.dirname(path), LABELS_COST_FILE)
    cost = {}
    if os.path.exists(cost_path):
        cost = read_json(cost_path, fix)
    elif not required:
        return cost
    recorded, wanted = cost.get("options"), label_options(config)
    if recorded is None:
        raise ValueError(f"{path}: {LABELS_COST_FILE} beside it does not record the options the labels were made "
                         f"with, so they cannot be told to be this config's; {fix}")
    differ = sorted(k for k in set(recorded) | set(wanted)
                    if k not in ignore and _as_compared(k, recorded.get(k)) != _as_compared(k, wanted.get(k)))
    if differ:
        raise ValueError(f"{path}: the labels were made with other options (keys that differ: {differ}; they were "
                         f"{ {k: recorded.get(k) for k in differ} }); {fix}")
    return cost


def labels_files(config: PRMTrainConfig) -> tuple[str, ...]:
    """The labels files `config` reuses: none, one, or the several of a list."""
    return () if config.labels is None else (config.labels,) if isinstance(config.labels, str) else config.labels


def reused_labels(config: PRMTrainConfig, check_only: bool = False) -> tuple[list[LabelledSolution], dict]:
    """The labels of `config.labels`, each file checked (`reused_labels_cost`) to be made with `config`'s options.

    A list joins the labels of runs that drew other questions (they may differ in `QUESTION_OPTIONS` and nothing
    else): a question labelled in several files is taken from the first that has it, so no question's solutions
    count twice. The cost is the files' costs summed, with each file's record under "files"."""
    paths = labels_files(config)
    several = len(paths) > 1
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"labels: {path} not found; run the training that writes it first "
                                    "(ttcjax train prm), or drop `labels` to sample new ones.")
    costs = [reused_labels_cost(path, config, REUSE_FIX, required=False, ignore=QUESTION_OPTIONS if several else ())
             for path in paths]
    if not several:
        return load_labels(paths[0]), {**costs[0], "reused_from": paths[0]}
    labelled, taken, repeated = [], set(), set()
    for path in paths:
        labels = load_labels(path)
        here = {x.problem_id for x in labels}
        repeated |= here & taken
        labelled += [x for x in labels if x.problem_id not in taken]
        taken |= here
    summed = {k: sum(c[k] for c in costs) for k in costs[0]
              if all(isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool) for c in costs)}
    return labelled, {**summed, "reused_from": list(paths), "files": costs,
                      "questions_in_an_earlier_file": len(repeated)}


def distinct_solutions(labelled: Sequence[LabelledSolution]) -> list[LabelledSolution]:
    """Each (question, steps) once, at its first place: the samples that wrote the same solution share its labels
    (`label_solutions` labels a shared prefix once), so the rest repeat it."""
    seen, out = set(), []
    for x in labelled:
        if (x.problem_id, x.steps) not in seen:
            seen.add((x.problem_id, x.steps))
            out.append(x)
    return out


def make_labels(config: PRMTrainConfig, tokenizer, mesh, progress: bool = True
                ) -> tuple[list[LabelledSolution], dict]:
    """Sample and label (or reuse out_dir/labels.jsonl, or the config's `labels`, made with the same options: see
    `reused_labels_cost`)."""
    labels_path = os.path.join(config.out_dir, "labels.jsonl")
    cost_path = os.path.join(config.out_dir, LABELS_COST_FILE)
    made = os.path.exists(labels_path) and os.path.exists(cost_path)
    barrier("ttcjax-labels-found")  # every process has looked before process 0 writes labels that others would find
    if config.labels:
        return reused_labels(config)
    if made:
        cost = reused_labels_cost(labels_path, config, "move it aside (or rerun with --fresh) to label anew, or set "
                                  "those options back.", required=True)
        return load_labels(labels_path), cost
    task = config.make_task()
    problems = task.problems("train", limit=config.num_questions, seed=config.seed + 1)
    if config.revision_chains is not None:
        labelled, cost_record = revision_labels(config.policy, tokenizer, task, problems,
                                                temperature=config.temperature, seed=config.seed, mesh=mesh,
                                                **config.revision_chains)
        cost_record["options"] = label_options(config)
        if is_writer():
            save_labels(labels_path, labelled)
            write_json(cost_path, cost_record)
        return labelled, cost_record
    policy = load_any(config.policy, mesh=mesh)
    engine = Engine(policy, mesh=mesh, pad_id=tokenizer.pad_id)
    questions = [task.prompt_text(p, tokenizer) for p in problems]

    def checker(problem, question):
        """Whether a full text (the prompt, then a solution) reaches the answer: read from the solution only, so
        a few-shot prompt's own answers never count."""
        return lambda text: task.is_correct(problem, task.extract_answer(text[len(question):]))

    # in chunks of questions, each written (atomically) as it ends: an interrupted labelling resumes at the first
    # chunk it had not written, with the same draws (each chunk's key is folded with its index)
    parts = os.path.join(config.out_dir, LABEL_PARTS_DIR)
    done = set(os.listdir(parts)) if os.path.isdir(parts) else set()
    barrier("ttcjax-label-parts-found")  # every process has looked before process 0 writes a part
    labelled, totals = [], LabellingCost()
    seconds = 0.0
    chunks = range(0, len(problems), LABEL_CHUNK)
    for c, start in enumerate(tqdm(chunks, desc="labels", unit="chunk", file=sys.stderr, dynamic_ncols=True,
                                   disable=not progress or len(chunks) <= 1)):
        name = f"{start:07d}"
        part, part_cost = os.path.join(parts, name + ".jsonl"), os.path.join(parts, name + ".cost.json")
        if name + ".jsonl" in done and name + ".cost.json" in done:
            chunk, record = load_labels(part), read_json(part_cost, "delete it to label that chunk again.")
        else:
            chunk_started = time.perf_counter()
            rows = slice(start, start + LABEL_CHUNK)
            chunk, cost = label_solutions(
                engine, tokenizer, questions[rows], [checker(p, q) for p, q in zip(problems[rows], questions[rows])],
                samples=config.samples, rollouts=config.rollouts,
                key=jax.random.fold_in(jax.random.key(config.seed), c),
                sampling=Sampling(temperature=config.temperature), stop=solution_stop(task, tokenizer),
                max_new_tokens=config.max_new_tokens, delimiter=task.step_delimiter,
                problem_ids=[p.id for p in problems[rows]], difficulties=[p.difficulty or 0 for p in problems[rows]],
                add_bos=task.prompt_bos(tokenizer), steps_of=task.split_steps, progress=False)
            record = {**dataclasses.asdict(cost), "seconds": time.perf_counter() - chunk_started}
            if is_writer():  # every process holds every label (gathered from the mesh)
                os.makedirs(parts, exist_ok=True)
                save_labels(part, chunk)
                write_json(part_cost, record)  # the chunk counts as written once this exists
        labelled += chunk
        seconds += record["seconds"]
        for field in dataclasses.fields(LabellingCost):
            setattr(totals, field.name, getattr(totals, field.name) + record[field.name])
    cost_record = {**dataclasses.asdict(totals), "generated_tokens": totals.generated_tokens,
                   "seconds": seconds, "questions": len(problems), "chunks": len(chunks),
                   "labelled_solutions": len(labelled), "options": label_options(config)}
    if is_writer():
        save_labels(labels_path, labelled)
        write_json(cost_path, cost_record)  # labels.jsonl is whole before this: the pair is found only complete
        shutil.rmtree(parts, ignore_errors=True)  # every chunk is in labels.jsonl now
    return labelled, cost_record


def train_reward_model(config: PRMTrainConfig, *, orm: bool = False, command: str | None = None,
                       stop_after: int | None = None, progress: bool = True,
                       rerun: str = "resume") -> dict[str, Any]:
    """Label, then train a PRM (or an ORM) on the labels; returns (and writes) the summary."""
    started = time.perf_counter()
    if config.revision_chains is not None and not orm:
        raise ValueError("revision_chains labels attempts by their outcome: train an ORM (ttcjax train orm).")
    what = "train orm" if orm else "train prm"
    check_inputs_exist(config, ("policy", "init_from", "tokenizer"), what)
    mesh = parse_mesh(config.mesh)  # a mesh the devices cannot hold stops here, before the run directory
    task = config.make_task()
    tokenizer = load_tokenizer(config.tokenizer or config.policy)
    step_format = StepFormat(delimiter=task.step_delimiter, add_bos=task.prompt_bos(tokenizer))

    def examples(labelled: Sequence[LabelledSolution], source: str) -> list[tuple[ScoringInput, list[float]]]:
        """The scoring examples of `labelled` (read from `source`), the longest checked against seq_len and the
        backbone's positions."""
        out = examples_from_labels(labelled, tokenizer, step_format, orm=orm)
        check_examples_fit(out, [x.problem_id for x in labelled], config, source)
        return out

    labels_path = " + ".join(labels_files(config)) or os.path.join(config.out_dir, "labels.jsonl")
    if config.labels:  # missing, of other options, or too long for the backbone: refused before the run directory
        examples(reused_labels(config)[0], labels_path)
    check_processes_meshed(mesh)
    invocation = bind_run(config.out_dir, {**bound_fields(config), "kind": "orm" if orm else "prm"}, what, rerun)
    # the run directory is held (and the invocation's time recorded) until the block ends, however it ends
    with invocation_clock(config.out_dir, invocation):
        labelled, cost = make_labels(config, tokenizer, mesh, progress)
        if config.distinct_solutions:
            labelled = distinct_solutions(labelled)
        flipped = 0
        if config.label_flips:
            labelled, flipped = flip_labels(labelled, config.label_flips, config.seed)
        val = [x for x in labelled if _is_validation(x.problem_id, config.validation_fraction)]
        train = [x for x in labelled if not _is_validation(x.problem_id, config.validation_fraction)]
        if not val or not train:
            raise ValueError(f"{len(labelled)} labelled solutions leave an empty train or validation split; raise "
                             "num_questions.")
        packed = pack_scoring(examples(train, labels_path), config.seq_len, tokenizer.pad_id)
        packed_val = pack_scoring(examples(val, labels_path), config.seq_len, tokenizer.pad_id)
        backbone = load_any(config.init_from or config.policy, mesh=mesh)
        prm = RewardModel(backbone, TRAINED_HEADS[config.head](), seed=config.seed)
        rows_of = epoch_batches(len(packed), config.batch_size, config.seed)
        kind = "orm" if orm else "prm"
        best_dir = os.path.join(config.out_dir, "best")

        def evaluate(model, step):
            return validation_metrics(model, packed_val, config.batch_size, [x.problem_id for x in val])

        def on_best(model, step):
            best = gathered(model)  # every process takes part; one saves it
            if is_writer():
                save_prm(best, best_dir, kind=kind, aggregation=config.aggregation, step_format=step_format,
                         overwrite=True)

        result = train_loop(prm, optim=config.optim, loss_fn=bce_loss_head_only if config.freeze_backbone else bce_loss, batch_at=lambda s: packed.rows(rows_of(s)),
                            out_dir=config.out_dir, checkpoint_every=config.checkpoint_every,
                            keep_checkpoints=config.keep_checkpoints, log_every=config.log_every, mesh=mesh,
                            evaluate=evaluate, eval_every=config.eval_every, stop_after=stop_after, progress=progress,
                            desc=f"train {kind}", early_stopping=(config.select_by, config.patience), on_best=on_best)
        finished = result.final_step == config.steps or result.stopped_early
        if finished and result.best_step is None and not os.path.isdir(best_dir):
            fix = ("lower lr or check the labels" if config.select_by == "loss" else "check that the validation "
                   "questions have steps with different labels (raise validation_fraction or samples), or lower lr")
            raise ValueError(f"{config.out_dir}: no validation {config.select_by} of this run was a finite number (see "
                             f"metrics.jsonl), so there is no best model to write; {fix}, then rerun with --fresh.")
        if finished and is_writer():
            # the best model and its tokenizer replace an earlier model/ together, or not at all
            with replace_dir(os.path.join(config.out_dir, MODEL_DIR), keep=lambda name: False) as model_dir:
                shutil.copytree(best_dir, model_dir, dirs_exist_ok=True)
                save_tokenizer_beside(tokenizer, config.tokenizer or config.policy,
                                      os.path.join(model_dir, BACKBONE_DIR))
        summary = {
            "kind": kind, "command": command, "config": dataclasses.asdict(config),
            "model": {"params": prm.num_params},
            "labels": {"train_solutions": len(train), "validation_solutions": len(val), "cost": cost,
                       "flipped": flipped},
            **result.summary(started), "finished": finished, "stopped_early": result.stopped_early,
            "best_step": result.best_step, "validation": [m for m in result.metrics if "eval" in m],
        }
        if not is_writer():
            return summary
        return write_summary(config.out_dir, summary, invocation)
