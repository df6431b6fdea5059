"""The command line: the demo end to end, generation from a saved checkpoint, config errors."""

import json

import pytest
import yaml

from ttcjax.cli import main


def test_demo_in_a_reduced_size_runs_end_to_end(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({
        "per_difficulty": 2, "difficulties": [2, 5], "difficulty_samples": 4, "bins": 2, "budgets": [2, 4],
        "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 2}],
        "max_rounds": 8, "probe_samples": 1}))
    out = tmp_path / "demo"
    assert main(["demo", "--config", str(config), "--out-dir", str(out), "--no-progress"]) == 0
    for name in ("summary.md", "report.json", "scheduler.json", "difficulty.jsonl", "large_policy.jsonl",
                 "accuracy_vs_budget.png", "accuracy_by_difficulty.png", "compute_optimal_vs_best_of_n.png",
                 "flops_matched.png", "results/beam-width2-b4.jsonl", "results/best_of_n-b4.jsonl"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == {"best_of_n-selectionweighted", "beam-width2"}
    assert len(report["flops_exchange"]) == 3 and report["difficulty_cost_tokens"] > 0
    summary = (out / "summary.md").read_text()
    assert "Compute-optimal versus best-of-N" in summary and "matched FLOPs" in summary
    assert "a right answer is among best-of-N's candidates" in summary and "On the hardest bins" in summary
    assert "Level by level (1 = easiest), at R=" in summary  # where search beats the larger model, and where not
    coverage = report["coverage"]["best_of_n-selectionweighted"]
    for b in ("2", "4"):  # a right candidate exists at least as often as the chosen one is right
        assert report["accuracy"]["best_of_n-selectionweighted"][b] <= coverage[b] <= 1
    # the saved scheduler answers new questions, counting its probe samples
    answers = tmp_path / "answers.jsonl"
    assert main(["run", "--scheduler", str(out / "scheduler.json"), "--budget", "5", "--question", "Q: 7*3-4+8=",
                 "--question", "2+3", "--output", str(answers)]) == 0
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question"] for r in records] == ["7*3-4+8", "2+3"]
    assert all(r["generated_tokens"] > r["probe_tokens"] > 0 for r in records)


def test_init_model_then_generate_from_the_checkpoint(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model_config": {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64,
                                                       "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}}))
    assert main(["init-model", "--config", str(config), "--out", str(tmp_path / "ckpt")]) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Q: 1+2=", "Q: 3*4=", "Q: 9-1="]) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(tmp_path / "ckpt"), "--tokenizer", "char", "--prompts-file", str(prompts),
            "--n", "3", "--max-new-tokens", "5", "--temperature", "0", "--output", str(out), "--mesh", "4,2"]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 9 and {r["prompt_index"] for r in records} == {0, 1, 2}
    # greedy: the three samples of a prompt are identical
    for i in range(3):
        assert len({r["completion"] for r in records if r["prompt_index"] == i}) == 1
    assert all(r["num_tokens"] <= 5 for r in records)


def test_config_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temprature: 0.5\n")
    assert main(["demo", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "temprature" in err
    assert main(["generate", "--config", str(bad), "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "temprature" in err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--mesh"])
