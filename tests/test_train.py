"""Policy fine-tuning: packing, the loss mask, the schedule, a run whose loss falls, resume, data parallel."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttcjax.checkpoints.native import load_model
from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.cli import main
from ttcjax.models import ModelConfig, forward, init_model
from ttcjax.tasks import arithmetic
from ttcjax.training.loop import METRICS_FILE, OptimConfig, epoch_batches, pack_examples
from ttcjax.training.policy import (PolicyTrainConfig, encode_example, pass_at_k, train_policy, training_examples,
                                    training_problems, training_solutions)

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
            max_position_embeddings=128)


def tiny_config(out_dir, **overrides):
    base = dict(out_dir=str(out_dir), model_config=TINY, task={"difficulties": [2, 3]}, num_train=240, seq_len=96,
                batch_size=8, steps=12, lr=1e-2, warmup_steps=3, log_every=2, checkpoint_every=4, eval_problems=0,
                mesh="none")
    base.update(overrides)
    return PolicyTrainConfig(**base)


def test_pack_examples_masks_exactly_the_solutions():
    examples = [([1, 10, 11], [20, 21, 2]), ([1, 12], [22, 2]), ([1, 13, 14, 15], [23, 24, 25, 26, 2])]
    packed = pack_examples(examples, seq_len=8)
    # example 0 uses 5 inputs, example 1 uses 3: they share row 0; example 2 (8 inputs) fills row 1
    assert len(packed) == 2
    np.testing.assert_array_equal(packed.segment_ids[0], [1, 1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(packed.positions[0], [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(packed.tokens[0], [1, 10, 11, 20, 21, 1, 12, 22])
    np.testing.assert_array_equal(packed.targets[0], [10, 11, 20, 21, 2, 12, 22, 2])
    # the loss sees the targets that are solution tokens: 20 21 2 | 22 2 | 23 24 25 26 2
    targets = packed.targets[packed.loss_mask == 1]
    np.testing.assert_array_equal(targets, [20, 21, 2, 22, 2, 23, 24, 25, 26, 2])
    with pytest.raises(ValueError, match="seq_len"):
        pack_examples([([1] * 6, [2] * 6)], seq_len=8)


def test_packed_forward_equals_each_example_alone():
    config = ModelConfig(**TINY)
    model = init_model(config, seed=3)
    tok = CharTokenizer()
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2, 4)), 6, seed=1)
    examples = [encode_example(tok, p) for p in problems]
    packed = pack_examples(examples, seq_len=128)
    assert len(packed) < len(examples)  # several examples share a row
    logits, _, _ = model(jnp.asarray(packed.tokens), positions=jnp.asarray(packed.positions),
                         segment_ids=jnp.asarray(packed.segment_ids))
    segments = {(r, s): packed.tokens[r][packed.segment_ids[r] == s].tolist()
                for r in range(len(packed)) for s in set(packed.segment_ids[r].tolist()) - {0}}
    assert len(segments) == len(examples)
    for prompt, solution in examples:
        ids = prompt + solution[:-1]
        (row, seg), = [k for k, v in segments.items() if v == ids]
        alone = forward(model, jnp.asarray(ids)[None])[0]
        where = packed.segment_ids[row] == seg
        np.testing.assert_allclose(np.asarray(logits[row][where]), np.asarray(alone), atol=2e-5)


def test_schedule_warms_up_then_decays_to_the_floor():
    optim = OptimConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    schedule = optim.schedule()
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-4)
    values = [float(schedule(s)) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="warmup_steps"):
        OptimConfig(steps=10, warmup_steps=11)


def test_a_frozen_submodule_keeps_its_values_and_no_moments_and_the_rest_train_and_shard_as_without_it(tmp_path):
    from ttcjax.models.sharding import ShardingRules, make_mesh
    from ttcjax.training.loop import _train_step, init_train_state, lm_loss, state_shardings, train_loop

    model = init_model(ModelConfig(**TINY), seed=0)
    names = ("embedding", "final_norm")  # frozen; the layers and the LM head train
    frozen = OptimConfig(steps=4, warmup_steps=0, lr=1e-2, clip_norm=0.05, frozen=names)  # lr 1e-2 at step 0
    plain_optim = dataclasses.replace(frozen, frozen=())
    graphdef, state = init_train_state(model, frozen)
    _, plain = init_train_state(model, plain_optim)
    sizes = {path: x.size for path, x in jax.tree_util.tree_leaves_with_path(state.params)}
    in_frozen = sum(n for path, n in sizes.items() if path[0].key in names)
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)  # Adam's mu and nu
    assert in_frozen > 0 and moments == 2 * (sum(sizes.values()) - in_frozen)
    assert sum(x.size for x in jax.tree.leaves(plain.opt_state) if x.ndim) == 2 * sum(sizes.values())

    def loss_fn(m, batch):
        logits, _, _ = m(batch["tokens"])
        return jnp.sum(jax.nn.logsumexp(logits, -1) - logits[..., 0]), jnp.float32(logits.size), {}

    def without_frozen_gradients(m, batch):  # the same loss, the frozen modules outside the gradient
        m.embedding[...] = jax.lax.stop_gradient(m.embedding[...])
        m.final_norm.scale[...] = jax.lax.stop_gradient(m.final_norm.scale[...])
        return loss_fn(m, batch)

    batch = {"tokens": jnp.arange(16, dtype=jnp.int32).reshape(2, 8)}
    before = jax.tree.map(np.array, state.params)
    after, reference = state, plain
    for batch in (batch, {"tokens": batch["tokens"][::-1] % 7}):  # two steps: Adam's first is blind to the scale
        after, _ = _train_step(graphdef, frozen.optimizer(), loss_fn, after, batch)
        # the trained modules move exactly as an unfrozen optimiser moves them when the frozen ones get no gradient
        # (clipped by their own norm: clip_norm is small enough here to clip)
        reference, _ = _train_step(graphdef, plain_optim.optimizer(), without_frozen_gradients, reference, batch)
        reference = dataclasses.replace(reference, params=jax.tree_util.tree_map_with_path(  # undo their decay
            lambda path, x, b: b if path[0].key in names else x, reference.params, before))
    for (path, a), b, r in zip(jax.tree_util.tree_leaves_with_path(after.params), jax.tree.leaves(before),
                               jax.tree.leaves(reference.params)):
        if path[0].key in names:
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
        else:
            assert not np.array_equal(a, b), jax.tree_util.keystr(path)
            np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))

    # each moment is sharded as its own parameter
    shardings = state_shardings(state, make_mesh(data=4, model=2), ShardingRules())
    param_specs = {jax.tree_util.keystr(p): sh.spec
                   for p, sh in jax.tree_util.tree_leaves_with_path(shardings.params)}
    checked = 0
    for path, sh in jax.tree_util.tree_leaves_with_path(shardings.opt_state):
        key = jax.tree_util.keystr(path)
        own = [p for p in param_specs if key.endswith(p)]
        if own:
            assert sh.spec == param_specs[own[0]], key
            checked += "model" in sh.spec
    assert checked > 0

    # a checkpoint whose optimiser state is laid out otherwise (saved unfrozen) stops a frozen resume with one line
    packed = pack_examples([([1, 2], [3, 4, 5])] * 4, 8)

    def run(optim, stop_after=None):
        return train_loop(init_model(ModelConfig(**TINY)), optim=optim, loss_fn=lm_loss,
                          batch_at=lambda step: packed.rows(np.arange(len(packed))), out_dir=str(tmp_path),
                          checkpoint_every=2, log_every=2, stop_after=stop_after, progress=False)

    run(plain_optim, stop_after=2)
    with pytest.raises(ValueError, match="laid out otherwise.*--fresh"):
        run(frozen)


def test_epoch_batches_cover_every_row_once_per_epoch():
    rows_of = epoch_batches(10, 3, seed=0)
    epoch = np.concatenate([rows_of(s) for s in range(3)])
    assert len(set(epoch.tolist())) == 9
    assert not np.array_equal(rows_of(0), rows_of(3))  # a new permutation next epoch
    np.testing.assert_array_equal(rows_of(4), epoch_batches(10, 3, seed=0)(4))  # a pure function of the step
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(2, 3, seed=0)


def test_pass_at_k():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def _metrics(out_dir):
    with open(os.path.join(out_dir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def test_training_mix_per_difficulty(tmp_path):
    config = tiny_config(tmp_path, num_train_per_difficulty={2: 30, 3: 10})
    problems = training_problems(config)
    assert [sum(p.difficulty == d for p in problems) for d in (2, 3)] == [30, 10]
    assert len({p.id for p in problems}) == 40 and all(p.split == "train" for p in problems)
    assert [p.difficulty for p in problems] != sorted(p.difficulty for p in problems)  # shuffled
    assert [p.id for p in training_problems(config)] == [p.id for p in problems]  # deterministic
    for bad in ({2: 30}, {2: 30, 3: 0}, {2: 30, 3: 10, 4: 5}):
        with pytest.raises(ValueError, match="num_train_per_difficulty"):
            tiny_config(tmp_path, num_train_per_difficulty=bad)


def test_training_solutions_in_random_valid_orders(tmp_path):
    config = tiny_config(tmp_path, num_train_per_difficulty={2: 30, 3: 10, 4: 40}, task={"difficulties": [2, 3, 4]})
    problems = training_problems(config)
    assert training_solutions(config, problems) == [None] * len(problems)  # the default: reference paths
    shuffled = dataclasses.replace(config, solution_order="random")
    paths = training_solutions(shuffled, problems)
    assert paths == training_solutions(shuffled, problems)  # seeded: a resumed run packs the same data
    assert sum(path != p.steps for p, path in zip(problems, paths)) >= 5
    for p, path in zip(problems, paths):
        assert sorted(path) == sorted(p.steps) and len(path) == p.difficulty and path[-1][3] == p.answer
        lines = arithmetic.split_steps(arithmetic.format_solution(p, path))
        assert arithmetic.prefix_on_path(p, lines)
        _, solution = encode_example(CharTokenizer(), p, path)
        assert CharTokenizer().decode(solution).startswith(arithmetic.format_solution(p, path))
    with pytest.raises(ValueError, match="solution_order"):
        tiny_config(tmp_path, solution_order="shuffled")
    p, path = problems[0], paths[0]
    _, restated = encode_example(CharTokenizer(), p, path, restate=True)
    assert CharTokenizer().decode(restated).startswith(arithmetic.format_solution(p, path, restate=True))
    assert arithmetic.RESTATE_SEPARATOR in CharTokenizer().decode(restated)
    with pytest.raises(ValueError, match="solution_format"):
        tiny_config(tmp_path, solution_format="verbose")


def test_training_lowers_the_loss(tmp_path):
    summary = train_policy(tiny_config(tmp_path / "run", steps=30, lr=3e-2, warmup_steps=5), progress=False)
    losses = [m["loss"] for m in _metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 15
    assert losses[-1] < 0.6 * losses[0], losses
    assert summary["finished"] and summary["step"] == 30
    model = load_model(tmp_path / "run" / "model")
    assert os.path.exists(tmp_path / "run" / "model" / "ttcjax_tokenizer.json")
    assert model.config.num_params() == summary["model"]["params"]


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    straight = train_policy(tiny_config(tmp_path / "straight", steps=8), progress=False)
    first = train_policy(tiny_config(tmp_path / "resumed", steps=8), stop_after=6, progress=False)
    assert not first["finished"] and first["step"] == 6
    assert not os.path.exists(tmp_path / "resumed" / "model")
    # the interruption cut a metrics line in half; the resumed run must cope and count nothing twice
    with open(tmp_path / "resumed" / METRICS_FILE, "a") as f:
        f.write('{"step": 7, "lo')
    second = train_policy(tiny_config(tmp_path / "resumed", steps=8), progress=False)
    assert second["resumed_from"] == 6 and second["finished"]
    a, b = load_model(tmp_path / "straight" / "model"), load_model(tmp_path / "resumed" / "model")
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    steps = [m["step"] for m in _metrics(tmp_path / "resumed") if "loss" in m]
    assert steps == list(range(2, 9, 2))
    assert straight["last_train_metrics"]["loss"] == pytest.approx(second["last_train_metrics"]["loss"], rel=1e-5)
    # the directory belongs to its config: resuming under another learning rate is refused before any work
    metrics = (tmp_path / "resumed" / METRICS_FILE).read_text()
    with pytest.raises(ValueError, match=r"another config \(keys that differ: \['lr'\]\)"):
        train_policy(tiny_config(tmp_path / "resumed", steps=8, lr=1e-3), progress=False)
    assert (tmp_path / "resumed" / METRICS_FILE).read_text() == metrics


def test_data_parallel_training_equals_one_device(tmp_path):
    assert jax.device_count() == 8
    one = train_policy(tiny_config(tmp_path / "one", steps=4), progress=False)
    eight = train_policy(tiny_config(tmp_path / "eight", steps=4, mesh="4,2"), progress=False)
    a, b = load_model(tmp_path / "one" / "model"), load_model(tmp_path / "eight" / "model")
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    assert one["last_train_metrics"]["loss"] == pytest.approx(eight["last_train_metrics"]["loss"], rel=1e-5)


def test_cli_train_policy(tmp_path, capsys):
    cfg = tmp_path / "policy.yaml"
    cfg.write_text(
        "model_config: {vocab_size: 101, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2,\n"
        "               num_kv_heads: 1, max_position_embeddings: 128}\n"
        "task: {difficulties: [2]}\nnum_train: 64\nseq_len: 64\nbatch_size: 4\nsteps: 2\nwarmup_steps: 1\n"
        "eval_problems: 2\nmesh: none\nout_dir: ignored\n")
    out = tmp_path / "run"
    assert main(["train", "policy", "--config", str(cfg), "--out-dir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["command"].startswith("ttcjax train policy --config")
    assert set(summary["validation"]["by_difficulty"]) == {"2"}
    assert main(["eval", "policy", "--model", str(out / "model"), "--per-difficulty", "2", "--samples", "2",
                 "--max-new-tokens", "96", "--split", "validation", "--output", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["all"]["problems"] == 8 and "pass@2" in result["all"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("out_dir: x\nmodel_config: {}\nlearning_rate: 1\n")
    assert main(["train", "policy", "--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_training_on_any_task_uses_its_prompts_and_reference_solutions(tmp_path):
    """A GSM8K-format file with a few-shot-free template: each example is the prompt as it will be asked and the
    reference solution's steps, then EOS; the loss falls; evaluation during training reads the named split."""
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2,)), 40, seed=4, split="train")
    for split, part in (("train", problems[:32]), ("test", problems[32:])):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for p in part:
                steps = "\n".join(f"{a}{op}{b}={r}" for a, op, b, r in p.steps)
                f.write(json.dumps({"question": p.expression, "answer": f"{steps}\n#### {p.answer}"}) + "\n")
    task = {"name": "gsm8k", "path": str(tmp_path), "prompt": {"template": "Q: {question}=\n"}}
    config = tiny_config(tmp_path / "run", task=task, num_train=32, steps=20, lr=3e-2, warmup_steps=3,
                         eval_problems=4, eval_split="test")
    examples = training_examples(config, config.make_task(), CharTokenizer())
    prompt, solution = examples[0]
    text = CharTokenizer().decode(prompt + solution)
    assert len(examples) == 32 and text.startswith("Q: ") and "The answer is" in text
    assert solution[-1] == CharTokenizer().eos_id
    summary = train_policy(config, progress=False)
    losses = [m["loss"] for m in _metrics(tmp_path / "run") if "loss" in m]
    assert losses[-1] < 0.7 * losses[0], losses
    assert summary["data"]["task"]["name"] == "gsm8k" and summary["validation"]["all"]["problems"] == 4
    with pytest.raises(ValueError, match="solution_format is an option of the built-in arithmetic task"):
        tiny_config(tmp_path / "x", task=task, solution_format="restate")
    with pytest.raises(ValueError, match="no split 'validation'"):
        tiny_config(tmp_path / "x", task=task, eval_problems=4)


def test_a_non_finite_validation_loss_is_never_the_best_and_a_resume_reads_its_null(tmp_path, capsys):
    """A NaN evaluation is written as null (strict JSON); the run resumed after it replays it as an evaluation that
    did not improve (it crashed comparing null), and the best stays the best finite one."""
    from ttcjax.training.loop import lm_loss, train_loop

    nan = float("nan")
    packed = pack_examples([([1, 2], [3, 4, 5])] * 4, 8)
    losses = {2: 1.0, 4: nan, 6: 0.5, 8: nan}
    bests = []

    def run(stop_after=None):
        return train_loop(init_model(ModelConfig(**TINY)), optim=OptimConfig(steps=8, warmup_steps=1),
                          loss_fn=lm_loss, batch_at=lambda step: packed.rows(np.arange(len(packed))), out_dir=str(tmp_path),
                          checkpoint_every=2, log_every=2, evaluate=lambda model, step: {"loss": losses[step]},
                          eval_every=2, stop_after=stop_after, progress=False, early_stopping=("loss", 3),
                          on_best=lambda model, step: bests.append(step))

    first = run(stop_after=4)
    assert first.final_step == 4 and first.best_step == 2 and bests == [2]
    assert "step 4: the evaluation's loss is nan, not a finite number" in capsys.readouterr().err
    evals = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines() if '"eval"' in line]
    assert evals == [{"step": 2, "eval": {"loss": 1.0}}, {"step": 4, "eval": {"loss": None}}]
    second = run()  # replays step 4's null: not the best, one evaluation without improvement
    assert second.final_step == 8 and second.best_step == 6 and bests == [2, 6] and not second.stopped_early
    assert "step 8: the evaluation's loss is nan" in capsys.readouterr().err


def test_a_training_run_whose_directory_is_moved_or_taken_stops_before_writing(tmp_path):
    """A run that keeps going after its directory was moved aside (a kill that did not stop it) must not make a new
    directory at the old path, where a second run would then mix with it; nor go on writing into a directory that
    another invocation has since taken."""
    from ttcjax.training.loop import _claim, lm_loss, train_loop

    packed = pack_examples([([1, 2], [3, 4, 5])] * 4, 8)

    def train(out, evaluate):
        train_loop(init_model(ModelConfig(**TINY)), optim=OptimConfig(steps=8, warmup_steps=1), loss_fn=lm_loss,
                   batch_at=lambda step: packed.rows(np.arange(len(packed))), out_dir=str(out), checkpoint_every=2,
                   log_every=2, evaluate=evaluate, eval_every=2, progress=False, early_stopping=("loss", 5),
                   on_best=lambda model, step: None)

    out, aside = tmp_path / "run", tmp_path / "run.aside"

    def move_at_2(model, step):
        if step == 2:  # before its first checkpoint
            os.rename(out, aside)
        return {"loss": 1.0 / step}

    with pytest.raises(ValueError, match="moved or taken by another invocation"):
        train(out, move_at_2)
    assert not out.exists()  # nothing made at the old path
    assert (aside / "metrics.jsonl").read_text().count('"step": 2') == 1  # what it wrote is where it was moved

    taken = tmp_path / "taken"

    def taken_at_4(model, step):
        if step == 4:
            _claim(str(taken))  # another invocation starts in the directory
        return {"loss": 1.0 / step}

    with pytest.raises(ValueError, match="moved or taken by another invocation"):
        train(taken, taken_at_4)
    assert sorted(os.listdir(taken / "checkpoints")) == ["2"]  # the step-4 checkpoint was not written
