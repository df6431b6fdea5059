"""The named tasks: the built-in arithmetic task (with its exact step oracle) and the public math benchmarks
GSM8K, MATH and MATH-500 read from local files (nothing is downloaded; see :mod:`ttcjax.tasks.benchmarks`)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ttcjax.io import check_options
from ttcjax.tasks import arithmetic
from ttcjax.tasks.base import ProblemRecord, Prompt, Task, separate_shots
from ttcjax.tasks.benchmarks import arithmetic_record
from ttcjax.tasks.datasets import load_dataset

__all__ = ["ArithmeticTask", "GSM8KTask", "MathTask", "Math500Task", "PER_DIFFICULTY"]

PER_DIFFICULTY = 100  # arithmetic problems per difficulty when no limit is given
_USER_QUESTION_RE = re.compile(r"\s*(?:Q:)?\s*([\d\s+\-*]+?)\s*=?\s*")


def _check_few_shot_split(task: Task) -> None:
    """Fail at construction, not at the first prompt, when few-shot examples come from a split the task lacks."""
    if task.prompt.style == "few_shot":
        try:
            task.check_split(task.prompt.shots_split)
        except ValueError as e:
            raise ValueError(f"{e}; set prompt.shots_split to one of them") from None


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Multi-step arithmetic (:mod:`ttcjax.tasks.arithmetic`): problems drawn from ``config``; one step per
    line; a solution ends with a blank line; answers are ints; :meth:`step_oracle` is exact."""

    config: arithmetic.TaskConfig = arithmetic.TaskConfig()
    prompt: Prompt = Prompt()

    name: ClassVar[str] = "arithmetic"
    splits: ClassVar[tuple[str, ...]] = arithmetic.SPLITS
    step_delimiter: ClassVar[str] = arithmetic.STEP_DELIMITER
    solution_end: ClassVar[str | None] = arithmetic.EXAMPLE_END
    # a step line is at most 18 characters, a solution at most 6 lines
    search_defaults: ClassVar[Mapping[str, int]] = {"max_step_tokens": 24, "max_rounds": 12, "max_len": 160}
    answer_marks: ClassVar[tuple[str, ...]] = ()  # a solution ends with a blank line, after its answer line

    def __post_init__(self) -> None:
        _check_few_shot_split(self)

    def problems(self, split: str = "test", limit: int | None = None, seed: int | None = 0) -> list[ProblemRecord]:
        """Exactly ``arithmetic.generate(config, limit, seed, split)`` as records, in its order and with its ids;
        ``limit`` None means 100 per difficulty and ``seed`` None means 0."""
        self.check_split(split)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 (or None for {PER_DIFFICULTY} per difficulty), got {limit}")
        n = PER_DIFFICULTY * len(self.config.difficulties) if limit is None else limit
        return [arithmetic_record(p) for p in arithmetic.generate(self.config, n, 0 if seed is None else seed, split)]

    def load(self, split: str) -> list[ProblemRecord]:
        """``problems(split)``: 100 problems per difficulty drawn with seed 0."""
        return self.problems(split)

    def problem_from_text(self, text: str) -> ProblemRecord:
        """The record of a typed question, ``"Q: 7*3-4+8="`` or ``"7*3-4+8"`` (answer and solution known)."""
        m = _USER_QUESTION_RE.fullmatch(text)
        try:
            if not m:
                raise ValueError("no expression")
            return arithmetic_record(arithmetic.parse_problem(m.group(1)))
        except ValueError:
            raise ValueError(f"not an arithmetic question: {text!r}; write it as 'Q: 7*3-4+8=' or '7*3-4+8' "
                             f"(non-negative integers and {arithmetic.OPERATORS!r})") from None

    def extract_answer(self, text: str) -> int | None:
        """N of the first "The answer is N" (:func:`ttcjax.tasks.arithmetic.extract_answer`), else None."""
        return arithmetic.extract_answer(text)

    def is_correct(self, problem: ProblemRecord, answer: Any) -> bool:
        """``answer == int(problem.answer)`` (None is never correct)."""
        return answer is not None and answer == int(problem.answer)

    def answer_key(self, answer: Any) -> Hashable:
        """The int itself."""
        return answer

    def split_steps(self, text: str) -> list[str]:
        """Non-blank lines, unstripped (:func:`ttcjax.tasks.arithmetic.split_steps`)."""
        return arithmetic.split_steps(text)

    def step_oracle(self, problem: ProblemRecord, steps: list[str]) -> bool:
        """Whether every step line is a correct reduction (:func:`ttcjax.tasks.arithmetic.prefix_on_path`)."""
        expression = problem.metadata.get("expression")
        if expression is None:
            m = _USER_QUESTION_RE.fullmatch(problem.question)
            if not m:
                raise ValueError(f"record {problem.id!r} is not an arithmetic problem: no metadata 'expression' and "
                                 f"its question {problem.question!r} is not 'Q: <expression>='")
            expression = m.group(1)
        return arithmetic.prefix_on_path(arithmetic.parse_problem(expression), steps)

    def to_dict(self) -> dict[str, Any]:
        config = {f.name: _yaml_value(getattr(self.config, f.name)) for f in dataclasses.fields(self.config)}
        return {"name": self.name, **config, "prompt": self.prompt.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task") -> ArithmeticTask:
        """The task of its YAML form: ``name``, any :class:`ttcjax.tasks.arithmetic.TaskConfig` field, ``prompt``."""
        config_fields = tuple(f.name for f in dataclasses.fields(arithmetic.TaskConfig))
        check_options(("name", *config_fields, "prompt"), data, source)
        try:
            config = arithmetic.TaskConfig(**{k: v for k, v in data.items() if k in config_fields})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
        return cls(config, Prompt.from_dict(data.get("prompt"), f"{source}.prompt"))


def _yaml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class _FileTask(Task):
    """A benchmark read from a local ``path`` by :func:`ttcjax.tasks.datasets.load_dataset` (a file, a directory of
    ``<split>.jsonl`` files, the MATH tree or a tensorflow-datasets build). ``path`` is kept as given."""

    path: str
    prompt: Prompt = field(default_factory=Prompt)

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
            raise ValueError(f"task {self.name!r} needs a path to its local data; got {self.path!r}")
        object.__setattr__(self, "path", os.fspath(self.path))
        _check_few_shot_split(self)

    def load(self, split: str) -> list[ProblemRecord]:
        self.check_split(split)
        return load_dataset(self.name, self.path, split)

    def has_solved_examples(self) -> bool:
        """Yes where ``path`` is a directory whose ``prompt.shots_split`` holds solved problems that no other split
        asks (GSM8K's or MATH's train split beside its test split); a single file is never its own examples."""
        return (self.prompt.shots_split in self.splits and Path(self.path).is_dir()
                and separate_shots(self, self.splits))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "prompt": self.prompt.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task") -> _FileTask:
        """The task of its YAML form: ``name``, ``path``, ``prompt``."""
        check_options(("name", "path", "prompt"), data, source)
        if "path" not in data:
            raise ValueError(f"{source}: task {cls.name!r} needs 'path' (its local data; nothing is downloaded)")
        return cls(data["path"], Prompt.from_dict(data.get("prompt"), f"{source}.prompt"))


@dataclass(frozen=True)
class GSM8KTask(_FileTask):
    """GSM8K (``<split>.jsonl`` with ``question`` and ``answer: "...\\n#### 42"``): one step per line of the
    reference solution; the answer is the number after ``####``."""

    name: ClassVar[str] = "gsm8k"
    step_delimiter: ClassVar[str] = "\n"  # splits: train and test; solution end: EOS only (the defaults)


@dataclass(frozen=True)
class MathTask(_FileTask):
    """Hendrycks MATH (train and test): steps are paragraphs; answers are graded by math-verify."""

    name: ClassVar[str] = "math"  # splits train and test, steps are paragraphs, EOS ends a solution: the defaults


@dataclass(frozen=True)
class Math500Task(_FileTask):
    """MATH-500 (test only): steps are paragraphs; answers are graded by math-verify."""

    name: ClassVar[str] = "math500"
    splits: ClassVar[tuple[str, ...]] = ("test",)  # steps are paragraphs, EOS ends a solution: the defaults
