"""The Task interface: what sweep, experiment, training and verifier evaluation need from a problem set.

A :class:`Task` gives the problems of a split as :class:`ProblemRecord` s, writes the policy's prompt for one
(:class:`Prompt`: plain, few-shot for base models, or the tokenizer's chat template for instruct models), names
the text that ends a reasoning step, extracts and grades answers, says which answers count as the same for
voting, and, where one exists, judges a partial solution exactly (:meth:`Task.step_oracle`).

Implementations: :mod:`ttcjax.tasks.builtin` (arithmetic, gsm8k, math, math500) and :mod:`ttcjax.tasks.jsonl`;
:mod:`ttcjax.tasks.registry` builds any of them from its YAML form.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from ttcjax.checkpoints.tokenizer import Tokenizer
from ttcjax.io import check_options
from ttcjax.tasks import grading

__all__ = ["ProblemRecord", "Prompt", "PROMPT_STYLES", "Task", "separate_shots"]

PROMPT_STYLES = ("auto", "plain", "chat", "few_shot")
DEFAULT_SOLUTION_END = "\n\n"  # ends a few-shot example when the task names no solution end
ANSWER_SENTENCE = "The answer is {answer}."  # closes a reference solution that states no extractable answer


@dataclass(frozen=True)
class ProblemRecord:
    """One benchmark problem. ``answer`` is the reference final answer string ("" if unknown); ``solution`` the
    reference solution text ("" if none). ``metadata`` is stored as a read-only :class:`types.MappingProxyType`
    over a private copy and is excluded from ``==``/``hash``, so records are hashable by (id, question, answer,
    solution). Records pickle fine."""

    id: str
    question: str
    answer: str
    solution: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __reduce__(self):  # MappingProxyType itself is not picklable
        return (ProblemRecord, (self.id, self.question, self.answer, self.solution, dict(self.metadata)))

    @property
    def difficulty(self) -> int | None:
        """``metadata["difficulty"]`` if present (arithmetic: the number of operations), else ``metadata["level"]``
        if it is an int (MATH levels 1-5), else None."""
        if "difficulty" in self.metadata:
            return self.metadata["difficulty"]
        level = self.metadata.get("level")
        return level if isinstance(level, int) and not isinstance(level, bool) else None


@dataclass(frozen=True)
class Prompt:
    """How a task writes the policy's prompt for a question.

    * ``style="auto"`` (the default): ``chat`` where the policy's tokenizer ships a chat template (an instruct
      model), else ``few_shot`` where the task has solved examples of its own apart from the problems (a base
      model; see :meth:`Task.has_solved_examples`) and the problem is not from the shots split (training on
      it: plain), else ``plain``. :meth:`Task.prompt_style` resolves it. A model fine-tuned on the task's plain
      prompts is best asked with ``style="plain"``.
    * ``style="plain"``: ``template`` with ``{question}`` replaced by the question.
    * ``style="few_shot"``: ``shots`` solved examples from split ``shots_split`` (drawn by ``shots_seed``, never
      the problem itself), each written as the template, its reference solution and the task's solution end,
      then the problem written by the template.
    * ``style="chat"``: the tokenizer's chat template over an optional ``system`` message and one user message,
      ``instruction`` (then a blank line, when non-empty) followed by the question written by the template,
      with the generation prompt added.

    ``{question}`` is the template's only placeholder; any other braces (``\\boxed{}``) are literal text.
    """

    style: str = "auto"
    template: str = "{question}"
    system: str | None = None
    instruction: str = ""
    shots: int = 4
    shots_split: str = "train"
    shots_seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt.style must be one of {', '.join(PROMPT_STYLES)}; got {self.style!r}")
        if not isinstance(self.template, str) or "{question}" not in self.template:
            raise ValueError(f"prompt.template must contain '{{question}}' (where the question goes); "
                             f"got {self.template!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise ValueError(f"prompt.system must be text or null; got {self.system!r}")
        if not isinstance(self.instruction, str):
            raise ValueError(f"prompt.instruction must be text; got {self.instruction!r}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"prompt.shots must be an integer >= 0; got {self.shots!r}")
        if not isinstance(self.shots_split, str) or not self.shots_split:
            raise ValueError(f"prompt.shots_split must name a split, e.g. 'train'; got {self.shots_split!r}")
        if isinstance(self.shots_seed, bool) or not isinstance(self.shots_seed, int):
            raise ValueError(f"prompt.shots_seed must be an integer; got {self.shots_seed!r}")

    def write(self, question: str) -> str:
        """The question written by ``template``."""
        return self.template.replace("{question}", question)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "prompt") -> Prompt:
        """The prompt of a YAML mapping (None or {} -> the default plain prompt); an unknown key is a ValueError
        naming ``source``."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a mapping of prompt options; got {data!r}")
        check_options(cls, data, source)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Every option, as :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)


class Task(ABC):
    """A problem set and everything a run needs to know about it.

    Subclasses set the class attributes ``name`` (the YAML name), ``splits`` (the splits it has),
    ``step_delimiter`` (the text that ends a reasoning step) and ``solution_end`` (text that ends a full solution
    besides EOS, None if only EOS does), hold a ``prompt`` (:class:`Prompt`), implement :meth:`load` and
    :meth:`to_dict`, and override the grading methods where the defaults (math-verify) do not fit.
    Implementations are frozen dataclasses, so a task is hashable and compares by its options.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    step_delimiter: str = "\n\n"
    solution_end: str | None = None
    prompt: Prompt
    # search settings a config leaves out: sized for natural-language steps (the public reproduction's: up to
    # 2048 tokens, 40 rounds); the built-in task's are its own small sizes
    search_defaults: ClassVar[Mapping[str, int]] = {"max_step_tokens": 256, "max_rounds": 40, "max_len": 2048}
    # a step holding one of these holds the final answer: search ends the solution after it
    answer_marks: ClassVar[tuple[str, ...]] = ("\\boxed{", "answer is", "Answer:", "#### ")

    # --- problems ---------------------------------------------------------------------------------------------
    @abstractmethod
    def load(self, split: str) -> list[ProblemRecord]:
        """Every record of ``split``, in the task's own stable order."""

    def problems(self, split: str = "test", limit: int | None = None, seed: int | None = None) -> list[ProblemRecord]:
        """``load(split)``, shuffled by ``np.random.default_rng(seed).permutation`` when ``seed`` is not None,
        then the first ``limit`` (all when None)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 (or None for every problem), got {limit}")
        records = self.load(split)
        if seed is not None:
            records = [records[i] for i in np.random.default_rng(seed).permutation(len(records))]
        return records if limit is None else records[:limit]

    def check_split(self, split: str) -> None:
        """ValueError naming the task and its splits when it has no ``split``."""
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}")

    def problem_from_text(self, text: str) -> ProblemRecord:
        """A user-typed question (``ttcjax run --question``): id = the first 16 hex digits of its sha256, answer ""
        (unknown)."""
        return ProblemRecord(hashlib.sha256(text.encode()).hexdigest()[:16], text, "", "", {"source": "user"})

    # --- prompts ----------------------------------------------------------------------------------------------
    def prompt_text(self, problem: ProblemRecord, tokenizer: Tokenizer) -> str:
        """The policy's prompt for ``problem`` as text (see :class:`Prompt` for each style). A chat prompt needs a
        tokenizer with a chat template (ValueError otherwise); a few-shot prompt needs ``prompt.shots`` other
        records in ``prompt.shots_split`` (ValueError otherwise)."""
        prompt, style = self.prompt, self.prompt_style(tokenizer, problem)
        if style == "chat":
            content = prompt.write(problem.question)
            if prompt.instruction:
                content = prompt.instruction + "\n\n" + content
            messages = [] if prompt.system is None else [{"role": "system", "content": prompt.system}]
            return tokenizer.apply_chat_template(messages + [{"role": "user", "content": content}],
                                                 add_generation_prompt=True)
        if style == "few_shot":
            end = DEFAULT_SOLUTION_END if self.solution_end is None else self.solution_end
            examples = "".join(prompt.write(r.question) + self.solution_text(r) + end
                               for r in self.few_shot_examples(problem))
            return examples + prompt.write(problem.question)
        return prompt.write(problem.question)

    def prompt_style(self, tokenizer: Tokenizer, problem: ProblemRecord | None = None) -> str:
        """The prompt style used with ``tokenizer`` (for ``problem``): ``prompt.style``, with ``auto`` resolved (see
        :class:`Prompt`). A problem of the shots split itself (training on it) is never few-shot: its examples
        would be its own neighbours."""
        if self.prompt.style != "auto":
            return self.prompt.style
        if tokenizer.chat_template is not None:
            return "chat"
        own_split = problem is not None and problem.metadata.get("split") == self.prompt.shots_split
        return "few_shot" if self.has_solved_examples() and not own_split else "plain"

    def has_solved_examples(self) -> bool:
        """Whether ``prompt.shots`` solved examples can be drawn from ``prompt.shots_split`` without ever showing a
        problem set its own problems: the default is no; tasks whose shots split is separate data say yes."""
        return False

    def prompt_bos(self, tokenizer: Tokenizer) -> bool:
        """Whether the prompt's ids start with BOS: where the tokenizer has one and the style is not chat (a chat
        template writes its own BOS text)."""
        return tokenizer.bos_id is not None and self.prompt_style(tokenizer) != "chat"

    def encode_prompt(self, problem: ProblemRecord, tokenizer: Tokenizer) -> list[int]:
        """Token ids of :meth:`prompt_text`; BOS first when the tokenizer has one and the style is not chat (a chat
        template writes its own BOS text)."""
        return tokenizer.encode(self.prompt_text(problem, tokenizer), add_bos=self.prompt_bos(tokenizer))

    def few_shot_examples(self, problem: ProblemRecord) -> list[ProblemRecord]:
        """The ``prompt.shots`` solved examples shown before ``problem``: split ``prompt.shots_split`` permuted by
        ``prompt.shots_seed``, the problem itself (by id) left out. The same examples for every other problem."""
        shots = self.prompt.shots
        examples = [r for r in _shot_candidates(self) if r.id != problem.id][:shots]
        if len(examples) < shots:
            raise ValueError(f"task {self.name!r}: a few-shot prompt needs {shots} examples from split "
                             f"{self.prompt.shots_split!r} besides the problem, which has only {len(examples)}; "
                             "lower prompt.shots or choose another prompt.shots_split")
        return examples

    def solution_text(self, problem: ProblemRecord) -> str:
        """The reference solution as its steps joined by ``step_delimiter`` (for few-shot prompts and SFT). If
        :meth:`extract_answer` finds no answer in it, a last step "The answer is <answer>." is added."""
        steps = self.split_steps(problem.solution)
        if self.extract_answer(self.step_delimiter.join(steps)) is None and problem.answer:
            steps.append(ANSWER_SENTENCE.format(answer=problem.answer))
        return self.step_delimiter.join(steps)

    # --- answers and steps ------------------------------------------------------------------------------------
    def extract_answer(self, text: str) -> Any:
        """The final answer written in ``text`` (None when there is none): by default
        :func:`ttcjax.tasks.grading.extract_answer` (``\\boxed{}``, "the answer is", ``####``)."""
        return grading.extract_answer(text)

    def is_correct(self, problem: ProblemRecord, answer: Any) -> bool:
        """Whether ``answer`` (from :meth:`extract_answer`) equals the reference: by default exactly after
        normalisation or by math-verify (in a worker process with a time limit). None is never correct."""
        if answer is None:
            return False
        return grading.compare_answers(str(answer), problem.answer).correct

    def same_answer(self, a: Any, b: Any) -> bool:
        """Whether two extracted answers are the same vote (majority and weighted selection): their
        :meth:`answer_key` agree."""
        return self.answer_key(a) == self.answer_key(b)

    def grade(self, problem: ProblemRecord, answers: Sequence[Any]) -> list[bool]:
        """:meth:`is_correct` for each of many answers to one problem, grading each distinct answer (by
        :meth:`answer_key`) once: N samples often share a few answers, and math-verify runs in a worker."""
        verdicts: dict[Hashable, bool] = {}
        out = []
        for answer in answers:
            key = self.answer_key(answer)
            if key not in verdicts:
                verdicts[key] = self.is_correct(problem, answer)
            out.append(verdicts[key])
        return out

    def answer_key(self, answer: Any) -> Hashable:
        """What makes two answers "the same" for voting: by default
        :func:`ttcjax.tasks.grading.normalize_answer` of the text ("1,000" and "1000" agree). None stays None."""
        return None if answer is None else grading.normalize_answer(str(answer))

    def split_steps(self, text: str) -> list[str]:
        """The reasoning steps of ``text`` as written (split on ``step_delimiter``, blank ones dropped, nothing
        stripped): the verifier scores on the host exactly what it reads inside search."""
        return [s for s in text.split(self.step_delimiter) if s.strip()]

    def step_oracle(self, problem: ProblemRecord, steps: list[str]) -> bool | None:
        """Whether every step so far is right; None when the task has no exact oracle (the default)."""
        return None

    # --- YAML -------------------------------------------------------------------------------------------------
    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``name`` and the task's options) that
        :func:`ttcjax.tasks.registry.task_from_dict` reads back into an equal task."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task") -> Task:
        """The task of its YAML form (``name`` included); an unknown option is a ValueError naming ``source``,
        the key and the allowed keys. Use :func:`ttcjax.tasks.registry.task_from_dict` to pick the class."""


def separate_shots(task: Task, other_splits: Sequence[str]) -> bool:
    """Whether ``task``'s ``prompt.shots_split`` holds ``prompt.shots`` solved problems (reference solutions) that
    are not among the problems of ``other_splits`` (a split that cannot be read counts as empty). A single file
    read for every split fails this, so it never few-shots from itself. Cached per task and splits."""
    return _separate_shots(task, tuple(s for s in other_splits if s != task.prompt.shots_split))


@functools.lru_cache(maxsize=32)
def _separate_shots(task: Task, other_splits: tuple[str, ...]) -> bool:
    def problems(split: str) -> list[ProblemRecord]:
        try:
            return task.load(split)
        except (FileNotFoundError, ValueError):
            return []

    if task.prompt.shots == 0:
        return False
    asked = {r.question for split in other_splits for r in problems(split)}
    solved = [r for r in problems(task.prompt.shots_split) if r.solution and r.question not in asked]
    return len(solved) >= task.prompt.shots


@functools.lru_cache(maxsize=32)
def _shot_candidates(task: Task) -> tuple[ProblemRecord, ...]:
    """The first ``shots + 1`` records of the shots split in ``shots_seed`` order (one spare, for the problem
    itself). Cached per task, so a few-shot prompt does not reload the split for every problem."""
    prompt = task.prompt
    pool = task.load(prompt.shots_split)
    order = np.random.default_rng(prompt.shots_seed).permutation(len(pool))
    return tuple(pool[i] for i in order[:prompt.shots + 1])
