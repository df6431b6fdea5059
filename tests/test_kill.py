"""kill -9 at a point inside a long job, then the same command again: the result equals an uninterrupted run's.
The job runs as a subprocess (`python -m ttcjax.cli ...`), killed with SIGKILL once it has written part of its
work; the rerun resumes from what was written."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import yaml
from flax import nnx

from ttcjax.checkpoints.native import load_model
from ttcjax.cli import main


def kill_when(args, ready, timeout=240.0):
    """Run `python -m ttcjax.cli *args` and SIGKILL it as soon as `ready()` holds; True if it was killed
    mid-run (False: it finished first, which would make the test check nothing)."""
    proc = subprocess.Popen([sys.executable, "-m", "ttcjax.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def without_times(record):
    return {k: v for k, v in record.items() if k not in ("seconds", "seconds_per_question")}


def run_killed_and_straight(command: str, config: dict, tmp_path, result: str) -> tuple[dict, dict]:
    """`ttcjax COMMAND` run straight, and run again killed once its first cell has written part of its questions
    and then rerun: the two `result` files (JSON), after both runs' per-question records were found equal."""
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([command, "--config", str(path), "--out-dir", str(straight), "--no-progress"]) == 0
    first_cell = killed / "results" / "best_of_n-b2.jsonl"
    assert kill_when([command, "--config", str(path), "--out-dir", str(killed), "--no-progress"],
                     lambda: 0 < len(lines(first_cell)))
    assert not (killed / result).exists() and len(lines(first_cell)) < config["questions"]
    assert main([command, "--config", str(path), "--out-dir", str(killed), "--no-progress"]) == 0
    for name in sorted(os.listdir(straight / "results")):
        assert ([without_times(json.loads(x)) for x in lines(straight / "results" / name)]
                == [without_times(json.loads(x)) for x in lines(killed / "results" / name)]), name
    a, b = (json.loads((d / result).read_text()) for d in (straight, killed))
    # the totals count both invocations: the killed one has no time of its own
    assert b["invocations"]["invocations"] == 2 and b["invocations"]["interrupted_invocations"] == 1
    assert a["invocations"]["invocations"] == 1 and a["invocations"]["interrupted_invocations"] == 0
    return a, b


def test_an_experiment_killed_mid_search_resumes_to_the_uninterrupted_result(tmp_path):
    # killed once the first cell has written some of its questions (batches of 4 or 2 questions)
    config = {"task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 8, "policy": "tiny",
              "verifier": "tiny", "difficulty_samples": 2, "bins": 2, "budgets": [2, 4],
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 2}],
              "search": {"max_rounds": 8, "max_step_tokens": 20}, "rows_per_batch": 8, "probe_samples": 1}
    a, b = run_killed_and_straight("experiment", config, tmp_path, "report.json")
    for key in ("accuracy", "per_level", "compute_optimal", "coverage", "mean_generated_tokens",
                "difficulty_cost_tokens", "findings"):
        assert a[key] == b[key], key


def test_a_sweep_killed_mid_cell_resumes_to_the_uninterrupted_result(tmp_path):
    # killed once the first cell has written its first batch (2 questions of 6)
    config = {"task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 6, "policy": "tiny",
              "verifier": "tiny", "budgets": [2], "rows_per_batch": 4,
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}],
              "search": {"max_rounds": 8, "max_step_tokens": 20}}
    a, b = run_killed_and_straight("sweep", config, tmp_path, "summary.json")
    untimed = [{s: {n: without_times(c) for n, c in cells.items()} for s, cells in t["table"].items()} for t in (a, b)]
    assert untimed[0] == untimed[1]


def test_training_killed_after_a_checkpoint_resumes_to_the_uninterrupted_model(tmp_path):
    config = {"model_config": {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                               "num_heads": 2, "num_kv_heads": 1, "max_position_embeddings": 128},
              "task": {"difficulties": [2, 3]}, "num_train": 240, "seq_len": 96, "batch_size": 8, "steps": 40,
              "lr": 0.01, "warmup_steps": 3, "log_every": 2, "checkpoint_every": 4, "eval_problems": 0,
              "mesh": "none"}
    paths = {}
    for name in ("straight", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**config, "out_dir": str(tmp_path / name)}))
    assert main(["train", "policy", "--config", str(paths["straight"]), "--no-progress"]) == 0
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert kill_when(["train", "policy", "--config", str(paths["killed"]), "--no-progress"],
                     lambda: checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= 8
                                                          for p in checkpoints.iterdir()))
    assert not (tmp_path / "killed" / "model").exists()
    assert main(["train", "policy", "--config", str(paths["killed"]), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert summary["finished"] and summary["resumed_from"] >= 8
    a, b = (load_model(tmp_path / name / "model") for name in ("straight", "killed"))
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
