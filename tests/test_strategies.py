"""Strategies own their behaviour and share one YAML/JSON form (StrategySpec), with SearchSettings beside them."""

import json

import pytest

from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import (DVTS, STRATEGIES, Beam, BestOfN, Lookahead, ParticleFiltering, Revisions,
                                      StrategySpec, strategy_from_dict)


def spec(**data):
    return StrategySpec.from_dict(data)


def test_a_spec_fits_each_budget_as_its_strategy_decides():
    assert spec(kind="best_of_n", selection="majority").at(16) == BestOfN(16, selection="majority")
    assert spec(kind="beam", width="sqrt").at(16) == Beam(16, 4)
    assert spec(kind="beam", width="sqrt").at(64) == Beam(64, 8)
    assert spec(kind="beam", width=8).at(4) is None  # a beam wider than the budget
    assert spec(kind="beam", width=3).at(16) is None  # a width that does not divide the budget
    assert spec(kind="dvts", width=4).at(64) == DVTS(64, 4)
    assert spec(kind="lookahead", width=4, k=1).at(16) == Lookahead(8, 4, k=1)  # budget N * (k + 1)
    assert spec(kind="lookahead", width=4, k=1).at(4) is None
    assert spec(kind="lookahead", width=4, k=1).at(16).budget == 16
    assert spec(kind="particle_filtering").at(16) == ParticleFiltering(16)  # N particles: any budget
    assert spec(kind="particle_filtering", weight_temperature=0.5).at(4) == ParticleFiltering(4, weight_temperature=0.5)


def test_strategies_answer_for_their_rows_groups_and_rounds():
    assert BestOfN(8).groups == (0, 0) and BestOfN(8).width == 1 and BestOfN(8).lookahead == 0
    assert Beam(16, 4).groups == (16, 4)  # one group per question, 16 / 4 beams kept
    assert DVTS(16, 4).groups == (4, 1)  # 4 subtrees of 4 rows, one kept in each
    assert Lookahead(8, 2, k=3).lookahead == 3 and Lookahead(8, 2, k=3).budget == 32
    assert Beam(16, 4).max_rounds(12, 160) == 12 and BestOfN(16).max_rounds(12, 160) == 80
    assert not BestOfN(4, selection="majority").needs_verifier
    assert BestOfN(4).needs_verifier and Beam(4, 2, selection="majority").needs_verifier
    # particle filtering: all N particles of a question drawn anew from all N, in proportion to their weights
    pf = ParticleFiltering(16)
    assert pf.groups == (16, 16) and pf.resamples and not Beam(16, 4).resamples and pf.budget == pf.rows == 16
    assert pf.max_rounds(12, 160) == 12 and pf.needs_verifier and pf.lookahead == 0
    assert (pf.weight_temperature, pf.resample_finished, pf.selection) == (1.0, True, "weighted")


def test_two_forms_of_one_strategy_are_the_same_strategy():
    assert spec(kind="best_of_n").effective() == spec(kind="best_of_n", selection="weighted").effective()
    assert spec(kind="beam", width=3).effective() != spec(kind="beam", width=4).effective()
    assert spec(kind="beam", width=3).needs_verifier and not spec(kind="best_of_n", selection="majority").needs_verifier


def test_one_form_round_trips_through_json():
    for strategy in (BestOfN(4, selection="vanilla"), Beam(16, 4), Lookahead(8, 2, k=2), DVTS(16, 4),
                     Revisions(16, 4, selection="majority"),
                     ParticleFiltering(8, weight_temperature=0.5, resample_finished=False, selection="vanilla")):
        data = json.loads(json.dumps(strategy.to_dict()))
        assert strategy_from_dict(data) == strategy
        assert strategy.spec().at(strategy.budget) == strategy
    s = spec(kind="lookahead", width=4, k=1)
    assert StrategySpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.name == "lookahead-k1-width4" and spec(kind="best_of_n").name == "best_of_n"
    assert set(STRATEGIES) == {"best_of_n", "beam", "lookahead", "dvts", "revisions", "particle_filtering"}
    assert spec(kind="particle_filtering", weight_temperature=2).name == "particle_filtering-weight_temperature2"


@pytest.mark.parametrize("data, message", [
    ({"kind": "bean", "width": 4}, "unknown strategy kind 'bean'"),
    ({"kind": "beam", "widht": 4}, "beam has no option(s) ['widht']"),
    ({"kind": "beam", "width": "wide"}, "width must be an integer >= 1"),
    ({"kind": "beam", "width": 0}, "width must be an integer >= 1"),
    ({"kind": "dvts", "width": 3, "selection": "best"}, "selection='best' is not one of"),  # a width 1024 leaves over
    ({"kind": "lookahead", "width": 4, "k": -1}, "k must be an integer >= 0"),
    ({"kind": "best_of_n", "selection": "best"}, "selection='best' is not one of"),
    ({"width": 4}, "a mapping with a 'kind'"),
    ({"kind": "particle_filtering", "weight_temperature": 0}, "weight_temperature must be a finite number > 0"),
    ({"kind": "particle_filtering", "weight_temperature": "hot"}, "weight_temperature must be a finite number > 0"),
    ({"kind": "particle_filtering", "weight_temperature": float("inf")}, "weight_temperature must be a finite"),
    ({"kind": "particle_filtering", "resample_finished": "yes"}, "resample_finished must be true"),
    ({"kind": "particle_filtering", "width": 4}, "particle_filtering has no option(s) ['width']"),
])
def test_a_typo_in_a_strategy_is_refused_when_it_is_read(data, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        StrategySpec.from_dict(data, source="config.yaml: strategies[0]")
    with pytest.raises(ValueError, match="config.yaml: strategies"):
        StrategySpec.from_dict(data, source="config.yaml: strategies[0]")


def test_search_settings_round_trip_and_refuse_nonsense():
    s = SearchSettings(max_step_tokens=20, temperature=0.5)
    assert SearchSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.sampling.temperature == 0.5
    for bad, message in (({"max_len": 0}, "max_len=0"), ({"temperature": -1}, "temperature"),
                         ({"temperature": float("nan")}, "must be finite"), ({"top_p": float("inf")}, "finite"),
                         ([1, 2], "must be a mapping"),
                         ({"max_step_tokens": 200}, "below max_len"), ({"temprature": 1}, "temprature")):
        with pytest.raises(ValueError, match=message):
            SearchSettings.from_dict(bad, source="config.yaml: search")
