"""A task over any local JSONL file of question/answer records, with configurable field names."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ttcjax.io import check_options
from ttcjax.tasks.base import ProblemRecord, Prompt, Task, separate_shots
from ttcjax.tasks.benchmarks import NEVER_DOWNLOADS

__all__ = ["JsonlTask"]

_FIELD_OPTIONS = ("question_field", "answer_field", "solution_field", "id_field", "difficulty_field")


@dataclass(frozen=True)
class JsonlTask(Task):
    """Records from ``path``: a JSONL file (one JSON object per line, blank lines skipped), or a directory holding
    ``<split>.jsonl``.

    Each object gives the question (``question_field``), the reference answer (``answer_field``, any JSON scalar,
    kept as text), optionally the reference solution (``solution_field``, steps separated by ``step_delimiter``),
    the id (``id_field``; default ``"<file stem>/<index>"``, the 0-based index of the record in its file) and the
    difficulty (``difficulty_field``, an integer, stored as ``metadata["difficulty"]``).

    ``splits`` names the splits the task has; None means any split: for a directory, the one whose
    ``<split>.jsonl`` exists; for a single file, the file itself whatever split is asked for.
    """

    path: str
    question_field: str = "question"
    answer_field: str = "answer"
    solution_field: str | None = None
    id_field: str | None = None
    difficulty_field: str | None = None
    step_delimiter: str = "\n\n"
    splits: tuple[str, ...] | None = None  # type: ignore[assignment]  (a field here, a class constant elsewhere)
    prompt: Prompt = field(default_factory=Prompt)

    name: ClassVar[str] = "jsonl"
    solution_end: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
            raise ValueError(f"task 'jsonl' needs path: a JSONL file or a directory of <split>.jsonl; "
                             f"got {self.path!r}")
        object.__setattr__(self, "path", os.fspath(self.path))
        for option in ("question_field", "answer_field"):
            if not isinstance(getattr(self, option), str) or not getattr(self, option):
                raise ValueError(f"task 'jsonl': {option} must name a field; got {getattr(self, option)!r}")
        for option in ("solution_field", "id_field", "difficulty_field"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"task 'jsonl': {option} must name a field or be null; got {value!r}")
        if not isinstance(self.step_delimiter, str) or not self.step_delimiter:
            raise ValueError(f"task 'jsonl': step_delimiter must be non-empty text; got {self.step_delimiter!r}")
        if self.splits is not None:
            if isinstance(self.splits, str) or not all(isinstance(s, str) and s for s in self.splits):
                raise ValueError(f"task 'jsonl': splits must be a list of split names or null; got {self.splits!r}")
            object.__setattr__(self, "splits", tuple(self.splits))
        if self.prompt.style == "few_shot" and self.splits is not None and self.prompt.shots_split not in self.splits:
            raise ValueError(f"task 'jsonl' has no split {self.prompt.shots_split!r} for few-shot examples; its "
                             f"splits: {', '.join(self.splits)}; set prompt.shots_split to one of them")

    def check_split(self, split: str) -> None:
        """ValueError naming the splits when ``splits`` is set and lacks ``split``."""
        if self.splits is not None and split not in self.splits:
            raise ValueError(f"task 'jsonl' ({self.path}) has no split {split!r}; its splits: {', '.join(self.splits)}")

    def file_for(self, split: str) -> Path:
        """The file that holds ``split`` (FileNotFoundError naming it when absent)."""
        self.check_split(split)
        path = Path(self.path)
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.is_file():
                present = sorted(p.name for p in path.glob("*.jsonl"))
                raise FileNotFoundError(f"{file} not found (the directory holds {present or 'no .jsonl files'}); "
                                        f"put split {split!r} there as {split}.jsonl or point path at a file; "
                                        + NEVER_DOWNLOADS)
            return file
        if not path.is_file():
            raise FileNotFoundError(f"task 'jsonl': no file or directory at {path}; point path at a JSONL file or a "
                                    "directory of <split>.jsonl files; " + NEVER_DOWNLOADS)
        return path

    def load(self, split: str) -> list[ProblemRecord]:
        """Every record of ``split`` in file order. A line that is not a JSON object, or lacks a configured field,
        is a ValueError naming file:line, the field and the option that names it."""
        file = self.file_for(split)
        records = []
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    records.append(self._record(file, lineno, line, split, len(records)))
        return records

    def has_solved_examples(self) -> bool:
        """Yes where ``path`` is a directory whose ``<prompt.shots_split>.jsonl`` holds solved problems
        (``solution_field``) that no other split file asks; a single file is never its own examples."""
        path = Path(self.path)
        if self.solution_field is None or not path.is_dir():
            return False
        splits = self.splits if self.splits is not None else tuple(sorted(p.stem for p in path.glob("*.jsonl")))
        return self.prompt.shots_split in splits and separate_shots(self, splits)

    def _record(self, file: Path, lineno: int, line: str, split: str, index: int) -> ProblemRecord:
        where = f"{file}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")

        def get(option: str) -> Any:
            name = getattr(self, option)
            if name not in row:
                raise ValueError(f"{where}: missing field {name!r} (named by the task's {option}; the line has "
                                 f"{sorted(row)}); fix the line or set {option}")
            return row[name]

        question = get("question_field")
        if not isinstance(question, str):
            raise ValueError(f"{where}: field {self.question_field!r} (question_field) must be text; got {question!r}")
        answer = get("answer_field")
        if isinstance(answer, (dict, list)) or answer is None:
            raise ValueError(f"{where}: field {self.answer_field!r} (answer_field) must be a number or text; "
                             f"got {answer!r}")
        solution = "" if self.solution_field is None else get("solution_field")
        if not isinstance(solution, str):
            raise ValueError(f"{where}: field {self.solution_field!r} (solution_field) must be text; got {solution!r}")
        rid = f"{file.stem}/{index}" if self.id_field is None else str(get("id_field"))
        metadata: dict[str, Any] = {"source": "jsonl", "split": split, "file": str(file), "line": lineno}
        if self.difficulty_field is not None:
            difficulty = get("difficulty_field")
            if isinstance(difficulty, bool) or not isinstance(difficulty, int):
                raise ValueError(f"{where}: field {self.difficulty_field!r} (difficulty_field) must be an integer; "
                                 f"got {difficulty!r}")
            metadata["difficulty"] = difficulty
        return ProblemRecord(rid, question, str(answer), solution, metadata)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "path": self.path}
        data.update({option: getattr(self, option) for option in _FIELD_OPTIONS})
        data["step_delimiter"] = self.step_delimiter
        data["splits"] = None if self.splits is None else list(self.splits)
        data["prompt"] = self.prompt.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task") -> JsonlTask:
        """The task of its YAML form: ``name``, ``path``, the ``*_field`` options, ``step_delimiter``, ``splits``,
        ``prompt``."""
        check_options(("name", "path", *_FIELD_OPTIONS, "step_delimiter", "splits", "prompt"), data, source)
        if "path" not in data:
            raise ValueError(f"{source}: task 'jsonl' needs 'path' (a JSONL file or a directory of <split>.jsonl)")
        options = {k: v for k, v in data.items() if k not in ("name", "prompt")}
        return cls(**options, prompt=Prompt.from_dict(data.get("prompt"), f"{source}.prompt"))
