"""The shared-prefix KV cache: a question's prompt held once, each row's own tokens after it, attention over both
merged through the log-sum-exp. Everything that samples must give what the forked cache (the prompt copied into
every row) gives: the same tokens, log-probs and scores within float tolerance, on 1 device and on 8."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttcjax.checkpoints.assets import model_dir
from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer
from ttcjax.decoding.engine import Engine, Sampling, prompt_floor
from ttcjax.models.config import ModelConfig
from ttcjax.models.llama import init_model
from ttcjax.models.sharding import make_mesh
from ttcjax.search.run import search
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import DVTS, Beam, BestOfN, Lookahead, Revisions
from ttcjax.tasks import arithmetic
from ttcjax.training.revisions import load_revision_settings
from ttcjax.verifiers.reward_model import RewardModelVerifier, load_prm, load_verifier

# grouped-query attention (4 heads, 2 kv heads) and a sliding window on every other layer
CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                  max_position_embeddings=256, sliding_window=9, sliding_layers=(True, False))
PROMPTS = [[int(t) for t in np.random.default_rng(i).integers(1, 64, size=length)]
           for i, length in enumerate((5, 19, 11))]


@functools.partial(nnx.jit, static_argnames=("attn_len", "write_cache"))
def forward(model, tokens, cache, attn_len=None, write_cache=True):
    """`model(tokens, cache=cache, ...)` as one compiled program (eagerly, each of its ops compiles on its own)."""
    return model(tokens, cache=cache, attn_len=attn_len, write_cache=write_cache)


def prompt_batch() -> tuple[np.ndarray, np.ndarray]:
    """PROMPTS padded into [3, 32] tokens, and their [3] lengths."""
    tokens = np.zeros((3, 32), np.int32)
    for i, p in enumerate(PROMPTS):
        tokens[i, :len(p)] = p
    return tokens, np.array([len(p) for p in PROMPTS], np.int32)


def test_share_holds_each_prompt_once_and_moves_only_own_slots():
    engine = Engine(init_model(CFG, seed=1, std=0.2))
    tokens, lengths = prompt_batch()
    assert prompt_floor(lengths) == 4
    shared = engine.prefill(tokens, lengths, 32).share(8, 100, prompt_floor(lengths)).cache
    assert shared.prefix.v[0].shape == (3, 2, 32, 8) and shared.v[0].shape == (24, 2, 96, 8)  # 100 - 4 own slots
    assert shared.max_len == 100 and shared.slots == 96
    assert shared.lengths.tolist() == np.repeat(lengths, 8).tolist() and shared.filled.tolist() == [0] * 24
    # beam selection inside each question keeps the very same prefix arrays; moving questions gathers them
    within = shared.gather(np.arange(24)[::-1] // 8 * 8)
    assert within.prefix is shared.prefix
    moved = shared.gather(np.arange(8, 16), questions=np.array([1]))
    assert moved.prefix.v[0].shape == (1, 2, 32, 8) and moved.offsets.tolist() == [19] * 8
    np.testing.assert_array_equal(moved.prefix.k[1][0], shared.prefix.k[1][1])
    with pytest.raises(ValueError, match="shorter than floor=8"):
        engine.prefill(tokens, lengths, 32).share(2, 100, 8)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])  # transposed keys and their decode path; the accelerators'
def test_a_multi_token_extend_reads_what_the_forked_cache_reads(platform):
    """Several tokens at once (the PRM's steps, a revision's context) attend to the prefix and to each other;
    a prompt token read again (an own slot below zero) is not written and sees the prompt alone."""
    model = init_model(CFG, seed=2, std=0.2)
    engine = Engine(model, platform=platform)
    tokens, lengths = prompt_batch()
    forked = engine.prefill(tokens, lengths, 64).fork(2).cache
    shared = engine.prefill(tokens, lengths, 32).share(2, 64, 4).cache
    new = jnp.asarray(np.random.default_rng(7).integers(1, 64, size=(6, 7)), jnp.int32)
    a, forked, _ = forward(model, new, forked)
    b, shared, _ = forward(model, new, shared)
    np.testing.assert_allclose(a, b, atol=2e-5)
    more = new[:, :3]
    np.testing.assert_allclose(forward(model, more, forked)[0], forward(model, more, shared)[0], atol=2e-5)
    # back to one token before each prompt's end: that token is read again
    last = jnp.asarray(np.repeat([p[-1] for p in PROMPTS], 2))[:, None]
    rewound = jnp.asarray(np.repeat(lengths - 1, 2))
    a, _, _ = forward(model, last, dataclasses.replace(forked, lengths=rewound))
    b, after, _ = forward(model, last, dataclasses.replace(shared, lengths=rewound))
    np.testing.assert_allclose(a, b, atol=2e-5)
    np.testing.assert_array_equal(after.v[0], shared.v[0])  # nothing written to the own slots


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("layout", ["forked", "shared"])
def test_reading_the_cache_without_writing_it_then_appending_gives_what_writing_gives(platform, layout):
    """`write_cache=False` (what a `lax.switch` over step widths calls, so that it takes the cache read only): the
    same logits as writing first and attending after, at a narrower attention width too; `KVCache.append` then
    writes each row's real tokens only, and the cache answers the next call as the written one does."""
    model = init_model(CFG, seed=3, std=0.2)
    engine = Engine(model, platform=platform)
    tokens, lengths = prompt_batch()
    cache = (engine.prefill(tokens, lengths, 64).fork(2) if layout == "forked"
             else engine.prefill(tokens, lengths, 32).share(2, 64, 4)).cache
    rng = np.random.default_rng(11)
    first = jnp.asarray(rng.integers(1, 64, size=(6, 5)), jnp.int32)
    _, cache, _ = forward(model, first, cache)  # some own slots filled: the new tokens read them
    new = jnp.asarray(rng.integers(1, 64, size=(6, 12)), jnp.int32)  # beyond the sliding window of 9
    real = jnp.asarray([12, 3, 7, 0, 12, 1], jnp.int32)
    written_logits, written, _ = forward(model, new, cache)
    for width in (None, 40 if layout == "forked" else 28):
        logits, (k, v), _ = forward(model, new, cache, attn_len=width, write_cache=False)
        np.testing.assert_allclose(logits, written_logits, atol=2e-5)
    appended = cache.append(k, v, real)
    assert appended.lengths.tolist() == (cache.lengths + real).tolist()
    for row, n in enumerate(real.tolist()):  # the real tokens written where writing puts them, nothing after
        start = int(cache.filled[row])
        np.testing.assert_allclose(appended.v[1][row, :, start:start + n], written.v[1][row, :, start:start + n],
                                   atol=2e-5)
        np.testing.assert_array_equal(appended.v[1][row, :, start + n:], cache.v[1][row, :, start + n:])
    after = jnp.asarray(rng.integers(1, 64, size=(6, 2)), jnp.int32)
    expected, _, _ = forward(model, after, dataclasses.replace(written, lengths=appended.lengths))
    np.testing.assert_allclose(forward(model, after, appended)[0], expected, atol=2e-5)
    if layout == "shared":  # a prompt token read again (a negative own slot) is neither written nor seen twice
        last = jnp.asarray(np.repeat([p[-1] for p in PROMPTS], 2))[:, None]
        rewound = dataclasses.replace(cache, lengths=jnp.asarray(np.repeat(lengths - 1, 2)))
        logits, (k, v), _ = forward(model, last, rewound, write_cache=False)
        np.testing.assert_allclose(logits, forward(model, last, rewound)[0], atol=2e-5)
        np.testing.assert_array_equal(rewound.append(k, v, jnp.ones(6, jnp.int32)).v[0], cache.v[0])


@pytest.mark.parametrize("mesh", [None, (4, 2)])
def test_generate_samples_what_the_forked_cache_samples(mesh):
    forked = Engine(init_model(CFG, seed=1, std=0.2), shared_prefix=False)
    shared = Engine(init_model(CFG, seed=1, std=0.2), mesh=mesh and make_mesh(*mesh))
    for sampling in (Sampling(0.0), Sampling(1.0, top_k=20)):
        a = forked.generate(PROMPTS, jax.random.key(3), max_new_tokens=40, n=4, sampling=sampling)
        b = shared.generate(PROMPTS, jax.random.key(3), max_new_tokens=40, n=4, sampling=sampling)
        assert [x.tokens for x in a] == [x.tokens for x in b]
        assert len({tuple(x.tokens) for x in b}) == (3 if sampling.greedy else 12)
        np.testing.assert_allclose(sum((x.logprobs for x in a), []), sum((x.logprobs for x in b), []), atol=2e-5)


@pytest.fixture(scope="module")
def arithmetic_questions():
    tok = load_tokenizer(model_dir("policy", "tiny"))
    problems = arithmetic.generate(arithmetic.TaskConfig(), 4, seed=3, split="test")
    # prompts of different lengths: one with a worked example first
    questions = [arithmetic.format_prompt(p) for p in problems]
    questions[1] = questions[0] + "12\n" + questions[1]
    return tok, questions


STRATEGIES = [BestOfN(8), Beam(8, 2), DVTS(8, 2), Lookahead(8, 2, k=1)]


# each strategy on one of the two (the shared layout on 8 devices against 1 device: test_search, test_public_prm_search)
@pytest.mark.parametrize("mesh, strategies", [(None, STRATEGIES[0::2]), ((4, 2), STRATEGIES[1::2])])
def test_every_search_strategy_finds_what_the_forked_cache_finds(arithmetic_questions, mesh, strategies):
    tok, questions = arithmetic_questions
    settings = SearchSettings(delimiter="\n", max_step_tokens=16, max_len=128, max_rounds=8, temperature=2.0)
    forked = Engine(load_any(model_dir("policy", "tiny")), pad_id=tok.pad_id, shared_prefix=False)
    shared = Engine(load_any(model_dir("policy", "tiny")), pad_id=tok.pad_id, mesh=mesh and make_mesh(*mesh))
    verifiers = [RewardModelVerifier(load_prm(model_dir("prm", "tiny"))[0], tok) for _ in range(2)]  # one per mesh
    for strategy in strategies:
        # beam search also compacts its batch as questions finish (whole questions move, their prefixes with them);
        # the others run their batch whole, one compiled loop each
        a, b = (search(strategy, engine, verifier, tok, questions, jax.random.key(1),
                       extract_answer=arithmetic.extract_answer, settings=settings, compact_min_rows=0,
                       compact=isinstance(strategy, Beam) and not isinstance(strategy, Lookahead))
                for engine, verifier in zip((forked, shared), verifiers))
        assert [c.text for r in a for c in r.candidates] == [c.text for r in b for c in r.candidates], strategy
        np.testing.assert_allclose([s for r in a for c in r.candidates for s in c.step_scores],
                                   [s for r in b for c in r.candidates for s in c.step_scores], atol=2e-5)
        assert [(r.generated_tokens, r.verifier_tokens) for r in a] == [
            (r.generated_tokens, r.verifier_tokens) for r in b]
        assert len({c.text for r in b for c in r.candidates}) > len(questions)  # rows sampled different solutions


def test_revision_chains_write_what_the_forked_cache_writes(arithmetic_questions):
    """Chains cut their cache back to the prompt when the window slides and read the window again; a cache too
    short for the window cuts contexts. The prompt shared on 8 devices, as with it copied on 1."""
    tok, questions = arithmetic_questions
    reviser = model_dir("revision", "tiny")
    revision = load_revision_settings(reviser)
    settings = SearchSettings(delimiter="\n", max_step_tokens=24, max_len=160, max_rounds=12, temperature=1.0,
                              revision_separator=revision["separator"], revision_max_len=96)
    runs = []
    for shared, mesh in ((False, None), (True, make_mesh(4, 2))):
        engine = Engine(load_any(reviser), pad_id=tok.pad_id, shared_prefix=shared, mesh=mesh)
        orm = load_verifier(model_dir("orm", "revision-tiny"), tok)  # one per mesh
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Revisions.*did not fit its cache of 96 tokens")
            runs.append(search(Revisions(8, sequential=4, window=2), engine, orm, tok, questions, jax.random.key(2),
                               extract_answer=arithmetic.extract_answer, settings=settings))
    a = runs[0]
    for b in runs[1:]:
        assert [c.text for r in a for c in r.candidates] == [c.text for r in b for c in r.candidates]
        np.testing.assert_allclose([s for r in a for c in r.candidates for s in c.step_scores],
                                   [s for r in b for c in r.candidates for s in c.step_scores], atol=2e-5)
        assert [(r.verifier_tokens, r.overflowed_contexts) for r in a] == [
            (r.verifier_tokens, r.overflowed_contexts) for r in b]
    assert 0 < sum(r.overflowed_contexts for r in a) < 32  # some contexts fit, some were cut
