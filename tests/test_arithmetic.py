"""Built-in arithmetic task: generator, splits, text format, exact step oracle, JSONL."""

import json
from collections import Counter

import pytest

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.tasks.arithmetic import (EXAMPLE_END, SPLITS, STEP_DELIMITER, Problem, TaskConfig, check_step,
                                     extract_answer, format_example, format_prompt, format_solution, from_jsonl,
                                     generate, is_correct_answer, parse_problem, prefix_on_path, sample_steps, split_of,
                                     split_steps, to_jsonl)

CFG = TaskConfig()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Problem]]:
    return {s: generate(CFG, 2000 if s == "train" else 400, seed=1, split=s) for s in SPLITS}


def test_determinism():
    a, b = generate(CFG, 40, seed=3), generate(CFG, 40, seed=3)
    assert a == b
    assert [p.expression for p in a] != [p.expression for p in generate(CFG, 40, seed=4)]
    # A different split with the same seed is a different (disjoint) set.
    assert not {p.id for p in a} & {p.id for p in generate(CFG, 40, seed=3, split="test")}


def test_splits_disjoint_no_duplicates_balanced(splits):
    sets = {s: [p.expression for p in ps] for s, ps in splits.items()}
    for s, exprs in sets.items():
        assert len(exprs) == len(set(exprs)), f"duplicates in {s}"
        assert all(split_of(e, CFG) == s for e in exprs)
        assert all(p.split == s for p in splits[s])
    assert not set(sets["train"]) & set(sets["validation"])
    assert not set(sets["train"]) & set(sets["test"])
    assert not set(sets["validation"]) & set(sets["test"])
    # Different seeds of one split never produce problems of another split either.
    other = {p.expression for p in generate(CFG, 400, seed=99, split="validation")}
    assert not other & set(sets["train"])
    counts = Counter(p.difficulty for p in splits["train"])
    assert counts == {2: 500, 3: 500, 4: 500, 5: 500}
    assert Counter(p.difficulty for p in generate(CFG, 10, seed=0)) == {2: 3, 3: 3, 4: 2, 5: 2}


def test_value_bounds_and_operands(splits):
    for p in splits["train"]:
        assert all(1 <= n <= 9 for n in p.operands)
        assert set(p.operators) <= set("+-*")
        assert all(0 <= r <= 99 for *_, r in p.steps)
        assert len(p.steps) == p.difficulty


def test_reference_solutions_pass_oracle(splits):
    for p in splits["train"][:500] + splits["test"]:
        lines = split_steps(format_solution(p))
        assert len(lines) == p.difficulty + 1
        for k, line in enumerate(lines):
            v = check_step(p, lines[:k], line)
            assert v.correct and v.on_path, (p.expression, lines[:k], line, v)
        assert prefix_on_path(p, lines)
        assert is_correct_answer(p, format_solution(p))
        assert extract_answer(format_example(p)) == p.answer


def test_format_example():
    p = parse_problem("7*3-4+8")
    assert (p.answer, p.difficulty, p.operators) == (25, 3, ("*", "-", "+"))
    assert p.steps == [(7, "*", 3, 21), (21, "-", 4, 17), (17, "+", 8, 25)]
    assert format_prompt(p) == "Q: 7*3-4+8=\n"
    assert format_solution(p) == "7*3=21\n21-4=17\n17+8=25\nThe answer is 25"
    assert format_example(p) == format_prompt(p) + format_solution(p) + EXAMPLE_END
    assert STEP_DELIMITER == "\n" and EXAMPLE_END == "\n\n"
    assert p.id == parse_problem(" 7 * 3 - 4 + 8 ").id != parse_problem("7*3-4+9").id
    with pytest.raises(ValueError):
        parse_problem("7*/3")
    with pytest.raises(ValueError):
        Problem(p.id, p.operands, p.operators, 26, 3)


def test_oracle_hand_checked():
    p = parse_problem("3+4*2")
    assert p.answer == 11
    assert check_step(p, [], "4*2=8").correct
    assert check_step(p, [], " 4 * 2 = 8 ").correct  # whitespace lenient
    assert not check_step(p, [], "3+4=7").correct  # precedence
    assert not check_step(p, [], "4*2=9").correct  # arithmetic
    assert not check_step(p, [], "2*4=8").correct  # not the operands as written
    for garbage in ["", "hello", "4*2", "4*2=8=8", "4x2=8", "=8"]:
        assert not check_step(p, [], garbage).correct, garbage
    assert check_step(p, ["4*2=8"], "3+8=11").on_path
    assert not check_step(p, ["4*2=8"], "3+8=12").correct
    assert check_step(p, ["4*2=8", "3+8=11"], "The answer is 11").on_path
    assert not check_step(p, ["4*2=8", "3+8=11"], "The answer is 12").correct
    # A correct step after an incorrect one: correct, but the prefix is off path.
    v = check_step(p, ["3+4=7"], "4*2=8")
    assert v.correct and not v.on_path
    v = check_step(p, ["4*2=9"], "4*2=8")
    assert v.correct and not v.on_path
    # Operands from a wrong earlier reduction do not exist in the true expression.
    assert not check_step(p, ["4*2=9"], "3+9=12").correct
    assert not prefix_on_path(p, ["4*2=9", "3+8=11"])
    assert prefix_on_path(p, []) and prefix_on_path(p, ["4*2=8"])


def test_oracle_multiple_valid_reductions():
    p = parse_problem("2*3+4*5")
    assert check_step(p, [], "2*3=6").correct and check_step(p, [], "4*5=20").correct
    assert not check_step(p, [], "3+4=7").correct
    assert prefix_on_path(p, ["4*5=20", "2*3=6", "6+20=26", "The answer is 26"])
    assert not check_step(p, ["4*5=20"], "6+20=26").correct  # 2*3 not reduced yet
    q = parse_problem("1+2+3*4")
    assert check_step(q, [], "1+2=3").correct and check_step(q, [], "3*4=12").correct
    assert not check_step(q, [], "2+3=5").correct
    r = parse_problem("2*3*4")  # left associative: only the first product is next
    assert check_step(r, [], "2*3=6").correct and not check_step(r, [], "3*4=12").correct
    s = parse_problem("9-2+3")  # 2+3 first would compute 9-(2+3)
    assert not check_step(s, [], "2+3=5").correct and check_step(s, [], "9-2=7").correct
    t = parse_problem("5+5+5")  # repeated operand pairs: any reduction applies once
    assert prefix_on_path(t, ["5+5=10", "10+5=15"])
    assert not check_step(t, ["5+5=10", "10+5=15"], "5+5=10").correct


def test_sampled_solution_orders():
    import numpy as np

    rng = np.random.default_rng(0)
    q = parse_problem("1+2+3*4")  # two valid first steps, each drawn about half the time
    firsts = Counter(sample_steps(q, rng)[0] for _ in range(400))
    assert set(firsts) == {(1, "+", 2, 3), (3, "*", 4, 12)} and min(firsts.values()) > 150
    for fixed in ("3+4*2", "2*3*4", "9-2+3"):  # one valid order only: the reference path
        p = parse_problem(fixed)
        assert all(sample_steps(p, rng) == p.steps for _ in range(20))
    p = parse_problem("8+7-8+1+4*7")  # 4*7 may come at any point before the last addition
    paths = {tuple(sample_steps(p, rng)) for _ in range(300)}
    assert len(paths) == 4 and tuple(p.steps) in paths
    for path in paths:  # every drawn path is right by the oracle, step by step
        lines = split_steps(format_solution(p, list(path)))
        assert all(check_step(p, lines[:k], line).on_path for k, line in enumerate(lines))
        assert is_correct_answer(p, format_solution(p, list(path)))
    a, b = np.random.default_rng(7), np.random.default_rng(7)  # deterministic for a seeded generator
    assert [sample_steps(p, a) for _ in range(10)] == [sample_steps(p, b) for _ in range(10)]


def test_restated_solutions():
    import numpy as np

    p = parse_problem("7*3-4+8")
    assert format_solution(p, restate=True) == "7*3=21; 21-4+8\n21-4=17; 17+8\n17+8=25\nThe answer is 25"
    q = parse_problem("2*3+4*5")  # another valid order restates what that order leaves
    assert format_solution(q, [(4, "*", 5, 20), (2, "*", 3, 6), (6, "+", 20, 26)], restate=True) == \
        "4*5=20; 2*3+20\n2*3=6; 6+20\n6+20=26\nThe answer is 26"
    # The oracle accepts a restatement only when it is exactly what the step leaves.
    assert check_step(p, [], "7*3=21; 21-4+8").on_path and check_step(p, [], " 7*3 = 21 ;21 - 4 + 8").correct
    for wrong in ("7*3=21; 21-4+9", "7*3=21; 21+8", "7*3=21; 17+8", "7*3=21; 21-4+8+0"):
        assert check_step(p, [], wrong).reason == "wrong restatement", wrong
    assert check_step(p, [], "7*3=22; 22-4+8").reason == "arithmetic error"
    assert check_step(p, ["7*3=21; 21-4+8", "21-4=17; 17+8"], "17+8=25; 25").on_path  # a number is fine too
    assert not prefix_on_path(p, ["7*3=21; 21-4+9", "21-4=17; 17+8"])
    t = parse_problem("5*5+5*5")  # identical sites: the restatement says which one was reduced
    assert prefix_on_path(t, ["5*5=25; 5*5+25", "5*5=25; 25+25", "25+25=50"])
    rng = np.random.default_rng(1)
    for e in ("8+7-8+1+4*7", "8*4*5+3+5*5", "9-2+3*3*1"):
        p = parse_problem(e)
        for path in [None] + [sample_steps(p, rng) for _ in range(5)]:
            lines = split_steps(format_solution(p, path, restate=True))
            assert all(check_step(p, lines[:k], line).on_path for k, line in enumerate(lines)), lines
            assert is_correct_answer(p, format_solution(p, path, restate=True))
            # the restated expression always has the value of the problem
            for line in lines[:-2]:
                assert parse_problem(line.split("; ")[1]).answer == p.answer


def test_extract_answer():
    assert extract_answer("7*3=21\nThe answer is 25\n\n") == 25
    assert extract_answer("the answer is  42.") == 42
    assert extract_answer("The answer is 7\nThe answer is 8") == 7  # first one counts
    assert extract_answer("The answer is -3") == -3
    assert extract_answer("The answer is") is None
    assert extract_answer("answer: 25") is None
    p = parse_problem("7*3-4+8")
    assert is_correct_answer(p, "blah\nThe answer is 25")
    assert not is_correct_answer(p, "The answer is 250")
    assert not is_correct_answer(p, "25")


def test_char_tokenizer_encodes_everything(splits):
    tok = CharTokenizer()
    text = "".join(format_example(p) for ps in splits.values() for p in ps[:300])
    assert tok.UNK not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_jsonl_round_trip_and_errors(tmp_path, splits):
    probs = splits["validation"][:50]
    path = to_jsonl(probs, tmp_path / "val.jsonl")
    assert from_jsonl(path) == probs
    rec = json.loads(path.read_text().splitlines()[0])
    assert set(rec) == {"id", "question", "answer", "solution", "difficulty", "split"}
    assert rec["question"] == format_prompt(probs[0]).rstrip("\n")
    assert rec["split"] == "validation"
    assert not list(tmp_path.glob(".*tmp*"))

    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        from_jsonl(bad)
    wrong = dict(rec, answer=rec["answer"] + 1)
    bad.write_text(lines[0] + "\n" + json.dumps(wrong) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2.*answer"):
        from_jsonl(bad)
    bad.write_text(json.dumps({"question": "Q: 1+2="}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1.*missing field"):
        from_jsonl(bad)


def test_config_validation_and_small_space():
    with pytest.raises(ValueError):
        TaskConfig(operators="+/")
    with pytest.raises(ValueError):
        TaskConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        TaskConfig(difficulties=(0,))
    small = TaskConfig(difficulties=[1], operators="+")  # lists are accepted (and hashable)
    ps = generate(small, 5, seed=0, split="test")
    assert len({p.expression for p in ps}) == 5 and all(p.difficulty == 1 for p in ps)
    with pytest.raises(ValueError, match="only"):
        generate(small, 100, seed=0, split="test")  # 81 expressions exist in all splits
