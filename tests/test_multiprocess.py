"""`ttcjax sweep` on 2 processes x 4 CPU devices (localhost, jax.distributed): each process searches its share of the
questions and writes its shard, process 0 merges; the files equal a 1-process run's, and a run whose coordinator is
killed mid-search resumes on rerun with no question lost or written twice."""

import json
import os
import signal
import time

import pytest
import yaml
from multihost import PROCESSES, finish, launch
from toys import toy_policy, y_fraction_prm

from ttcjax.checkpoints.native import save_model
from ttcjax.cli import main
from ttcjax.eval.shards import merge, shard_path, shard_paths
from ttcjax.tasks.base import ProblemRecord
from ttcjax.verifiers.reward_model import save_prm


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_times(record):
    return {k: v for k, v in record.items() if k != "seconds"}


def results(out_dir) -> dict[str, list[dict]]:
    return {name: [without_times(r) for r in records(out_dir / "results" / name)]
            for name in sorted(os.listdir(out_dir / "results"))}


def table(out_dir) -> dict:
    summary = json.loads((out_dir / "summary.json").read_text())
    return {name: {b: {k: v for k, v in cell.items() if k != "seconds_per_question"} for b, cell in row.items()}
            for name, row in summary["table"].items()}


def test_two_processes_merge_to_the_one_process_sweep_and_resume_after_a_kill(tmp_path):
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    save_model(policy, tmp_path / "policy")
    tok.save(tmp_path / "policy" / "ttcjax_tokenizer.json")
    save_prm(y_fraction_prm(), str(tmp_path / "prm"))
    # best-of-N at budget 2 (2 rows a question): batches of 2 questions, 4 batches; process p runs p and p + 2
    config = {"out_dir": str(tmp_path / "one"), "policy": str(tmp_path / "policy"), "verifier": str(tmp_path / "prm"),
              "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 8, "budgets": [2],
              "strategies": [{"kind": "best_of_n"}], "rows_per_batch": 4,
              "search": {"max_rounds": 3, "max_step_tokens": 8, "max_len": 48}, "mesh": "auto"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 0  # one process, 8 devices
    one = results(tmp_path / "one")
    assert [len(v) for v in one.values()] == [8]

    # two processes; the coordinator is killed once a shard holds a record, and the other goes down with it
    two = tmp_path / "two"
    sweep = ["sweep", "--config", path, "--no-progress"]
    shards = [two / "results" / f"best_of_n-b2.shard-{i}-of-{PROCESSES}.jsonl" for i in range(PROCESSES)]
    procs = launch(sweep + ["--out-dir", two], tmp_path / "jax-cache")
    deadline = time.monotonic() + 240
    while not any(s.exists() and s.read_text().count("\n") for s in shards) and time.monotonic() < deadline:
        assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
        time.sleep(0.02)
    os.kill(procs[0].pid, signal.SIGKILL)
    finish(procs, timeout=60)
    assert not (two / "results" / "best_of_n-b2.jsonl").exists() and not (two / "summary.json").exists()
    before = {r["id"]: r for s in shards if s.exists() for r in records(s)}
    assert 0 < len(before) < 8

    # the same command again: each process resumes its shard, process 0 merges
    procs = launch(sweep + ["--out-dir", two], tmp_path / "jax-cache")
    ended = finish(procs)
    assert [status for status, _, _ in ended] == [0] * PROCESSES, [err[-2000:] for _, _, err in ended]
    assert results(two) == one  # the one-process files: every question once, in question order
    assert table(two) == table(tmp_path / "one")
    merged = records(two / "results" / "best_of_n-b2.jsonl")
    assert all(merged[[r["id"] for r in merged].index(qid)] == r for qid, r in before.items())  # kept, not redone
    assert sorted(os.listdir(two / "results")) == ["best_of_n-b2.jsonl"]  # the shards merged away


def test_the_merge_takes_each_question_once_and_names_what_is_missing_or_twice(tmp_path):
    problems = [ProblemRecord(id=f"q{i}", question=f"Q{i}", answer=str(i)) for i in range(4)]
    path = str(tmp_path / "cell.jsonl")

    def write(name, ids, seconds=1.0):
        with open(name, "a") as f:
            for qid in ids:
                f.write(json.dumps({"id": qid, "answer": qid, "seconds": seconds}) + "\n")

    write(shard_path(path, 0, 2), ["q0", "q2"])
    write(shard_path(path, 1, 2), ["q1"])
    with pytest.raises(ValueError, match="1 of 4 questions have no record.*q3.*rerun the same command"):
        merge(path, problems)
    write(shard_path(path, 1, 2), ["q2", "q3"])
    with pytest.raises(ValueError, match="'q2' is written twice"):
        merge(path, problems)
    os.remove(shard_path(path, 1, 2))
    write(shard_path(path, 1, 2), ["q3", "q1"])
    assert [r["id"] for r in merge(path, problems)] == ["q0", "q1", "q2", "q3"]  # question order
    assert shard_paths(path) == [] and len(records(tmp_path / "cell.jsonl")) == 4
    # a merge cut between writing the file and removing the shards: the shard's copies agree and count once
    write(shard_path(path, 0, 2), ["q0"], seconds=2.0)
    assert [r["id"] for r in merge(path, problems)] == ["q0", "q1", "q2", "q3"] and shard_paths(path) == []
