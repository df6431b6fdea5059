"""Training: one loop (AdamW, warmup + cosine, clipping, data parallel, orbax checkpoints, resume) and the
policy's supervised fine-tuning on packed sequences with the loss on solutions only.

The loop is generic: a task supplies a loss `loss_fn(model, batch) -> (loss_sum, weight_sum, metrics)`
and a `batch_at(step)` that is a pure function of the step (so a resumed run sees exactly the batches
the interrupted one would have). Its state is one pytree, `TrainState(step, params, opt_state)`,
checkpointed whole by orbax every `checkpoint_every` steps; restarting the same command with the same
output directory continues from the newest complete checkpoint.

On several processes (`ttcjax.distributed`) the mesh spans all of their devices: each process builds a step's batch
(the same pure function of the step) and feeds its devices only their rows, every process saves its own shards of
each checkpoint (orbax's multi-host save) and restores them, and process 0 alone writes metrics.jsonl (the others
read it, to replay the evaluations on resume).

Output directory:
    checkpoints/<step>/     orbax CheckpointManager (the newest `keep_checkpoints`)
    metrics.jsonl           one JSON object per logged step (and per evaluation); on resume the lines
                            after the restored step are dropped so nothing is counted twice
    model/                  the final model (ttcjax.checkpoints.native.save_model) plus its tokenizer
    train_summary.json      config, command, wall time, final metrics
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import platform
import secrets
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from ttcjax.distributed import agreed, gathered, is_writer
from ttcjax.io import atomic_path, finish_invocation, json_line, read_jsonl, replace_dir, write_json
from ttcjax.models.llama import Transformer, param_path
from ttcjax.models.program import Program
from ttcjax.models.sharding import ShardingRules, batch_sharding, feed_rows, param_axes, place

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"


# ---- optimisation ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup to `lr` and cosine decay to `lr * min_lr_ratio` at `steps`; gradients are
    clipped to global norm `clip_norm` first. Norm scales and biases are not decayed."""

    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    frozen: tuple[str, ...] = ()  # the submodules (top-level names) whose parameters keep their values

    def __post_init__(self):
        for name in ("lr", "min_lr_ratio", "weight_decay", "b1", "b2", "clip_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number.")
        for name in ("steps", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer.")
        if self.clip_norm <= 0 or self.weight_decay < 0 or not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"need clip_norm > 0, weight_decay >= 0 and b1, b2 in [0, 1); got clip_norm="
                             f"{self.clip_norm}, weight_decay={self.weight_decay}, b1={self.b1}, b2={self.b2}.")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1.")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}].")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1; got lr={self.lr}, "
                             f"min_lr_ratio={self.min_lr_ratio}.")

    @classmethod
    def from_fields(cls, config) -> "OptimConfig":
        """The optimiser settings of a training config that has fields of the same names (a field it lacks:
        the default)."""
        return cls(**{f.name: getattr(config, f.name, f.default) for f in dataclasses.fields(cls)})

    def schedule(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=self.lr, warmup_steps=self.warmup_steps,
            decay_steps=self.steps, end_value=self.lr * self.min_lr_ratio)

    def optimizer(self) -> optax.GradientTransformation:
        """The optimiser; one object per config, so that runs with the same config share compiled steps."""
        return _optimizer(self)

    def _build(self) -> optax.GradientTransformation:
        def decay_mask(params):
            # decay matrices only: norm scales ('scale') and biases (b*) keep their values
            return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim >= 2, params)

        adamw = optax.adamw(self.schedule(), b1=self.b1, b2=self.b2, weight_decay=self.weight_decay, mask=decay_mask)
        if not self.frozen:
            return optax.chain(optax.clip_by_global_norm(self.clip_norm), adamw)

        def labels(params):  # a frozen submodule's parameters get no update and no moment estimates
            return jax.tree_util.tree_map_with_path(
                lambda p, x: "frozen" if param_path(p)[0] in self.frozen else "trained", params)

        trained = optax.chain(optax.clip_by_global_norm(self.clip_norm), adamw)  # clipped by their own norm
        return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()}, labels)


@functools.lru_cache(maxsize=16)
def _optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    return optim._build()


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a run needs to continue: the step, the parameters (an nnx.State of Params) and the
    optimiser state."""

    step: jax.Array  # [] int32
    params: Any
    opt_state: Any


# ---- data parallel placement ------------------------------------------------------------------------


def state_shardings(state: TrainState, mesh: Mesh, rules: ShardingRules) -> TrainState:
    """NamedShardings for a TrainState: parameters (and the optimiser's moments, which mirror them) by
    their logical axes; everything else replicated."""
    replicated = NamedSharding(mesh, P())

    def for_params(tree):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: rules.sharding(param_axes(param_path(p)), x.shape, mesh), tree)

    params = for_params(state.params)
    params_structure = jax.tree.structure(state.params)

    def like_params(tree) -> bool:
        # Adam's mu and nu have the parameters' structure, a frozen parameter's moments masked out (MaskedNode)
        return jax.tree.structure(tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)) == params_structure

    def opt(tree):  # moments as their parameters; counts and empty states replicated
        return for_params(tree) if like_params(tree) else jax.tree.map(lambda _: replicated, tree)

    opt_state = jax.tree.map(opt, state.opt_state, is_leaf=like_params)
    return TrainState(step=replicated, params=params, opt_state=opt_state)


# ---- the loop -------------------------------------------------------------------------------------------


def check_processes_meshed(mesh: Mesh | None) -> None:
    """Training on several processes needs a mesh over their devices (each would otherwise train alone)."""
    if mesh is None and jax.process_count() > 1:
        raise ValueError(f"mesh: none trains on one device, but this run has {jax.process_count()} processes; set "
                         "mesh: auto (data parallel over every process's devices) or DATA,MODEL.")


LossFn = Callable[[Transformer, dict], tuple[jax.Array, jax.Array, dict]]


def _train_step(graphdef, tx, loss_fn, state: TrainState, batch: dict):
    def objective(params):
        loss_sum, weight, metrics = loss_fn(nnx.merge(graphdef, params), batch)
        return loss_sum / jnp.maximum(weight, 1.0), (weight, metrics)

    (loss, (weight, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), tokens=weight)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


_train_step_jit = jax.jit(_train_step, static_argnums=(0, 1, 2), donate_argnums=(3,))


def init_train_state(model: nnx.Module, optim: OptimConfig, mesh: Mesh | None = None,
                     rules: ShardingRules = ShardingRules()) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph and a fresh TrainState (step 0, its parameters, the optimiser's state), placed on
    `mesh` by `state_shardings` where one is given (`place`: where the mesh spans several processes, each keeps
    its devices' slices)."""
    graphdef, params = nnx.split(model, nnx.Param)
    # the graphdef must not carry non-Param state; the Transformer has none
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.optimizer().init(params))
    if mesh is not None:
        state = jax.tree.map(place, state, state_shardings(state, mesh, rules))
    return graphdef, state


def train_step_program(graphdef: nnx.GraphDef, optim: OptimConfig, loss_fn: LossFn, state: TrainState,
                       batch: dict) -> Program:
    """The compiled training step that `train_loop` runs on `state` (donated) and a placed `batch`: call it for
    (the next state, its metrics), or `.export(platforms)` it."""
    return Program(_train_step_jit, (graphdef, optim.optimizer(), loss_fn, state, batch))


@dataclasses.dataclass
class LoopResult:
    model: Transformer
    final_step: int
    resumed_from: int | None
    metrics: list[dict]  # the logged training metrics of this invocation
    wall_seconds: float
    best_step: int | None = None  # with early stopping: the step of the best evaluation
    stopped_early: bool = False

    def summary(self, started: float) -> dict[str, Any]:
        """What a training command's summary says of its loop: the step it reached, the step it resumed from, this
        invocation's wall time (since `started`, a `time.perf_counter()`), the machine and the last training
        metrics."""
        return {"step": self.final_step, "resumed_from": self.resumed_from,
                "wall_seconds_this_run": time.perf_counter() - started,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                           f"({jax.default_backend()}, {jax.device_count()} devices)",
                "last_train_metrics": next((m for m in reversed(self.metrics) if "loss" in m), None)}


def finish_training(out_dir: str, model: Transformer, summary: dict[str, Any], invocation: str | None,
                    write_model: Callable[[Transformer, str], None]) -> dict[str, Any]:
    """The end of a training command, on every process: where the run finished (`summary["finished"]`), the model
    gathered (every process takes part) and, on the writing process, written by `write_model(model, directory)` into
    OUT_DIR/model, which it replaces whole or not at all; then the summary (`write_summary`)."""
    final = gathered(model) if summary["finished"] else None
    if not is_writer():
        return summary
    if summary["finished"]:
        with replace_dir(os.path.join(out_dir, MODEL_DIR), keep=lambda name: False) as model_dir:
            write_model(final, model_dir)
    return write_summary(out_dir, summary, invocation)


def write_summary(out_dir: str, summary: dict[str, Any], invocation: str | None) -> dict[str, Any]:
    """`summary` with the totals of every invocation of the run directory (the interrupted ones counted), written to
    OUT_DIR/train_summary.json; the writing process's last step."""
    summary["invocations"] = finish_invocation(out_dir, summary["wall_seconds_this_run"], invocation)
    write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    return summary


def is_finite(value: Any) -> bool:
    """Whether an evaluation's value is a finite number: a non-finite one (NaN, inf; written to metrics.jsonl as
    null, strict JSON) is never the best."""
    return isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: str, upto_step: int) -> list[dict]:
    """The metrics lines of steps <= upto_step (a resumed run rewrites what came after). A last line cut by the
    interruption is dropped; a damaged line is an error naming the file and the line (`ttcjax.io.read_jsonl`)."""
    return [record for record in read_jsonl(path, ("step",), fix="remove that line to resume from the last "
                                            "checkpoint, or move the run directory away to start afresh.")
            if record["step"] <= upto_step]


def train_loop(model: Transformer, *, optim: OptimConfig, loss_fn: LossFn, batch_at: Callable[[int], dict],
               out_dir: str, checkpoint_every: int = 100, keep_checkpoints: int = 2, log_every: int = 10,
               mesh: Mesh | None = None, rules: ShardingRules = ShardingRules(),
               evaluate: Callable[[Transformer, int], dict] | None = None, eval_every: int = 0,
               stop_after: int | None = None, progress: bool = True, desc: str = "training",
               early_stopping: tuple[str, int] | None = None,
               on_best: Callable[[Transformer, int], None] | None = None) -> LoopResult:
    """Train `model` for `optim.steps` steps, resuming from `out_dir`'s newest checkpoint if there is one.

    `batch_at(step)` returns host arrays whose leading axis is the global batch; they are split over the
    mesh's data axis, each process feeding its own devices' rows (`feed_rows`). `stop_after` ends the invocation
    after that many steps of this call (an interruption, for tests); the checkpoint written at the end lets the next
    call continue.
    `evaluate(model, step)` runs every `eval_every` steps and at the end; its metrics are logged.
    `early_stopping=(metric, patience)`: stop when `evaluate`'s `metric` (lower is better) has not improved
    for `patience` evaluations; `on_best(model, step)` is called at each new best (to save it). A non-finite value
    (NaN, written as null) is never the best and is reported on stderr. A resumed run recovers the best value and
    the patience count from the evaluations in metrics.jsonl.
    """
    started = time.perf_counter()
    check_processes_meshed(mesh)
    os.makedirs(out_dir, exist_ok=True)
    graphdef, state = init_train_state(model, optim, mesh, rules)
    token = _claim(out_dir) if is_writer() else None

    def still_home() -> None:
        """Stop before writing where out_dir is no longer the directory this run started in (moved aside, or taken
        by another invocation, while it ran): writing would make a new one at the old path, or write into another
        run's. Process 0 decides for all; no save of this run is in flight while it looks."""
        manager.wait_until_finished()
        if agreed(is_writer() and _claimed(out_dir) != token):
            raise ValueError(f"{out_dir}: the run directory was moved or taken by another invocation while this run "
                             "trained; it stops here without writing. Resume it where it now is with the same "
                             "command and --out-dir.")

    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True))
    resumed_from = manager.latest_step()
    if resumed_from is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        try:
            state = manager.restore(resumed_from, args=ocp.args.StandardRestore(abstract))
        except ValueError as e:
            if "structure" not in str(e):
                raise
            raise ValueError(f"{os.path.join(out_dir, CHECKPOINT_DIR, str(resumed_from))}: the checkpoint's optimiser "
                             "state is laid out otherwise than this run's (another optimiser, or frozen modules "
                             "saved by an earlier ttcjax); rerun with --fresh, or resume with the ttcjax that wrote "
                             "it.") from None
        print(f"{desc}: resuming from step {resumed_from} ({os.path.join(out_dir, CHECKPOINT_DIR)})",
              file=sys.stderr)
    start = int(state.step)
    metrics_path = os.path.join(out_dir, METRICS_FILE)
    history = read_metrics(metrics_path, start)
    writer = is_writer()  # process 0 writes the metrics; every process reads them
    if writer:
        with atomic_path(metrics_path) as tmp, open(tmp, "w") as f:
            for record in history:
                f.write(json_line(record))

    def feed(batch):
        if mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        return jax.tree.map(lambda x: feed_rows(x, batch_sharding(mesh, rules, np.shape(x))), batch)

    end = optim.steps if stop_after is None else min(optim.steps, start + stop_after)
    best, best_step, since_best, stopped_early = float("inf"), None, 0, False
    if early_stopping is not None:
        metric, patience = early_stopping
        # replay the evaluations this run already made (null: not finite, never the best); one without the metric
        # (made before a rerun with --continue chose it) measured something else and counts for nothing
        for record in history:
            if "eval" in record and metric in record["eval"]:
                value = record["eval"].get(metric)
                best, best_step, since_best = ((value, record["step"], 0) if is_finite(value) and value < best
                                               else (best, best_step, since_best + 1))
        stopped_early = since_best >= patience
        if stopped_early:
            end = start
    logged, pending, window_start = [], [], time.perf_counter()
    bar = tqdm(total=optim.steps, initial=start, desc=desc, unit="step", file=sys.stderr,
               disable=not (progress and writer), dynamic_ncols=True)
    with open(metrics_path, "a") if writer else contextlib.nullcontext() as metrics_file:
        def log(record):
            if writer:
                metrics_file.write(json_line(record))
                metrics_file.flush()

        for step in range(start, end):
            state, metrics = train_step_program(graphdef, optim, loss_fn, state, feed(batch_at(step)))()
            pending.append(metrics)
            done = step + 1
            if done % log_every == 0 or done == end:
                host = jax.device_get(pending)  # replicated scalars: every process reads its own copy
                record = {"step": done, "lr": float(optim.schedule()(done - 1)),
                          "seconds_per_step": (time.perf_counter() - window_start) / len(host)}
                for name in host[0]:
                    values = np.array([float(m[name]) for m in host])
                    record[name] = float(values.sum() if name == "tokens" else values.mean())
                log(record)
                logged.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                pending, window_start = [], time.perf_counter()
            bar.update(1)
            final = done == optim.steps
            if evaluate is not None and ((eval_every and done % eval_every == 0) or final):
                evaluated = nnx.merge(graphdef, state.params)
                result = evaluate(evaluated, done)
                if early_stopping is not None:
                    value = result[early_stopping[0]]
                    if not is_finite(value):
                        print(f"{desc}: warning: step {done}: the evaluation's {early_stopping[0]} is {value}, not a "
                              "finite number (written as null); it is never the best, and counts towards early "
                              "stopping.", file=sys.stderr)
                    if is_finite(value) and value < best:
                        best, best_step, since_best = value, done, 0
                        if on_best is not None:
                            still_home()
                            on_best(evaluated, done)
                    else:
                        since_best += 1
                    stopped_early = since_best >= early_stopping[1]
                log({"step": done, "eval": result})
                logged.append({"step": done, "eval": result})
            if done % checkpoint_every == 0 or done == end or stopped_early:
                still_home()
                manager.save(done, args=ocp.args.StandardSave(state))
            if stopped_early:
                print(f"{desc}: early stop at step {done}; " + (
                    f"best {early_stopping[0]} {best:.4f} at step {best_step}" if best_step is not None
                    else f"no evaluation had a finite {early_stopping[0]}"), file=sys.stderr)
                end = done
                break
    bar.close()
    manager.wait_until_finished()
    manager.close()
    return LoopResult(model=nnx.merge(graphdef, state.params), final_step=end, resumed_from=resumed_from,
                      metrics=logged, wall_seconds=time.perf_counter() - started, best_step=best_step,
                      stopped_early=stopped_early)


TRAINING_CLAIM = ".training"  # in a training run's directory: a random id of the invocation training in it


def _claim(out_dir: str) -> str:
    """Mark `out_dir` as this invocation's (`TRAINING_CLAIM`, replacing an earlier one's): its id. By content, not
    inode, so that file systems whose inodes change (FUSE mounts) do not look moved."""
    claim = secrets.token_hex(8)
    with atomic_path(os.path.join(out_dir, TRAINING_CLAIM)) as tmp, open(tmp, "w") as f:
        f.write(claim)
    return claim


def _claimed(out_dir: str) -> str | None:
    """The id of the invocation `out_dir` belongs to; None where there is none (moved aside) or it cannot be read."""
    try:
        with open(os.path.join(out_dir, TRAINING_CLAIM)) as f:
            return f.read().strip()
    except OSError:
        return None


# ---- policy fine-tuning on packed sequences ----------------------------------------------------------------


class PackedArrays:
    """A dataclass of arrays whose leading axis is the packed row: its length and a batch of rows."""

    def __len__(self):
        return getattr(self, dataclasses.fields(self)[0].name).shape[0]

    def rows(self, index) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class PackedRows(PackedArrays):
    """Examples packed into rows of `seq_len` tokens, all [rows, seq_len]: `tokens` input ids, `targets`
    the next token, `loss_mask` 1 where the target is a solution token, `segment_ids` 1, 2, ... per
    example in a row (0 = padding), `positions` restarting at 0 in each example."""

    tokens: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray


def pack_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int = 0) -> PackedRows:
    """Pack (prompt ids, solution ids) pairs into rows, first fit in order; an example never straddles two
    rows. The loss covers exactly the tokens of each solution (targets predicted from the last prompt
    token on), never the prompt, padding or the next example."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    fill: list[int] = []
    for prompt, solution in examples:
        size = len(prompt) + len(solution)
        if not solution:
            raise ValueError("an example has an empty solution; there is nothing to train on.")
        if size > seq_len + 1:
            raise ValueError(f"an example of {size} tokens does not fit seq_len={seq_len} (+1 for the shifted "
                             "target); raise seq_len.")
        # a row of seq_len inputs holds examples totalling seq_len + (examples in it) tokens at most,
        # because each example's last token is only a target; keep it simple: inputs = all but last token
        need = size - 1
        for r, used in enumerate(fill):
            if used + need <= seq_len:
                rows[r].append((prompt, solution))
                fill[r] += need
                break
        else:
            rows.append([(prompt, solution)])
            fill.append(need)
    n = len(rows)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    targets = np.full((n, seq_len), pad_id, np.int32)
    loss_mask = np.zeros((n, seq_len), np.float32)
    segment_ids = np.zeros((n, seq_len), np.int32)
    positions = np.zeros((n, seq_len), np.int32)
    for r, row in enumerate(rows):
        at = 0
        for s, (prompt, solution) in enumerate(row, start=1):
            ids = list(prompt) + list(solution)
            length = len(ids) - 1
            tokens[r, at:at + length] = ids[:-1]
            targets[r, at:at + length] = ids[1:]
            loss_mask[r, at + len(prompt) - 1:at + length] = 1.0
            segment_ids[r, at:at + length] = s
            positions[r, at:at + length] = np.arange(length)
            at += length
    return PackedRows(tokens, targets, loss_mask, segment_ids, positions)


def lm_loss(model: Transformer, batch: dict) -> tuple[jax.Array, jax.Array, dict]:
    """Summed next-token cross-entropy over `loss_mask`, its weight, and the token accuracy."""
    logits, _, _ = model(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    mask = batch["loss_mask"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    weight = mask.sum()
    return (losses * mask).sum(), weight, {"token_accuracy": (correct * mask).sum() / jnp.maximum(weight, 1.0)}


def epoch_batches(num_rows: int, batch_size: int, seed: int) -> Callable[[int], np.ndarray]:
    """Row indices of step `step`'s batch: a fresh permutation each epoch, a pure function of the step."""
    if num_rows < batch_size:
        raise ValueError(f"{num_rows} packed rows are fewer than batch_size={batch_size}; generate more "
                         "training examples or lower batch_size.")
    per_epoch = num_rows // batch_size

    @functools.lru_cache(maxsize=2)
    def permutation(epoch):
        return np.random.default_rng([seed, epoch]).permutation(num_rows)

    def rows_of(step: int) -> np.ndarray:
        epoch, i = divmod(step, per_epoch)
        return permutation(epoch)[i * batch_size:(i + 1) * batch_size]

    return rows_of
