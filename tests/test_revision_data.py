"""Revision data (the paper's section 6.1) and `ttcjax train revision`: the pairing of correct and incorrect answers,
the examples' ids and loss mask, the command end to end with resume, and bad settings."""

import json
import os

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

import ttcjax
from ttcjax.checkpoints.native import load_model, save_model
from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.cli import main
from ttcjax.io import read_yaml
from ttcjax.models import ModelConfig, init_model
from ttcjax.search.revisions import REVISION_SEPARATOR, revision_context, without_eos
from ttcjax.training import revisions
from ttcjax.training.loop import pack_examples
from ttcjax.training.revisions import (DATA_DIR, RevisionTrainConfig, build_revision_data, build_split,
                                       encode_revision_example, load_revision_settings, pair_attempts, train_revision)

SHIPPED_POLICY = os.path.join(os.path.dirname(ttcjax.__file__), "assets", "policies", "tiny", "model")

CORRECT = ["12+3=15\nThe answer is 15\n\n", "4*3=12\n12+3=15\nThe answer is 15\n\n"]
# each correct answer's nearest incorrect one is unambiguous: index 2 for the first, index 4 for the second
INCORRECT = ["99*9=891\n891-7=884\nThe answer is 884\n\n",  # far from both
             "1+1=2\nThe answer is 2\n\n",
             "12+3=16\nThe answer is 16\n\n",  # one or two characters from CORRECT[0]
             "completely different text, nothing alike at all\nThe answer is 7\n\n",
             "4*3=12\n12+3=14\nThe answer is 14\n\n"]  # two characters from CORRECT[1]


def test_pairing_puts_the_nearest_incorrect_answer_last():
    distances = np.array([[Levenshtein.distance(c, i) for i in INCORRECT] for c in CORRECT])
    assert distances.argmin(1).tolist() == [2, 4] and (np.sort(distances, 1)[:, 1] > distances.min(1) + 3).all()
    rng = np.random.default_rng(0)
    seen_others = set()
    for _ in range(300):
        for pairing in pair_attempts(CORRECT, INCORRECT, rng):
            assert pairing.k == len(pairing.context) <= 4
            assert len(set(pairing.context)) == pairing.k  # distinct
            assert all(0 <= i < len(INCORRECT) for i in pairing.context)  # incorrect answers only
            if pairing.k:
                nearest = [2, 4][pairing.correct]
                assert pairing.context[-1] == nearest and nearest not in pairing.context[:-1]
                assert pairing.distance == distances[pairing.correct, nearest]
                seen_others.update((pairing.correct, i) for i in pairing.context[:-1])
            else:
                assert pairing.distance is None
    # the others are drawn at random: every other incorrect answer shows up before the nearest
    assert seen_others == {(c, i) for c in (0, 1) for i in range(5) if i != [2, 4][c]}


def test_pairing_ties_go_to_the_lowest_index_and_k_is_capped_by_the_pool():
    rng = np.random.default_rng(1)
    ties = pair_attempts(["abc"], ["abd", "abe", "xyz"], np.random.default_rng(3), max_k=1)
    assert all(p.context in ((), (0,)) for p in ties)
    for size in range(4):
        ks = {p.k for _ in range(200) for p in pair_attempts(["a"], ["b"] * size, rng)}
        assert ks == set(range(size + 1))  # uniform on {0..min(4, size)}: every value appears, none beyond
    assert [p.k for p in pair_attempts(["a", "b"], [], rng)] == [0, 0]
    assert pair_attempts([], ["a"], rng) == []


def test_k_is_uniform_on_zero_to_four():
    rng = np.random.default_rng(2)
    draws = 5000
    ks = np.array([pair_attempts(["x"], INCORRECT + ["y"], rng)[0].k for _ in range(draws)])
    counts = np.bincount(ks, minlength=5)
    assert counts.size == 5
    expected = draws / 5
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 18.47, counts  # the 0.1% critical value with 4 degrees of freedom
    tolerance = 4 * np.sqrt(0.2 * 0.8 / draws)  # four binomial standard deviations
    assert np.all(np.abs(counts / draws - 0.2) < tolerance), counts
    # with two incorrect answers the maximum is truncated: uniform on {0, 1, 2} (not 0 and 1 at 1/5, 2 at 3/5)
    ks = np.array([pair_attempts(["x"], ["y", "z"], rng)[0].k for _ in range(3000)])
    frequencies = np.bincount(ks, minlength=3) / ks.size
    assert frequencies.size == 3 and np.all(np.abs(frequencies - 1 / 3) < 4 * np.sqrt(2 / 9 / ks.size)), frequencies


def scripted(monkeypatch, tokenizer, texts):
    """Every prompt's sampled answers are `texts` (in place of the search loop's best-of-N)."""
    answers = [tokenizer.encode(t) + ([tokenizer.eos_id] if t.endswith("\n\n") else []) for t in texts]

    def first_attempts(engine, tokenizer, task, prompts, key, *, n, settings):
        assert n == len(answers)
        return [list(answers) for _ in prompts], sum(map(len, answers)) * len(prompts)

    monkeypatch.setattr(revisions, "first_attempts", first_attempts)


def _config(tmp_path, **overrides):
    base = dict(out_dir=str(tmp_path / "run"), init_from=SHIPPED_POLICY, task={"difficulties": [2]},
                num_questions=1, eval_questions=0, samples_per_question=7, seq_len=512,
                batch_size=2, steps=2, warmup_steps=1, mesh="none")
    base.update(overrides)
    return RevisionTrainConfig(**base)


def test_answers_without_a_final_answer_are_dropped(tmp_path, monkeypatch):
    config = _config(tmp_path)
    task, tok = config.make_task(), CharTokenizer()
    (problem,) = task.problems("train", limit=1, seed=config.seed)
    answer = int(problem.answer)
    right = [f"The answer is {answer}\n\n", f"so {answer}\nThe answer is {answer}\n\n"]
    wrong = [f"The answer is {answer + 1}\n\n", f"The answer is {answer + 2}\n\n", f"x\nThe answer is {answer + 3}\n\n"]
    unfinished = ["7*3=", "1+2=3\n\n"]  # cut off, or ended without an answer
    texts = [right[0], unfinished[0], wrong[0], wrong[1], unfinished[1], right[1], wrong[2]]
    scripted(monkeypatch, tok, texts)
    records, cost = build_split(config, task, None, tok, "train")
    assert cost["answers_without_final_answer"] == 2
    assert (cost["correct_answers"], cost["incorrect_answers"], cost["examples"]) == (2, 3, 2)
    assert cost["samples_drawn"] == 7 and cost["questions_without_correct"] == 0
    assert sum(cost["examples_per_k"].values()) == 2
    for record in records:
        assert record["correct"]["text"] in right and record["problem_id"] == problem.id
        assert [a["text"] for a in record["incorrect"]] == [tok.decode(a["tokens"]) for a in record["incorrect"]]
        assert all(a["text"] in wrong for a in record["incorrect"]) and len(record["incorrect"]) == record["k"]
        assert record["prompt_tokens"] == task.encode_prompt(problem, tok)
    # a question whose answers are all wrong or unfinished gives no example and is counted
    scripted(monkeypatch, tok, wrong + unfinished + wrong[:2])
    records, cost = build_split(_config(tmp_path / "none"), task, None, tok, "train")
    assert records == [] and cost["questions_without_correct"] == 1 and cost["answers_without_final_answer"] == 2


def test_example_is_the_revision_context_then_the_target_and_the_loss_covers_the_target():
    tok = CharTokenizer()
    eos = tok.eos_id
    record = {"prompt_tokens": tok.encode("Q: 1+2=\n", add_bos=True),
              "incorrect": [{"tokens": tok.encode("1+2=4\nThe answer is 4\n\n") + [eos]},
                            {"tokens": tok.encode("1+2=2\nThe answer is 2\n\n")}],
              "correct": {"tokens": tok.encode("1+2=3\nThe answer is 3\n\n") + [eos]}}
    separator = tok.encode(REVISION_SEPARATOR)
    context, target = encode_revision_example(record, separator, tok.eos_ids, eos)
    assert context == revision_context(record["prompt_tokens"], [a["tokens"] for a in record["incorrect"]], separator,
                                       eos_ids=tok.eos_ids)
    assert tok.decode(context, skip_special=False) == ("<bos>Q: 1+2=\n1+2=4\nThe answer is 4\n\n\n"
                                                       "1+2=2\nThe answer is 2\n\n\n")
    assert target == without_eos(record["correct"]["tokens"], tok.eos_ids) + [eos]
    assert target[-1] == eos and target.count(eos) == 1  # one EOS, whether or not the sample ended with one
    no_eos = dict(record, correct={"tokens": record["correct"]["tokens"][:-1]})
    assert encode_revision_example(no_eos, separator, tok.eos_ids, eos)[1] == target
    packed = pack_examples([(context, target)], seq_len=128)
    np.testing.assert_array_equal(packed.targets[packed.loss_mask == 1], target)
    np.testing.assert_array_equal(packed.tokens[0, :len(context) + len(target) - 1], (context + target)[:-1])


def _tiny_model(path):
    config = ModelConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=512)
    save_model(init_model(config, seed=0), str(path))
    CharTokenizer().save(path)
    return str(path)


def test_cli_train_revision_end_to_end_with_resume(tmp_path, capsys):
    """The shipped tiny policy samples (it answers many questions right); a tiny random model is fine-tuned."""
    init = _tiny_model(tmp_path / "init")
    out = tmp_path / "run"
    cfg = tmp_path / "revision.yaml"
    cfg.write_text(f"out_dir: {out}\ninit_from: {init}\npolicy: {SHIPPED_POLICY}\ntask: {{difficulties: [2]}}\n"
                   "num_questions: 6\neval_questions: 3\nsamples_per_question: 4\n"
                   "sample_batch_size: 8\nseq_len: 256\nbatch_size: 2\nsteps: 4\nwarmup_steps: 1\nlog_every: 1\n"
                   "checkpoint_every: 2\neval_every: 2\nmesh: none\n")
    config = RevisionTrainConfig.from_dict(read_yaml(cfg))
    first = train_revision(config, stop_after=2, progress=False)
    assert not first["finished"] and not (out / "model").exists()
    data = out / DATA_DIR
    summary = json.loads((data / "summary.json").read_text())
    train_cost = summary["train"]
    assert train_cost["samples_drawn"] == 24 and train_cost["generated_tokens"] > 0
    assert train_cost["questions"] == 6 and train_cost["examples"] == sum(train_cost["examples_per_k"].values()) > 0
    assert summary["validation"]["questions"] == 3 and summary["wall_seconds_this_run"] > 0
    lines = (data / "train.jsonl").read_text().splitlines()
    assert len(lines) == train_cost["examples"]
    record = json.loads(lines[0])
    assert {"problem_id", "question", "k", "incorrect", "correct", "nearest_distance"} <= set(record)
    # the answers were sampled by the search loop, which ends them where a chain's attempts end (on the built-in
    # task: the empty step, the blank line after the answer)
    for line in lines:
        text = json.loads(line)["correct"]["text"]
        assert text.endswith("The answer is " + text.split("The answer is ")[-1].strip() + "\n\n")
    stamps = {p: os.path.getmtime(p) for p in [data / "train.jsonl", *(data / "samples").iterdir()]}

    assert main(["train", "revision", "--config", str(cfg), "--no-progress"]) == 0
    done = json.loads((out / "train_summary.json").read_text())
    assert done["resumed_from"] == 2 and done["finished"] and done["step"] == 4
    assert done["command"].startswith("ttcjax train revision --config")
    assert {p: os.path.getmtime(p) for p in stamps} == stamps  # the data were reused, not sampled again
    assert [m["step"] for m in done["validation"]] == [4] and np.isfinite(done["validation"][0]["eval"]["loss"])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in evals if "eval" in m] == [2, 4]  # every eval_every, across the resume
    assert load_revision_settings(str(out / "model")) == {"separator": "\n", "window": 4}
    assert load_model(out / "model").config.hidden_size == 32 and (out / "model" / "ttcjax_tokenizer.json").exists()

    # pass@1 per revision step of the fine-tuned model (4 steps of a random model: the numbers are only consistent)
    path = tmp_path / "eval.json"
    assert main(["eval", "revision", "--model", str(out / "model"), "--task", "{name: arithmetic, difficulties: [2]}",
                 "--questions", "3", "--chains", "2", "--sequential", "3", "--mesh", "none", "--verifier", "tiny",
                 "--max-len", "384", "--output", str(path)]) == 0
    result = json.loads(path.read_text())
    overall = result["all"]
    assert overall["problems"] == 3 and len(overall["pass@1_by_step"]) == 3 and result["by_difficulty"]["2"]
    assert max(overall["pass@1_by_step"]) <= overall["pass@6"] and overall["majority"] <= overall["pass@6"]
    assert result["generated_tokens"] > 0 and result["reread_tokens"] > 0 and result["separator"] == "\n"
    # a revision verifier (here the shipped ORM) scores every attempt: each selection rule's accuracy
    assert set(overall["by_selection"]) == {"hierarchical", "weighted", "vanilla", "majority"}
    assert all(v <= overall["pass@6"] for v in overall["by_selection"].values())

    # the data rebuild from the kept samples when the paired files are lost, equal to the first
    before = (data / "train.jsonl").read_text()
    os.remove(data / "summary.json")
    os.remove(data / "train.jsonl")
    build_revision_data(config, CharTokenizer())
    assert (data / "train.jsonl").read_text() == before
    assert all(os.path.getmtime(p) == t for p, t in stamps.items() if p.parent.name == "samples")

    # the directory belongs to its config
    capsys.readouterr()
    assert main(["train", "revision", "--config", str(cfg), "--steps", "6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "steps" in err


def test_bad_settings_name_the_field(tmp_path, capsys):
    with pytest.raises(ValueError, match="samples_per_question=0"):
        _config(tmp_path, samples_per_question=0)
    with pytest.raises(ValueError, match="separator='é'.*cannot encode"):
        _config(tmp_path, separator="é")
    with pytest.raises(ValueError, match="separator"):
        _config(tmp_path, separator="")
    with pytest.raises(FileNotFoundError, match="policy: .*missing does not exist"):
        _config(tmp_path, policy=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="init_from: "):
        _config(tmp_path, init_from=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="temperature"):
        _config(tmp_path, temperature=0.0)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'x'}\ninit_from: {SHIPPED_POLICY}\nsamples: 4\n")
    assert main(["train", "revision", "--config", str(cfg)]) == 2
    assert "unknown option 'samples'" in capsys.readouterr().err
