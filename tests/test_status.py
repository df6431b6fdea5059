"""`--status`: where a run stands, read from its run directory beside the run: questions done per stage and per
cell (shards included, a record still being written left out), interim accuracies with their intervals and the
paired difference from best-of-N weighted, and who holds the directory."""

import json
import os

import numpy as np
import pytest
import yaml

from ttcjax.cli import main
from ttcjax.eval.status import run_status, status_markdown
from ttcjax.eval.sweep import SweepConfig, run_problems
from ttcjax.io import bind_run_dir, bound_fields, release_run_dir


def sweep_config(out_dir) -> dict:
    return {"out_dir": str(out_dir), "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 40,
            "budgets": [4, 16], "strategies": [{"kind": "best_of_n", "selection": "weighted"},
                                               {"kind": "best_of_n", "selection": "vanilla"},
                                               {"kind": "beam", "width": 4}, {"kind": "dvts", "width": 4}]}


def write(path, records, torn: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(torn)


def test_status_counts_the_records_on_disk_and_gives_interim_accuracies_with_intervals(tmp_path, capsys):
    data = sweep_config(tmp_path / "run")
    config = SweepConfig.from_dict(data)
    ids = [p.id for p in run_problems(config, config.make_task())]
    bind_run_dir(tmp_path / "run", bound_fields(config.to_dict()), "sweep")  # as the run does, holding it
    rng = np.random.default_rng(0)
    weighted, vanilla = rng.random(40) < 0.5, rng.random(40) < 0.7
    best = [{"id": i, "correct": bool(w), "pass": True, "generated_tokens": 100, "seconds": 1.0,
             "by_selection": {"weighted": bool(w), "vanilla": bool(v), "majority": False}}
            for i, w, v in zip(ids, weighted, vanilla)]
    best16 = [{**r, "seconds": 4.0} for r in best]
    results = tmp_path / "run" / "results"
    # best-of-N at 4: all 40, in the merged file; at 16: 30 in two shards of a 2-job array, and a torn last line
    write(results / "best_of_n-b4.jsonl", best)
    write(results / "best_of_n-b16.job-0-of-2.jsonl", best16[:20])
    write(results / "best_of_n-b16.job-1-of-2.jsonl", best16[20:30], torn='{"id": "' + ids[30] + '", "corr')
    # beam at 4: the first 25 questions, right on every one where weighted best-of-N was wrong
    write(results / "beam-width4-b4.jsonl", [{"id": i, "correct": not bool(w), "pass": True, "generated_tokens": 90,
                                              "seconds": 2.0} for i, w in zip(ids[:25], weighted)])
    status = run_status(config)
    assert status["holder"] and "ttcjax sweep" in status["holder"]  # bound by this process, which holds it
    release_run_dir(tmp_path / "run")
    status = run_status(config)
    assert status["holder"] is None and status["bound"] and status["other_config"] == []
    cells = {c["cell"]: c for c in status["cells"]}
    assert [cells[n]["done"] for n in ("best_of_n-selectionweighted-b4", "best_of_n-selectionvanilla-b4",
                                       "best_of_n-selectionweighted-b16", "beam-width4-b4", "beam-width4-b16")] \
        == [40, 40, 30, 25, 0]
    a = cells["best_of_n-selectionvanilla-b4"]["accuracy"]
    assert a.value == pytest.approx(vanilla.mean()) and a.lo < a.value < a.hi
    assert cells["best_of_n-selectionweighted-b16"]["accuracy"].value == pytest.approx(weighted[:30].mean())
    versus = cells["beam-width4-b4"]["vs_baseline"]  # paired, on the 25 both have done: 1 - 2 * weighted's rate
    assert versus["questions"] == 25
    assert versus["difference"].value == pytest.approx(1 - 2 * weighted[:25].mean())
    assert cells["best_of_n-selectionweighted-b4"]["vs_baseline"] is None  # the baseline itself
    text = status_markdown(status)
    assert "not running now" in text
    assert "2 of 8 (strategy, budget) cells done, 3 under way" in text
    # time: spent 40 x 1 + 30 x 4 + 25 x 2; left: best-of-N at 16, 10 x 4; beam at 4, 15 x 2; beam at 16, not
    # started, at beam 4's pace x 16 / 4 on 40; DVTS not started at all: at least best-of-N's pace, 40 x 1 + 40 x 4
    assert status["time"] == {"spent": 210.0, "left": 40 + 30 + 2 * 4 * 40, "floor": 200.0,
                              "unknown": ["dvts-width4-b4.jsonl", "dvts-width4-b16.jsonl"]}

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert main(["sweep", "--config", str(tmp_path / "s.yaml"), "--status"]) == 0
    assert "| beam-width4-b4 | 25 |" in capsys.readouterr().out
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**data, "questions": 30}))
    assert main(["sweep", "--config", str(tmp_path / "other.yaml"), "--status"]) == 0
    assert "keys that differ: ['questions']" in capsys.readouterr().out  # read with another config: said so
    with pytest.raises(ValueError, match="no such run directory"):
        run_status(SweepConfig.from_dict(sweep_config(tmp_path / "nothing")))


def test_experiment_status_counts_its_stages_and_reads_a_log_from_an_installed_ttcjax(tmp_path, capsys):
    out = tmp_path / "exp"
    data = {"out_dir": str(out), "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 20,
            "policy": "tiny", "verifier": "tiny", "large_policy": "small", "budgets": [4],
            "strategies": [{"kind": "best_of_n", "selection": "weighted"}], "difficulty_samples": 4, "bins": 2}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(data))
    from ttcjax.eval.experiment import read_config
    config = read_config(tmp_path / "e.yaml")
    ids = [p.id for p in run_problems(config, config.make_task())]
    bind_run_dir(out, bound_fields(config.to_dict()), "experiment")
    release_run_dir(out)
    with open(out / "run_log.jsonl", "a") as f:  # an invocation by a pip-installed ttcjax: no git commit
        f.write(json.dumps({"time": "2026-12-08T00:00:00Z", "command": "experiment", "rerun": "resume",
                            "code": {"version": "0.1.0", "commit": None}, "invocation": "x", "seconds": 3600}) + "\n")
    write(out / "difficulty.jsonl", [{"id": i, "pass_rate": 0.5} for i in ids])
    write(out / "large_policy.shard-0-of-2.jsonl", [{"id": i, "correct": k < 3} for k, i in enumerate(ids[:6])])
    assert main(["experiment", "--config", str(tmp_path / "e.yaml"), "--status"]) == 0
    text = capsys.readouterr().out
    assert "- difficulty: 20 of 20 questions" in text
    assert "- larger model: 6 of 20 questions, accuracy 0.500 [" in text
    assert "2 invocations" in text and ", ?" in text  # the commit it could not name
    assert "0 of 1 (strategy, budget) cells done, 0 under way" in text
