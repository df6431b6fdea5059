"""Non-finite numbers are never silently averaged: a policy whose logits or a verifier whose scores go NaN or inf is
warned of (one line naming what and how many rows) wherever it samples or searches, and the records that evaluation
and sweeps write count it."""

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import pytest
from test_bad_input import TINY
from toys import toy_policy, y_fraction_prm

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.decoding.engine import GREEDY, Engine
from ttcjax.eval.sweep import collect_grid, plan_cells, search_grid, summarize, summary_markdown
from ttcjax.models import init_model
from ttcjax.search.run import search
from ttcjax.search.sampling import sample_solutions
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Beam, BestOfN, StrategySpec
from ttcjax.tasks.registry import task_from_dict
from ttcjax.training.policy import evaluate_policy
from ttcjax.verifiers.base import NoVerifier
from ttcjax.verifiers.reward_model import RewardModelVerifier

SETTINGS = SearchSettings(delimiter="\n", max_step_tokens=8, max_len=48, max_rounds=6, temperature=1.0)


def nan_logits(model):
    """Every row's next-token logits hold a NaN (one column of the LM head)."""
    model.lm_head[...] = model.lm_head[...].at[:, 1].set(jnp.nan)
    return model


@pytest.fixture(scope="module")
def toys():
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    broken_policy, _ = toy_policy(0.5, 0.2, 0.3)
    prm, broken_prm = y_fraction_prm(), y_fraction_prm()
    broken_prm.v_b[...] = jnp.asarray(jnp.nan, broken_prm.v_b[...].dtype)  # every score NaN
    return {"engine": Engine(policy, pad_id=tok.pad_id), "broken_engine": Engine(nan_logits(broken_policy),
                                                                               pad_id=tok.pad_id),
            "prm": RewardModelVerifier(prm, tok), "broken_prm": RewardModelVerifier(broken_prm, tok), "tok": tok}


def run(toys, strategy, engine, verifier, questions=2):
    return search(strategy, toys[engine], toys[verifier], toys["tok"], ["Q"] * questions, jax.random.key(0),
                  extract_answer=lambda text: "y" not in text, settings=SETTINGS)


def test_search_counts_and_warns_of_rows_whose_logits_went_non_finite(toys):
    with pytest.warns(UserWarning, match=r"Beam\(n=4, .*\): 8 of 8 rows met non-finite policy logits and 0 of 8 rows "
                                         r"non-finite verifier scores \(2 of 2 questions\)"):
        results = run(toys, Beam(4, 2), "broken_engine", "prm")
    assert [(r.nonfinite_logits, r.nonfinite_scores) for r in results] == [(4, 0), (4, 0)]


def test_search_counts_and_warns_of_non_finite_verifier_scores(toys):
    with pytest.warns(UserWarning) as caught:
        results = run(toys, BestOfN(4, selection="weighted"), "engine", "broken_prm", questions=4)
    scored = sum(bool(c.step_scores) for r in results for c in r.candidates)  # a row ended at once has no score
    assert scored and all(math.isnan(s) for r in results for c in r.candidates for s in c.step_scores)
    assert [r.nonfinite_scores for r in results] == [sum(bool(c.step_scores) for c in r.candidates) for r in results]
    assert sum(r.nonfinite_logits for r in results) == 0
    (warning,) = caught
    assert f"0 of 16 rows met non-finite policy logits and {scored} of 16 rows non-finite verifier scores" \
        in str(warning.message)


def test_a_healthy_search_warns_of_nothing(toys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = run(toys, Beam(4, 2), "engine", "prm")
    assert all(r.nonfinite_logits == r.nonfinite_scores == 0 for r in results)


@pytest.fixture(scope="module")
def broken_model():
    return nan_logits(init_model(TINY))


@pytest.fixture(scope="module")
def broken_tiny(broken_model):
    return Engine(broken_model, pad_id=CharTokenizer().pad_id)


def test_sample_solutions_warns_of_samples_that_ended_on_non_finite_logits(broken_tiny):
    task, tok = task_from_dict({"name": "arithmetic"}), CharTokenizer()
    problems = task.problems("test", limit=3)
    with pytest.warns(UserWarning, match=r"sample_solutions: 6 of 6 samples \(3 of 3 questions\) ended on non-finite "
                                         r"logits \(finish_reason 'nonfinite_logits'\)"):
        texts = sample_solutions(task, broken_tiny, tok, problems, n=2, sampling=GREEDY, key=jax.random.key(0),
                                 max_new_tokens=4)
    assert texts == [["", ""]] * 3


def test_policy_evaluation_counts_its_non_finite_samples(broken_model):
    task = task_from_dict({"name": "arithmetic"})
    problems = task.problems("test", limit=2)
    with pytest.warns(UserWarning, match="non-finite logits"):
        result = evaluate_policy(broken_model, CharTokenizer(), task, problems, samples=2, max_new_tokens=4)
    assert result["nonfinite_samples"] == 2 + 2 * 2  # greedy and sampled


def test_a_sweeps_records_and_summary_count_questions_whose_search_went_non_finite(broken_tiny, tmp_path, capsys):
    task, tok = task_from_dict({"name": "arithmetic"}), CharTokenizer()
    problems = task.problems("test", limit=3)
    cells = plan_cells([StrategySpec.from_dict({"kind": "best_of_n", "selection": "majority"})], [2])
    settings = dataclasses.replace(SETTINGS, delimiter=None).for_task(task)
    with pytest.warns(UserWarning, match="6 of 6 rows met non-finite policy logits"):
        search_grid(cells, task, problems, broken_tiny, NoVerifier(), tok, str(tmp_path), settings=settings, seed=0,
                    rows_per_batch=64, progress=False)
    grid = collect_grid(cells, problems, NoVerifier(), str(tmp_path))
    (records,) = grid.records.values()
    assert [(r["nonfinite_logits"], r["nonfinite_scores"]) for r in records] == [(2, 0)] * 3
    assert "best_of_n-selectionmajority-b2: 3 of 3 questions met non-finite" in capsys.readouterr().err
    summary = summarize({}, problems, grid)
    assert summary["table"]["best_of_n-selectionmajority"]["2"]["nonfinite_questions"] == 3
    assert "best_of_n-selectionmajority N=2: 3 of 3" in summary_markdown(summary)
