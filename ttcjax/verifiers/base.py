"""The Verifier interface that search, experiments and evaluation talk to.

A verifier scores the steps of candidate solutions. It answers in two places:

* on the host, `score(questions, solutions)`: the step scores (probabilities) of whole solutions, every
  step of every solution in one pass, in the verifier's own tokenizer and input format;
* inside the compiled search episode, through its `StepScorer` (`step_scorer(...)`): a hashable object
  whose `start` reads each question's prompt into the verifier's own per-row cache and whose `extend` adds
  one step per round and returns that step's score logit. The episode carries the cache like its own
  state (a pytree whose leaves have rows on axis 0), so selection moves it with the policy's rows.

`NoVerifier` is verifier-free selection (majority voting): it scores nothing, carries no cache and
costs no second model pass. A verifier whose tokenizer differs from the policy's scores on the host only;
its `step_scorer` says so (step-level search with it needs a re-tokenizing scorer, which the public PRM
families will bring).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ---- aggregation -----------------------------------------------------------------------------------------


AGGREGATIONS = ("last", "min", "prod", "mean")


def aggregate(step_scores: np.ndarray | Sequence[float], how: str = "last") -> float:
    """A solution's score from its step scores: the last step's (the paper's choice), the minimum, the
    product or the mean. A solution with no scored step gets 0."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation {how!r} is not one of {AGGREGATIONS}.")
    s = np.asarray(step_scores, np.float64)
    if s.size == 0:
        return 0.0
    return float({"last": s[-1], "min": s.min(), "prod": s.prod(), "mean": s.mean()}[how])


# ---- the interface -------------------------------------------------------------------------------------


class StepScorer(Protocol):
    """The static (hashable) half of a verifier inside the compiled episode; its weights come separately."""

    reads_tokens: bool  # whether it reads the policy's tokens (their count is the verifier's cost)

    def start(self, params: Any, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *, n: int,
              max_len: int) -> Any:
        """Read each question's prompt (tokens [Q, P], lengths [Q]); the cache for its n rows ([Q * n] rows,
        question-major)."""

    def extend(self, params: Any, cache: Any, step_tokens: jax.Array, step_lengths: jax.Array
               ) -> tuple[jax.Array, Any]:
        """Feed one step per row (tokens [R, T], the first step_lengths[r] real; 0: nothing) into the cache;
        the score logit at each row's last real token [R], and the advanced cache."""


class Verifier(abc.ABC):
    """Scores the steps of candidates. `aggregation` turns a solution's step scores into one score."""

    aggregation: str = "last"
    step_delimiter: str | None = None  # the text its steps end with (None: it reads any)

    @property
    @abc.abstractmethod
    def num_params(self) -> int:
        """Parameters a scored token costs 2x FLOPs of (0: no model)."""

    @property
    def scores_steps(self) -> bool:
        return True

    @abc.abstractmethod
    def score(self, questions: Sequence[str | Sequence[int]], solutions: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Step scores (probabilities) of each solution: `solutions[i]` is the list of step texts that answer
        `questions[i]`, the prompt as text or as the policy's prompt ids (`Task.encode_prompt`: exactly what the
        search loop reads); one array of len(solutions[i]) per solution."""

    @abc.abstractmethod
    def step_scorer(self, tokenizer, mesh=None, rules=None) -> tuple[StepScorer, Any]:
        """(scorer, params) for the compiled episode, reading the policy's tokens (`tokenizer`). ValueError
        if this verifier cannot read them (another tokenizer)."""

    def solution_score(self, step_scores: Sequence[float]) -> float:
        return aggregate(step_scores, self.aggregation)


@dataclasses.dataclass(frozen=True)
class _NoScorer:
    reads_tokens: bool = False

    def start(self, params, prompt_tokens, prompt_lengths, *, n, max_len):
        return ()

    def extend(self, params, cache, step_tokens, step_lengths):
        return jnp.zeros(step_tokens.shape[:1], jnp.float32), cache


class NoVerifier(Verifier):
    """Verifier-free selection: no scores, no cache, no second model pass (pair it with majority voting)."""

    aggregation = "last"

    @property
    def num_params(self) -> int:
        return 0

    @property
    def scores_steps(self) -> bool:
        return False

    def score(self, questions, solutions):
        return [np.zeros(len(s)) for s in solutions]

    def step_scorer(self, tokenizer, mesh=None, rules=None):
        return _NoScorer(), ()

    def __repr__(self) -> str:
        return "NoVerifier()"
