"""The host-loop peer (`bench/peer_search.py`, search-and-learn's design on transformers) is faithful: its exported
models score and predict as ttcjax's do, its left-padded step generation is ttcjax's, and its beam search keeps
the best-scored beam and grows every next beam from it."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import peer_search  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import GREEDY, Engine, StopConditions  # noqa: E402
from ttcjax.tasks import arithmetic  # noqa: E402


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    torch.set_num_threads(1)  # two OpenMP threads on a loaded 2-core machine run many times slower than one
    tok = load_tokenizer(model_dir("policy", "tiny"))
    settings = peer_search.PeerSettings()
    ttc_policy, ttc_prm, _ = peer_search.load_ttcjax_models()
    paths = peer_search.export_models(str(tmp_path_factory.mktemp("peer")), ttc_policy, ttc_prm)
    policy = peer_search.HfPolicy(paths["policy"], tok, settings)
    prm = peer_search.HfPRM(paths["prm"], paths["head"], settings.prm_batch_size)
    problems = arithmetic.generate(arithmetic.TaskConfig(), 4, seed=1, split="test")
    prompts = [tok.encode(arithmetic.format_prompt(q), add_bos=True) for q in problems]
    return tok, settings, policy, prm, problems, prompts, ttc_policy, ttc_prm


def test_exported_prm_and_policy_match_ttcjax(peer):
    tok, _, policy, prm, problems, _, ttc_policy, ttc_prm = peer
    check = peer_search.parity(policy, prm, tok, problems[:2], ttc_policy, ttc_prm)
    assert check["steps"] >= 8
    assert check["prm_max_abs_diff"] < 1e-4
    assert check["policy_logits_max_abs_diff"] < 1e-4


def test_left_padded_step_generation_is_ttcjax_greedy(peer):
    """Prefixes of different lengths in one batch (left-padded, as each round's beams are) stop at the step
    delimiter exactly where ttcjax's greedy decoding does."""
    tok, settings, policy, _, _, prompts, ttc_policy, _ = peer
    prefixes = [prompts[0], prompts[1] + tok.encode("5*3=15\n"), prompts[2][:-3]]
    delimiter = tok.encode(settings.delimiter)
    ours = policy.generate(prefixes, max_new_tokens=settings.max_step_tokens, stop=delimiter, temperature=0)
    engine = Engine(ttc_policy, pad_id=tok.pad_id)
    reference = engine.generate(prefixes, max_new_tokens=settings.max_step_tokens, sampling=GREEDY,
                                stop=StopConditions(eos_ids=tuple(tok.eos_ids), stop_sequences=(tuple(delimiter),)))
    assert [g.tokens for g in ours] == [list(c.tokens) for c in reference]
    assert ours[0].reason == "stop" and ours[0].tokens[-1] == delimiter[0]


def test_host_beam_keeps_the_best_beam_and_grows_from_it(peer):
    """N = M: one beam survives each round, the open beam with the highest score, and every beam of the next
    round continues it."""
    tok, settings, policy, prm, _, prompts, _, _ = peer
    rounds = []
    torch.manual_seed(0)
    result = peer_search.host_beam_search(policy, prm, prompts[3], 4, 4, settings,
                                          on_round=lambda i, beams, kept: rounds.append((beams, kept)))
    assert len(rounds) >= 2
    for (beams, kept), (next_beams, _) in zip(rounds, rounds[1:]):
        scores = [b.scores[-1] for b in beams]
        assert len(kept) == 1 and scores[kept[0]] == max(scores)
        survivor = beams[kept[0]].tokens
        assert all(b.tokens[:len(survivor)] == survivor and len(b.tokens) > len(survivor) for b in next_beams)
    # every completion's step scores are the PRM's on its whole text, read at its step ends
    for beam in result.candidates:
        (again,) = prm.score([prompts[3] + beam.tokens], [[len(prompts[3]) + e - 1 for e in beam.step_ends]])
        assert list(again) == pytest.approx(beam.scores, abs=1e-6)
    assert len(result.candidates) == 4
