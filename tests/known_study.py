"""A study whose truth is known by construction: per-question outcomes on 4 levels of 100 questions, every strategy
of the paper's findings at budgets 4, 16 and 64, and the report `ttcjax experiment` would write from them (its own
summaries: `per_question`, `revision_summary`, `selection_summary`). `effect` +1 makes every finding of the paper
hold beyond noise, -1 makes every one go the other way beyond noise, 0 leaves at least one comparison of each finding
within noise (equal accuracies on independently drawn questions) and none against it."""

import numpy as np

from ttcjax.eval.experiment import per_question, revision_summary, selection_summary
from ttcjax.eval.scheduler import efficiency, select_strategies
from ttcjax.search.strategies import StrategySpec

BON, BEAM, DVTS = "best_of_n-selectionweighted", "beam-width4", "dvts-width4"
PARALLEL, SEQ4, SEQ16 = "revisions-sequential1", "revisions-sequential4", "revisions-sequential16"
SPECS = {BON: {"kind": "best_of_n", "selection": "weighted"}, BEAM: {"kind": "beam", "width": 4},
         DVTS: {"kind": "dvts", "width": 4}, PARALLEL: {"kind": "revisions", "sequential": 1},
         SEQ4: {"kind": "revisions", "sequential": 4}, SEQ16: {"kind": "revisions", "sequential": 16}}
LEVELS, PER_LEVEL = (1, 2, 3, 4), 100
EASY, HARD = (1, 2), (3, 4)


def known_study(effect: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    levels = np.repeat(LEVELS, PER_LEVEL)  # [Q]
    shared = {lv: rng.permutation(np.flatnonzero(levels == lv)) for lv in LEVELS}

    def right(acc: dict[int, float], own: tuple[int, ...] = ()) -> np.ndarray:
        """[Q] 0/1: on each level the first round(acc * 100) questions of the level's shared order (so a higher
        accuracy is right wherever a lower one is), or on the `own` levels of an order of its own (independent)."""
        out = np.zeros(len(levels), int)
        for lv in LEVELS:
            order = rng.permutation(shared[lv]) if lv in own else shared[lv]
            out[order[:round(min(1.0, max(0.0, acc[lv])) * PER_LEVEL)]] = 1
        return out

    def plus(acc: dict[int, float], by: float, on: tuple[int, ...] = LEVELS) -> dict[int, float]:
        return {lv: a + (by if lv in on else 0.0) for lv, a in acc.items()}

    def mix(easy: dict[int, float], hard: dict[int, float]) -> dict[int, float]:
        return {lv: (easy if lv in EASY else hard)[lv] for lv in LEVELS}

    b4 = {1: 0.6, 2: 0.5, 3: 0.3, 4: 0.1}
    bon = {b: plus(b4, 0.1 * k) for k, b in enumerate((4, 16, 64))} if effect >= 0 else {b: b4 for b in (4, 16, 64)}
    b16, everywhere = bon[16], LEVELS
    correct = {(BON, b): right(bon[b]) for b in (4, 16, 64)}
    if effect > 0:
        correct |= {(BEAM, 4): right(mix(plus(bon[4], 0.1), plus(bon[4], 0.15))),
                    (BEAM, 16): right(mix(bon[16], plus(bon[16], 0.15))),
                    (BEAM, 64): right(mix(plus(bon[64], -0.3), bon[64])),
                    (DVTS, 16): right(plus(bon[64], 0.1)),
                    (PARALLEL, 4): right(plus(b16, -0.1)), (SEQ4, 4): right(plus(b16, 0.1)),
                    (PARALLEL, 16): right(plus(b16, -0.1)), (SEQ4, 16): right(mix(b16, plus(b16, 0.15))),
                    (SEQ16, 16): right(mix(plus(b16, 0.15), plus(b16, 0.05)))}
        first, last = right(plus(b16, -0.1)), right(plus(b16, 0.1))
        right_to_wrong, followed = np.where(np.arange(len(levels)) % 5 == 0, 3, 4), np.full(len(levels), 10)
    elif effect < 0:
        correct |= {(BEAM, 4): right(mix(plus(b4, -0.2), plus(b4, -0.15))), (BEAM, 16): right(plus(b4, -0.15, HARD)),
                    (BEAM, 64): right(b4), (DVTS, 16): right(b4),
                    (PARALLEL, 4): right(b4), (SEQ4, 4): right(plus(b4, -0.15)),
                    (PARALLEL, 16): right(b4), (SEQ4, 16): right(plus(b4, -0.15, HARD)),
                    (SEQ16, 16): right(plus(b4, -0.15, EASY))}
        first, last = right(b4), right(plus(b4, -0.15))
        right_to_wrong, followed = np.ones(len(levels), int), np.full(len(levels), 10)
    else:
        correct |= {(BEAM, 4): right(mix(b16, bon[4]), everywhere), (BEAM, 16): right(b16, everywhere),
                    (BEAM, 64): right(mix(b16, plus(bon[64], -0.1)), EASY), (DVTS, 16): right(bon[64], everywhere),
                    (PARALLEL, 4): right(b16, everywhere), (SEQ4, 4): right(b16, everywhere),
                    (PARALLEL, 16): right(plus(b16, -0.25)), (SEQ4, 16): right(b16, everywhere),
                    (SEQ16, 16): right(b16, everywhere)}
        first, last = right(b16, everywhere), right(b16, everywhere)
        right_to_wrong, followed = np.zeros(len(levels), int), np.zeros(len(levels), int)
        right_to_wrong[:1], followed[:3] = 1, 1  # three right attempts followed, one of them by a wrong one
    correct = {(n, b): correct[(n, b)] for n in SPECS for b in (4, 16, 64) if (n, b) in correct}  # the config's order

    selection = select_strategies(correct, levels, folds=2, seed=seed, baseline=BON)
    revisions = {cell: c for cell, c in correct.items() if SPECS[cell[0]]["kind"] == "revisions"}
    revision_selection = select_strategies(revisions, levels, folds=2, seed=seed)
    revision_selection.best_of_n_accuracy.update(selection.best_of_n_accuracy)
    co = {lv: selection.cv_accuracy[(lv, 16)] for lv in LEVELS}  # small policy + search at the matched budget
    large = right({1: co[1] + 0.3 * -effect if effect else co[1], 2: co[2] + 0.3 * -effect if effect else co[2],
                   3: co[3], 4: co[4] + 0.3}, everywhere)
    if effect < 0:
        large = right({1: 1.0, 2: 1.0, 3: co[3], 4: co[4] + 0.3}, everywhere)

    records = {cell: [{"pass": int(x) | int(y)} for x, y in zip(c, right(plus(bon[64], 0.1)))]
               for cell, c in correct.items()}
    records[(SEQ16, 16)] = [{**r, "pass_by_attempt": [float(f)] * 15 + [float(t)], "right_to_wrong": int(w),
                             "right_followed": int(k)}
                            for r, f, t, w, k in zip(records[(SEQ16, 16)], first, last, right_to_wrong, followed)]
    summary = {signal: selection_summary({"selection": s, "levels": levels, "efficiency": efficiency(s, levels)})
               for signal, s in (("oracle", selection), ("predicted", selection))}
    budgets = ("4", "16", "64")
    accuracy = {n: {str(b): float(c.mean()) for (m, b), c in correct.items() if m == n} for n in SPECS}
    per_level = {str(lv): {n: {str(b): float(c[levels == lv].mean()) for (m, b), c in correct.items() if m == n}
                           for n in SPECS} for lv in LEVELS}
    return {
        "questions": len(levels), "seconds": 1.0, "seconds_total": 1.0, "strategies": SPECS, "baseline": BON,
        "params": {"policy": 1000, "large_policy": 4000, "verifier": 1000}, "difficulty_cost_tokens": 1,
        "difficulty_signal": "verifier", "config": {"task": {"name": "known"}, "split": "test"},
        "accuracy": accuracy, "mean_generated_tokens": {}, "per_level": {"oracle": per_level, "predicted": per_level},
        "compute_optimal": summary,
        "revisions_compute_optimal": {
            signal: selection_summary({"selection": revision_selection, "levels": levels,
                                       "efficiency": efficiency(revision_selection, levels)})
            for signal in ("oracle", "predicted")},
        "flops_exchange": [{"R": 0.16, "matched_generations": 16.5, "budget_used": 16, "by_level": {
            str(lv): {"large_greedy": float(large[levels == lv].mean()), "small_compute_optimal": co[lv]}
            for lv in LEVELS}}],
        "large_policy_greedy": float(large.mean()),
        "coverage": {BON: {b: float(np.mean([r["pass"] for r in records[(BON, int(b))]])) for b in budgets}},
        "revisions": revision_summary({(SEQ16, 16): records[(SEQ16, 16)]}, [StrategySpec.from_dict(SPECS[SEQ16])]),
        "per_question": per_question(correct, records, {"oracle": levels, "predicted": levels}, 2, seed, large,
                                     {SEQ16})}
