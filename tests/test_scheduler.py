"""Difficulty bins, cross-validated strategy selection, the saved scheduler, and the FLOPs exchange."""

import json

import numpy as np
import pytest

from ttcjax.eval.scheduler import (FLOPS_CONSTANTS, BudgetScheduler, assign_levels, difficulty_levels, efficiency,
                                   matched_generations, pretraining_flops, select_strategies)
from ttcjax.search.run import inference_flops
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import StrategySpec


def test_quantile_bins_on_known_pass_rates():
    rng = np.random.default_rng(0)
    pass_rates = rng.permutation(np.arange(100) / 100)  # quintiles at 0.2, 0.4, ...
    levels, edges = difficulty_levels(pass_rates, 5)
    np.testing.assert_allclose(edges, [0.198, 0.396, 0.594, 0.792])
    for lv, lo, hi in [(1, 0.8, 1.0), (2, 0.6, 0.8), (3, 0.4, 0.6), (4, 0.2, 0.4), (5, 0.0, 0.2)]:
        chosen = pass_rates[levels == lv]
        assert len(chosen) == 20 and chosen.min() >= lo - 1e-9 and chosen.max() < hi
    # a new question's level: where its signal falls among the saved edges
    assert assign_levels([0.99, 0.5, 0.01], edges).tolist() == [1, 3, 5]


def test_cross_validated_selection_finds_the_known_best_strategy_per_bin():
    rng = np.random.default_rng(1)
    q = 400
    levels = np.repeat([1, 2], q // 2)
    # on level 1 best-of-N is right 90% of the time and beam 60%; on level 2 the other way round
    p = {("best_of_n", 4): np.where(levels == 1, 0.9, 0.3), ("beam", 4): np.where(levels == 1, 0.6, 0.7),
         ("best_of_n", 16): np.where(levels == 1, 0.95, 0.5), ("beam", 16): np.where(levels == 1, 0.7, 0.8)}
    correct = {k: (rng.random(q) < v).astype(int) for k, v in p.items()}
    sel = select_strategies(correct, levels, folds=2, seed=0)
    assert sel.choice == {(1, 4): "best_of_n", (1, 16): "best_of_n", (2, 4): "beam", (2, 16): "beam"}
    # cross-validated accuracy is the winner's held-out accuracy, near its true rate
    assert abs(sel.cv_accuracy[(2, 4)] - 0.7) < 0.1 and abs(sel.cv_accuracy[(1, 16)] - 0.95) < 0.06
    assert sel.best_of_n_accuracy[(2, 4)] == pytest.approx(correct[("best_of_n", 4)][levels == 2].mean())
    # compute-optimal at 4 (level 1: 0.9, level 2: 0.7 -> 0.8) already beats best-of-N at 16 (0.95, 0.5 ->
    # 0.725): the paper's 4x
    assert efficiency(sel, levels) == {4: 4, 16: 4}


def test_scheduler_save_load_and_apply(tmp_path):
    sel = select_strategies({("best_of_n", 4): np.array([1, 0, 1, 0]), ("beam", 4): np.array([0, 1, 0, 1])},
                            np.array([1, 2, 1, 2]))
    specs = {"best_of_n": StrategySpec("best_of_n"), "beam": StrategySpec.from_dict({"kind": "beam", "width": 2})}
    settings = SearchSettings(max_step_tokens=20, max_rounds=9)
    sched = BudgetScheduler.from_selection(sel, np.array([0.5]), specs, signal="verifier", probe_samples=4,
                                           search=settings, policy="tiny", verifier="tiny",
                                           task={"name": "arithmetic"}, max_new_tokens=160)
    sched.save(str(tmp_path / "s.json"))
    loaded = BudgetScheduler.load(str(tmp_path / "s.json"))
    assert loaded == sched and loaded.search == settings  # the settings it was chosen under travel with it
    assert loaded.level(0.9) == 1 and loaded.level(0.1) == 2
    assert loaded.spec(1, 4) == specs["best_of_n"] and loaded.spec(2, 4) == specs["beam"]
    assert loaded.spec(2, 64) == specs["beam"]  # a larger budget uses the largest known one
    with pytest.raises(ValueError, match="no strategy for budget 2"):
        loaded.spec(1, 2)
    (tmp_path / "bad.json").write_text('{"edges": []}')
    with pytest.raises(ValueError, match="not a BudgetScheduler"):
        BudgetScheduler.load(str(tmp_path / "bad.json"))
    data = json.loads((tmp_path / "s.json").read_text())
    data["probe_samples"] = -1  # a budget-4 question would spend more generations, not fewer
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="probe_samples=-1"):
        BudgetScheduler.load(str(tmp_path / "bad.json"))


def test_flops_formulas_against_hand_computed_values():
    assert pretraining_flops(1e6, 2e9) == 1.2e16
    assert inference_flops(3e6, 100) == 6e8
    # N_s = 1, N_l = 4 (M = 4), R = 1, arXiv v1 (2 N D): M + 3 (M - 1) / R = 13 generations
    assert matched_generations(1, 4, 1.0) == pytest.approx(13.0)
    # ICLR 2025 (4 N D, the verifier's queries counted): M + 1.5 (M - 1) / R; a larger R (more inference) shrinks it
    assert matched_generations(1, 4, 1.0, inference_flops=4) == pytest.approx(8.5)
    assert matched_generations(1, 4, 22.0) == pytest.approx((9 / 22 + 4))
    v1, iclr = FLOPS_CONSTANTS
    assert (v1.name, v1.ratios) == ("arxiv_v1", (0.16, 0.79, 22.0))
    assert (iclr.name, iclr.ratios) == ("iclr_2025", (0.08, 0.4, 11.0))
    # check against the definition: equal total FLOPs, inference charged f N D on both sides
    ns, nl, d_pre = 0.75e6, 3.0e6, 1e9
    for constants in FLOPS_CONSTANTS:
        for r in constants.ratios:
            b = constants.matched_generations(ns, nl, r)
            d_inf = r * d_pre
            f = constants.inference_flops
            small = pretraining_flops(ns, d_pre) + f * ns * d_inf * b
            large = pretraining_flops(nl, d_pre) + f * nl * d_inf
            assert small == pytest.approx(large)
    with pytest.raises(ValueError, match="R=0"):
        matched_generations(1, 4, 0.0)


def test_tied_pass_rates_still_fill_every_bin_equally():
    # pass rates from few samples tie a lot: 40% of questions never solved, 30% always
    rates = np.r_[np.zeros(40), np.ones(30), np.linspace(0.1, 0.9, 30)]
    levels, _ = difficulty_levels(rates, 5, seed=0)
    assert np.bincount(levels)[1:].tolist() == [20] * 5
    assert levels[rates == 1].max() <= 2 and levels[rates == 0].min() >= 3  # order is kept across ties


def test_a_scheduler_without_revision_fields_loads_and_one_that_revises_names_its_model(tmp_path):
    sel = select_strategies({("best_of_n", 4): np.array([1, 0]), ("revisions", 4): np.array([0, 1])}, np.array([1, 2]))
    specs = {"best_of_n": StrategySpec("best_of_n"),
             "revisions": StrategySpec.from_dict({"kind": "revisions", "sequential": 2})}
    run = dict(signal="verifier", probe_samples=1, search=SearchSettings(), policy="tiny", verifier="tiny",
               task={"name": "arithmetic"}, max_new_tokens=16)
    with pytest.raises(ValueError, match=r"choices\['2/4'\] revises and revision_policy is not set"):
        BudgetScheduler.from_selection(sel, np.array([0.5]), specs, **run)
    sched = BudgetScheduler.from_selection(sel, np.array([0.5]), specs, revision_policy="/models/reviser",
                                           revision_verifier="/models/orm", **run)
    sched.save(str(tmp_path / "s.json"))
    assert BudgetScheduler.load(str(tmp_path / "s.json")) == sched
    # a scheduler saved before revision models (no such fields) still loads; an unknown field is named
    data = json.loads((tmp_path / "s.json").read_text())
    data["choices"] = {k: v for k, v in data["choices"].items() if v["kind"] != "revisions"}
    old = {k: v for k, v in data.items() if not k.startswith("revision_")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert BudgetScheduler.load(str(tmp_path / "old.json")).revision_policy is None
    (tmp_path / "bad.json").write_text(json.dumps({**old, "revision_polic": "x"}))
    with pytest.raises(ValueError, match=r"unknown \['revision_polic'\]"):
        BudgetScheduler.load(str(tmp_path / "bad.json"))
