"""Independent jobs over one run directory (a job array: no coordinator between them): job K of J searches batches
K, K + J, ... of every stage into its own shards and merges nothing; a run without --job then merges every job's
shards into the files, summary and report one run writes, and names the jobs whose share is missing."""

import json
import os
import shutil

import pytest
import yaml
from test_multiprocess import records, results, table, without_times
from toys import toy_policy, y_fraction_prm

from ttcjax.checkpoints.native import save_model
from ttcjax.cli import main
from ttcjax.eval import shards
from ttcjax.eval.shards import Job, merge, my_batches, shard_path
from ttcjax.io import read_run_log
from ttcjax.tasks.base import ProblemRecord
from ttcjax.verifiers.reward_model import save_prm


def test_jobs_and_their_processes_split_the_batches_exactly_once(monkeypatch):
    batches = 23
    for count in (1, 2, 3):
        for processes in (1, 2):
            taken = []
            for index in range(count):
                for process in range(processes):
                    monkeypatch.setattr(shards, "process_index", lambda: process)
                    monkeypatch.setattr(shards, "process_count", lambda: processes)
                    taken += list(my_batches(batches * 2, 2, Job(index, count)))
            assert sorted(taken) == list(range(batches)), (count, processes)
    monkeypatch.setattr(shards, "process_index", lambda: 1)
    monkeypatch.setattr(shards, "process_count", lambda: 2)
    assert list(my_batches(23, 1, Job(1, 3))) == [4, 10, 16, 22]  # K + pJ, K + (p + P)J, ...
    # every job's and process's shard has a name of its own, beside the stage's file
    assert shard_path("r/c.jsonl", 0, 1, Job(1, 3)) == "r/c.job-1-of-3.jsonl"
    assert shard_path("r/c.jsonl", 1, 2, Job(1, 3)) == "r/c.job-1-of-3.shard-1-of-2.jsonl"
    assert shard_path("r/c.jsonl", 1, 2) == "r/c.shard-1-of-2.jsonl"


def test_the_merge_names_the_job_whose_share_is_missing(tmp_path):
    problems = [ProblemRecord(id=f"q{i}", question=f"Q{i}", answer=str(i)) for i in range(10)]
    path = str(tmp_path / "cell.jsonl")

    def write(name, ids):
        with open(name, "a") as f:
            for qid in ids:
                f.write(json.dumps({"id": qid, "answer": qid, "seconds": 1.0}) + "\n")

    # batches of 2 questions, 3 jobs: job 0 holds batches 0 and 3, job 1 batches 1 and 4 (on 2 processes), job 2
    # batch 2
    write(shard_path(path, 0, 1, Job(0, 3)), ["q0", "q1", "q6", "q7"])
    write(shard_path(path, 0, 2, Job(1, 3)), ["q2", "q3"])
    write(shard_path(path, 1, 2, Job(1, 3)), ["q8"])
    with pytest.raises(ValueError) as info:
        merge(path, problems, per_batch=2)
    message = str(info.value)
    assert "\n" not in message and "3 of 10 questions have no record" in message
    assert "job 1/3 misses 1 of its 4 questions (cell.job-1-of-3.shard-0-of-2.jsonl, cell.job-1-of-3.shard-1-of-2" \
           ".jsonl)" in message
    assert "job 2/3 misses 2 of its 2 questions (no cell.job-2-of-3*.jsonl on disk)" in message
    assert "run the same command with --job 1/3, --job 2/3 (each resumes" in message and "job 0/3" not in message
    write(shard_path(path, 0, 1, Job(2, 3)), ["q5", "q4"])
    write(shard_path(path, 1, 2, Job(1, 3)), ["q9"])
    assert [r["id"] for r in merge(path, problems, per_batch=2)] == [p.id for p in problems]
    assert sorted(os.listdir(tmp_path)) == ["cell.jsonl"]


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    save_model(policy, root / "policy")
    tok.save(root / "policy" / "ttcjax_tokenizer.json")
    save_prm(y_fraction_prm(), str(root / "prm"))
    return root


def sweep_config(tmp_path, models) -> str:
    # best-of-N at budget 2 takes batches of 2 questions, beam (width 2, budget 2) batches of 2: 5 batches each
    config = {"out_dir": str(tmp_path / "one"), "policy": str(models / "policy"), "verifier": str(models / "prm"),
              "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 10, "budgets": [2],
              "strategies": [{"kind": "best_of_n"}, {"kind": "beam", "width": 2}], "rows_per_batch": 4,
              "search": {"max_rounds": 3, "max_step_tokens": 8, "max_len": 48}, "mesh": "none"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_sweep_split_into_jobs_merges_to_the_one_run_sweep(tmp_path, toy_models, capsys):
    config = sweep_config(tmp_path, toy_models)
    assert main(["sweep", "--config", config, "--no-progress"]) == 0
    one = results(tmp_path / "one")

    jobs = tmp_path / "jobs"
    sweep = ["sweep", "--config", config, "--out-dir", str(jobs), "--no-progress"]
    for job in ("0/3", "2/3"):
        capsys.readouterr()
        assert main([*sweep, "--job", job]) == 0
        err = capsys.readouterr().err
        assert f"job {job} has written its share" in err and "without --job" in err
    cell = jobs / "results" / "best_of_n-b2.jsonl"
    assert not cell.exists() and not (jobs / "summary.json").exists()  # a job merges nothing
    assert [r["id"] for r in records(jobs / "results" / "best_of_n-b2.job-0-of-3.jsonl")] == [
        r["id"] for r in one["best_of_n-b2.jsonl"][0:2] + one["best_of_n-b2.jsonl"][6:8]]  # batches 0 and 3

    # the merge, with job 1 not run: it names the job and its shard, and searches nothing
    before = sorted(os.listdir(jobs / "results"))
    capsys.readouterr()
    assert main(sweep) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "4 of 10 questions have no record" in err and "job 1/3 misses 4 of its 4 questions" in err
    assert "best_of_n-b2.jsonl" in err and "no best_of_n-b2.job-1-of-3*.jsonl on disk" in err
    assert sorted(os.listdir(jobs / "results")) == before

    # job 2 was killed mid-write: its last record cut in half; its rerun redoes that question only
    shard = jobs / "results" / "beam-width2-b2.job-2-of-3.jsonl"
    lines = shard.read_text().splitlines()
    assert len(lines) == 2  # batch 2
    shard.write_text(lines[0] + "\n" + lines[1][:20])
    assert main([*sweep, "--job", "2/3"]) == 0
    redone = shard.read_text().splitlines()
    assert redone[0] == lines[0] and [without_times(json.loads(x)) for x in redone] == [
        without_times(json.loads(x)) for x in lines]
    assert main([*sweep, "--job", "2/3"]) == 0  # done: nothing again
    assert shard.read_text().splitlines() == redone

    # job 1 runs on a machine that does not see the run directory: its shards are copied in afterwards
    elsewhere = tmp_path / "elsewhere"
    assert main([*sweep, "--job", "1/3", "--out-dir", str(elsewhere)]) == 0
    for name in os.listdir(elsewhere / "results"):
        assert ".job-1-of-3." in name
        shutil.copy(elsewhere / "results" / name, jobs / "results" / name)
    assert main(sweep) == 0
    assert results(jobs) == one  # every question once, in question order
    assert table(jobs) == table(tmp_path / "one")
    assert sorted(os.listdir(jobs / "results")) == sorted(one)  # the shards merged away
    log = read_run_log(jobs)
    assert len(log) == 6 and all("seconds" in e for e in log[:2] + log[3:])  # the refused merge never finished
    assert json.loads((jobs / "summary.json").read_text())["invocations"]["interrupted_invocations"] == 1


def test_jobs_of_another_config_are_refused_and_the_job_is_no_config_difference(tmp_path, toy_models, capsys):
    config = sweep_config(tmp_path, toy_models)
    jobs = tmp_path / "jobs"
    sweep = ["sweep", "--config", config, "--out-dir", str(jobs), "--no-progress"]
    assert main([*sweep, "--job", "0/2", "questions=4"]) == 0
    capsys.readouterr()
    assert main([*sweep, "--job", "1/2"]) == 2  # questions=10: another config
    assert "keys that differ: ['questions']" in capsys.readouterr().err
    assert main([*sweep, "--job", "1/2", "questions=4"]) == 0
    assert main([*sweep, "questions=4"]) == 0
    assert [len(v) for v in results(jobs).values()] == [4, 4]
    assert json.loads((jobs / "run_config.json").read_text())["questions"] == 4


def test_an_experiment_split_into_jobs_stops_before_the_bins_and_merges_to_the_one_run_report(tmp_path, capsys):
    # verifier-free, one cell: the fewest programs to compile. Difficulty samples go in batches of 128 questions
    # (SAMPLE_ROWS rows, 2 a question): all 8 are job 0's; the cell's batches of 4 questions are one per job
    config = {"task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 8, "policy": "tiny",
              "verifier": "none", "difficulty_samples": 2, "bins": 2, "budgets": [2],
              "strategies": [{"kind": "best_of_n", "selection": "majority"}], "search": {"max_rounds": 8,
              "max_step_tokens": 20}, "rows_per_batch": 8, "probe_samples": 1, "out_dir": str(tmp_path / "one")}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", "--config", str(path), "--no-progress"]) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())

    jobs = tmp_path / "jobs"
    experiment = ["experiment", "--config", str(path), "--out-dir", str(jobs), "--no-progress"]
    capsys.readouterr()
    assert main([*experiment, "--job", "1/2"]) == 0
    err = capsys.readouterr().err
    assert "job 1/2 has written its share" in err and "the difficulty bins" in err and "without --job" in err
    assert not (jobs / "report.json").exists() and not (jobs / "difficulty.jsonl").exists()
    assert not [name for name in os.listdir(jobs) if ".job-" in name]  # the difficulty batch is job 0's
    assert any(name.endswith(".job-1-of-2.jsonl") for name in os.listdir(jobs / "results"))

    # the merge stops at the first stage that misses job 0's share, naming it; nothing is sampled
    before = {name: (jobs / name).read_bytes() for name in os.listdir(jobs) if name.endswith(".jsonl")
              and name != "run_log.jsonl"}
    capsys.readouterr()
    assert main(experiment) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "difficulty.jsonl" in err and "job 0/2 misses" in err and "no difficulty.job-0-of-2*.jsonl" in err
    assert {name: (jobs / name).read_bytes() for name in before} == before

    assert main([*experiment, "--job", "0/2"]) == 0
    assert main([*experiment, "--job", "0/2"]) == 0  # a rerun of a finished job: nothing twice
    assert main(experiment) == 0
    two = json.loads((jobs / "report.json").read_text())
    for name in sorted(os.listdir(tmp_path / "one" / "results")):
        assert ([without_times(r) for r in records(tmp_path / "one" / "results" / name)]
                == [without_times(r) for r in records(jobs / "results" / name)]), name
    assert ([without_times(r) for r in records(tmp_path / "one" / "difficulty.jsonl")]
            == [without_times(r) for r in records(jobs / "difficulty.jsonl")])
    for key in ("accuracy", "per_level", "compute_optimal", "coverage", "mean_generated_tokens",
                "difficulty_cost_tokens", "findings"):
        assert one[key] == two[key], key
    assert not [name for name in os.listdir(jobs) if ".job-" in name]
