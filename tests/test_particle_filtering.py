"""Particle filtering on toys whose posterior is known (tests/toys.py).

The policy writes 'x' or 'y' with probability 1/2 each (a newline almost never), and each round's step is one
token (max_step_tokens=1: cut at the cap, scored, continued). `last_token_prm` scores a prefix by its last token
alone: logit log(3) after an 'x' (score 3/4), 0 after a 'y' (score 1/2). At weight_temperature 1 a particle
weighs its score's odds, 3 against 1, so after resampling each token is 'x' with probability
(1/2 * 3) / (1/2 * 3 + 1/2 * 1) = 3/4: the prior times the weights, normalised. Uniform resampling would leave
the prior's 1/2, and keeping the best (beam search) 1. Each later round weighs only its own token, so every
resampled position keeps that posterior; the last round's token is not resampled (Puri et al. resample before a
step, never after the last) and keeps the prior.
"""

import jax
import numpy as np
import pytest
from toys import last_token_prm, toy_policy, y_fraction_prm

from ttcjax.decoding.engine import Engine
from ttcjax.models.sharding import make_mesh
from ttcjax.search.run import search
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import ParticleFiltering
from ttcjax.verifiers.reward_model import RewardModelVerifier

ODDS_X = 3.0  # an 'x' weighs 3 times a 'y'
POSTERIOR_X = 0.5 * ODDS_X / (0.5 * ODDS_X + 0.5)  # 3/4
ROUNDS = 4
ONE_TOKEN_STEPS = SearchSettings(delimiter="\n", max_step_tokens=1, max_len=8, max_rounds=ROUNDS, temperature=1.0)
N, QUESTIONS = 32, 64


@pytest.fixture(scope="module")
def coin():
    """The policy: 'x' or 'y' with probability 1/2 each."""
    policy, tok = toy_policy(0.5, 0.5, 1e-12)
    return Engine(policy, pad_id=tok.pad_id), tok


def particles(coin, prm, strategy, questions=QUESTIONS, key=0):
    """Each question's final particles as a [questions, N, ROUNDS] array of tokens, True where 'x'; and the results."""
    engine, tok = coin
    results = search(strategy, engine, RewardModelVerifier(prm, tok), tok, ["Q"] * questions, jax.random.key(key),
                     extract_answer=lambda text: text, settings=ONE_TOKEN_STEPS)
    texts = [[c.text for c in r.candidates] for r in results]
    assert all(len(t) == ROUNDS and set(t) <= {"x", "y"} for q in texts for t in q)  # one token a round, never ended
    return np.array([[[ch == "x" for ch in t] for t in q] for q in texts]), results


def within(fractions, expected, z=4.0):
    """Whether the mean of independent per-question fractions is within z standard errors of `expected`, the
    standard error estimated from the questions themselves (a question's particles are copies of each other,
    so they are not independent; the questions are). Returns (ok, tolerance)."""
    tolerance = z * fractions.std(ddof=1) / np.sqrt(len(fractions))
    return abs(fractions.mean() - expected) < tolerance, tolerance


def test_resampled_particles_follow_the_prior_times_the_weights(coin):
    x, results = particles(coin, last_token_prm(np.log(ODDS_X), 0.0), ParticleFiltering(N))
    for position in range(ROUNDS - 1):  # each resampled once by its own token's weight
        ok, tolerance = within(x[:, :, position].mean(axis=1), POSTERIOR_X)
        assert ok, (position, x[:, :, position].mean(), POSTERIOR_X, tolerance)
        # the tolerance is tight enough to tell the posterior from uniform resampling and from keeping the best
        assert abs(0.5 - POSTERIOR_X) > 2 * tolerance and abs(1.0 - POSTERIOR_X) > 2 * tolerance
    ok, tolerance = within(x[:, :, -1].mean(axis=1), 0.5)  # the last round's token: never resampled
    assert ok, (x[:, :, -1].mean(), tolerance)
    # costs are exact: every row wrote one token a round, and the verifier read each once (and the prompt once)
    prompt = 2  # BOS and "Q"
    engine, _ = coin
    for r in results:
        assert r.generated_tokens == N * ROUNDS and r.verifier_tokens == N * ROUNDS + prompt
        assert r.policy_flops == 2 * engine.config.num_params() * (N * ROUNDS + prompt)
        assert r.generations == N


def test_the_weight_temperature_tempers_the_log_weights(coin):
    # odds 9 at temperature 2 weigh as odds 3 at temperature 1 (posterior 3/4), where temperature 1 would give 9/10
    x, _ = particles(coin, last_token_prm(np.log(ODDS_X ** 2), 0.0), ParticleFiltering(N, weight_temperature=2.0))
    resampled = x[:, :, :ROUNDS - 1].mean(axis=(1, 2))  # [questions] the share of 'x' at every resampled position
    ok, tolerance = within(resampled, POSTERIOR_X)
    assert ok, (resampled.mean(), tolerance)
    assert abs(0.9 - POSTERIOR_X) > 2 * tolerance


def test_equal_weights_resample_without_bias_but_do_resample(coin):
    x, _ = particles(coin, last_token_prm(0.0, 0.0), ParticleFiltering(N))
    first = x[:, :, 0].mean(axis=1)  # [questions] each question's share of 'x' at the first position
    ok, tolerance = within(first, 0.5)
    assert ok, (first.mean(), tolerance)
    # the particles were drawn anew three times (copies of each other, not independent samples): a question's
    # share drifts, its variance near 1/4 (1 - (1 - 1/N)^4) = 0.030 against 1/4 / N = 0.0078 for independent draws
    assert first.var(ddof=1) > 2 * 0.25 / N


# finished particles: a step holding a 'y' ends its solution (an answer mark), and the PRM scores every prefix with
# a 'y' near 0 (a weight below 1e-5 of a clean prefix's)
MARKED = SearchSettings(delimiter="\n", max_step_tokens=16, max_len=96, max_rounds=12, temperature=1.0,
                        answer_marks=("y",))


@pytest.fixture(scope="module")
def toys():
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    return Engine(policy, pad_id=tok.pad_id), y_fraction_prm(strength=2000.0), tok


def marked(toys, strategy, questions=8, key=0, engine=None, **kw):
    policy, prm, tok = toys
    return search(strategy, engine or policy, RewardModelVerifier(prm, tok), tok, ["Q"] * questions,
                  jax.random.key(key), extract_answer=lambda text: "y" not in text, settings=MARKED, **kw)


def finishing_rounds(result):
    """The round each candidate finished in, and the round its question's last particle did. Every open particle
    writes one step a round, so a particle that ended on a marked step did in round len(steps), one that ended
    with an empty step in round len(steps) + 1; one still open after the last round has max_rounds steps."""
    rounds = [len(c.steps) + (c.answer and c.text.endswith("\n\n")) for c in result.candidates]
    return rounds, max(rounds)


def test_finished_particles_are_not_extended_and_take_part_in_resampling_or_keep_their_place(toys):
    resampled = marked(toys, ParticleFiltering(16))
    kept = marked(toys, ParticleFiltering(16, resample_finished=False))
    early = []  # per run: candidates that ended on a 'y' before their question's last round
    for results in (resampled, kept):
        for c in (c for r in results for c in r.candidates):
            # a particle that finished (its step holds the mark) wrote nothing after, nor did its copies
            assert "y" not in "".join(c.steps[:-1]), c.steps
        early.append(0)
        for r in results:
            rounds, last = finishing_rounds(r)
            early[-1] += sum(not c.answer and at < last for c, at in zip(r.candidates, rounds))
    # taking part with their last step's weight, particles that ended on a 'y' (weighing nearly nothing) are
    # drawn over while their question has an open particle: only those that finished in its last round remain;
    # kept in place, they stay from the round they finished in
    assert early[0] == 0 and early[1] > 16, early


def test_same_key_same_particles_and_a_new_key_differs(toys):
    a, b, c = (marked(toys, ParticleFiltering(16), key=k) for k in (3, 3, 4))
    assert [r.candidates for r in a] == [r.candidates for r in b]
    assert [r.candidates for r in a] != [r.candidates for r in c]


def test_eight_devices_and_compaction_resample_like_one_device(toys):
    policy, prm, tok = toys
    sharded = Engine(toy_policy(0.5, 0.2, 0.3)[0], mesh=make_mesh(4, 2), pad_id=tok.pad_id)
    whole = marked(toys, ParticleFiltering(16), compact=False)
    batches = []  # rows of each compiled segment: once half the questions have finished, the rest move to 4 places
    split = marked(toys, ParticleFiltering(16), engine=sharded, compact_min_rows=64, on_segment=batches.append)
    assert batches == [128, 64]
    assert [c.text for r in whole for c in r.candidates] == [c.text for r in split for c in r.candidates]
    np.testing.assert_allclose([s for r in whole for c in r.candidates for s in c.step_scores],
                               [s for r in split for c in r.candidates for s in c.step_scores], atol=1e-5)
    assert [(r.generated_tokens, r.verifier_tokens) for r in whole] == [(r.generated_tokens, r.verifier_tokens)
                                                                        for r in split]
