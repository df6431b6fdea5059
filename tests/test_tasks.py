"""The Task interface and its implementations: fixtures are written in tmp_path, nothing is downloaded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.tasks import arithmetic
from ttcjax.tasks.base import ProblemRecord, Prompt, Task
from ttcjax.tasks.benchmarks import ProblemRecord as BenchmarksProblemRecord
from ttcjax.tasks.builtin import ArithmeticTask, GSM8KTask, Math500Task, MathTask
from ttcjax.tasks.jsonl import JsonlTask
from ttcjax.tasks.registry import TASKS, task_from_dict

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHARS = CharTokenizer()  # plain and few-shot prompts do not use the tokenizer


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    """A tiny byte-level BPE tokenizer.json with BOS "<s>" and a chat template, trained on the spot."""
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    from ttcjax.checkpoints.tokenizer import HFTokenizer

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Solve step by step. What is 2 + 2? <|user|> <|assistant|>"] * 20, trainer)
    d = tmp_path_factory.mktemp("chat_tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}))
    return HFTokenizer(d)


@pytest.fixture
def gsm8k_dir(tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
             "answer": f"He buys 2.\nSo he has <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(6)]
    _jsonl(tmp_path / "gsm8k" / "train.jsonl", rows)
    _jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "What is 40 + 2?", "answer": "40 + 2 = 42\n#### 42"}])
    return tmp_path / "gsm8k"


# --- records and prompts --------------------------------------------------------------------------------------
def test_problem_record_lives_in_base_and_says_its_difficulty():
    assert BenchmarksProblemRecord is ProblemRecord
    assert ProblemRecord("a", "q", "1", metadata={"difficulty": 3, "level": 5}).difficulty == 3
    assert ProblemRecord("a", "q", "1", metadata={"level": 4}).difficulty == 4
    assert ProblemRecord("a", "q", "1", metadata={"level": "Level ?"}).difficulty is None
    assert ProblemRecord("a", "q", "1").difficulty is None
    r = ProblemRecord("a", "q", "1", metadata={"level": 2})
    assert pickle.loads(pickle.dumps(r)).difficulty == 2


def test_prompt_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="prompt.style .*plain, chat, few_shot.*'fewshot'"):
        Prompt(style="fewshot")
    with pytest.raises(ValueError, match=r"prompt.template must contain '\{question\}'"):
        Prompt(template="Problem:")
    with pytest.raises(ValueError, match="my.yaml: unknown option 'shot'; allowed: style, template"):
        Prompt.from_dict({"shot": 2}, "my.yaml")
    p = Prompt(style="few_shot", template="Problem: {question}\nSolution (\\boxed{{}}):", shots=2, shots_seed=5)
    assert Prompt.from_dict(p.to_dict()) == p
    assert Prompt.from_dict(None) == Prompt()
    assert p.write("1+1?") == "Problem: 1+1?\nSolution (\\boxed{{}}):"  # only {question} is replaced


# --- arithmetic -----------------------------------------------------------------------------------------------
def test_arithmetic_task_reproduces_generate():
    task = ArithmeticTask()
    for split, limit, seed in [("test", 13, 7), ("train", 8, 0)]:
        expected = arithmetic.generate(arithmetic.TaskConfig(), limit, seed, split)
        records = task.problems(split, limit, seed)
        assert [r.id for r in records] == [p.id for p in expected]
        assert [r.question for r in records] == [arithmetic.format_prompt(p) for p in expected]
        assert [task.prompt_text(r, CHARS) for r in records] == [arithmetic.format_prompt(p) for p in expected]
        assert [int(r.answer) for r in records] == [p.answer for p in expected]
        assert [r.difficulty for r in records] == [p.difficulty for p in expected]
    assert task.problems("test", 5) == task.problems("test", 5, seed=0)  # the default seed is 0
    small = ArithmeticTask(arithmetic.TaskConfig(difficulties=(2, 3)))
    assert [r.id for r in small.problems("validation")] == [
        p.id for p in arithmetic.generate(small.config, 200, 0, "validation")]  # 100 per difficulty
    with pytest.raises(ValueError, match="task 'arithmetic' has no split 'dev'; its splits: train, validation, test"):
        task.problems("dev", 3)


def test_arithmetic_answers_steps_oracle_and_typed_questions():
    task = ArithmeticTask()
    problem = task.problem_from_text("Q: 7*3-4+8=")
    assert problem == task.problem_from_text("7 * 3 - 4 + 8\n")
    assert problem.id == arithmetic.parse_problem("7*3-4+8").id and problem.answer == "25"
    with pytest.raises(ValueError, match="not an arithmetic question: 'what is 2/3'"):
        task.problem_from_text("what is 2/3")
    completion = "7*3=21\n 21-4=17\n\n17+8=25\nThe answer is 25"
    assert task.split_steps(completion) == ["7*3=21", " 21-4=17", "17+8=25", "The answer is 25"]
    assert task.extract_answer(completion) == 25 and task.extract_answer("no answer") is None
    assert task.is_correct(problem, 25) and not task.is_correct(problem, 24) and not task.is_correct(problem, CHARS)
    assert task.answer_key(25) == 25
    assert task.step_oracle(problem, ["7*3=21", "21-4=17"]) is True
    assert task.step_oracle(problem, ["7*3=21", "21-4=18"]) is False
    assert task.step_oracle(problem, ["3-4=-1"]) is False
    assert task.solution_text(problem) == arithmetic.format_solution(arithmetic.parse_problem("7*3-4+8"))


def test_arithmetic_few_shot_prompt_is_training_examples_then_the_question():
    task = ArithmeticTask(prompt=Prompt(style="few_shot", shots=3, shots_seed=1))
    problem = task.problems("test", 1, 4)[0]
    text = task.prompt_text(problem, CHARS)
    shots = task.few_shot_examples(problem)
    assert len(shots) == 3 and all(s.metadata["split"] == "train" for s in shots)
    by_id = {p.id: p for p in arithmetic.generate(task.config, 400, 0, "train")}
    assert text == "".join(arithmetic.format_example(by_id[s.id]) for s in shots) + problem.question
    # a training problem asked about is never its own example: the next one in shots_seed order takes its place
    first = shots[0]
    others = task.few_shot_examples(first)
    assert first.id not in [s.id for s in others] and [s.id for s in others] == [s.id for s in shots[1:]] + [
        others[-1].id] and others[-1].id not in [s.id for s in shots]
    assert not task.prompt_text(first, CHARS).startswith(first.question)


# --- GSM8K: math-verify grading, few-shot, chat ---------------------------------------------------------------
def test_gsm8k_task_reads_records_and_grades_with_math_verify(gsm8k_dir):
    task = GSM8KTask(str(gsm8k_dir))
    (problem,) = task.problems("test")
    assert problem.id == "gsm8k/test/0" and problem.answer == "42" and problem.question == "What is 40 + 2?"
    assert task.step_delimiter == "\n" and task.solution_end is None
    assert task.extract_answer("40+2 is 42.\nThe answer is 42.") == "42"
    assert task.extract_answer("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert task.is_correct(problem, "42.0") and task.is_correct(problem, "42")
    assert not task.is_correct(problem, "43") and not task.is_correct(problem, CHARS)
    half = ProblemRecord("h", "Half of one?", "0.5")
    assert task.is_correct(half, "\\frac{1}{2}")  # math-verify: \frac{1}{2} == 0.5
    assert task.answer_key("1,000") == task.answer_key("1000") != task.answer_key("1001")
    assert task.answer_key(None) is None
    train = task.problems("train")
    assert task.solution_text(train[1]) == "He buys 2.\nSo he has 3 apples.\nThe answer is 3."
    assert task.split_steps("a\n\n b \nc") == ["a", " b ", "c"]  # as written: what the verifier reads in search
    assert task.step_oracle(problem, ["40 + 2 = 42"]) is None
    with pytest.raises(ValueError, match="task 'gsm8k' has no split 'validation'; its splits: train, test"):
        task.problems("validation")


def test_few_shot_prompt_shows_k_other_solutions_never_the_problem(gsm8k_dir):
    task = GSM8KTask(str(gsm8k_dir), Prompt(style="few_shot", shots=2, shots_split="train",
                                            template="Question: {question}\nAnswer: "))
    train = task.problems("train")
    for problem in train:
        text = task.prompt_text(problem, CHARS)
        shown = [r for r in train if f"Question: {r.question}\nAnswer: " + task.solution_text(r) + "\n\n" in text]
        assert len(shown) == 2 and problem not in shown
        assert text.endswith(f"Question: {problem.question}\nAnswer: ")
        assert text.count("Question: ") == 3
    test_problem = task.problems("test")[0]
    assert len({r.id for r in task.few_shot_examples(test_problem)}) == 2
    too_many = GSM8KTask(str(gsm8k_dir), Prompt(style="few_shot", shots=6))
    with pytest.raises(ValueError, match="needs 6 examples from split 'train' besides the problem, which has only 5"):
        too_many.prompt_text(train[0], CHARS)


def test_chat_prompt_uses_the_tokenizer_chat_template(gsm8k_dir, chat_tokenizer):
    task = GSM8KTask(str(gsm8k_dir), Prompt(style="chat", system="Be brief.", instruction="Solve step by step."))
    problem = task.problems("test")[0]
    text = task.prompt_text(problem, chat_tokenizer)
    assert text == ("<s><|system|>Be brief.<|end|><|user|>Solve step by step.\n\nWhat is 40 + 2?<|end|>"
                    "<|assistant|>")
    ids = task.encode_prompt(problem, chat_tokenizer)
    assert ids == chat_tokenizer.encode(text) and ids[0] == chat_tokenizer.bos_id  # the template's BOS, once
    assert ids.count(chat_tokenizer.bos_id) == 1
    no_system = GSM8KTask(str(gsm8k_dir), Prompt(style="chat"))
    assert no_system.prompt_text(problem, chat_tokenizer) == "<s><|user|>What is 40 + 2?<|end|><|assistant|>"
    plain = GSM8KTask(str(gsm8k_dir), Prompt(style="plain"))
    assert plain.encode_prompt(problem, chat_tokenizer) == [chat_tokenizer.bos_id] + chat_tokenizer.encode(
        problem.question)


def test_auto_prompt_is_chat_for_instruct_tokenizers_few_shot_from_separate_data_else_plain(gsm8k_dir, chat_tokenizer,
                                                                                            tmp_path):
    auto = GSM8KTask(str(gsm8k_dir))  # the default style
    problem = auto.problems("test")[0]
    assert auto.prompt.style == "auto" and auto.prompt_style(chat_tokenizer) == "chat"
    assert auto.encode_prompt(problem, chat_tokenizer) == chat_tokenizer.encode(
        "<s><|user|>What is 40 + 2?<|end|><|assistant|>")  # the template's BOS, once
    assert auto.prompt_style(CHARS) == "few_shot"  # a base model: 4 of the 6 solved train problems first
    assert auto.prompt_text(problem, CHARS) == GSM8KTask(str(gsm8k_dir), Prompt(style="few_shot")).prompt_text(
        problem, CHARS)
    # training on the shots split itself: plain (its examples would be its own neighbours)
    train_problem = auto.problems("train")[0]
    assert auto.prompt_style(CHARS, train_problem) == "plain" and auto.prompt_style(CHARS, problem) == "few_shot"
    assert auto.prompt_text(train_problem, CHARS) == train_problem.question
    assert GSM8KTask(str(gsm8k_dir), Prompt(shots=7)).prompt_style(CHARS) == "plain"  # too few solved examples
    # a single file answers every split: it is never its own examples
    assert GSM8KTask(str(gsm8k_dir / "train.jsonl")).prompt_style(CHARS) == "plain"
    rows = [{"q": f"{i} + 1?", "a": i + 1, "s": f"{i} + 1 = {i + 1}"} for i in range(6)]
    single = JsonlTask(str(_jsonl(tmp_path / "one.jsonl", rows)), "q", "a", "s")
    assert single.prompt_style(CHARS) == "plain" and single.prompt_text(single.problems()[0], CHARS) == "0 + 1?"
    _jsonl(tmp_path / "split" / "train.jsonl", rows[:5])
    _jsonl(tmp_path / "split" / "test.jsonl", rows[5:])
    assert JsonlTask(str(tmp_path / "split"), "q", "a", "s").prompt_style(CHARS) == "few_shot"
    assert JsonlTask(str(tmp_path / "split"), "q", "a").prompt_style(CHARS) == "plain"  # no solutions to show
    _jsonl(tmp_path / "same" / "train.jsonl", rows)  # the test questions again: not examples
    _jsonl(tmp_path / "same" / "test.jsonl", rows)
    assert JsonlTask(str(tmp_path / "same"), "q", "a", "s").prompt_style(CHARS) == "plain"
    # the built-in task's shipped models read plain prompts; MATH-500 has no split to draw examples from
    assert ArithmeticTask().prompt_style(CHARS) == "plain"
    assert Math500Task(str(gsm8k_dir)).prompt_style(CHARS) == "plain"


def test_chat_prompt_without_a_chat_template_is_an_error(gsm8k_dir):
    task = GSM8KTask(str(gsm8k_dir), Prompt(style="chat"))
    with pytest.raises(ValueError, match="no chat template"):
        task.prompt_text(task.problems("test")[0], CharTokenizer())


# --- MATH and MATH-500 ----------------------------------------------------------------------------------------
def test_math500_has_only_a_test_split(tmp_path):
    f = _jsonl(tmp_path / "math500" / "test.jsonl", [
        {"problem": "What is $1/2$?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
         "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"}])
    task = Math500Task(str(f.parent))
    (r,) = task.problems()
    assert r.id == "test/prealgebra/1.json" and r.difficulty == 2 and task.step_delimiter == "\n\n"
    assert task.is_correct(r, "0.5") and task.solution_text(r) == "It is $\\boxed{\\frac{1}{2}}$."
    with pytest.raises(ValueError, match="task 'math500' has no split 'train'; its splits: test"):
        task.problems("train")
    with pytest.raises(ValueError, match="task 'math500' has no split 'train'.*set prompt.shots_split"):
        Math500Task(str(f), Prompt(style="few_shot"))
    assert len(Math500Task(str(f), Prompt(style="few_shot", shots=0, shots_split="test")).prompt_text(r, CHARS)) > 0


def test_math_task_reads_the_tree(tmp_path):
    rec = {"problem": "Solve $x+1=3$.", "level": "Level 1", "type": "Algebra", "solution": "So $x=\\boxed{2}$."}
    for split in ("train", "test"):
        (tmp_path / "MATH" / split / "algebra").mkdir(parents=True)
        (tmp_path / "MATH" / split / "algebra" / "1.json").write_text(json.dumps(rec))
    task = MathTask(str(tmp_path / "MATH"))
    assert [r.id for r in task.problems("train")] == ["train/algebra/1.json"]
    assert task.problems("test")[0].difficulty == 1
    with pytest.raises(ValueError, match="task 'math' has no split 'validation'; its splits: train, test"):
        task.problems("validation")


# --- JSONL ----------------------------------------------------------------------------------------------------
def test_jsonl_task_with_custom_fields(tmp_path):
    rows = [{"q": f"What is {i} squared?", "a": i * i, "sol": f"{i} times {i}\n\nis {i * i}", "lvl": i % 3}
            for i in range(5)]
    f = tmp_path / "squares.jsonl"
    lines = [json.dumps(r) for r in rows]
    f.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # a blank line is skipped, not counted
    task = JsonlTask(str(f), question_field="q", answer_field="a", solution_field="sol", difficulty_field="lvl")
    records = task.problems("test")
    assert [r.id for r in records] == [f"squares/{i}" for i in range(5)]
    assert [r.answer for r in records] == ["0", "1", "4", "9", "16"]
    assert [r.difficulty for r in records] == [0, 1, 2, 0, 1]
    assert task.split_steps(records[3].solution) == ["3 times 3", "is 9"]
    assert task.solution_text(records[3]) == "3 times 3\n\nis 9\n\nThe answer is 9."
    assert records[3].metadata["line"] == 5
    shuffled = task.problems("test", limit=3, seed=1)
    assert shuffled == [records[i] for i in np.random.default_rng(1).permutation(5)[:3]]
    with pytest.raises(ValueError, match="limit must be >= 0"):
        task.problems("test", limit=-1)
    with_ids = JsonlTask(str(f), question_field="q", answer_field="a", id_field="q")
    assert with_ids.problems("x")[0].id == "What is 0 squared?"  # a single file serves any split


def test_jsonl_task_bad_lines_name_the_file_line_field_and_option(tmp_path):
    f = _jsonl(tmp_path / "data.jsonl", [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "ans": 4}])
    with pytest.raises(ValueError, match=r"data.jsonl:2: missing field 'answer' \(named by the task's answer_field; "
                                         r"the line has \['ans', 'question'\]\); fix the line or set answer_field"):
        JsonlTask(str(f)).problems()
    f.write_text('{"question": "1+1?", "answer": 2}\n[1, 2]\n')
    with pytest.raises(ValueError, match="data.jsonl:2: expected a JSON object, got list"):
        JsonlTask(str(f)).problems()
    f.write_text('{"question": "1+1?", "answer": 2, "d": "hard"}\n')
    with pytest.raises(ValueError, match="data.jsonl:1: field 'd' \\(difficulty_field\\) must be an integer"):
        JsonlTask(str(f), difficulty_field="d").problems()
    with pytest.raises(FileNotFoundError, match="no file or directory at .*missing.jsonl"):
        JsonlTask(str(tmp_path / "missing.jsonl")).problems()


def test_jsonl_task_directory_of_splits(tmp_path):
    _jsonl(tmp_path / "d" / "train.jsonl", [{"question": "a", "answer": "1"}])
    _jsonl(tmp_path / "d" / "test.jsonl", [{"question": "b", "answer": "2"}, {"question": "c", "answer": "3"}])
    task = JsonlTask(str(tmp_path / "d"), splits=["train", "test"])
    assert task.splits == ("train", "test")
    assert [r.id for r in task.problems("test")] == ["test/0", "test/1"]
    with pytest.raises(ValueError, match="has no split 'validation'; its splits: train, test"):
        task.problems("validation")
    with pytest.raises(FileNotFoundError, match=r"validation.jsonl not found \(the directory holds \['test.jsonl', "
                                                r"'train.jsonl'\]\)"):
        JsonlTask(str(tmp_path / "d")).problems("validation")


# --- YAML -----------------------------------------------------------------------------------------------------
def test_every_task_round_trips_through_task_from_dict(tmp_path):
    few = Prompt(style="few_shot", shots=1, shots_split="test", template="Q: {question}\nA:")
    tasks = [ArithmeticTask(), ArithmeticTask(arithmetic.TaskConfig(difficulties=(1, 2), value_range=(0, 50)), few),
             GSM8KTask("data/gsm8k"), MathTask("MATH", Prompt(style="chat", system="s", instruction="i")),
             Math500Task("../math500/test.jsonl", few),
             JsonlTask("x.jsonl", question_field="q", answer_field="a", solution_field="s", id_field="i",
                       difficulty_field="d", step_delimiter="\n", splits=("test",), prompt=few)]
    assert {type(t) for t in tasks} == set(TASKS.values())
    for task in tasks:
        data = task.to_dict()
        assert data["name"] == task.name and TASKS[task.name] is type(task)
        assert json.loads(json.dumps(data)) == data  # plain YAML/JSON values
        assert task_from_dict(data) == task
        assert isinstance(task_from_dict(data), Task)
    assert task_from_dict({"name": "math500", "path": "../math500/test.jsonl"}).path == "../math500/test.jsonl"
    assert task_from_dict({"name": "arithmetic"}) == ArithmeticTask()
    assert task_from_dict({"name": "arithmetic", "difficulties": [3]}).config.difficulties == (3,)


def test_task_from_dict_errors_name_the_source_key_and_allowed():
    with pytest.raises(ValueError, match="exp.yaml: unknown task name 'gsm9k'; known: arithmetic, gsm8k, math, "
                                         "math500, jsonl"):
        task_from_dict({"name": "gsm9k", "path": "x"}, "exp.yaml")
    with pytest.raises(ValueError, match="exp.yaml: missing 'name'; one of arithmetic"):
        task_from_dict({"path": "x"}, "exp.yaml")
    with pytest.raises(ValueError, match="exp.yaml: unknown option 'limit'; allowed: name, path, prompt"):
        task_from_dict({"name": "gsm8k", "path": "x", "limit": 3}, "exp.yaml")
    with pytest.raises(ValueError, match="task: unknown option 'difficulty'; allowed: name, difficulties, "):
        task_from_dict({"name": "arithmetic", "difficulty": [2]})
    with pytest.raises(ValueError, match="exp.yaml: task 'math' needs 'path'"):
        task_from_dict({"name": "math"}, "exp.yaml")
    with pytest.raises(ValueError, match="exp.yaml.prompt: unknown option 'style_'; allowed: style"):
        task_from_dict({"name": "jsonl", "path": "x", "prompt": {"style_": "chat"}}, "exp.yaml")
    with pytest.raises(ValueError, match="unknown option 'question'; allowed: name, path, question_field"):
        task_from_dict({"name": "jsonl", "path": "x", "question": "q"})
    with pytest.raises(ValueError, match="prompt.style must be one of"):
        task_from_dict({"name": "arithmetic", "prompt": {"style": "instruct"}})
