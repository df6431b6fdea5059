"""Revision strategies in sweeps, experiments and `ttcjax run`: they run the revision model and its verifier (a config
without a revision model is refused), the scheduler names them, and the report gives pass@1 by revision step,
sequential against parallel, the ratio per difficulty level and compute-optimal revisions against best-of-N."""

import json
import zlib

import jax
import numpy as np
import pytest
import yaml
from toys import toy_policy, y_fraction_prm

from ttcjax.checkpoints.native import load_any, save_model
from ttcjax.checkpoints.tokenizer import CharTokenizer, load_tokenizer
from ttcjax.cli import main
from ttcjax.decoding.engine import Engine
from ttcjax.eval.analysis import analyze
from ttcjax.eval.experiment import ExperimentConfig
from ttcjax.eval.sweep import SweepConfig, load_revision_models, plan_cells
from ttcjax.search.run import search
from ttcjax.training.revisions import save_revision_settings
from ttcjax.verifiers.loading import verifier_by_name
from ttcjax.verifiers.reward_model import save_prm

SEPARATOR = "Q\n"  # text the toy tokenizer writes (its alphabet is Qxy and the newline)
REVISIONS = {"kind": "revisions", "sequential": 2}
PARALLEL = {"kind": "revisions", "sequential": 1}  # one attempt per chain
SEARCH = {"max_rounds": 3, "max_step_tokens": 6, "max_len": 64}


def save_policy(directory, p_x, p_y, p_newline, separator=None):
    policy, tok = toy_policy(p_x, p_y, p_newline)
    save_model(policy, directory)
    tok.save(directory / "ttcjax_tokenizer.json")
    if separator is not None:
        save_revision_settings(str(directory), separator)
    return str(directory)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base policy that writes mostly 'x', a revision model (same tokenizer) that writes mostly 'y', and the toy
    verifier for both."""
    root = tmp_path_factory.mktemp("models")
    save_prm(y_fraction_prm(), str(root / "prm"))
    return {"policy": save_policy(root / "policy", 0.6, 0.1, 0.3),
            "reviser": save_policy(root / "reviser", 0.05, 0.65, 0.3, separator=SEPARATOR),
            "verifier": str(root / "prm")}


def sweep_config(out_dir, models, **more):
    return {"out_dir": str(out_dir), "policy": models["policy"], "verifier": models["verifier"],
            "task": {"name": "arithmetic", "difficulties": [2]}, "questions": 3, "budgets": [4],
            "strategies": [{"kind": "best_of_n"}, REVISIONS], "search": dict(SEARCH), "mesh": "none", **more}


@pytest.mark.parametrize("config_class", [SweepConfig, ExperimentConfig])
def test_a_revisions_strategy_without_a_revision_model_is_refused_naming_the_field(config_class, models):
    with pytest.raises(ValueError, match=r"revision_policy is not set") as e:
        config_class.from_dict(sweep_config("x", models))
    assert "config: strategy {'kind': 'revisions', 'sequential': 2}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="revision_verifier is none"):
        config_class.from_dict(sweep_config("x", models, revision_policy=models["reviser"]))
    with pytest.raises(ValueError, match=r"revision_policy=.*revision.json not found"):  # not a revision model
        config_class.from_dict(sweep_config("x", models, revision_policy=models["policy"]))
    # majority needs no revision verifier; search cells alone need no revision model
    majority = {**REVISIONS, "selection": "majority"}
    config_class.from_dict(sweep_config("x", models, revision_policy=models["reviser"],
                                        strategies=[{"kind": "best_of_n"}, majority]))
    config_class.from_dict(sweep_config("x", models, strategies=[{"kind": "best_of_n"}]))


def test_the_cli_refuses_it_in_one_line_before_any_work(tmp_path, models, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(tmp_path / "out", models)))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "revision_policy is not set" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_revision_separator_is_the_revision_models_unless_search_sets_it(models):
    config = SweepConfig.from_dict(sweep_config("x", models, revision_policy=models["reviser"],
                                                revision_verifier=models["verifier"]))
    assert config.search.revision_separator == SEPARATOR
    config = SweepConfig.from_dict(sweep_config("x", models, revision_policy=models["reviser"],
                                                revision_verifier=models["verifier"],
                                                search={**SEARCH, "revision_separator": "x"}))
    assert config.search.revision_separator == "x"


def test_plan_counts_the_revision_model_and_its_verifier(tmp_path, models, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(tmp_path / "out", models, revision_policy=models["reviser"],
                                                revision_verifier=models["verifier"])))
    assert main(["plan", "--config", str(path), "--devices", "1", "--device-memory", "1GiB", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["revision_policy"] == {"name": models["reviser"], "params": load_any(models["reviser"]).config
                                         .num_params()}
    assert result["revision_verifier"]["name"] == models["verifier"]
    search = {s["detail"].split(":")[0]: s for s in result["configured"]["stages"] if s["name"] == "search"}
    assert "revision model weights" in search["revisions n=4 sequential 2 (the revision model)"]["terms"]
    assert not (tmp_path / "out").exists()


def test_a_revision_model_must_read_the_policys_tokenizer(tmp_path, models):
    tok = load_tokenizer(models["policy"])
    assert load_revision_models(models["reviser"], "none", tok).engine.config.vocab_size == tok.vocab_size
    other = save_policy(tmp_path / "other", 0.05, 0.65, 0.3, separator=SEPARATOR)
    CharTokenizer(alphabet="xyQ\n").save(tmp_path / "other" / "ttcjax_tokenizer.json")  # same size, other ids
    with pytest.raises(ValueError, match=r"revision_policy .*other: its tokenizer differs from the policy's"):
        load_revision_models(other, "none", tok)


def test_a_sweep_runs_revision_cells_with_the_revision_model(tmp_path, models):
    raw = sweep_config(tmp_path / "sweep", models, revision_policy=models["reviser"],
                       revision_verifier=models["verifier"])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 0
    config = SweepConfig.from_dict(raw)
    task = config.make_task()
    settings = config.search.for_task(task)
    problems = task.problems(config.split, limit=config.questions, seed=config.seed)
    tok = load_tokenizer(models["policy"])
    verifier = verifier_by_name(models["verifier"], tok)
    [cell] = [c for c in plan_cells(config.strategies, config.budgets) if c.spec.kind == "revisions"]
    records = [json.loads(line) for line in (tmp_path / "sweep" / "results" / f"{cell.name}.jsonl").read_text()
               .splitlines()]
    key = jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(f"{cell.name}/{problems[0].id}".encode()))

    def direct(model_dir):
        return search(cell.strategy, Engine(load_any(model_dir), pad_id=tok.pad_id), verifier, tok,
                      [task.encode_prompt(p, tok) for p in problems], key, extract_answer=task.extract_answer,
                      equal=task.same_answer, settings=settings, questions=[p.question for p in problems])

    revised, base = direct(models["reviser"]), direct(models["policy"])
    assert [r["solution"] for r in records] == [r.solution for r in revised]
    assert [r["solution"] for r in records] != [r.solution for r in base]
    assert [r["policy_flops"] for r in records] == [r.policy_flops for r in revised]
    assert [r["verifier_tokens"] for r in records] == [r.verifier_tokens for r in revised]
    # the revision model writes 'y' far more than 'x'; the base policy's best-of-N cell the other way round
    assert sum(r["solution"].count("y") for r in records) > 3 * sum(r["solution"].count("x") for r in records)
    best_of_n = [json.loads(line) for line in (tmp_path / "sweep" / "results" / "best_of_n-b4.jsonl").read_text()
                 .splitlines()]
    assert sum(r["solution"].count("x") for r in best_of_n) > sum(r["solution"].count("y") for r in best_of_n)
    run_config = json.loads((tmp_path / "sweep" / "run_config.json").read_text())
    assert run_config["revision_policy"] == models["reviser"]
    assert run_config["search"]["revision_separator"] == SEPARATOR


def test_an_experiment_with_revisions_saves_a_scheduler_that_run_applies_with_the_revision_model(tmp_path, models):
    out = tmp_path / "run"
    config = sweep_config(out, models, revision_policy=models["reviser"], revision_verifier=models["verifier"],
                          questions=4, difficulty_samples=2, bins=2, probe_samples=1, max_new_tokens=16,
                          strategies=[{"kind": "best_of_n", "selection": "weighted"}, REVISIONS, PARALLEL])
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", "--config", str(path), "--no-progress"]) == 0
    scheduler = json.loads((out / "scheduler.json").read_text())
    assert scheduler["revision_policy"] == models["reviser"] and scheduler["revision_verifier"] == models["verifier"]
    assert scheduler["search"]["revision_separator"] == SEPARATOR
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == {"best_of_n-selectionweighted", "revisions-sequential2", "revisions-sequential1"}
    records = [json.loads(line) for line in (out / "results" / "revisions-sequential2-b4.jsonl").read_text()
               .splitlines()]
    [cell] = report["revisions"]["revisions-sequential2"].values()
    np.testing.assert_allclose(cell["pass_by_attempt"], np.mean([r["pass_by_attempt"] for r in records], axis=0))
    assert cell["right_followed"] == sum(r["right_followed"] for r in records)
    assert report["params"]["revision_policy"] == report["params"]["policy"] > 0
    findings = analyze(report)
    [row] = [row for row in findings.revisions if row.strategy == "revisions-sequential2"]
    assert row.budget == 4
    assert row.right_to_wrong_rate == (cell["right_to_wrong"] / cell["right_followed"] if cell["right_followed"]
                                       else None)
    summary = (out / "summary.md").read_text()
    assert "pass@1 by revision step" in summary

    # sequential against parallel at N=4 (2:2 against 1:4), the ratio per level, compute-optimal revisions
    [equal_budget] = findings.sequential_vs_parallel
    assert [(r.strategy, r.ratio) for r in equal_budget.ratios] == [("revisions-sequential1", "1:4"),
                                                                    ("revisions-sequential2", "2:2")]
    assert [r.accuracy for r in equal_budget.ratios] == [report["accuracy"][r.strategy]["4"]
                                                         for r in equal_budget.ratios]
    assert equal_budget.best_of_n == report["accuracy"]["best_of_n-selectionweighted"]["4"]
    assert [row.level for row in findings.ratio_by_difficulty] == ["1", "2"]
    for row in findings.ratio_by_difficulty:
        table = report["per_level"]["oracle"][row.level]
        assert row.best.accuracy == max(table[r.strategy]["4"] for r in row.ratios)
    assert set(report["revisions_compute_optimal"]) == {"oracle", "predicted"}
    for signal, opt in report["revisions_compute_optimal"].items():
        assert set(opt["choice"].values()) <= {"revisions-sequential1", "revisions-sequential2"}
        bon = report["compute_optimal"][signal]["best_of_n_weighted"]["4"]
        assert opt["best_of_n_weighted"] == {"4": bon}
        assert opt["efficiency"] == {"4": 4 if opt["cv_accuracy"]["4"] >= bon - 1e-12 else None}
        assert findings.revisions_compute_optimal[signal].by_budget[0].compute_optimal == opt["cv_accuracy"]["4"]
    assert report["findings"]["revisions_compute_optimal"]["oracle"]["signal"] == "oracle"
    # the revision cells' per-question outcomes give the first and last steps' intervals and the paired change
    chains = report["per_question"]["revisions"]["revisions-sequential2"]["4"]
    assert chains["first"] == [r["pass_by_attempt"][0] for r in records]
    [revised] = [r for r in findings.revisions if r.strategy == "revisions-sequential2"]
    assert revised.first_step.value == pytest.approx(cell["pass_by_attempt"][0])
    assert revised.last_minus_first.difference.value == pytest.approx(cell["pass_by_attempt"][-1]
                                                                      - cell["pass_by_attempt"][0])
    assert revised.improves == (revised.last_minus_first.verdict == "better")
    assert equal_budget.sequential_minus_parallel.a.startswith("revisions-sequential2")
    assert {r.finding: r.verdict for r in findings.paper}["sequential_beats_parallel"] in (
        "reproduced", "not_reproduced", "inconclusive")
    for section in ("## Revisions: sequential versus parallel at equal budget",
                    "## Revisions: the sequential:parallel ratio by difficulty",
                    "## Compute-optimal revisions versus best-of-N"):
        assert section in summary
    # with per-question outcomes a tie is a difference within noise
    verdict = {"sequential": "beats", "parallel": "loses to", "tie": "is within noise of"}[
        equal_budget.sequential_vs_parallel]
    assert f"the most sequential ratio (2:2) {equal_budget.ratios[1].accuracy:.3f} {verdict} fully parallel" in summary
    assert (out / "revision_ratio_by_difficulty.png").exists() and (out / "revisions_vs_best_of_n.png").exists()

    # the revision strategy chosen at every level: `ttcjax run` answers with the revision model
    scheduler["choices"] = {k: REVISIONS for k in scheduler["choices"]}
    (out / "scheduler.json").write_text(json.dumps(scheduler))
    answers = tmp_path / "answers.jsonl"
    assert main(["run", "--scheduler", str(out / "scheduler.json"), "--budget", "5", "--question", "Q: 2+3=\n",
                 "--question", "Q: 4*2=\n", "--output", str(answers)]) == 0
    ran = [json.loads(line) for line in answers.read_text().splitlines()]
    assert all(r["strategy"] == {**REVISIONS, "n": 4, "window": 4, "selection": "hierarchical"} for r in ran)
    assert all(r["role"] == "revision" for r in ran)
    solutions = "".join(r["solution"] for r in ran)
    assert solutions.count("y") > 3 * solutions.count("x")  # the revision model's text, not the policy's
    # a scheduler that revises without naming a revision model is refused
    scheduler["revision_policy"] = None
    (out / "scheduler.json").write_text(json.dumps(scheduler))
    assert main(["run", "--scheduler", str(out / "scheduler.json"), "--budget", "5", "--question", "Q: 2+3=\n"]) == 2
