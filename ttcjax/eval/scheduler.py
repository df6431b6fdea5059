"""The compute-optimal scheduler: question difficulty in bins, the best strategy per (bin, budget) chosen
by cross-validation, and a saved `BudgetScheduler` that applies it to new questions. Also the paper's
FLOPs exchange between test-time compute and a larger model.

Difficulty (the paper, section 3.2): level 1 is the easiest fifth of the questions, level 5 the hardest,
by quantiles of a per-question signal:
    oracle      the policy's pass@1, estimated from many samples (needs the answers)
    verifier    the mean final-answer score the verifier gives those samples (needs no answers)
Bin edges are kept, so a new question's predicted level is where its own signal falls among them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

import numpy as np

from ttcjax.io import write_json
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Revisions, StrategySpec

REVISIONS = Revisions.kind

# ---- difficulty bins -------------------------------------------------------------------------------------


def bin_edges(signal: Sequence[float], num_bins: int = 5) -> np.ndarray:
    """The num_bins - 1 inner quantiles of `signal` (higher signal = easier)."""
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins} must be >= 1.")
    s = np.asarray(signal, np.float64)
    if s.size == 0:
        raise ValueError("no questions to bin.")
    return np.quantile(s, np.arange(1, num_bins) / num_bins)


def assign_levels(signal: Sequence[float], edges: np.ndarray) -> np.ndarray:
    """Level 1 (easiest: highest signal) .. len(edges)+1 (hardest) for each question."""
    s = np.asarray(signal, np.float64)
    # searchsorted counts the edges below each value: the highest values pass every edge -> level 1
    return (len(edges) + 1 - np.searchsorted(np.asarray(edges), s, side="right")).astype(int)


def difficulty_levels(signal: Sequence[float], num_bins: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(levels, edges) for `signal` in `num_bins` equal-sized quantile bins. The questions' own levels come
    from their rank (ties, common with pass rates from few samples, broken at random by `seed`), so no bin
    is empty; the edges place new questions."""
    s = np.asarray(signal, np.float64)
    edges = bin_edges(s, num_bins)
    tie_break = np.random.default_rng(seed).random(len(s))
    order = np.lexsort((tie_break, -s))  # highest signal first
    levels = np.empty(len(s), int)
    levels[order] = 1 + (np.arange(len(s)) * num_bins) // len(s)
    return levels, edges


# ---- cross-validated selection ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    """Per (level, budget): the chosen strategy (on all of the level's questions), and the cross-validated
    accuracy of choosing that way (chosen on one fold, scored on the other, averaged)."""

    choice: dict[tuple[int, int], str]
    cv_accuracy: dict[tuple[int, int], float]
    best_of_n_accuracy: dict[tuple[int, int], float]


def fold_assignment(levels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """[Q] each question's cross-validation fold (0 .. folds - 1): inside each level at random by `seed`, the levels
    in ascending order (the split `select_strategies` makes)."""
    levels = np.asarray(levels)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(levels), int)
    for level in sorted(set(levels.tolist())):
        idx = np.flatnonzero(levels == level)
        fold_of[idx] = rng.permutation(len(idx)) % folds
    return fold_of


def select_strategies(correct: dict[tuple[str, int], np.ndarray], levels: np.ndarray, *, folds: int = 2,
                      seed: int = 0, baseline: str = "best_of_n") -> Selection:
    """`correct[(strategy, budget)]` is a [Q] array of 0/1 per question; `levels` [Q] their bins.

    For every level and budget, the strategies at that budget compete: with `folds`-fold cross-validation
    inside the level (split at random by `seed`), each fold's winner (highest accuracy on the other folds)
    is scored on it; the cross-validated accuracy is the mean over folds. Ties go to the strategy listed
    first. `baseline` names the strategy whose accuracy is reported alongside (weighted best-of-N).
    """
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds={folds!r} must be an integer >= 2: a strategy is chosen on some folds and scored on "
                         "another.")
    levels = np.asarray(levels)
    budgets = sorted({b for _, b in correct})
    fold_of_question = fold_assignment(levels, folds, seed)
    choice, cv, base = {}, {}, {}
    for level in sorted(set(levels.tolist())):
        idx = np.flatnonzero(levels == level)
        fold_of = fold_of_question[idx]
        for b in budgets:
            names = [s for s, bb in correct if bb == b]
            acc = {s: correct[(s, b)][idx].astype(float) for s in names}
            choice[(level, b)] = max(names, key=lambda s: (acc[s].mean(), -names.index(s)))
            scores = []
            for f in range(folds):
                train, test = fold_of != f, fold_of == f
                if not test.any():
                    continue
                pick = max(names, key=lambda s: (acc[s][train].mean() if train.any() else 0.0, -names.index(s)))
                scores.append(acc[pick][test].mean())
            cv[(level, b)] = float(np.mean(scores))
            if (baseline, b) in correct:
                base[(level, b)] = float(acc[baseline].mean())
    return Selection(choice=choice, cv_accuracy=cv, best_of_n_accuracy=base)


def overall(by_level: dict[tuple[int, int], float], levels: np.ndarray, budget: int) -> float:
    """Question-weighted accuracy over levels at one budget."""
    levels = np.asarray(levels)
    total = sum(by_level[(lv, budget)] * np.sum(levels == lv) for lv in set(levels.tolist()))
    return float(total / len(levels))


def efficiency(selection: Selection, levels: np.ndarray) -> dict[int, int | None]:
    """For each budget B: the smallest budget at which compute-optimal (cross-validated) matches best-of-N
    at B; None where no budget does."""
    budgets = sorted({b for _, b in selection.cv_accuracy})
    out = {}
    for b in budgets:
        target = overall(selection.best_of_n_accuracy, levels, b)
        out[b] = next((bb for bb in budgets if overall(selection.cv_accuracy, levels, bb) >= target - 1e-12), None)
    return out


# ---- the scheduler ------------------------------------------------------------------------------------------


SIGNALS = ("verifier", "agreement", "oracle")


@dataclasses.dataclass(frozen=True)
class BudgetScheduler:
    """A saved mapping (difficulty level, budget) -> strategy spec, with everything needed to apply it to a new
    question exactly as it was chosen: the signal it bins by and its edges, how many probe samples predict
    the signal (their cost counts), and the run it was chosen in (policy, verifier, task, search settings,
    the probe samples' token limit).

    signal: "verifier" (the verifier's mean score over the probe samples), "agreement" (the share of probe
    samples that give the most common answer: verifier-free), or "oracle" (pass rate: needs answers, so it
    cannot bin new questions)."""

    signal: str
    edges: tuple[float, ...]
    choices: dict[str, dict]  # "level/budget" -> strategy spec ({"kind": ..., ...})
    probe_samples: int
    search: SearchSettings
    policy: str
    verifier: str
    task: dict[str, Any]
    max_new_tokens: int  # the probe samples' token limit
    # what revision strategies run: the revision model and its verifier (None where the run had no revision model)
    revision_policy: str | None = None
    revision_verifier: str | None = None

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"scheduler signal {self.signal!r} is not one of {SIGNALS}.")
        for field in ("probe_samples", "max_new_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"scheduler {field}={value!r} must be an integer >= 1 (probe_samples: the samples "
                                 "that predict a question's level; max_new_tokens: their token limit).")
        if not isinstance(self.edges, tuple) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and np.isfinite(e) for e in self.edges) \
                or list(self.edges) != sorted(self.edges):
            raise ValueError(f"scheduler edges={list(self.edges) if isinstance(self.edges, tuple) else self.edges!r} "
                             "must be a list of finite numbers in ascending order (the signal's bin edges).")
        for field in ("policy", "verifier", "revision_policy", "revision_verifier"):
            value = getattr(self, field)
            if not (isinstance(value, str) and value or value is None and field.startswith("revision")):
                raise ValueError(f"scheduler {field}={value!r} must be a shipped name or a directory"
                                 + (" (or null)." if field.startswith("revision") else "."))
        if not isinstance(self.choices, dict):
            raise ValueError(f"scheduler choices={self.choices!r} must be a mapping of \"level/budget\" (such as "
                             "\"1/16\") to a strategy.")
        for key in self.choices:
            if not (isinstance(key, str) and re.fullmatch(r"0*[1-9][0-9]*/0*[1-9][0-9]*", key)):
                raise ValueError(f"scheduler choices[{key!r}]: a key is \"level/budget\" (integers >= 1, such as "
                                 "\"1/16\").")
        for key, spec in self.choices.items():
            revises = StrategySpec.from_dict(spec, f"scheduler choices[{key!r}]").kind == REVISIONS
            if revises and not self.revision_policy:
                raise ValueError(f"scheduler choices[{key!r}] revises and revision_policy is not set; name the "
                                 "revision model it was chosen with.")

    def level(self, signal_value: float) -> int:
        return int(assign_levels([signal_value], np.asarray(self.edges))[0])

    def spec(self, level: int, budget: int) -> StrategySpec:
        """The strategy chosen for `level` at `budget`, or at the largest budget below it the scheduler knows."""
        key = f"{level}/{budget}"
        if key not in self.choices:
            budgets = sorted({int(k.split("/")[1]) for k in self.choices})
            below = [b for b in budgets if b <= budget]
            if not below:
                raise ValueError(f"the scheduler has no strategy for budget {budget}; its budgets are {budgets}.")
            key = f"{level}/{below[-1]}"
        return StrategySpec.from_dict(self.choices[key])

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "edges": list(self.edges), "search": self.search.to_dict()}

    def save(self, path: str) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "BudgetScheduler":
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no scheduler here; `ttcjax experiment` (and `ttcjax demo`) write one "
                                    "to their report directory (scheduler.json).") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e}); expected a scheduler.json written by ttcjax experiment."
                             ) from None
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        if not isinstance(data, dict) or not set(required) <= set(data) or not set(data) <= set(names):
            missing = sorted(set(required) - set(data)) if isinstance(data, dict) else required
            unknown = sorted(set(data) - set(names)) if isinstance(data, dict) else []
            raise ValueError(f"{path}: not a BudgetScheduler of this ttcjax (missing {missing}"
                             + (f", unknown {unknown}" if unknown else "") + "); rerun the experiment that made it, so "
                             "the scheduler records the settings it was chosen under.")
        try:
            edges = data["edges"]
            return cls(**{**data, "edges": tuple(edges) if isinstance(edges, list) else edges,
                          "search": SearchSettings.from_dict(data["search"], f"{path}: search")})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_selection(cls, selection: Selection, edges: np.ndarray, specs: dict[str, StrategySpec], *,
                       signal: str, **run) -> "BudgetScheduler":
        """`run`: probe_samples, search, policy, verifier, task, max_new_tokens (and revision_policy,
        revision_verifier where revision strategies were among the choices)."""
        return cls(signal=signal, edges=tuple(float(e) for e in edges),
                   choices={f"{lv}/{b}": specs[name].to_dict() for (lv, b), name in selection.choice.items()}, **run)


# ---- FLOPs exchange ------------------------------------------------------------------------------------------


def pretraining_flops(params: float, tokens: float) -> float:
    """6 N D."""
    return 6.0 * params * tokens


def matched_generations(small_params: float, large_params: float, ratio: float, inference_flops: float = 2.0
                        ) -> float:
    """Generations per question the small model may spend so that its pretraining plus inference FLOPs equal the
    larger model's answering once, at R = D_inference / D_pretrain (the paper's section 7), with inference charged
    `inference_flops` FLOPs per parameter per token on both sides (arXiv v1: 2; ICLR 2025: 4, its verifier's
    queries counted):  6 N_s D_p + f N_s D_i B  =  6 N_l D_p + f N_l D_i,
    so B = M + (6 / f) (M - 1) / R with M = N_l / N_s (v1: M + 3 (M - 1) / R; ICLR: M + (3/2) (M - 1) / R)."""
    if ratio <= 0:
        raise ValueError(f"R={ratio} must be > 0.")
    if inference_flops <= 0:
        raise ValueError(f"inference_flops={inference_flops} must be > 0.")
    m = large_params / small_params
    return m + 6.0 / inference_flops * (m - 1.0) / ratio


@dataclasses.dataclass(frozen=True)
class FlopsConstants:
    """One version of the paper's FLOPs exchange: its inference FLOPs per parameter per token and its R values."""

    name: str
    inference_flops: float
    ratios: tuple[float, ...]

    def matched_generations(self, small_params: float, large_params: float, ratio: float) -> float:
        return matched_generations(small_params, large_params, ratio, self.inference_flops)


# The two versions of the paper (../shared/PAPER.md, section 1.4 (d)): the exchange is reported under both.
FLOPS_CONSTANTS = (
    FlopsConstants("arxiv_v1", 2.0, (0.16, 0.79, 22.0)),  # inference 2 N D
    FlopsConstants("iclr_2025", 4.0, (0.08, 0.40, 11.0)),  # inference 4 N D: the verifier's queries counted
)
