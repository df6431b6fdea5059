"""The sweep: every (strategy, budget) cell written per question, resumable after an interruption."""

import json
import os

import jax
import numpy as np
import yaml
from toys import toy_policy, y_fraction_prm

from ttcjax.checkpoints.native import save_model
from ttcjax.cli import main
from ttcjax.eval.sweep import cell_batch, memory_maps, plan_cells, release_compiled_programs_when_crowded
from ttcjax.search.strategies import StrategySpec
from ttcjax.verifiers.reward_model import save_prm


def test_sweep_writes_every_cell_and_resumes(tmp_path):
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    save_model(policy, tmp_path / "policy")
    tok.save(tmp_path / "policy" / "ttcjax_tokenizer.json")
    save_prm(y_fraction_prm(), str(tmp_path / "prm"))
    config = {"out_dir": str(tmp_path / "sweep"), "policy": str(tmp_path / "policy"), "verifier": str(tmp_path / "prm"),
              "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 6, "budgets": [4],
              "strategies": [{"kind": "best_of_n"}, {"kind": "beam", "width": 2}],
              "search": {"max_rounds": 4, "max_step_tokens": 8, "max_len": 64}, "mesh": "none"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 0
    results = tmp_path / "sweep" / "results"
    files = sorted(os.listdir(results))
    assert files == ["beam-width2-b4.jsonl", "best_of_n-b4.jsonl"]
    first = {f: (results / f).read_text() for f in files}
    assert all(len(text.splitlines()) == 6 for text in first.values())
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert set(summary["table"]) == {"best_of_n", "beam-width2"}
    assert (tmp_path / "sweep" / "accuracy_vs_budget.png").stat().st_size > 1000

    # an interruption: one cell lost its last two questions, the line before them was cut in half
    cut = results / "beam-width2-b4.jsonl"
    lines = first["beam-width2-b4.jsonl"].splitlines(keepends=True)
    cut.write_text("".join(lines[:3]) + lines[3][:25])
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 0
    redone = cut.read_text().splitlines()
    assert len(redone) == 6 and redone[:3] == [ln.rstrip("\n") for ln in lines[:3]]
    assert len({json.loads(ln)["id"] for ln in redone}) == 6  # nothing twice
    for f in files:
        if f != "beam-width2-b4.jsonl":
            assert (results / f).read_text() == first[f]  # finished cells untouched
    records = [json.loads(ln) for ln in redone]
    assert all(r["generated_tokens"] > 0 and r["budget"] == 4 for r in records)
    assert np.all([isinstance(r["correct"], bool) for r in records])
    # a damaged line before the end is not an interruption: named by file and line, and nothing is cut
    damaged = redone[:1] + [redone[1][:30]] + redone[2:]
    cut.write_text("\n".join(damaged) + "\n")
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 2
    assert cut.read_text() == "\n".join(damaged) + "\n"
    cut.write_text("\n".join(redone) + "\n")
    # a run directory may move: the config it is bound to leaves out where it lives
    moved = tmp_path / "moved"
    os.rename(tmp_path / "sweep", moved)
    assert main(["sweep", "--config", str(path), "--out-dir", str(moved), "--no-progress"]) == 0
    os.rename(moved, tmp_path / "sweep")
    assert cut.read_text().splitlines() == redone  # nothing redone
    # the directory belongs to its config: another one is refused before any work, naming what differs
    path.write_text(yaml.safe_dump({**config, "search": {**config["search"], "temperature": 0.7}}))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 2
    assert cut.read_text().splitlines() == redone
    # ... unless told on purpose: --continue goes on in it (its records kept) and logs the change
    assert main(["sweep", "--config", str(path), "--no-progress", "--continue"]) == 0
    assert cut.read_text().splitlines() == redone
    log = [json.loads(ln) for ln in (tmp_path / "sweep" / "run_log.jsonl").read_text().splitlines()]
    assert [e["rerun"] for e in log] == ["resume"] * 4 + ["continue"]
    assert list(log[-1]["changed"]) == ["search"] and "changed" not in log[0]
    assert [side["temperature"] for side in log[-1]["changed"]["search"]] == [0.8, 0.7]
    assert json.loads((tmp_path / "sweep" / "run_config.json").read_text())["search"]["temperature"] == 0.7
    # --fresh moves the earlier run aside, whole, and starts anew
    path.write_text(yaml.safe_dump({**config, "questions": 2}))
    assert main(["sweep", "--config", str(path), "--no-progress", "--fresh"]) == 0
    (aside,) = [p for p in os.listdir(tmp_path) if p.startswith("sweep.before-")]
    assert (tmp_path / aside / "results" / "beam-width2-b4.jsonl").read_text().splitlines() == redone
    assert all(len((results / f).read_text().splitlines()) == 2 for f in files)
    assert [e["rerun"] for e in map(json.loads, (tmp_path / "sweep" / "run_log.jsonl").open())] == ["fresh"]


def test_a_sweep_on_eight_devices_gives_the_one_device_results(tmp_path):
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    save_model(policy, tmp_path / "policy")
    tok.save(tmp_path / "policy" / "ttcjax_tokenizer.json")
    save_prm(y_fraction_prm(), str(tmp_path / "prm"))
    results = {}
    for mesh in ("none", "4,2"):
        out = tmp_path / f"sweep-{mesh}"
        config = {"out_dir": str(out), "policy": str(tmp_path / "policy"), "verifier": str(tmp_path / "prm"),
                  "task": {"name": "arithmetic", "difficulties": [2, 3]}, "questions": 8, "budgets": [4],
                  "strategies": [{"kind": "best_of_n"}, {"kind": "beam", "width": 2}],
                  "search": {"max_rounds": 4, "max_step_tokens": 8, "max_len": 64}, "mesh": mesh}
        path = tmp_path / f"sweep-{mesh}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["sweep", "--config", str(path), "--no-progress"]) == 0
        results[mesh] = {f: [{k: r[k] for k in ("id", "answer", "solution", "generated_tokens", "verifier_tokens")}
                             for r in map(json.loads, (out / "results" / f).read_text().splitlines())]
                         for f in sorted(os.listdir(out / "results"))}
    assert results["none"] == results["4,2"] and len(results["none"]) == 2


def test_a_process_crowded_with_memory_maps_drops_its_compiled_programs():
    held, limit = memory_maps()
    assert 0 < held < limit

    @jax.jit
    def double(x):
        return 2 * x

    double(1.0)
    assert double._cache_size() == 1
    assert not release_compiled_programs_when_crowded(fraction=1.0)
    assert double._cache_size() == 1
    assert release_compiled_programs_when_crowded(fraction=held / limit / 2)
    assert double._cache_size() == 0


def test_a_tasks_default_row_fits_the_policys_positions():
    from ttcjax.eval.sweep import SweepConfig

    # natural-language tasks default to 2048-token rows; the tiny policy has 512 positions
    config = SweepConfig.from_dict({"out_dir": "x", "task": {"name": "jsonl", "path": "q.jsonl"}}, "s.yaml")
    assert (config.search.max_len, config.search.max_step_tokens) == (512, 256)
    given = SweepConfig.from_dict({"out_dir": "x", "task": {"name": "jsonl", "path": "q.jsonl"},
                                   "search": {"max_len": 300}}, "s.yaml")
    assert given.search.max_len == 300  # what a config sets is its own (and checked against positions at run)


def test_a_cell_batches_its_questions_by_the_rows_it_counts_for():
    # best-of-N counts a row per generation; revision chains count their n generations, not their n/sequential
    # chains, so a chain episode runs 1/sequential as many rows as best-of-N's (Revisions.batch_rows)
    cells = {c.spec.kind: c for c in plan_cells([StrategySpec.from_dict({"kind": "best_of_n"}),
                                                 StrategySpec.from_dict({"kind": "revisions", "sequential": 4})], [8])}
    assert cell_batch(cells["best_of_n"], 32) == 4 and cell_batch(cells["revisions"], 32) == 4
    assert cells["revisions"].strategy.rows == 2  # 2 chains a question: 8 of a batch's 32 rows
    assert cell_batch(cells["best_of_n"], 4) == 1  # at least one question
