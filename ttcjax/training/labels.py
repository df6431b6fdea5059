"""Monte-Carlo step labels for PRM training (Math-Shepherd style, as the paper trains its PRM).

For each sampled solution of a training question and each step prefix (steps 1..k), R continuations are
sampled from the policy; the soft label of step k is the fraction that reach the right answer. The prefix
is prefilled once and its KV cache shared by R rows (`Engine.generate(n=R)`); the final step needs no
rollouts: its label is whether the solution's own answer is right. Samples of one question often share
their first steps (at 16 samples per question, the shipped tiny policy's step prefixes are a quarter
distinct), and a prefix written by several samples is one state: it is rolled out R times once, and
every sample that wrote it takes that label.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from ttcjax.decoding.engine import Engine, Sampling, StopConditions
from ttcjax.io import write_jsonl


@dataclasses.dataclass(frozen=True)
class LabelledSolution:
    """One sampled solution with a soft label per step (the fraction of rollouts from steps[:k+1] that
    reached the right answer)."""

    problem_id: str
    question: str  # the prompt text the policy saw
    steps: tuple[str, ...]
    step_labels: tuple[float, ...]
    correct: bool  # the solution's own final answer
    difficulty: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "LabelledSolution":
        return cls(problem_id=record["problem_id"], question=record["question"], steps=tuple(record["steps"]),
                   step_labels=tuple(record["step_labels"]), correct=bool(record["correct"]),
                   difficulty=int(record.get("difficulty", 0)))


@dataclasses.dataclass
class LabellingCost:
    """What labelling spent: solutions sampled, rollouts run, and the tokens each generated / prefilled."""

    solutions: int = 0
    solution_tokens: int = 0
    rollouts: int = 0
    rollout_tokens: int = 0
    prefill_tokens: int = 0
    step_prefixes: int = 0  # step prefixes to label, over every solution (the final steps excluded)
    distinct_prefixes: int = 0  # of which distinct (question and text): the ones rolled out

    @property
    def generated_tokens(self) -> int:
        return self.solution_tokens + self.rollout_tokens


def split_steps(text: str, delimiter: str = "\n") -> list[str]:
    """A completion's steps as written: split on the delimiter, blank pieces dropped (`Task.split_steps`)."""
    return [s for s in text.split(delimiter) if s.strip()]


def rollout_labels(engine: Engine, tokenizer, prefixes: Sequence[str], is_correct: Sequence[Callable[[str], bool]],
                   *, rollouts: int, sampling: Sampling, stop: StopConditions, key: jax.Array,
                   max_new_tokens: int, batch_rows: int = 512, cost: LabellingCost | None = None,
                   add_bos: bool = True, progress: bool = True) -> np.ndarray:
    """For each prefix text, the fraction of `rollouts` continuations c with is_correct[i](prefix + c).

    Each prefix is prefilled once (with BOS first where `add_bos` and the tokenizer has one) and its cache
    shared by `rollouts` rows. Returns [len(prefixes)] floats.
    """
    cost = cost if cost is not None else LabellingCost()
    per_call = max(1, batch_rows // rollouts)
    out = np.zeros(len(prefixes))
    for start in tqdm(range(0, len(prefixes), per_call), desc="rollouts", unit="batch", file=sys.stderr,
                      disable=not progress or len(prefixes) <= per_call, dynamic_ncols=True):
        chunk = list(prefixes[start:start + per_call])
        encoded = [tokenizer.encode(p, add_bos=add_bos and tokenizer.bos_id is not None) for p in chunk]
        completions = engine.generate(encoded, jax.random.fold_in(key, start), max_new_tokens=max_new_tokens,
                                      sampling=sampling, stop=stop, n=rollouts)
        cost.prefill_tokens += sum(map(len, encoded))
        cost.rollouts += len(completions)
        for c in completions:
            i = start + c.prompt_index
            cost.rollout_tokens += len(c.tokens)
            out[i] += is_correct[i](chunk[c.prompt_index] + tokenizer.decode(c.tokens))
    return out / rollouts


def label_solutions(engine: Engine, tokenizer, questions: Sequence[str], checkers: Sequence[Callable[[str], bool]],
                    *, samples: int, rollouts: int, key: jax.Array, sampling: Sampling, stop: StopConditions,
                    max_new_tokens: int, delimiter: str = "\n", problem_ids: Sequence[str] | None = None,
                    difficulties: Sequence[int] | None = None, batch_rows: int = 512, add_bos: bool = True,
                    steps_of: Callable[[str], list[str]] | None = None, progress: bool = True
                    ) -> tuple[list[LabelledSolution], LabellingCost]:
    """Sample `samples` solutions per question and label every step by `rollouts` Monte-Carlo continuations.

    `questions[i]` is the prompt text (ending where the first step begins; encoded with BOS first where
    `add_bos` and the tokenizer has one); `checkers[i](text)` says whether a full text (prompt + solution)
    reaches the right answer; `steps_of(text)` splits a solution into its steps (default: on `delimiter`, as
    written). Solutions without a step are dropped.
    """
    steps_of = steps_of or (lambda text: split_steps(text, delimiter))
    cost = LabellingCost()
    key_solutions, key_rollouts = jax.random.split(key)
    per_call = max(1, batch_rows // samples)
    solutions: list[tuple[int, list[str], bool]] = []
    for start in range(0, len(questions), per_call):
        chunk = list(questions[start:start + per_call])
        encoded = [tokenizer.encode(q, add_bos=add_bos and tokenizer.bos_id is not None) for q in chunk]
        completions = engine.generate(encoded, jax.random.fold_in(key_solutions, start),
                                      max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, n=samples)
        cost.prefill_tokens += sum(map(len, encoded))
        for c in completions:
            i = start + c.prompt_index
            text = tokenizer.decode(c.tokens)
            cost.solutions += 1
            cost.solution_tokens += len(c.tokens)
            steps = steps_of(text)
            if steps:
                solutions.append((i, steps, bool(checkers[i](questions[i] + text))))
    # every step prefix but the last (the last step's label is the solution's own outcome), each distinct one
    # (per question) rolled out once
    distinct: dict[tuple[int, str], int] = {}
    owners = []  # (solution, index into the distinct prefixes)
    for s, (i, steps, _) in enumerate(solutions):
        for k in range(1, len(steps)):
            prefix = questions[i] + delimiter.join(steps[:k]) + delimiter
            owners.append((s, distinct.setdefault((i, prefix), len(distinct))))
    cost.step_prefixes, cost.distinct_prefixes = len(owners), len(distinct)
    fractions = rollout_labels(engine, tokenizer, [p for _, p in distinct], [checkers[i] for i, _ in distinct],
                               rollouts=rollouts, sampling=sampling, stop=stop, key=key_rollouts,
                               max_new_tokens=max_new_tokens, batch_rows=batch_rows, cost=cost, add_bos=add_bos,
                               progress=progress)
    per_solution: list[list[float]] = [[] for _ in solutions]
    for s, d in owners:
        per_solution[s].append(float(fractions[d]))
    out = []
    for s, (i, steps, correct) in enumerate(solutions):
        out.append(LabelledSolution(
            problem_id=problem_ids[i] if problem_ids is not None else str(i), question=questions[i],
            steps=tuple(steps), step_labels=tuple(per_solution[s]) + (float(correct),), correct=correct,
            difficulty=int(difficulties[i]) if difficulties is not None else 0))
    return out, cost


def flip_labels(labelled: Sequence[LabelledSolution], fraction: float, seed: int
                ) -> tuple[list[LabelledSolution], int]:
    """Every step label flipped (y -> 1 - y) independently with probability `fraction`: the paper's weaker verifier
    (ICLR App. K: a PRM trained with 20% i.i.d. label flips). Returns the labels and how many were flipped."""
    rng = np.random.default_rng(seed)
    out, flipped = [], 0
    for x in labelled:
        flip = rng.random(len(x.step_labels)) < fraction
        flipped += int(flip.sum())
        out.append(dataclasses.replace(x, step_labels=tuple(
            1.0 - y if f else y for y, f in zip(x.step_labels, flip.tolist()))))
    return out, flipped


def save_labels(path, labelled: Sequence[LabelledSolution]) -> None:
    write_jsonl(path, (x.to_json() for x in labelled))


def load_labels(path) -> list[LabelledSolution]:
    """Labels written by `save_labels` (or gzip-compressed, a path ending in .gz: a shipped PRM's labels)."""
    out = []
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(LabelledSolution.from_json(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}:{line_no}: not a labelled solution ({e}); write labels with "
                                     "ttcjax train prm or ttcjax.training.labels.save_labels.") from None
    return out
