"""The policy: supervised fine-tuning on a task's reference solutions (`ttcjax train policy`) and its evaluation
on a task (greedy accuracy and pass@k per difficulty).

A training example is the task's prompt followed by a reference solution, its steps joined by the task's step
delimiter, its solution end and EOS; the loss covers the solution only. On the built-in task:
`[BOS] "Q: 7*3-4+8=\\n"`, then `"7*3=21\\n21-4=17\\n17+8=25\\nThe answer is 25\\n\\n" [EOS]`, with the
config's options for the mix per difficulty, the solution order and format.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import numpy as np

from ttcjax.checkpoints.native import checkpoint_config, load_any, save_model
from ttcjax.checkpoints.tokenizer import Tokenizer, check_tokenizer_fits, load_tokenizer, save_tokenizer_beside
from ttcjax.decoding.engine import GREEDY, Engine, Sampling
from ttcjax.distributed import bind_run
from ttcjax.io import bound_fields, check_inputs_exist, check_options, invocation_clock
from ttcjax.models import ModelConfig, Transformer, init_model
from ttcjax.models.sharding import mesh_shape, parse_mesh
from ttcjax.search.sampling import MAX_NEW_TOKENS, is_nonfinite, sample_completions
from ttcjax.tasks import arithmetic
from ttcjax.tasks.arithmetic import Problem, TaskConfig
from ttcjax.tasks.base import ProblemRecord, Task
from ttcjax.tasks.benchmarks import arithmetic_record
from ttcjax.tasks.builtin import ArithmeticTask
from ttcjax.tasks.registry import training_task
from ttcjax.training.loop import (OptimConfig, check_processes_meshed, epoch_batches, finish_training, lm_loss,
                                  pack_examples, train_loop)


def training_problems(config: "PolicyTrainConfig") -> list[arithmetic.Problem]:
    """The training split's problems a config asks for, in a seeded random order."""
    task = config.task_config
    if config.num_train_per_difficulty is None:
        return arithmetic.generate(task, config.num_train, seed=config.seed, split="train")
    problems = [p for k, count in sorted((int(k), c) for k, c in config.num_train_per_difficulty.items())
                for p in arithmetic.generate(dataclasses.replace(task, difficulties=(k,)), count,
                                             seed=config.seed, split="train")]
    order = np.random.default_rng(config.seed).permutation(len(problems))
    return [problems[i] for i in order]


def training_solutions(config: "PolicyTrainConfig",
                       problems: Sequence[Problem]) -> list[list[arithmetic.Step] | None]:
    """Each training problem's solution path: None (the reference path), or with `solution_order: random` a
    valid order drawn from a generator seeded by the config's seed, so a rerun sees the same data."""
    if config.solution_order == "reference":
        return [None] * len(problems)
    rng = np.random.default_rng([config.seed, 1])
    return [arithmetic.sample_steps(p, rng) for p in problems]


@dataclasses.dataclass(frozen=True)
class PolicyTrainConfig:
    """Everything `ttcjax train policy --config FILE` reads (each field is a YAML key)."""

    out_dir: str
    model_config: dict | None = None  # a fresh model of this shape ...
    init_from: str | None = None  # ... or continue from a checkpoint directory
    tokenizer: str = "char"
    task: dict = dataclasses.field(default_factory=dict)  # the task as YAML ({name: gsm8k, path: ...}); without a
    #   name, the built-in arithmetic task's fields. Other tasks train on their reference solutions.
    num_train: int = 20000  # training problems (split "train"), equally many per difficulty ...
    num_train_per_difficulty: dict | None = None  # ... or (arithmetic) this many of each ({difficulty: count})
    solution_order: str = "reference"  # "reference": the task's one reference path; "random": each training
    #   solution takes a uniformly drawn valid reduction at every step (many paths per problem)
    solution_format: str = "plain"  # "plain": "8*4=32" per step; "restate": "8*4=32; 32*5+3", each step
    #   line also writes the expression it leaves (see arithmetic.format_solution)
    seq_len: int = 256  # packed row length
    batch_size: int = 32  # packed rows per step (global; split over the mesh's data axis)
    steps: int = 500
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: evaluate at the end only
    eval_problems: int = 50  # validation problems (per difficulty, for arithmetic) for the greedy accuracy logged
    eval_split: str = "validation"  # the split they come from (a task without one: e.g. "test", or eval_problems 0)
    mesh: str = "auto"

    def __post_init__(self):
        if (self.model_config is None) == (self.init_from is None):
            raise ValueError("set exactly one of model_config (train a fresh model) and init_from (a checkpoint).")
        if self.model_config is not None:
            if not isinstance(self.model_config, dict):
                raise ValueError(f"model_config={self.model_config!r} must be a mapping of model fields.")
            ModelConfig.from_dict(self.model_config, source="model_config")  # refused now, not after the data
        if self.batch_size < 1 or self.seq_len < 8 or self.num_train < 1:
            raise ValueError(f"need batch_size >= 1, seq_len >= 8, num_train >= 1; got {self.batch_size}, "
                             f"{self.seq_len}, {self.num_train}.")
        if self.solution_order not in ("reference", "random"):
            raise ValueError(f"solution_order must be 'reference' or 'random'; got {self.solution_order!r}.")
        if self.solution_format not in ("plain", "restate"):
            raise ValueError(f"solution_format must be 'plain' or 'restate'; got {self.solution_format!r}.")
        self.optim  # the schedule's settings (steps >= 1, warmup within them, ...)
        mesh_shape(self.mesh, 1)  # its grammar ('auto', 'none' or DATA,MODEL), refused now
        task = self.make_task()
        if not isinstance(task, ArithmeticTask):
            for name, default in (("num_train_per_difficulty", None), ("solution_order", "reference"),
                                  ("solution_format", "plain")):
                if getattr(self, name) != default:
                    raise ValueError(f"{name} is an option of the built-in arithmetic task; task {task.name!r} "
                                     "trains on its reference solutions (drop the option).")
        task.check_split("train")
        if self.eval_problems:
            task.check_split(self.eval_split)
        if self.num_train_per_difficulty is not None:
            counts = self.num_train_per_difficulty
            levels = set(self.task_config.difficulties)
            if not isinstance(counts, dict) or set(map(int, counts)) != levels or min(counts.values()) < 1:
                raise ValueError(f"num_train_per_difficulty must map every task difficulty {sorted(levels)} to a "
                                 f"count >= 1; got {counts!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "PolicyTrainConfig":
        check_options(cls, data, source, required=("out_dir",))
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    def make_task(self) -> Task:
        return training_task(self.task)

    @property
    def task_config(self) -> TaskConfig:
        """The built-in task's configuration (arithmetic configs only)."""
        return self.make_task().config

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig.from_fields(self)


# ---- prompts, examples, stopping -------------------------------------------------------------------------


def encode_prompt(tokenizer: Tokenizer, problem: Problem) -> list[int]:
    return tokenizer.encode(arithmetic.format_prompt(problem), add_bos=tokenizer.bos_id is not None)


def encode_example(tokenizer: Tokenizer, problem: Problem, steps: list[arithmetic.Step] | None = None,
                   restate: bool = False) -> tuple[list[int], list[int]]:
    """(prompt ids, solution ids): the solution (`steps`, by default the reference path; `restate`: see
    `arithmetic.format_solution`) ends with the blank line and EOS."""
    solution = tokenizer.encode(arithmetic.format_solution(problem, steps, restate) + arithmetic.EXAMPLE_END)
    if tokenizer.eos_id is not None:
        solution.append(tokenizer.eos_id)
    return encode_prompt(tokenizer, problem), solution


def training_examples(config: PolicyTrainConfig, task: Task, tokenizer: Tokenizer
                      ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids) per training problem. The built-in task follows the config's arithmetic options
    (mix per difficulty, solution order and format); any other task writes its prompt as it will be asked at test
    time and its reference solution's steps joined by its step delimiter, then its solution end and EOS."""
    if isinstance(task, ArithmeticTask):
        problems = training_problems(config)
        restate = config.solution_format == "restate"
        return [(task.encode_prompt(arithmetic_record(p), tokenizer), encode_example(tokenizer, p, steps, restate)[1])
                for p, steps in zip(problems, training_solutions(config, problems))]
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    return [(task.encode_prompt(r, tokenizer),
             tokenizer.encode(task.solution_text(r) + (task.solution_end or "")) + eos)
            for r in task.problems("train", limit=config.num_train, seed=config.seed)]


# ---- evaluation ---------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate_policy(model: Transformer, tokenizer: Tokenizer, task: Task, problems: Sequence[ProblemRecord], *,
                    samples: int = 0, temperature: float = 0.8, seed: int = 0, mesh=None, batch_size: int = 256,
                    max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    """Greedy accuracy per difficulty and overall on `task`'s `problems`; with `samples` > 0 also pass@1 and
    pass@samples at `temperature` (unbiased estimates from the same samples). Keys of "by_difficulty" are
    strings."""
    if samples < 0:
        raise ValueError(f"samples={samples} must be >= 0 (0: greedy only).")
    engine = Engine(model, mesh=mesh, pad_id=tokenizer.pad_id)
    key = jax.random.key(seed)

    greedy = sample_completions(task, engine, tokenizer, problems, n=1, sampling=GREEDY, key=key,
                                batch_size=batch_size, max_new_tokens=max_new_tokens)
    greedy_ok = np.array([task.grade(p, [task.extract_answer(tokenizer.decode(g[0].tokens))])[0]
                          for p, g in zip(problems, greedy)])
    nonfinite = sum(is_nonfinite(c) for cs in greedy for c in cs)
    counts = None
    if samples:
        sampled = sample_completions(task, engine, tokenizer, problems, n=samples,
                                     sampling=Sampling(temperature=temperature), key=jax.random.fold_in(key, 1),
                                     batch_size=batch_size, max_new_tokens=max_new_tokens)
        counts = np.array([sum(task.grade(p, [task.extract_answer(tokenizer.decode(s.tokens)) for s in ss]))
                           for p, ss in zip(problems, sampled)])
        nonfinite += sum(is_nonfinite(c) for cs in sampled for c in cs)
    difficulties = np.array([-1 if p.difficulty is None else p.difficulty for p in problems])

    def summary(mask):
        out = {"problems": int(mask.sum()), "greedy": float(greedy_ok[mask].mean())}
        if counts is not None:
            out["pass@1"] = float(np.mean([pass_at_k(samples, c, 1) for c in counts[mask]]))
            out[f"pass@{samples}"] = float(np.mean([pass_at_k(samples, c, samples) for c in counts[mask]]))
        return out

    result = {"all": summary(np.ones(len(problems), bool)),
              "by_difficulty": {str(d): summary(difficulties == d)
                                for d in sorted(set(difficulties.tolist())) if d >= 0},
              # per problem, so that a subset can be checked again later (tests/test_shipped.py)
              "greedy_correct": {p.id: bool(ok) for p, ok in zip(problems, greedy_ok)},
              # samples (greedy and sampled) that ended on non-finite logits: the accuracies count them as wrong
              "nonfinite_samples": int(nonfinite)}
    if counts is not None:
        result["temperature"] = temperature
        result["samples"] = samples
    return result


# ---- training -----------------------------------------------------------------------------------------


def _model_and_tokenizer(config: PolicyTrainConfig, mesh=None) -> tuple[Transformer, Tokenizer]:
    """The model to train (a checkpoint's loaded onto `mesh`, or a fresh one, placed by the training loop) and its
    tokenizer."""
    tokenizer = load_tokenizer(config.tokenizer)
    if config.init_from:
        model = load_any(config.init_from, mesh=mesh)
    else:
        model = init_model(ModelConfig.from_dict(config.model_config, source="model_config"), seed=config.seed)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, source=config.init_from or "model_config")
    return model, tokenizer


def train_policy(config: PolicyTrainConfig, *, command: str | None = None, stop_after: int | None = None,
                 progress: bool = True, rerun: str = "resume") -> dict[str, Any]:
    """Fine-tune a policy on the task's training split; returns (and writes) the summary.

    Rerunning with the same `out_dir` resumes from the last checkpoint. The final model and its tokenizer
    go to `out_dir/model`; `out_dir/train_summary.json` records the config, command, time and metrics. On several
    processes the mesh spans them all (data parallel, `train_loop`) and process 0 writes every file but the
    checkpoints' shards.
    """
    started = time.perf_counter()
    check_inputs_exist(config, ("policy", "init_from", "tokenizer"), "train policy")
    mesh = parse_mesh(config.mesh)  # a mesh the devices cannot hold stops here, before the run directory
    if config.model_config is not None:  # a packed row's positions within the model's (read before its weights)
        ModelConfig.from_dict(config.model_config, "model_config").check_fits("seq_len", config.seq_len, "model_config",
                                                                              "train policy")
    else:
        checkpoint_config(config.init_from, "init_from").check_fits("seq_len", config.seq_len,
                                                                    f"init_from {config.init_from}", "train policy")
    check_processes_meshed(mesh)
    invocation = bind_run(config.out_dir, bound_fields(config), "train policy", rerun)
    # the run directory is held (and the invocation's time recorded) until the block ends, however it ends
    with invocation_clock(config.out_dir, invocation):
        task = config.make_task()
        model, tokenizer = _model_and_tokenizer(config, mesh)
        examples = training_examples(config, task, tokenizer)
        packed = pack_examples(examples, config.seq_len, tokenizer.pad_id)
        rows_of = epoch_batches(len(packed), config.batch_size, config.seed)
        per_level = len(task.config.difficulties) if isinstance(task, ArithmeticTask) else 1
        eval_set = task.problems(config.eval_split, limit=config.eval_problems * per_level,
                                 seed=config.seed) if config.eval_problems else []

        def evaluate(model, step):
            if not eval_set:
                return {}
            result = evaluate_policy(model, tokenizer, task, eval_set, mesh=mesh)
            return {k: v for k, v in result.items() if k != "greedy_correct"}

        result = train_loop(model, optim=config.optim, loss_fn=lm_loss, batch_at=lambda s: packed.rows(rows_of(s)),
                            out_dir=config.out_dir, checkpoint_every=config.checkpoint_every,
                            keep_checkpoints=config.keep_checkpoints, log_every=config.log_every, mesh=mesh,
                            evaluate=evaluate, eval_every=config.eval_every, stop_after=stop_after,
                            progress=progress, desc="train policy")
        summary: dict[str, Any] = {
            "kind": "policy",
            "command": command,
            "config": dataclasses.asdict(config),
            "model": {"params": result.model.config.num_params(), **result.model.config.to_dict()},
            "data": {"train_problems": len(examples), "packed_rows": len(packed),
                     "solution_tokens": int(packed.loss_mask.sum()),
                     "task": dataclasses.asdict(task.config) if isinstance(task, ArithmeticTask) else task.to_dict()},
            **result.summary(started),
            "finished": result.final_step == config.steps,
            "validation": next((m["eval"] for m in reversed(result.metrics) if "eval" in m), None),
        }

        def write_model(model, model_dir):  # the model and its tokenizer
            save_model(model, model_dir)
            save_tokenizer_beside(tokenizer, config.tokenizer, model_dir)

        return finish_training(config.out_dir, result.model, summary, invocation, write_model)
