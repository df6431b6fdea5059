"""kill -9 at a random point inside a long job, then the same command again: the result equals an uninterrupted
run's.

The job runs as a subprocess (`python -m ttcjax.cli ...`), killed with SIGKILL at a point drawn at random from
the working window of an uninterrupted run of the same command (in this process, first), from its first progress
(records or a checkpoint written) to its end. That run's timeline maps the point to a count of progress (the
records or the checkpointed steps written by then) and the seconds since it was reached: the subprocess is killed
that long after it reaches that count, or as soon as it moves past it (it finds its programs compiled, in the XLA
cache, so seconds alone would not say where in its work it is). So the kill lands mid-batch, mid-write, mid-checkpoint, or after the job ended
(then the rerun must find nothing left to do). The rerun resumes from what was written, keeps what the killed run
finished as it was, and ends with the uninterrupted run's results wherever the kill landed.

The points are drawn from a seed chosen anew each test run and named in every assertion message, as
`kill seed N`; `TTCJAX_KILL_SEED=N` draws the same points again."""

import dataclasses
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import yaml
from flax import nnx

from ttcjax.checkpoints.native import load_model
from ttcjax.cli import main
from ttcjax.io import RUN_LOG_FILE, read_run_log

SEED = int(os.environ.get("TTCJAX_KILL_SEED") or secrets.randbits(32))


def straight_run(argv, progress) -> list[tuple[float, int]]:
    """Run `ttcjax *argv` in this process to its end while a thread polls `progress()` (a count that grows with
    the work written): its timeline, (seconds, count) at each change of the count from the first progress on,
    and (seconds, count) at the end."""
    timeline, done = [], threading.Event()

    def watch():
        while not done.is_set():
            count = progress()
            if count and (not timeline or count != timeline[-1][1]):
                timeline.append((time.monotonic(), count))
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        assert main(argv) == 0
    finally:
        done.set()
        thread.join()
    timeline.append((time.monotonic(), progress()))
    return timeline


@dataclasses.dataclass(frozen=True)
class Kill:
    """Where one kill landed: `delay` seconds after the job's progress reached `count` (of `total`), drawn by
    `seed`; `killed` False where the job had ended (exit 0) before."""

    seed: int
    count: int
    total: int
    delay: float
    killed: bool

    def __str__(self) -> str:
        landed = "killed" if self.killed else "the job ended before its kill,"
        return (f"kill seed {self.seed} (TTCJAX_KILL_SEED={self.seed} draws it again): {landed} {self.delay:.2f} s "
                f"after its progress reached {self.count} of {self.total}")


def kill_at_random(args, progress, timeline: list[tuple[float, int]], name: str, timeout: float = 240.0) -> Kill:
    """Run `python -m ttcjax.cli *args` and SIGKILL it at a point drawn uniformly, by the run's seed and `name`,
    from `timeline`'s window (`straight_run`'s): once its `progress()` reaches the count the timeline had there,
    after as many seconds as the timeline had spent at that count, or as soon as it moves past that count (this
    run, its programs compiled already, may go faster), whichever comes first."""
    at = random.Random(f"{SEED}:{name}").uniform(timeline[0][0], timeline[-1][0])
    reached, count = max((t, c) for t, c in timeline[:-1] if t <= at)
    delay, total = at - reached, timeline[-1][1]
    proc = subprocess.Popen([sys.executable, "-m", "ttcjax.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and progress() < count:
            assert time.monotonic() < deadline, f"progress {progress()} of {count} within {timeout} s"
            time.sleep(0.01)
        kill_at = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < kill_at and (count == total or progress() == count):
            time.sleep(0.01)
        kill = Kill(SEED, count, total, delay, proc.poll() is None)
        if kill.killed:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def whole_records(directory) -> dict[str, list[dict]]:
    """The records of every JSONL file under `directory` (but the run log), by relative path: each line ended by
    its newline (a line a kill cut short is left out)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".jsonl") and name != RUN_LOG_FILE:
                with open(path) as f:
                    text = f.read()
                out[os.path.relpath(path, directory)] = [json.loads(x) for x in text.split("\n")[:-1] if x.strip()]
    return out


def without_times(record):
    return {k: v for k, v in record.items() if k not in ("seconds", "seconds_per_question")}


def record_count(directory) -> int:
    return sum(map(len, whole_records(directory).values())) if directory.is_dir() else 0


def run_killed_and_straight(command: str, config: dict, tmp_path, result: str) -> tuple[dict, dict, Kill]:
    """`ttcjax COMMAND` run straight, and run again killed at random (progress: the records written), then rerun:
    the two `result` files (JSON) and where the kill landed, after both runs' per-question records were found
    equal and the killed run's records kept as it wrote them (each stage's file in question order: its records
    first, times and all)."""
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    timeline = straight_run([command, "--config", str(path), "--out-dir", str(straight), "--no-progress"],
                            lambda: record_count(straight))
    kill = kill_at_random([command, "--config", str(path), "--out-dir", str(killed), "--no-progress"],
                          lambda: record_count(killed), timeline, command)
    written = whole_records(killed)
    ended = "seconds" in read_run_log(killed)[-1]  # the killed invocation recorded its end
    assert ended or kill.killed, kill
    assert main([command, "--config", str(path), "--out-dir", str(killed), "--no-progress"]) == 0, kill
    for name in sorted(os.listdir(straight / "results")):
        assert ([without_times(json.loads(x)) for x in lines(straight / "results" / name)]
                == [without_times(json.loads(x)) for x in lines(killed / "results" / name)]), (name, str(kill))
    rerun = whole_records(killed)
    for name, records in written.items():  # nothing the killed run wrote is redone
        assert rerun[name][:len(records)] == records, (name, str(kill))
    if ended:  # the job had finished: the rerun found nothing to do
        assert rerun == written, kill
    a, b = (json.loads((d / result).read_text()) for d in (straight, killed))
    # the totals count both invocations: a killed one has no time of its own
    assert b["invocations"]["invocations"] == 2, kill
    assert b["invocations"]["interrupted_invocations"] == (0 if ended else 1), kill
    assert a["invocations"]["invocations"] == 1 and a["invocations"]["interrupted_invocations"] == 0
    return a, b, kill


def test_an_experiment_killed_at_random_resumes_to_the_uninterrupted_result(tmp_path):
    config = {"task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 8, "policy": "tiny",
              "verifier": "tiny", "difficulty_samples": 2, "bins": 2, "budgets": [2, 4],
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 2}],
              "search": {"max_rounds": 8, "max_step_tokens": 20}, "rows_per_batch": 8, "probe_samples": 1}
    a, b, kill = run_killed_and_straight("experiment", config, tmp_path, "report.json")
    for key in ("accuracy", "per_level", "compute_optimal", "coverage", "mean_generated_tokens",
                "difficulty_cost_tokens", "findings"):
        assert a[key] == b[key], (key, str(kill))


def test_a_sweep_killed_at_random_resumes_to_the_uninterrupted_result(tmp_path):
    config = {"task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 6, "policy": "tiny",
              "verifier": "tiny", "budgets": [2], "rows_per_batch": 4,
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}],
              "search": {"max_rounds": 8, "max_step_tokens": 20}}
    a, b, kill = run_killed_and_straight("sweep", config, tmp_path, "summary.json")
    untimed = [{s: {n: without_times(c) for n, c in cells.items()} for s, cells in t["table"].items()} for t in (a, b)]
    assert untimed[0] == untimed[1], kill


def checkpoint_steps(directory) -> list[int]:
    """The steps of the complete checkpoints in `directory` (orbax renames a checkpoint to its step once written)."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def test_training_killed_at_random_resumes_to_the_uninterrupted_model(tmp_path):
    config = {"model_config": {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                               "num_heads": 2, "num_kv_heads": 1, "max_position_embeddings": 128},
              "task": {"difficulties": [2, 3]}, "num_train": 240, "seq_len": 96, "batch_size": 8, "steps": 40,
              "lr": 0.01, "warmup_steps": 3, "log_every": 2, "checkpoint_every": 4, "eval_problems": 0,
              "mesh": "none"}
    paths = {}
    for name in ("straight", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**config, "out_dir": str(tmp_path / name)}))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # progress: the newest checkpoint's step (a checkpoint is written before the window opens)
    timeline = straight_run(["train", "policy", "--config", str(paths["straight"]), "--no-progress"],
                            lambda: max(checkpoint_steps(straight / "checkpoints"), default=0))
    kill = kill_at_random(["train", "policy", "--config", str(paths["killed"]), "--no-progress"],
                          lambda: max(checkpoint_steps(killed / "checkpoints"), default=0), timeline, "train")
    ended = "seconds" in read_run_log(killed)[-1]
    metrics = (killed / "metrics.jsonl").read_bytes()
    assert main(["train", "policy", "--config", str(paths["killed"]), "--no-progress"]) == 0, kill
    summary = json.loads((killed / "train_summary.json").read_text())
    # resumed from a checkpoint the killed run finished (the first was written before the kill)
    assert summary["finished"] and summary["resumed_from"] is not None and summary["resumed_from"] >= 4, kill
    if ended:  # the job had finished: the rerun trains no step
        assert summary["resumed_from"] == config["steps"], kill
        assert (killed / "metrics.jsonl").read_bytes() == metrics, kill
    a, b = (load_model(tmp_path / name / "model") for name in ("straight", "killed"))
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6, err_msg=str(kill))
