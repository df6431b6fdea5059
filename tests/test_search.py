"""Search on toy models whose optimum is known (tests/toys.py): the policy writes x / y / newline at fixed
rates, the PRM prefers prefixes without 'y', and a solution is right iff it holds no 'y'."""

import dataclasses

import jax
import numpy as np
import pytest
from toys import p_solution_without_y, toy_policy, y_fraction_prm

from ttcjax.checkpoints.assets import model_dir
from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer
from ttcjax.decoding.engine import Engine
from ttcjax.models.sharding import make_mesh
from ttcjax.search.episode import _questions_after_compaction, _stop_at_open
from ttcjax.search.run import search
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import DVTS, Beam, BestOfN, Lookahead
from ttcjax.tasks import arithmetic
from ttcjax.verifiers.base import NoVerifier
from ttcjax.verifiers.reward_model import (LikelihoodHead, RewardModel, RewardModelVerifier, StepFormat, load_prm,
                                           score_inputs)

P_X, P_Y, P_NEWLINE = 0.5, 0.2, 0.3
SETTINGS = SearchSettings(delimiter="\n", max_step_tokens=16, max_len=96, max_rounds=40, temperature=1.0)


def no_y(text):
    """Right iff the solution has at least one step and no 'y' (a solution without steps scores 0)."""
    return "y" not in text and text.strip() != ""


@pytest.fixture(scope="module")
def toys():
    policy, tok = toy_policy(P_X, P_Y, P_NEWLINE)
    return Engine(policy, pad_id=tok.pad_id), y_fraction_prm(), tok


def run(toys, strategy, questions=("Q",), key=0, temperature=1.0, **kw):
    engine, prm, tok = toys
    return search(strategy, engine, RewardModelVerifier(prm, tok), tok, list(questions), jax.random.key(key),
                  extract_answer=no_y, settings=dataclasses.replace(SETTINGS, temperature=temperature), **kw)


def test_the_toy_prm_prefers_prefixes_without_y(toys):

    _, prm, tok = toys
    fmt = StepFormat()
    clean, one_y, two_y = (score_inputs(prm, [fmt.encode(tok, "Q", steps)])[0][-1]
                           for steps in (["xx", "x"], ["xy", "x"], ["yy", "x"]))
    assert clean > one_y > two_y


def test_best_of_n_accuracy_matches_its_closed_form(toys):
    n, questions = 4, 96
    results = run(toys, BestOfN(n, selection="vanilla"), questions=["Q"] * questions)
    accuracy = np.mean([r.answer is True for r in results])
    p0 = p_solution_without_y(P_X, P_Y, P_NEWLINE) - P_NEWLINE  # clean, and not empty
    # the sampled candidates themselves follow the toy's law ...
    clean = np.mean([c.answer for r in results for c in r.candidates])
    assert abs(clean - p0) < 4 * np.sqrt(p0 * (1 - p0) / (n * questions))
    # ... and vanilla best-of-N picks a clean one whenever there is one
    expected = 1 - (1 - p0) ** n
    assert abs(accuracy - expected) < 4 * np.sqrt(expected * (1 - expected) / questions), (accuracy, expected)
    assert all(r.answer == any(c.answer for c in r.candidates) for r in results)


def test_beam_search_finds_the_optimum(toys):
    results = run(toys, Beam(16, 4), questions=["Q"] * 6)
    assert all(r.answer is True for r in results)
    # selection keeps clean prefixes: nearly every final beam with a step is clean, far above the sampling
    # rate (rows whose very first step was empty finished at once and keep their place)
    clean = np.mean([c.answer for r in results for c in r.candidates if c.text.strip()])
    sampled = (p_solution_without_y(P_X, P_Y, P_NEWLINE) - P_NEWLINE) / (1 - P_NEWLINE)
    assert clean > sampled + 0.5
    for r in results:
        for c in r.candidates:
            assert len(c.step_scores) == c.text.count("\n") - 1 or not c.text.endswith("\n\n")


def test_dvts_keeps_each_subtree_clean(toys):
    # 32 questions = 128 independent subtrees: a subtree is clean or not as a whole, so the clean fraction
    # needs many of them to be far from the sampling rate with room to spare
    results = run(toys, DVTS(16, 4), questions=["Q"] * 32)
    clean = np.mean([c.answer for r in results for c in r.candidates if c.text.strip()])
    sampled = (p_solution_without_y(P_X, P_Y, P_NEWLINE) - P_NEWLINE) / (1 - P_NEWLINE)
    assert clean > sampled + 0.15


def test_lookahead_with_k0_is_beam_search(toys):
    beam = run(toys, Beam(8, 2), questions=["Q"] * 2, key=5)
    look = run(toys, Lookahead(8, 2, k=0), questions=["Q"] * 2, key=5)
    for a, b in zip(beam, look):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.step_scores for c in a.candidates] == [c.step_scores for c in b.candidates]
        assert a.generated_tokens == b.generated_tokens
    assert Lookahead(8, 2, k=3).budget == 32


def test_lookahead_rollouts_cost_tokens(toys):
    (with_rollouts,) = run(toys, Lookahead(4, 2, k=2), key=1)
    texts = sum(len(c.text) for c in with_rollouts.candidates)
    assert with_rollouts.generated_tokens > texts  # the discarded rollouts were generated and counted


def test_same_key_same_result_and_a_new_key_differs(toys):
    a = run(toys, Beam(8, 2), questions=["Q"] * 2, key=3)
    b = run(toys, Beam(8, 2), questions=["Q"] * 2, key=3)
    c = run(toys, Beam(8, 2), questions=["Q"] * 2, key=4)
    assert [x.candidates for x in a] == [x.candidates for x in b]
    assert [x.candidates for x in a] != [x.candidates for x in c]


def test_cost_accounting_on_a_hand_counted_case(toys):
    engine, prm, tok = toys
    # greedy: every row writes 'x' in steps cut at the 16-token cap, each scored and continued, until the
    # cache (96 slots, the prompt BOS + "Q" in 2) is full: 94 tokens in steps of 16, 16, 16, 16, 16, 14
    (r,) = run(toys, BestOfN(3), temperature=0.0)
    written = SETTINGS.max_len - 2
    assert [c.text for c in r.candidates] == ["x" * written] * 3
    assert [c.steps for c in r.candidates] == [["x" * 16] * 5 + ["x" * 14]] * 3
    assert all(len(c.step_scores) == 6 for c in r.candidates)
    assert r.generated_tokens == 3 * written
    assert r.verifier_tokens == 3 * written + 2  # each row's steps, and the prompt once
    assert r.policy_flops == 2 * engine.config.num_params() * (3 * written + 2)
    assert r.verifier_flops == 2 * prm.num_params * (3 * written + 2)
    assert r.generations == 3
    # sampled: a best-of-N row's tokens are exactly its text's characters
    (s,) = run(toys, BestOfN(8), key=2)
    assert s.generated_tokens == sum(len(c.text) for c in s.candidates)


def test_a_question_that_finishes_early_does_not_disturb_the_others(toys):
    # the second question nearly fills the cache, so its rows stop within their first step
    long_prompt = "Q" * 90
    with_short = run(toys, Beam(8, 2), questions=["Q", "Q"], key=7)
    with_long = run(toys, Beam(8, 2), questions=["Q", long_prompt], key=7)
    assert [c.text for c in with_short[0].candidates] == [c.text for c in with_long[0].candidates]
    assert with_short[0].generated_tokens == with_long[0].generated_tokens
    assert with_long[1].generated_tokens <= 8 * 5 < with_long[0].generated_tokens


def test_finished_questions_are_compacted_away_without_changing_results(toys):
    batches = []  # rows in each compiled segment's batch
    # three prompts nearly fill the cache and finish in the first round; the fourth goes on alone
    questions = ["Q" * 90, "Q", "Q" * 90, "Q" * 90]
    compacted = run(toys, Beam(8, 2), questions=questions, key=3, compact_min_rows=0, on_segment=batches.append)
    assert batches == [32, 8]
    batches.clear()
    run(toys, Beam(8, 2), questions=questions, key=3, compact_min_rows=16, on_segment=batches.append)  # not below 16
    assert batches == [32, 16]
    batches.clear()
    whole = run(toys, Beam(8, 2), questions=questions, key=3, compact=False, on_segment=batches.append)
    assert batches == [32]
    for a, b in zip(compacted, whole):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.step_scores for c in a.candidates] == [c.step_scores for c in b.candidates]
        assert (a.generated_tokens, a.verifier_tokens) == (b.generated_tokens, b.verifier_tokens)


def test_compaction_sizes():
    assert [_questions_after_compaction(o, 1) for o in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [_questions_after_compaction(o, 4) for o in (1, 4, 5, 9)] == [4, 4, 8, 16]
    assert _stop_at_open(4, 1) == 2 and _stop_at_open(3, 1) == 2 and _stop_at_open(16, 4) == 8
    assert _stop_at_open(4, 4) == 0 and _stop_at_open(1, 1) == 0  # nothing smaller to move to
    # a floor of 4 questions: 1 open question still gets 4 places, and a batch of 4 is never compacted
    assert _questions_after_compaction(1, 1, floor=4) == 4 and _questions_after_compaction(5, 1, floor=4) == 8
    assert _stop_at_open(16, 1, floor=4) == 8 and _stop_at_open(4, 1, floor=4) == 0


@pytest.mark.parametrize("head", ["value", "likelihood"])
def test_eight_devices_search_like_one(toys, head):
    """The likelihood head (on the toy policy's backbone) also carries its per-row state over the mesh."""
    engine, prm, tok = toys
    policy, _ = toy_policy(P_X, P_Y, P_NEWLINE)
    if head == "likelihood":
        prm = RewardModel(toy_policy(P_X, P_Y, P_NEWLINE)[0], LikelihoodHead(), seed=1)
        toys = (engine, prm, tok)
    sharded = Engine(policy, mesh=make_mesh(4, 2), pad_id=tok.pad_id)
    # half the questions end in their first round, so the sharded batch is compacted too (8 -> 4 questions)
    questions = ["Q", "Q" * 90] * 4
    a = run(toys, Beam(8, 2), questions=questions, key=9)
    batches = []
    b = search(Beam(8, 2), sharded, RewardModelVerifier(prm, tok), tok, questions, jax.random.key(9),
               extract_answer=no_y, settings=SETTINGS, compact_min_rows=0, on_segment=batches.append)
    assert [c.text for r in a for c in r.candidates] == [c.text for r in b for c in r.candidates]
    np.testing.assert_allclose([s for r in a for c in r.candidates for s in c.step_scores],
                               [s for r in b for c in r.candidates for s in c.step_scores], atol=1e-5)
    assert batches == [64, 32]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        Beam(10, 4)
    with pytest.raises(ValueError, match="below the beam width"):
        Beam(2, 4)
    with pytest.raises(ValueError, match="below the beam width"):
        DVTS(2, 4)
    with pytest.raises(ValueError, match="k must be"):
        Lookahead(8, 2, k=-1)
    with pytest.raises(ValueError, match="selection"):
        BestOfN(4, selection="best")
    assert dataclasses.is_dataclass(Beam(8, 2)) and hash(Beam(8, 2)) == hash(Beam(8, 2))


@pytest.mark.parametrize("head", ["value", "likelihood"])
def test_step_scores_read_in_search_equal_one_pass_scoring(head):
    """Search feeds each round's steps into the PRM's own cache (reading only as wide as the round's
    longest step); the scores must equal scoring the finished solution in one pass. The likelihood head
    (on the tiny policy's own backbone) also carries each row's least likely token from round to round, through
    beam search's reselection of rows."""

    tok = load_tokenizer(model_dir("policy", "tiny"))
    engine = Engine(load_any(model_dir("policy", "tiny")), pad_id=tok.pad_id)
    if head == "value":
        prm, _ = load_prm(model_dir("prm", "tiny"))
    else:
        prm = RewardModel(load_any(model_dir("policy", "tiny")), LikelihoodHead(), seed=3)
    problems = arithmetic.generate(arithmetic.TaskConfig(), 4, seed=1, split="test")
    questions = [arithmetic.format_prompt(p) for p in problems]
    settings = SearchSettings(delimiter="\n", max_step_tokens=24, max_len=160, max_rounds=40, temperature=1.2)
    results = search(Beam(4, 2), engine, RewardModelVerifier(prm, tok), tok, questions, jax.random.key(0),
                     extract_answer=arithmetic.extract_answer, settings=settings)
    fmt = StepFormat()
    inputs, searched = [], []
    for q, r in zip(questions, results):
        for c in r.candidates:
            steps = [s for s in c.text.split("\n") if s.strip()]
            assert len(steps) == len(c.step_scores) > 0
            inputs.append(fmt.encode(tok, q, steps))
            searched.append(c.step_scores)
    for got, want in zip(score_inputs(prm, inputs), searched):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_verifier_that_reads_other_steps_is_refused(toys):
    engine, prm, tok = toys
    with pytest.raises(ValueError, match="the verifier reads steps ended by .* and the search ends them with 'x'"):
        search(Beam(4, 2), engine, RewardModelVerifier(prm, tok), tok, ["Q"], jax.random.key(0), extract_answer=no_y,
               settings=dataclasses.replace(SETTINGS, delimiter="x"))


def test_a_delimiter_of_several_tokens_ends_steps_where_its_text_completes(toys):
    engine, _, tok = toys
    (r,) = search(BestOfN(8, selection="majority"), engine, NoVerifier(), tok, ["Q"], jax.random.key(4),
                  extract_answer=no_y, settings=dataclasses.replace(SETTINGS, delimiter="xy", max_step_tokens=64))
    steps = [s for c in r.candidates for s in c.steps]
    assert len(steps) > 8  # the toy writes "xy" often: most rows have several steps
    for c in r.candidates:
        assert all("xy" not in s for s in c.steps)  # a step ends at its delimiter's first occurrence
        assert "".join(c.steps) == c.text.replace("xy", "")  # ... and every occurrence ends a step


def test_verifier_free_best_of_n_samples_the_same_candidates_and_costs_no_verifier_pass(toys):
    engine, prm, tok = toys
    settings = dataclasses.replace(SETTINGS, temperature=1.0)
    questions = ["Q"] * 3
    scored = search(BestOfN(8, selection="majority"), engine, RewardModelVerifier(prm, tok), tok, questions,
                    jax.random.key(11), extract_answer=no_y, settings=settings)
    free = search(BestOfN(8, selection="majority"), engine, NoVerifier(), tok, questions, jax.random.key(11),
                  extract_answer=no_y, settings=settings)
    for a, b in zip(scored, free):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert (b.answer, b.chosen) == (a.answer, a.chosen)  # majority reads no score
        assert b.verifier_tokens == 0 and b.verifier_flops == 0 and a.verifier_tokens > 0
        assert all(c.step_scores == [] for c in b.candidates)
    for strategy in (Beam(8, 2), BestOfN(8)):  # selection between rounds, or weighted answers, need scores
        with pytest.raises(ValueError, match="reads verifier scores"):
            search(strategy, engine, NoVerifier(), tok, questions, jax.random.key(0), extract_answer=no_y,
                   settings=settings)


def test_a_step_holding_a_final_answer_mark_ends_its_solution(toys):
    engine, _, tok = toys
    settings = dataclasses.replace(SETTINGS, answer_marks=("yy",))
    (r,) = search(BestOfN(16, selection="majority"), engine, NoVerifier(), tok, ["Q"], jax.random.key(5),
                  extract_answer=no_y, settings=settings)
    (free,) = search(BestOfN(16, selection="majority"), engine, NoVerifier(), tok, ["Q"], jax.random.key(5),
                     extract_answer=no_y, settings=dataclasses.replace(settings, answer_marks=()))
    marked = 0
    for c, f in zip(r.candidates, free.candidates):
        at = [k for k, step in enumerate(c.steps) if "yy" in step]
        # the same draws: the solution is the unmarked one up to (and with) its first step holding the mark
        assert f.text.startswith(c.text)
        if at:
            marked += 1
            assert at == [len(c.steps) - 1]
        else:
            assert c.text == f.text
    assert 0 < marked < 16
