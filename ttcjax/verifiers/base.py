"""The Verifier interface that search, experiments and evaluation talk to.

A verifier scores the steps of candidate solutions. It answers in two places:

* on the host, `score(questions, solutions)`: the step scores (probabilities) of whole solutions, every
  step of every solution in one pass, in the verifier's own tokenizer and input format;
* inside the compiled search episode, through its `StepScorer` (`step_scorer(...)`): a hashable object
  whose `start` reads each question's prompt into the verifier's own per-row cache and whose `extend` adds
  one step per round and returns that step's score logit. The episode carries the cache like its own
  state (a pytree whose leaves have rows on axis 0), so selection moves it with the policy's rows.

A verifier that reads the policy's own tokens (ttcjax's reward models) extends its cache with them on the
device. A public PRM with its own tokenizer and input format (`ttcjax.verifiers.public`) renders each new
step in its format on the host, from inside the compiled loop, and extends its cache with its own ids.

`NoVerifier` is verifier-free selection (majority voting): it scores nothing, carries no cache and
costs no second model pass.
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


def step_texts(tokenizer, tokens: Sequence[int] | np.ndarray, step_ends: Sequence[int] | np.ndarray,
               delimiter: str | None) -> list[str]:
    """The text of each step of a solution as search wrote it: `tokens` (the policy's ids), step k being
    tokens[step_ends[k-1]:step_ends[k]], decoded, without the `delimiter` that ended it. A step the token cap
    cut keeps all of its text. What a verifier scores inside search is exactly these texts."""
    out, at = [], 0
    for end in step_ends:
        text = tokenizer.decode(tokens[at:int(end)])
        out.append(text.removesuffix(delimiter) if delimiter else text)
        at = int(end)
    return out


# ---- the interface -------------------------------------------------------------------------------------


class StepScorer(Protocol):
    """The static (hashable) half of a verifier inside the compiled episode; its weights come separately."""

    def start(self, params: Any, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *, n: int,
              max_len: int, floor: int = 0) -> Any:
        """Read each question's prompt (`Verifier.scorer_prompts`: tokens [Q, P], lengths [Q]); the cache for
        its n rows ([Q * n] rows, question-major). `max_len`: the policy's cache slots per row. `floor` > 0 (at
        most every prompt's length) lets the n rows share their prompt's KV cache (`KVCache.share`); a scorer
        may copy it into each row instead."""

    def extend(self, params: Any, cache: Any, step_tokens: jax.Array, step_lengths: jax.Array
               ) -> tuple[jax.Array, Any, jax.Array]:
        """Feed one step per row (the policy's tokens [R, T], the first step_lengths[r] real; 0: nothing)
        into the cache: the step's score logit [R], the advanced cache, and the tokens the verifier read
        for it [R] (its cost)."""

    # Optional, for revision chains (`ttcjax.search.chains`), where a scorer reads the policy's own tokens:
    # def rewind(self, cache, lengths [R]) -> cache   keeps each row's first lengths[r] tokens read


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
    def score(self, questions: Sequence[str], solutions: Sequence[Sequence[str]],
              prompts: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
        """Step scores (probabilities) of each solution: `solutions[i]` is the list of step texts that answer
        `questions[i]` (the problem's text); one array of len(solutions[i]) per solution. `prompts[i]`, where
        given, is the policy's prompt ids for it (`Task.encode_prompt`: exactly what the search loop reads),
        which a verifier that reads the policy's own text reads in place of the question."""

    @abc.abstractmethod
    def step_scorer(self, tokenizer, mesh=None, rules=None) -> tuple[StepScorer, Any]:
        """(scorer, params) for the compiled episode of a policy with `tokenizer`. ValueError if this
        verifier cannot follow that policy's steps."""

    def scorer_prompts(self, questions: Sequence[str], prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """What the scorer's `start` reads for each question: by default the policy's prompt ids `prompts`
        (a verifier that reads the policy's text); a verifier with its own format renders `questions`."""
        return [list(p) for p in prompts]

    def bind_batch(self, questions: Sequence[str], delimiter: str | None) -> None:
        """The question texts of the batch the next episode searches, and the delimiter that ends its steps
        (for a scorer that renders steps on the host; its rows carry their question's index into the list)."""

    def solution_score(self, step_scores: Sequence[float]) -> float:
        return aggregate(step_scores, self.aggregation)


@dataclasses.dataclass(frozen=True)
class _NoScorer:
    def start(self, params, prompt_tokens, prompt_lengths, *, n, max_len, floor=0):
        return ()

    def extend(self, params, cache, step_tokens, step_lengths):
        rows = step_tokens.shape[:1]
        return jnp.zeros(rows, jnp.float32), cache, jnp.zeros(rows, jnp.int32)

    def rewind(self, cache, lengths):
        return cache


class NoVerifier(Verifier):
    """Verifier-free selection: no scores, no cache, no second model pass (pair it with majority voting)."""

    aggregation = "last"

    @property
    def num_params(self) -> int:
        return 0

    @property
    def scores_steps(self) -> bool:
        return False

    def score(self, questions, solutions, prompts=None):
        return [np.zeros(len(s)) for s in solutions]

    def step_scorer(self, tokenizer, mesh=None, rules=None):
        return _NoScorer(), ()

    def scorer_prompts(self, questions, prompts):
        return [[] for _ in prompts]  # reads nothing, costs nothing

    def __repr__(self) -> str:
        return "NoVerifier()"


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties
    count half). NaN when either class is empty."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def concordance(scores: Sequence[float], labels: Sequence[float]) -> float:
    """How often the scores order a pair of items as their labels do, each pair weighted by how far apart its labels
    are (|label_i - label_j|; score ties count half): Harrell's C for soft labels such as Monte-Carlo values. With
    labels in {0, 1} every unequal pair weighs 1 and this is `roc_auc`. NaN when every label is the same or a score
    is not finite."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64)
    if not np.all(np.isfinite(s)):
        return float("nan")  # a NaN score is ordered neither way
    apart = y[:, None] - y[None, :]  # [n, n] each pair twice, once each way: the ratio is the same
    weight = np.abs(apart)
    if weight.sum() == 0:
        return float("nan")
    order = np.sign(s[:, None] - s[None, :])
    agree = np.where(order == 0, 0.5, (order == np.sign(apart)).astype(np.float64))
    return float((weight * agree).sum() / weight.sum())


def same_depth_groups(questions: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """One group id per step [steps] for its question (int ids [steps]) and its index among its solution's steps
    [steps]: a question's solutions' k-th steps share a group, which neither the question's difficulty nor the step's
    depth can rank (`ttcjax.eval.verifier.same_depth_auc`, the training's `misordered_same_depth`)."""
    questions, depths = np.asarray(questions, np.int64), np.asarray(depths, np.int64)
    return questions * (1 + depths.max(initial=0)) + depths


def concordance_within_groups(scores: Sequence[float], labels: Sequence[float], groups: Sequence) -> float:
    """The mean over groups (a question's steps) of `concordance` among each group's own items, over the groups
    whose labels are not all the same: how well the scores rank the steps of one question, which is what selecting
    among a question's solutions needs (a score that knows only how hard each question is ranks them at 0.5). NaN
    when no group has two different labels, or a score is not finite."""
    s, y, g = np.asarray(scores, np.float64), np.asarray(labels, np.float64), np.asarray(groups)
    if not np.all(np.isfinite(s)):
        return float("nan")
    values = [concordance(s[g == k], y[g == k]) for k in np.unique(g) if np.ptp(y[g == k]) > 0]
    return float(np.mean(values)) if values else float("nan")
