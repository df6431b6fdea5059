"""The Task interface and its implementations: fixtures are written in tmp_path, nothing is downloaded."""

from __future__ import annotations

import pickle

import pytest

from ttcjax.tasks.base import ProblemRecord, Prompt
from ttcjax.tasks.benchmarks import ProblemRecord as BenchmarksProblemRecord

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
