"""`ttcjax train policy`, `train prm` and `train revision` on 2 processes x 4 CPU devices (localhost,
jax.distributed): data parallel over the global mesh, each process feeding its rows of each batch, gives the losses
and parameters of 1 process on 8 devices (and, for the revision model, the data it samples); process 0 alone writes
every file but the checkpoints' shards; and a run cut after its first checkpoint resumes from it on the two
processes to the same end."""

import json
import os
import shutil

import numpy as np
import yaml
from flax import nnx, traverse_util
from multihost import PROCESSES, finish, launch_commands, written

import ttcjax
from ttcjax.checkpoints.native import load_model, save_model
from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.cli import main
from ttcjax.models import ModelConfig, init_model
from ttcjax.training.labels import LabelledSolution, save_labels
from ttcjax.verifiers.reward_model import PRM_CONFIG_FILE, load_prm

WHAT = ("policy", "prm", "revision")
SHIPPED_POLICY = os.path.join(os.path.dirname(ttcjax.__file__), "assets", "policies", "tiny", "model")
MODEL = {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
         "num_kv_heads": 1, "max_position_embeddings": 128}


def configs(tmp_path) -> dict[str, dict]:
    """A tiny policy run, a reward-model run on labels written here (no sampling) and a revision-model run on
    answers the shipped tiny policy samples (a tiny random model fine-tuned), each checkpointed at step 2 of 4,
    their batches split over 8 devices."""
    labels = tmp_path / "labels.jsonl"
    rng = np.random.default_rng(0)
    save_labels(labels, [LabelledSolution(problem_id=f"q{i}", question=f"Q: {i}+{i + 1}=\n",
                                          steps=(f"{i}+{i + 1}={2 * i + 1}", f"The answer is {2 * i + 1}"),
                                          step_labels=tuple(rng.uniform(0, 1, 2).round(3)), correct=bool(i % 2))
                         for i in range(24)])
    common = {"steps": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 3,
              "mesh": "auto", "seed": 0}
    return {
        "policy": {**common, "out_dir": "-", "model_config": MODEL, "task": {"difficulties": [2]}, "num_train": 64,
                   "seq_len": 64, "batch_size": 8, "lr": 1e-2, "eval_problems": 0},
        "prm": {**common, "out_dir": "-", "policy": str(tmp_path / "policy-model"), "labels": str(labels),
                "seq_len": 64, "batch_size": 8, "lr": 3e-3, "eval_every": 2, "patience": 5,
                "validation_fraction": 0.25},
        "revision": {**common, "out_dir": "-", "policy": SHIPPED_POLICY, "init_from": str(tmp_path / "revision-init"),
                     "task": {"difficulties": [2]}, "num_questions": 12, "eval_questions": 2,
                     "samples_per_question": 4, "seq_len": 256, "batch_size": 8, "lr": 3e-3, "eval_every": 2},
    }


def commands(tmp_path, out) -> list[list[str]]:
    return [["train", what, "--config", str(tmp_path / f"{what}.yaml"), "--out-dir", str(out / what), "--no-progress"]
            for what in WHAT]


def losses(run) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds_per_step"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def params(directory) -> dict:
    """The parameters of a policy, or of a reward model (its backbone and its head)."""
    model = load_prm(str(directory))[0] if (directory / PRM_CONFIG_FILE).exists() else load_model(directory)
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_same_training(run, reference):
    got, want = losses(run), losses(reference)
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want):  # a training step's metrics, or an evaluation's
        a, b = a.get("eval", a), b.get("eval", b)
        assert a.keys() == b.keys()
        for key in b:
            if b[key] is None:  # a metric with nothing to measure (NaN, written as null): so in both runs
                assert a[key] is None, f"{run}: {key}"
                continue
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"{run}: {key}")
    mine, theirs = params(run / "model"), params(reference / "model")
    assert mine.keys() == theirs.keys()
    for path in theirs:
        np.testing.assert_allclose(np.asarray(mine[path]), np.asarray(theirs[path]), rtol=1e-4, atol=1e-6,
                                   err_msg=f"{run}: {path}")


def test_two_processes_train_as_one_and_resume(tmp_path):
    for what, config in configs(tmp_path).items():
        (tmp_path / f"{what}.yaml").write_text(yaml.safe_dump(config))
    revision_init = tmp_path / "revision-init"  # room for a revision context: a prompt and earlier attempts
    save_model(init_model(ModelConfig(**{**MODEL, "max_position_embeddings": 256}), seed=0), str(revision_init))
    CharTokenizer().save(revision_init)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(commands(tmp_path, one)[0]) == 0  # 1 process, 8 devices: the policy, then the PRM on it, ...
    shutil.copytree(one / "policy" / "model", tmp_path / "policy-model")
    for command in commands(tmp_path, one)[1:]:
        assert main(command) == 0
    sampled = one / "revision" / "data"
    assert json.loads((sampled / "summary.json").read_text())["train"]["examples"] > 0  # something to train on

    audit, cache = tmp_path / "audit", tmp_path / "jax-cache"
    audit.mkdir()
    ended = finish(launch_commands(commands(tmp_path, two), cache, audit))
    assert [status for status, _, _ in ended] == [0] * PROCESSES, [err[-3000:] for _, _, err in ended]
    for what in WHAT:
        assert_same_training(two / what, one / what)
    for name in ("train.jsonl", "validation.jsonl"):  # the revision data: the answers 1 process sampled
        assert (two / "revision" / "data" / name).read_text() == (sampled / name).read_text()
    # process 0 wrote the shared files; process 1 only its shards of the checkpoints
    shared = {os.path.realpath(two / what / name) for what in WHAT
              for name in ("metrics.jsonl", "train_summary.json", "run_config.json")}
    shared.add(os.path.realpath(two / "revision" / "data" / "summary.json"))
    assert shared <= written(audit, 0)
    assert not {path for path in written(audit, 1) if path.startswith(os.path.realpath(two))
                and f"{os.sep}checkpoints{os.sep}" not in path}
    assert [line for line in ended[1][1].splitlines() if line.startswith("{")] == []  # process 0 reports

    # a run cut after its step-2 checkpoint: the same commands resume from it and end as the straight runs did
    for what in WHAT:
        shutil.rmtree(two / what / "checkpoints" / "4")
        shutil.rmtree(two / what / "model")
    shutil.rmtree(audit)
    audit.mkdir()
    ended = finish(launch_commands(commands(tmp_path, two), cache, audit))
    assert [status for status, _, _ in ended] == [0] * PROCESSES, [err[-3000:] for _, _, err in ended]
    assert ended[0][2].count("resuming from step 2") == len(WHAT)
    for what in WHAT:
        summary = json.loads((two / what / "train_summary.json").read_text())
        assert summary["resumed_from"] == 2 and summary["finished"]
        assert_same_training(two / what, one / what)  # every step logged once
