"""Choosing one answer from N candidates: the paper's best-of-N variants, as one table of rules.

    vanilla     the candidate with the highest verifier score (`best_of_n`)
    weighted    sum the scores of candidates whose answers are equivalent; the best group's top candidate
    majority    the most frequent answer (no verifier); ties go to the answer seen first
    hierarchical  (revision chains) weighted within each chain, then weighted across the chains' winners, each
                winner weighing its own score; with one candidate per chain it is `weighted`

Every rule but `hierarchical` is flat: it reads all candidates at once, whichever chain they come from (the
paper's majority over revisions is flat).

Candidates without an answer (None) never win a vote unless every candidate lacks one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Equal = Callable[[object, object], bool]


def group_answers(answers: Sequence[object], equal: Equal | None = None) -> list[int]:
    """A group id per candidate; candidates share an id iff their answers are equivalent (`equal`, default
    ==). None answers each get a group of their own."""
    groups: list[int] = []
    representatives: list[object] = []
    for a in answers:
        if a is None:
            groups.append(-1)
            continue
        for g, r in enumerate(representatives):
            if (equal(a, r) if equal is not None else a == r):
                groups.append(g)
                break
        else:
            representatives.append(a)
            groups.append(len(representatives) - 1)
    return groups


def best_of_n(scores: Sequence[float]) -> int:
    return int(np.argmax(np.asarray(scores, np.float64)))


def _by_group(answers, weights, equal) -> int:
    groups = group_answers(answers, equal)
    if all(g < 0 for g in groups):
        return 0
    totals: dict[int, float] = {}
    for g, w in zip(groups, weights):
        if g >= 0:
            totals[g] = totals.get(g, 0.0) + float(w)
    best = max(totals, key=lambda g: (totals[g], -g))  # ties: the group seen first
    members = [i for i, g in enumerate(groups) if g == best]
    return max(members, key=lambda i: (weights[i], -i))


def weighted(answers: Sequence[object], scores: Sequence[float], equal: Equal | None = None) -> int:
    """Index of the chosen candidate under weighted best-of-N."""
    return _by_group(answers, list(map(float, scores)), equal)


def majority(answers: Sequence[object], equal: Equal | None = None) -> int:
    """Index of a candidate holding the most frequent answer."""
    return _by_group(answers, [1.0] * len(answers), equal)


def hierarchical(answers: Sequence[object], scores: Sequence[float], chains: Sequence[int],
                 equal: Equal | None = None) -> int:
    """Index of the chosen candidate under hierarchical selection: weighted best-of-N among each chain's
    candidates (`chains[i]`: candidate i's chain), then weighted best-of-N over the chains' winners."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(chains):
        members.setdefault(int(c), []).append(i)
    winners = [m[weighted([answers[i] for i in m], [scores[i] for i in m], equal)] for m in members.values()]
    return winners[weighted([answers[i] for i in winners], [scores[i] for i in winners], equal)]


Rule = Callable[[Sequence[object], Sequence[float], Equal | None, Sequence[int]], int]
# The selection rules by name: rule(answers, scores, equal, chains) -> index of the chosen candidate.
SELECTION_RULES: dict[str, Rule] = {
    "weighted": lambda answers, scores, equal, chains: weighted(answers, scores, equal),
    "vanilla": lambda answers, scores, equal, chains: best_of_n(scores),
    "majority": lambda answers, scores, equal, chains: majority(answers, equal),
    "hierarchical": lambda answers, scores, equal, chains: hierarchical(answers, scores, chains, equal),
}
VERIFIER_FREE_RULES = ("majority",)  # rules that read no verifier score


def select(rule: str, answers: Sequence[object], scores: Sequence[float], equal: Equal | None = None,
           chains: Sequence[int] | None = None) -> int:
    """Index of the candidate that `rule` (a key of SELECTION_RULES) chooses; `chains[i]` is candidate i's
    revision chain (default: each candidate a chain of its own)."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"selection {rule!r} is not one of {sorted(SELECTION_RULES)}.")
    return SELECTION_RULES[rule](answers, scores, equal, range(len(answers)) if chains is None else chains)
