"""`ttcjax experiment` end to end: the demo as a named config reproduces the numbers of the code before the
refactor seed for seed; any task (a GSM8K-format file, a generic JSONL file) with tiny models; verifier-free
selection; `ttcjax run` with the scheduler an experiment saved; a run directory bound to its config."""

import json
import os

import numpy as np
import pytest
import yaml
from conftest import optimized_cli

from ttcjax.cli import main
from ttcjax.eval.experiment import ExperimentConfig, read_config
from ttcjax.eval.sweep import SweepConfig
from ttcjax.eval.verifier import same_depth_auc, solution_auc_within_question, within_question_auc
from ttcjax.io import read_yaml
from ttcjax.tasks import arithmetic
from ttcjax.tasks.grading import answers_equal
from ttcjax.verifiers.base import roc_auc

BON = "best_of_n-selectionweighted"
REDUCED = ["questions=12", "difficulty_samples=4", "bins=2", "budgets=[2,4]", "search.max_rounds=8", "probe_samples=1",
           "strategies=[{kind: best_of_n, selection: weighted}, {kind: best_of_n, selection: majority}, "
           "{kind: beam, width: 2}, {kind: beam, width: sqrt}, {kind: lookahead, width: 2, k: 1}, "
           "{kind: dvts, width: 2}]"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_demo_reproduces_the_numbers_from_before_the_refactor(tmp_path):
    """tests/data/demo_reduced_golden.json was written by `ttcjax demo` at commit e399456 (before the layers,
    Task, Verifier and Strategy objects) with the same reduced settings and seed."""
    golden = json.loads(open("tests/data/demo_reduced_golden.json").read())
    out = tmp_path / "demo"
    optimized_cli("demo", "--out-dir", str(out), "--no-progress", *REDUCED)  # as the golden run was compiled
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "per_level", "compute_optimal", "coverage", "mean_generated_tokens",
                "difficulty_cost_tokens", "large_policy_greedy", "questions"):
        assert report[key] == golden["report"][key], key
    # the FLOPs exchange now follows both versions of the paper (the golden run charged the verifier's own
    # parameters): the same accuracies at the budget each R's matched generations allow
    exchange = report["flops_exchange"]
    assert [(r["constants"], r["R"]) for r in exchange] == [
        ("arxiv_v1", 0.16), ("arxiv_v1", 0.79), ("arxiv_v1", 22.0), ("iclr_2025", 0.08), ("iclr_2025", 0.4),
        ("iclr_2025", 11.0)]
    m = report["params"]["large_policy"] / report["params"]["policy"]
    golden_at = {r["budget_used"]: r["by_level"] for r in golden["report"]["flops_exchange"]}
    for row in exchange:
        f = {"arxiv_v1": 2, "iclr_2025": 4}[row["constants"]]
        assert row["matched_generations"] == pytest.approx(m + 6 / f * (m - 1) / row["R"])
        assert row["budget_used"] == max(b for b in report["config"]["budgets"] if b <= row["matched_generations"])
        assert row["by_level"] == golden_at[row["budget_used"]]
    for name, want in golden["cells"].items():
        got = [{"id": r["id"], "answer": r["answer"], "correct": r["correct"], "pass": r["pass"],
                "generated_tokens": r["generated_tokens"], "prm_tokens": r["verifier_tokens"]}
               for r in records(out / "results" / f"{name}.jsonl")]
        assert got == want, name
    got = [(d["id"], d["pass_rate"], d["predicted"], d["generated_tokens"]) for d in records(out / "difficulty.jsonl")]
    assert got == [(d["id"], d["pass_rate"], d["verifier_mean"], d["generated_tokens"]) for d in golden["difficulty"]]
    scheduler = json.loads((out / "scheduler.json").read_text())
    assert (scheduler["choices"], scheduler["edges"]) == (golden["scheduler"]["choices"], golden["scheduler"]["edges"])
    # the scheduler now records what it was chosen under, and `run` applies exactly that
    assert scheduler["search"]["max_rounds"] == 8 and scheduler["search"]["max_step_tokens"] == 20
    assert scheduler["task"]["name"] == "arithmetic" and scheduler["verifier"] == "tiny"
    assert report["findings"]["flops_matched"]
    for name in ("summary.md", "report.json", "scheduler.json", "difficulty.jsonl", "large_policy.jsonl",
                 "accuracy_vs_budget.png", "accuracy_by_difficulty.png", "compute_optimal_vs_best_of_n.png",
                 "flops_matched.png", "run_config.json"):
        assert (out / name).exists(), name
    summary = (out / "summary.md").read_text()
    assert "Compute-optimal versus best-of-N" in summary and "matched FLOPs" in summary
    # the machine it ran on, as the run log recorded it
    machine = report["invocations"]["machines"][-1]
    assert machine["platform"] == "cpu" and machine["cpu_cores"] == os.cpu_count()
    assert f"Run on {machine['cpu']} ({machine['cpu_cores']} cores" in summary
    assert "a right answer is among best-of-N's candidates" in summary and "On the hardest bins" in summary
    # every accuracy with its bootstrap interval, as data and in the summary, and the paper-versus-ttcjax table
    assert len(report["per_question"]["levels"]["oracle"]) == len(report["per_question"]["correct"][BON]["4"]) == 12
    intervals = report["findings"]["intervals"]
    assert (intervals["resamples"], intervals["seed"]) == (2000, 0)
    for name, row in report["accuracy"].items():
        for b, acc in row.items():
            i = intervals["accuracy"][name][b]
            assert i["lo"] <= acc <= i["hi"] and i["value"] == pytest.approx(acc), (name, b)
            assert f"{acc:.3f} [{i['lo']:.2f}, {i['hi']:.2f}]" in summary
        for lv, table in report["per_level"]["oracle"].items():
            for b, acc in table[name].items():
                i = intervals["per_level"]["oracle"][lv][name][b]
                assert i["lo"] <= acc <= i["hi"] and i["value"] == pytest.approx(acc), (name, lv, b)
    for signal, opt in report["compute_optimal"].items():
        for b, acc in opt["cv_accuracy"].items():
            i = intervals["compute_optimal"][signal][b]
            assert i["value"] == pytest.approx(acc) and i["lo"] <= i["hi"], (signal, b)
        saving = report["findings"]["efficiency"][signal]["saving"]
        assert saving["lo"] <= saving["value"] <= saving["hi"]
    for row in report["findings"]["beam_on_hard_bins"]["by_budget"]:
        for name, c in row["comparisons"].items():
            assert c["difference"]["lo"] <= c["difference"]["hi"]
            assert c["verdict"] == ("better" if c["difference"]["lo"] > 0 else "worse" if c["difference"]["hi"] < 0
                                    else "within_noise")
        assert row["beats"] == any(c["verdict"] == "better" for c in row["comparisons"].values())
    paper = {row["finding"]: row for row in report["findings"]["paper"]}
    assert {"beam_beats_best_of_n_on_hard_bins", "compute_optimal_search_oracle", "flops_matched"} <= set(paper)
    assert all(row["verdict"] in ("reproduced", "not_reproduced", "inconclusive") and row["reason"]
               for row in paper.values())
    assert "## Paper versus ttcjax" in summary and "percentile bootstrap over questions" in summary
    # a rerun with another config into the same directory stops before any work, naming the key
    assert main(["demo", "--out-dir", str(out), "--no-progress", *REDUCED[1:], "questions=8"]) == 2


def _gsm8k_file(path, problems):
    """Built-in problems written in GSM8K's public format: {"question", "answer": "... #### N"}."""
    with open(path, "w") as f:
        for p in problems:
            steps = "\n".join(f"{a}{op}{b}={r}" for a, op, b, r in p.steps)
            f.write(json.dumps({"question": p.expression, "answer": f"{steps}\n#### {p.answer}"}) + "\n")


def test_an_experiment_on_a_gsm8k_format_file_with_the_shipped_tiny_models(tmp_path):
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2, 3)), 10, seed=3, split="test")
    _gsm8k_file(tmp_path / "test.jsonl", problems)
    config = {
        "out_dir": str(tmp_path / "run"),
        # the shipped policy reads "Q: <expression>=" prompts: the template writes the file's questions that way
        "task": {"name": "gsm8k", "path": str(tmp_path), "prompt": {"template": "Q: {question}=\n"}},
        "questions": 10, "policy": "tiny", "verifier": "tiny", "difficulty_samples": 4, "bins": 2, "budgets": [4],
        "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 2}],
        "search": {"max_rounds": 8, "max_step_tokens": 20}, "probe_samples": 1, "seed": 0}
    path = tmp_path / "gsm8k.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", "--config", str(path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["questions"] == 10 and set(report["accuracy"]) == {"best_of_n-selectionweighted", "beam-width2"}
    assert report["flops_exchange"] == [] and report["difficulty_signal"] == "verifier"
    by_id = {f"gsm8k/test/{i}": p for i, p in enumerate(problems)}
    cell = records(tmp_path / "run" / "results" / "beam-width2-b4.jsonl")
    for r in cell:  # graded through the task (math-verify), agreeing with the numbers themselves
        assert r["correct"] == (r["answer"] is not None and float(r["answer"]) == by_id[r["id"]].answer)
        assert r["generated_tokens"] > 0 and r["verifier_tokens"] > 0
    # the policy really solves them through the file's prompt template: 2- and 3-operation problems
    assert report["accuracy"]["best_of_n-selectionweighted"]["4"] >= 0.6
    weighted = "best_of_n-selectionweighted"
    assert report["coverage"][weighted]["4"] >= report["accuracy"][weighted]["4"]
    assert "task gsm8k" in (tmp_path / "run" / "summary.md").read_text()


def test_a_verifier_free_experiment_on_a_generic_jsonl_file_then_run(tmp_path):
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2, 4)), 8, seed=5, split="test")
    with open(tmp_path / "items.jsonl", "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": arithmetic.format_prompt(p), "target": p.answer, "ops": p.difficulty}) + "\n")
    config = {
        "out_dir": str(tmp_path / "run"),
        "task": {"name": "jsonl", "path": str(tmp_path / "items.jsonl"), "question_field": "prompt",
                 "answer_field": "target", "difficulty_field": "ops", "step_delimiter": "\n"},
        "questions": 8, "verifier": "none", "difficulty_samples": 4, "bins": 2, "budgets": [2, 4],
        "strategies": [{"kind": "best_of_n", "selection": "majority"}], "probe_samples": 1}
    path = tmp_path / "items.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", "--config", str(path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["params"]["verifier"] == 0 and report["difficulty_signal"] == "agreement"
    assert report["baseline"] == "best_of_n-selectionmajority" and report["findings"]["baseline"] is None
    assert "| the baseline best_of_n-selectionmajority |" in (tmp_path / "run" / "summary.md").read_text()
    cell = records(tmp_path / "run" / "results" / "best_of_n-b4.jsonl")
    assert all(r["verifier_tokens"] == 0 and r["verifier_flops"] == 0 for r in cell)
    assert {r["difficulty"] for r in cell} == {2, 4}
    for r in cell:
        assert r["correct"] == (r["answer"] is not None and answers_equal(str(r["answer"]), str(
            next(p.answer for p in problems if arithmetic.format_prompt(p) == r["question"]))))
    scheduler = json.loads((tmp_path / "run" / "scheduler.json").read_text())
    assert scheduler["signal"] == "agreement" and scheduler["verifier"] == "none"
    assert scheduler["task"]["path"] == str((tmp_path / "items.jsonl").resolve())  # applied from anywhere
    # the saved scheduler answers new questions with the task, verifier and settings it was chosen under
    answers = tmp_path / "answers.jsonl"
    assert main(["run", "--scheduler", str(tmp_path / "run" / "scheduler.json"), "--budget", "5",
                 "--question", "Q: 7*3-4+8=\n", "--output", str(answers), "--overwrite"]) == 0
    (record,) = records(answers)
    assert record["strategy"]["kind"] == "best_of_n" and record["strategy"]["n"] == 4
    assert record["generated_tokens"] > record["probe_tokens"] > 0 and record["verifier_tokens"] == 0
    assert record["correct"] is None  # a typed question has no known answer
    # a questions file may give the answers: the records are then graded by the task
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": arithmetic.format_prompt(problems[0]), "answer": problems[0].answer})
                         + "\n" + json.dumps({"question": "Q: 2+3=\n"}) + "\n")
    assert main(["run", "--scheduler", str(tmp_path / "run" / "scheduler.json"), "--budget", "3",
                 "--questions-file", str(questions), "--output", str(answers), "--overwrite"]) == 0
    graded, typed = records(answers)
    assert graded["correct"] == (graded["answer"] is not None and float(graded["answer"]) == problems[0].answer)
    assert typed["correct"] is None
    # 3 - 1 probe = 2 generations: below every budget the scheduler knows (2 is, here); 2 - 1 = 1 is not
    assert main(["run", "--scheduler", str(tmp_path / "run" / "scheduler.json"), "--budget", "2",
                 "--question", "Q: 2+3=\n", "--output", str(answers), "--overwrite"]) == 0
    (low,) = records(answers)
    assert low["chosen"] is None and low["strategy"] == {"kind": "best_of_n", "n": 1, "selection": "majority"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q: 2+3=\\n"}\n{"prompt": "x"}\n')
    assert main(["run", "--scheduler", str(tmp_path / "run" / "scheduler.json"), "--questions-file", str(bad)]) == 2


def test_run_says_when_the_chosen_strategy_does_not_fit_the_budget_left(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--no-progress", "questions=4", "difficulty_samples=2", "bins=2",
                 "budgets=[4]", "large_policy=null", "probe_samples=1",
                 "strategies=[{kind: best_of_n, selection: weighted}, {kind: beam, width: 4}]"]) == 0
    scheduler = json.loads((out / "scheduler.json").read_text())
    scheduler["choices"] = {k: {"kind": "beam", "width": 4} for k in scheduler["choices"]}  # beam everywhere
    (out / "scheduler.json").write_text(json.dumps(scheduler))
    answers = tmp_path / "answers.jsonl"
    capsys.readouterr()
    # 5 generations - 1 probe = 4 left: beam width 4 fits; 6 - 1 = 5 does not, so weighted best-of-N runs
    assert main(["run", "--scheduler", str(out / "scheduler.json"), "--budget", "6", "--question", "2+3",
                 "--output", str(answers), "--overwrite"]) == 0
    (record,) = records(answers)
    assert record["chosen"] == {"kind": "beam", "width": 4}
    assert record["strategy"] == {"kind": "best_of_n", "n": 5, "selection": "weighted"}
    assert "does not fit the 5 generations left" in record["fallback"] and "does not fit" in capsys.readouterr().err
    assert record["verifier_tokens"] > 0 and record["verifier_flops"] > 0  # the probe's scoring is counted


@pytest.mark.parametrize("override, message", [
    ("strategies=[{kind: beam, widht: 4}]", "beam has no option(s) ['widht']"),
    ("budgets=[0]", "budgets must be a non-empty list of integers >= 1"),
    ("search.max_len=0", "max_len=0"),
    ("task.name=gsm9k", "gsm9k"),
    ("strategies=[{kind: beam, width: 3}]", "fits none of the budgets"),
    ("verifier=none", "reads verifier scores and verifier is none"),
    ("questionz=3", "questionz"),
])
def test_config_errors_are_one_line_before_any_work(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["demo", "--out-dir", str(out), override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_shipped_and_example_configs_read():
    demo = read_config("configs/experiments/demo.yaml")
    full = read_config("configs/experiments/demo-full.yaml")
    assert demo.questions == 64 and full.questions == 400 and full.budgets[-1] == 256
    assert [s.name for s in full.strategies][:len(demo.strategies)] == [s.name for s in demo.strategies]
    gsm8k = read_config("configs/experiments/gsm8k.yaml", ["task.path=elsewhere/gsm8k"])
    assert gsm8k.make_task().name == "gsm8k" and gsm8k.make_task().path == "elsewhere/gsm8k"
    assert gsm8k.search.for_task(gsm8k.make_task()).delimiter == "\n"  # the task's step delimiter
    math500 = read_config("configs/experiments/math500.yaml")
    assert math500.search.for_task(math500.make_task()).delimiter == "\n\n"
    assert SweepConfig.from_dict(read_yaml("configs/sweep-tiny.yaml")).questions == 100


def test_within_question_auc_does_not_reward_knowing_which_questions_are_hard():
    # an easy question whose steps all score 0.9 (three right, one wrong) and a hard one whose steps all score 0.1
    # (one right, three wrong): over every step the scores rank right above wrong (AUC 12/16), within each question
    # they cannot (0.5); a third question whose steps are all right has no within-question AUC and is left out
    scores = np.array([0.9] * 4 + [0.1] * 4 + [0.7, 0.2])
    labels = np.array([True, True, True, False, True, False, False, False, True, True])
    questions = np.array([0] * 4 + [1] * 4 + [2, 2])
    assert roc_auc(scores[:8], labels[:8]) == pytest.approx(0.75)
    assert within_question_auc(scores, labels, questions) == {"step_auc_within_question": 0.5,
                                                             "questions_with_both_labels": 2}
    # scores that rank each question's own steps right: 1.0 whatever the questions' levels
    ranked = np.array([0.9, 0.9, 0.9, 0.8, 0.2, 0.1, 0.1, 0.1, 0.7, 0.2])
    assert within_question_auc(ranked, labels, questions)["step_auc_within_question"] == 1.0
    assert within_question_auc(ranked, labels[[0, 1, 2, 0, 4, 4, 4, 4, 8, 9]],
                               questions)["step_auc_within_question"] is None  # no question holds both labels
    # the solutions' scores against their answers, the same way: one question ranked right, one wrong, one all right
    got = solution_auc_within_question(np.array([0.9, 0.2, 0.4, 0.8, 0.5, 0.5]),
                                       np.array([True, False, True, False, True, True]), np.array([0, 0, 1, 1, 2, 2]))
    assert got == {"solution_auc_within_question": 0.5, "questions_with_right_and_wrong_answers": 2}


def test_same_depth_auc_does_not_reward_scores_that_fall_with_depth():
    # two samples of one question, three steps each: the first sample goes wrong at its third step, the second at
    # its second. Scores that only fall with depth (0.9, 0.5, 0.1 for both) rank the question's steps well (AUC 17/18)
    # but cannot tell the wrong second step from the right one (0.5 at depth 1; depth 2 holds only wrong steps)
    labels = np.array([True, True, False, True, False, False])
    groups = np.array([0, 1, 2, 0, 1, 2])  # the step's depth (one question)
    falling = np.array([0.9, 0.5, 0.1, 0.9, 0.5, 0.1])
    assert within_question_auc(falling, labels, np.zeros(6, int))["step_auc_within_question"] == pytest.approx(17 / 18)
    assert same_depth_auc(falling, labels, groups) == {"step_auc_same_depth": 0.5, "step_groups_same_depth": 1}
    checking = np.array([0.9, 0.6, 0.1, 0.9, 0.4, 0.1])  # the wrong second step scored below the right one
    assert same_depth_auc(checking, labels, groups)["step_auc_same_depth"] == 1.0


def test_verifier_evaluation_takes_any_task(tmp_path, capsys):
    args = ["eval", "prm", "--model", "tiny", "--policy", "tiny", "--samples", "2", "--mesh", "none"]
    samples_file = tmp_path / "scored.jsonl"
    assert main([*args, "--per-difficulty", "2", "--samples-output", str(samples_file)]) == 0
    arithmetic_result = json.loads(capsys.readouterr().out)
    # every sample, with what the summary was computed from: its steps' scores and oracle labels, and its grade
    scored = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(scored) == 8 * 2 and "scored_samples" not in arithmetic_result
    assert sum(len(r["steps"]) for r in scored) == arithmetic_result["steps_scored"]
    assert all(len(r["scores"]) == len(r["on_path"]) == len(r["steps"]) for r in scored)
    assert all(r["right"] == r["on_path"][-1] for r in scored if r["answer"] is not None)  # the last step: the answer
    assert np.mean([s for r in scored for s in r["on_path"]]) == pytest.approx(arithmetic_result["on_path_fraction"])
    assert "step_auc_same_depth" in arithmetic_result["all"]
    assert main(["eval", "policy", "--model", "tiny", "--samples-output", str(tmp_path / "x.jsonl")]) == 2
    assert "--samples-output is for eval prm" in capsys.readouterr().err
    assert arithmetic_result["all"]["problems"] == 8 and arithmetic_result["steps_scored"] > 0
    assert 0 <= arithmetic_result["all"]["step_auc"] <= 1  # the exact step oracle labels every step
    within = arithmetic_result["all"]["step_auc_within_question"]
    assert (within is None) == (arithmetic_result["all"]["questions_with_both_labels"] == 0)
    solutions = arithmetic_result["all"]["solution_auc_within_question"]
    assert (solutions is None) == (arithmetic_result["all"]["questions_with_right_and_wrong_answers"] == 0)
    # a rule's picks where a right answer is among the candidates: its accuracy over pass@N (a right pick needs one)
    overall = arithmetic_result["all"]
    for rule in ("best_of_n", "weighted", "majority"):
        assert overall["picks_right_when_present"][rule] == pytest.approx(overall[rule] / overall["pass@n"])
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2,)), 4, seed=1, split="test")
    _gsm8k_file(tmp_path / "test.jsonl", problems)
    task = json.dumps({"name": "gsm8k", "path": str(tmp_path), "prompt": {"template": "Q: {question}=\n"}})
    assert main([*args, "--task", task]) == 0
    gsm8k_result = json.loads(capsys.readouterr().out)
    assert gsm8k_result["all"]["problems"] == 4 and gsm8k_result["task"]["name"] == "gsm8k"
    assert gsm8k_result["all"]["step_auc"] is None and gsm8k_result["steps_scored"] == 0  # no exact oracle
    assert "solution_auc_within_question" in gsm8k_result["all"]  # needs only the task's grading
    assert gsm8k_result["all"]["pass@n"] >= gsm8k_result["all"]["weighted"]


def test_search_settings_a_config_leaves_out_come_from_its_task():
    natural = ExperimentConfig.from_dict({"out_dir": "x", "task": {"name": "gsm8k", "path": "data/gsm8k"},
                                          "verifier": "prm:tiny", "search": {"max_rounds": 7}})
    # the task's 2048-token row, capped at the default policy's (tiny) 512 positions
    assert (natural.search.max_step_tokens, natural.search.max_rounds, natural.search.max_len) == (256, 7, 512)
    builtin = ExperimentConfig.from_dict({"out_dir": "x"})
    assert (builtin.search.max_step_tokens, builtin.search.max_rounds, builtin.search.max_len) == (24, 12, 160)
    with pytest.raises(ValueError, match="max_step_tokens=4096 must be below max_len=512"):
        ExperimentConfig.from_dict({"out_dir": "x", "task": {"name": "gsm8k", "path": "d"},
                                    "search": {"max_step_tokens": 4096}})
