"""Independent full solutions from a policy for a task's problems: what difficulty estimation, verifier
evaluation, probe samples and the larger model's greedy answers use (no verifier, no rounds)."""

from __future__ import annotations

import warnings
from typing import Sequence

import jax

from ttcjax.checkpoints.tokenizer import Tokenizer
from ttcjax.decoding.engine import (FINISH_REASONS, FINISHED_NONFINITE, Completion, Engine, Sampling, StopConditions,
                                    stop_text)
from ttcjax.tasks.base import ProblemRecord, Task

# The default token limit of a full solution: the built-in task's (its longest restated 5-operation solution is 98
# tokens); benchmarks such as GSM8K and MATH need more (their example configs set max_new_tokens).
MAX_NEW_TOKENS = 160
SAMPLE_ROWS = 256  # rows per generate call: `sample_solutions`' default batch_size


def solution_stop(task: Task, tokenizer: Tokenizer) -> StopConditions:
    """A full solution ends at EOS or at the task's solution end (arithmetic: the blank line), matched on the
    text whatever the tokenization."""
    text = None if task.solution_end is None else stop_text(tokenizer, (task.solution_end,))
    return StopConditions(eos_ids=tuple(tokenizer.eos_ids), text=text)


def is_nonfinite(completion: Completion) -> bool:
    """Whether a sample ended because its next-token logits held a NaN or inf (its text is not the policy's)."""
    return completion.finish_reason == FINISH_REASONS[FINISHED_NONFINITE]


def sample_completions(task: Task, engine: Engine, tokenizer: Tokenizer, problems: Sequence[ProblemRecord], *, n: int,
                       sampling: Sampling, key: jax.Array, batch_size: int = SAMPLE_ROWS,
                       max_new_tokens: int = MAX_NEW_TOKENS, first_index: int = 0) -> list[list[Completion]]:
    """`n` completions per problem (with their finish reasons), problem-major. `batch_size` bounds rows per call
    (`batch_size // n` problems); each call's key is folded with its first problem's index, counted from
    `first_index` (where `problems` is a slice of a longer list starting there: the slice then draws what the
    whole list would, when it starts on a call's boundary). Samples that ended on non-finite logits are warned
    of (`warnings.warn`, one line with their count)."""
    if n < 1:
        raise ValueError(f"n={n}: sample at least one solution per problem.")
    per_call = max(1, batch_size // n)
    out: list[list[Completion]] = []
    stop = solution_stop(task, tokenizer)
    for start in range(0, len(problems), per_call):
        chunk = problems[start:start + per_call]
        prompts = [task.encode_prompt(p, tokenizer) for p in chunk]
        completions = engine.generate(prompts, jax.random.fold_in(key, first_index + start),
                                      max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, n=n)
        out += [completions[i * n:(i + 1) * n] for i in range(len(chunk))]
    broken = [sum(map(is_nonfinite, cs)) for cs in out]
    if sum(broken):
        warnings.warn(f"sample_solutions: {sum(broken)} of {n * len(out)} samples ({sum(map(bool, broken))} of "
                      f"{len(out)} questions) ended on non-finite logits (finish_reason "
                      f"{FINISH_REASONS[FINISHED_NONFINITE]!r}): a NaN or inf in the policy's weights or activations; "
                      "their text is not the policy's.", stacklevel=2)
    return out


def sample_solutions(task: Task, engine: Engine, tokenizer: Tokenizer, problems: Sequence[ProblemRecord], *, n: int,
                     sampling: Sampling, key: jax.Array, batch_size: int = SAMPLE_ROWS,
                     max_new_tokens: int = MAX_NEW_TOKENS, first_index: int = 0) -> list[list[str]]:
    """`n` completions per problem (decoded text), problem-major: `sample_completions`' texts (it warns of samples
    that ended on non-finite logits)."""
    completions = sample_completions(task, engine, tokenizer, problems, n=n, sampling=sampling, key=key,
                                     batch_size=batch_size, max_new_tokens=max_new_tokens, first_index=first_index)
    return [[tokenizer.decode(c.tokens) for c in cs] for cs in completions]
