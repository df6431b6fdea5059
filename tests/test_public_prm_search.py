"""Public PRM families inside search: a policy with one tokenizer (the toy's characters), a verifier with another
(each family's tiny twin: a BPE vocabulary, its step tags, separators and chat turns; tests/prm_twins.py).

Every step a row writes is rendered in the family's format and fed into the verifier's own cache; the step
scores search reads must equal a one-pass scoring of the finished candidates in that format, and the
verifier must read each prefix once (only a format's few closing tokens are read again)."""


import jax
import numpy as np
import pytest
from prm_twins import QUESTION
from toys import toy_policy

from ttcjax.decoding.engine import Engine, bucket
from ttcjax.models.sharding import make_mesh
from ttcjax.search.run import search
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import DVTS, Beam, BestOfN, Lookahead
from ttcjax.verifiers.public import load_public_verifier

SETTINGS = SearchSettings(delimiter="\n", max_step_tokens=6, max_len=48, max_rounds=5, temperature=1.0)
QUESTIONS = [QUESTION, "What is 7 + 5?", "Janet eats 3 of 12 apples."]
FAMILIES = {"math_shepherd": "math-shepherd", "rlhflow": "rlhflow", "qwen_prm": "qwen-prm", "skywork": "skywork"}


@pytest.fixture(scope="module")
def policy():
    model, tok = toy_policy(0.5, 0.25, 0.25)
    return Engine(model, pad_id=tok.pad_id), tok


def _search(policy, verifier, strategy, key=0, mesh=None):
    engine, tok = policy
    if mesh is not None:
        engine = Engine(toy_policy(0.5, 0.25, 0.25)[0], mesh=mesh, pad_id=tok.pad_id)
    return search(strategy, engine, verifier, tok, ["Q"] * len(QUESTIONS), jax.random.key(key),
                  extract_answer=lambda text: "y" not in text, settings=SETTINGS, questions=QUESTIONS)


def _assert_one_pass_equal(verifier, results):
    """Every candidate's step scores from inside search equal the verifier's one-pass scores of its steps."""
    ours, one_pass = [], []
    for question, r in zip(QUESTIONS, results):
        cands = [c for c in r.candidates if c.steps]
        assert cands, "no candidate wrote a step"
        for c, ref in zip(cands, verifier.score([question] * len(cands), [c.steps for c in cands])):
            assert len(c.step_scores) == len(c.steps)
            ours.append(np.asarray(c.step_scores))
            one_pass.append(ref)
    ours, one_pass = np.concatenate(ours), np.concatenate(one_pass)
    np.testing.assert_allclose(ours, one_pass, atol=2e-5, rtol=0)
    assert one_pass.std() > 0.01, f"the twin's scores {one_pass} are too uniform to test anything"
    return ours.size


@pytest.mark.parametrize("fixture", list(FAMILIES))
def test_beam_search_reads_the_scores_a_one_pass_scoring_gives(fixture, request, policy):
    path = request.getfixturevalue(fixture)[0]
    verifier = load_public_verifier(path, FAMILIES[fixture], max_len=256)
    results = _search(policy, verifier, Beam(8, width=2))
    steps = _assert_one_pass_equal(verifier, results)
    assert steps >= 3 * 8  # several steps per question were scored and compared

    # the prefix is read once: what the verifier read is the final renderings, plus a few tokens per step
    # that a format's closing (a chat turn's end) makes it read again, far below re-reading every prefix
    for question, r in zip(QUESTIONS, results):
        final = sum(len(verifier.fmt.encode(verifier.tokenizer, question, c.steps).tokens) for c in r.candidates)
        rescored = sum(len(verifier.fmt.encode(verifier.tokenizer, question, c.steps[:k]).tokens)
                       for c in r.candidates for k in range(1, len(c.steps) + 1))
        assert r.verifier_tokens < rescored
        assert r.verifier_tokens <= final + 8 * 4 * SETTINGS.max_rounds + len(
            verifier.scorer_prompts([question], [[]])[0])


def test_lookahead_and_dvts_with_a_chat_format(policy, rlhflow, qwen_prm):
    for path, family in ((rlhflow[0], "rlhflow"), (qwen_prm[0], "qwen-prm")):
        verifier = load_public_verifier(path, family, max_len=256)
        for strategy in (Lookahead(4, width=2, k=1), DVTS(8, width=2)):
            _assert_one_pass_equal(verifier, _search(policy, verifier, strategy, key=1))


def test_best_of_n_weighted_picks_by_the_public_prm(policy, skywork):
    verifier = load_public_verifier(skywork[0])
    results = _search(policy, verifier, BestOfN(8, selection="vanilla"), key=2)
    _assert_one_pass_equal(verifier, results)
    for r in results:
        assert r.chosen == int(np.argmax([c.score for c in r.candidates]))


def test_eight_devices_give_the_results_of_one_device(policy, qwen_prm):
    verifier = load_public_verifier(qwen_prm[0])
    one = _search(policy, verifier, Beam(8, width=2), key=3)
    eight = _search(policy, load_public_verifier(qwen_prm[0]), Beam(8, width=2), key=3, mesh=make_mesh(4, 2))
    for a, b in zip(one, eight):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        np.testing.assert_allclose(np.concatenate([c.step_scores for c in a.candidates]),
                                   np.concatenate([c.step_scores for c in b.candidates]), atol=1e-5)
        assert a.verifier_tokens == b.verifier_tokens


def test_a_rendering_longer_than_the_verifier_cache_is_refused(policy, skywork):
    longest_question = max(map(len, load_public_verifier(skywork[0]).scorer_prompts(QUESTIONS, [[]] * 3)))
    verifier = load_public_verifier(skywork[0], max_len=bucket(longest_question) + 1)  # no room for 5 steps
    with pytest.raises(Exception, match="rendering of a solution takes .* raise the verifier's max_len"):
        _search(policy, verifier, BestOfN(4))
    # a policy whose steps the verifier cannot follow is refused before any work: no questions to render
    engine, tok = policy
    with pytest.raises(ValueError, match="questions for"):
        search(BestOfN(4), engine, load_public_verifier(skywork[0]), tok, ["Q"], jax.random.key(0),
               extract_answer=lambda t: t, settings=SETTINGS, questions=[])
