"""Judging a verifier on the built-in task with the exact step oracle (never used by search itself).

For test problems, the policy samples N solutions each; the verifier scores every step. Reported:
  step-level ROC-AUC of the step score for "this prefix is still on a path to the right answer"
  (`arithmetic.prefix_on_path`), and per difficulty the accuracy of best-of-N vanilla, weighted and
  majority voting over the same N samples, with pass@N (the ceiling) for reference.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from ttcjax.decoding.engine import Engine, Sampling
from ttcjax.models import Transformer
from ttcjax.search.selection import best_of_n, majority, weighted
from ttcjax.tasks import arithmetic
from ttcjax.tasks.arithmetic import Problem
from ttcjax.training.labels import split_steps
from ttcjax.training.policy import sample_solutions
from ttcjax.verifiers.reward_model import RewardModel, StepFormat, aggregate, score_inputs


def evaluate_verifier(prm: RewardModel, policy: Transformer, tokenizer, problems: Sequence[Problem], *,
                      samples: int = 16, temperature: float = 0.8, seed: int = 0, aggregation: str = "last",
                      mesh=None, step_format: StepFormat = StepFormat()) -> dict[str, Any]:
    engine = Engine(policy, mesh=mesh, pad_id=tokenizer.pad_id)
    texts = sample_solutions(engine, tokenizer, problems, n=samples, sampling=Sampling(temperature=temperature),
                             key=jax.random.key(seed))
    inputs, owners = [], []
    for i, (p, ts) in enumerate(zip(problems, texts)):
        for t in ts:
            steps = split_steps(t, arithmetic.STEP_DELIMITER) or [""]
            inputs.append(step_format.encode(tokenizer, arithmetic.format_prompt(p), steps))
            owners.append((i, steps, t))
    scores = score_inputs(prm, inputs, mesh=mesh)
    step_scores, step_labels, step_difficulty = [], [], []
    per_problem: list[list[tuple[int | None, float]]] = [[] for _ in problems]
    for (i, steps, text), s in zip(owners, scores):
        p = problems[i]
        for k in range(len(steps)):
            step_scores.append(float(s[k]))
            step_labels.append(arithmetic.prefix_on_path(p, steps[:k + 1]))
            step_difficulty.append(p.difficulty)
        per_problem[i].append((arithmetic.extract_answer(text), aggregate(s, aggregation)))
    step_scores, step_labels = np.array(step_scores), np.array(step_labels)
    step_difficulty = np.array(step_difficulty)

    chosen = {"best_of_n": [], "weighted": [], "majority": [], "pass@n": []}
    for p, cands in zip(problems, per_problem):
        answers = [a for a, _ in cands]
        sc = [s for _, s in cands]
        ok = [a == p.answer for a in answers]
        chosen["best_of_n"].append(ok[best_of_n(sc)])
        chosen["weighted"].append(ok[weighted(answers, sc)])
        chosen["majority"].append(ok[majority(answers)])
        chosen["pass@n"].append(any(ok))
    difficulty = np.array([p.difficulty for p in problems])

    def summary(mask, step_mask):
        out = {"problems": int(mask.sum()), "step_auc": roc_auc(step_scores[step_mask], step_labels[step_mask])}
        out.update({k: float(np.mean(np.array(v)[mask])) for k, v in chosen.items()})
        return out

    return {"samples": samples, "temperature": temperature, "aggregation": aggregation,
            "steps_scored": int(len(step_scores)), "on_path_fraction": float(step_labels.mean()),
            "all": summary(np.ones(len(problems), bool), np.ones(len(step_scores), bool)),
            "by_difficulty": {str(d): summary(difficulty == d, step_difficulty == d)
                              for d in sorted(set(difficulty.tolist()))}}


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
