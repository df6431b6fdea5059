"""The decoding core: cached decoding against teacher forcing, fork/gather, sampling, stopping, sharding."""

import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prm_twins import _save_tokenizer, _train_tokenizer

from ttcjax.checkpoints.tokenizer import CharTokenizer, HFTokenizer
from ttcjax.decoding.engine import (GREEDY, Engine, Sampling, StopConditions, _decode_jit, _prefill_jit, bucket,
                                    sample_tokens, segment_widths, stop_text, token_texts)
from ttcjax.models import ModelConfig, forward, init_model
from ttcjax.models.cache import KVCache
from ttcjax.models.sharding import make_mesh

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(1, 30)), [4, 4, 4, 9]]


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=1)


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model)


def _pad(prompts, width=None):
    width = width or bucket(max(map(len, prompts)))
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


def test_prefill_logits_equal_full_forward(model, engine):
    tokens, lengths = _pad(PROMPTS)
    state = engine.prefill(tokens, lengths, max_len=64)
    for row, p in enumerate(PROMPTS):
        full = forward(model, jnp.asarray([p]))
        np.testing.assert_allclose(state.logits[row], full[0, -1], atol=1e-5)
    assert state.cache.lengths.tolist() == lengths.tolist()


def test_cached_greedy_decoding_equals_teacher_forcing(model):
    # a small attention chunk, so that generation crosses several decode-loop segments
    out = Engine(model, attn_chunk=16).generate(PROMPTS, max_new_tokens=60, sampling=GREEDY)
    for p, c in zip(PROMPTS, out):
        assert len(c.tokens) == 60 and c.finish_reason == "length"
        logits = forward(model, jnp.asarray([p + c.tokens]))
        step_logits = logits[0, len(p) - 1 : -1]
        assert np.argmax(step_logits, -1).tolist() == c.tokens
        expected = jax.nn.log_softmax(step_logits)[np.arange(60), np.array(c.tokens)]
        np.testing.assert_allclose(c.logprobs, expected, atol=1e-4)


def test_decode_crosses_segments_without_changing_results(model):
    narrow = Engine(model, attn_chunk=16).generate(PROMPTS, max_new_tokens=50)
    wide = Engine(model, attn_chunk=4096).generate(PROMPTS, max_new_tokens=50)
    assert [c.tokens for c in narrow] == [c.tokens for c in wide]
    assert len(segment_widths(96, 16)) > 1 and segment_widths(96, 16)[-1] == 96


def test_fork_continues_like_a_fresh_prefill(engine):
    key = jax.random.key(7)
    sampling = Sampling(temperature=1.0)
    tokens, lengths = _pad(PROMPTS[:2])
    forked = engine.prefill(tokens, lengths, max_len=64).fork(3)
    gen_forked, _ = engine.decode(forked, key, max_new_tokens=20, sampling=sampling)
    repeated = [p for p in PROMPTS[:2] for _ in range(3)]
    fresh = engine.prefill(*_pad(repeated), max_len=64)
    gen_fresh, _ = engine.decode(fresh, key, max_new_tokens=20, sampling=sampling)
    np.testing.assert_array_equal(gen_forked.tokens, gen_fresh.tokens)
    np.testing.assert_allclose(gen_forked.logprobs, gen_fresh.logprobs, atol=1e-5)
    # the three samples of one prompt differ: forking shares the prefix, not the randomness
    assert len({tuple(r) for r in np.asarray(gen_forked.tokens[:3])}) > 1


def test_gathered_rows_continue_like_a_fresh_prefill(engine):
    tokens, lengths = _pad(PROMPTS)
    state = engine.prefill(tokens, lengths, max_len=96)
    first, state = engine.decode(state, jax.random.key(0), max_new_tokens=6, sampling=Sampling(1.0))
    rows = np.array([2, 0, 0, 3, 1])
    state = dataclasses.replace(state.gather(rows), done=jnp.zeros(len(rows), bool))
    cont, _ = engine.decode(state, jax.random.key(1), max_new_tokens=25)

    prefixes = [PROMPTS[r] + np.asarray(first.tokens[r, :6]).tolist() for r in rows]
    fresh = engine.prefill(*_pad(prefixes), max_len=96)
    expected, _ = engine.decode(fresh, jax.random.key(1), max_new_tokens=25)
    np.testing.assert_array_equal(cont.tokens, expected.tokens)
    np.testing.assert_allclose(cont.logprobs, expected.logprobs, atol=1e-5)


def test_decoding_in_two_calls_equals_one_call(engine):
    tokens, lengths = _pad(PROMPTS)
    whole, _ = engine.decode(engine.prefill(tokens, lengths, max_len=64), jax.random.key(0), max_new_tokens=30)
    state = engine.prefill(tokens, lengths, max_len=64)
    a, state = engine.decode(state, jax.random.key(0), max_new_tokens=12)
    b, _ = engine.decode(dataclasses.replace(state, done=jnp.zeros_like(state.done)), jax.random.key(0),
                         max_new_tokens=18)
    np.testing.assert_array_equal(np.concatenate([a.tokens, b.tokens], axis=1), whole.tokens)


def test_same_key_same_samples_other_key_other_samples(engine):
    sampling = Sampling(temperature=1.0, top_p=0.95)
    one = engine.generate(PROMPTS, jax.random.key(11), max_new_tokens=20, sampling=sampling, n=2)
    two = engine.generate(PROMPTS, jax.random.key(11), max_new_tokens=20, sampling=sampling, n=2)
    other = engine.generate(PROMPTS, jax.random.key(12), max_new_tokens=20, sampling=sampling, n=2)
    assert [c.tokens for c in one] == [c.tokens for c in two]
    assert [c.tokens for c in one] != [c.tokens for c in other]


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


def test_temperature_one_frequencies_match_softmax():
    logits = jnp.log(jnp.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02]))
    batch = jnp.tile(logits, (20000, 1))
    draws = np.asarray(sample_tokens(batch, jax.random.key(0), Sampling(temperature=1.0)))
    counts = np.bincount(draws, minlength=8)
    # chi-square, 7 degrees of freedom: 24.3 is the 0.999 quantile
    assert _chi_square(counts, np.asarray(jax.nn.softmax(logits))) < 24.3
    # and the test can fail: temperature 2 flattens the distribution far outside that bound
    hot = np.bincount(np.asarray(sample_tokens(batch, jax.random.key(0), Sampling(temperature=2.0))), minlength=8)
    assert _chi_square(hot, np.asarray(jax.nn.softmax(logits))) > 100


def test_engine_first_token_frequencies_match_model_softmax():
    small = ModelConfig(vocab_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    model = init_model(small, seed=3)
    # scale the head so that the distribution is far from uniform
    model.lm_head[...] = model.lm_head[...] * 40
    eng = Engine(model)
    probs = np.asarray(jax.nn.softmax(forward(model, jnp.asarray([[1, 2, 3]]))[0, -1]))
    assert probs.max() > 0.2
    out = eng.generate([[1, 2, 3]], jax.random.key(5), max_new_tokens=1, sampling=Sampling(1.0), n=8000)
    counts = np.bincount([c.tokens[0] for c in out], minlength=8)
    assert _chi_square(counts, probs) < 24.3


def test_top_k_and_top_p_never_emit_excluded_tokens():
    logits = jax.random.normal(jax.random.key(1), (512, 40)) * 3
    for step in range(5):
        key = jax.random.key(100 + step)
        top3 = np.asarray(sample_tokens(logits, key, Sampling(1.0, top_k=3)))
        allowed = np.argsort(-np.asarray(logits), axis=1)[:, :3]
        assert all(t in allowed[i] for i, t in enumerate(top3))
        nucleus = np.asarray(sample_tokens(logits, key, Sampling(1.0, top_p=0.5)))
        probs = np.asarray(jax.nn.softmax(logits))
        order = np.argsort(-probs, axis=1)
        for i, t in enumerate(nucleus):
            cum = np.cumsum(probs[i, order[i]])
            keep = order[i, : int(np.searchsorted(cum, 0.5)) + 1]
            assert t in keep
    assert np.array_equal(sample_tokens(logits, key, Sampling(1.0, top_k=1)), jnp.argmax(logits, -1))
    # top_p = 0.7 over [.3, .25, .2, .1, ...] keeps exactly the three most likely tokens
    known = jnp.tile(jnp.log(jnp.array([0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05])), (3000, 1))
    drawn = sample_tokens(known, jax.random.key(0), Sampling(1.0, top_p=0.7))
    assert np.unique(np.asarray(drawn)).tolist() == [0, 1, 2]


def test_stop_sequences_and_eos_end_each_row_at_the_right_place(engine):
    free = engine.generate(PROMPTS, max_new_tokens=40)
    # stop on the pair of tokens that row 0 emits at positions 9-10: row 0 must end exactly there
    seq = tuple(free[0].tokens[9:11])
    eos = free[2].tokens[14]
    stopped = engine.generate(PROMPTS, max_new_tokens=40, stop=StopConditions(eos_ids=(eos,), stop_sequences=(seq,)))
    for f, s in zip(free, stopped):
        ends = [i + 2 for i in range(len(f.tokens) - 1) if tuple(f.tokens[i : i + 2]) == seq]
        ends += [i + 1 for i, t in enumerate(f.tokens) if t == eos]
        end = min(ends, default=40)
        assert s.tokens == f.tokens[:end], "each row stops at its own first stop, the others continue"
        if end == 40:
            assert s.finish_reason == "length"
        else:
            assert s.finish_reason in ("eos", "stop_sequence")
    assert stopped[0].finish_reason == "stop_sequence" and len(stopped[0].tokens) <= 11
    assert len(stopped[2].tokens) <= 15


def test_cache_full_stops_rows(engine):
    tokens, lengths = _pad(PROMPTS[:2])
    state = engine.prefill(tokens, lengths, max_len=20)
    gen, state = engine.decode(state, jax.random.key(0), max_new_tokens=50)
    assert gen.lengths.tolist() == [20 - len(PROMPTS[0]), 20 - len(PROMPTS[1])]
    assert gen.finish_reason.tolist() == [4, 4]
    assert state.cache.lengths.tolist() == [20, 20]


def test_eight_devices_equal_one_device():
    assert jax.device_count() == 8
    results = {}
    for name, mesh in [("one", None), ("4x2", make_mesh(4, 2))]:
        eng = Engine(init_model(CFG, seed=1), mesh=mesh)
        greedy = eng.generate(PROMPTS, max_new_tokens=24)
        sampled = eng.generate(PROMPTS, jax.random.key(3), max_new_tokens=24, sampling=Sampling(0.8, top_p=0.9), n=3)
        results[name] = (greedy, sampled)
        if mesh is not None:
            wq = eng.params["layers"][0]["attn"]["wq"][...]
            assert wq.sharding.spec[1] == "model"
    for a, b in zip(results["one"][0] + results["one"][1], results["4x2"][0] + results["4x2"][1]):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_bad_input_gets_clear_errors(engine):
    with pytest.raises(ValueError, match=r"30 tokens does not fit a KV cache of max_len=16"):
        engine.prefill(*_pad([list(range(30))]), max_len=16)
    with pytest.raises(ValueError, match=r"token id 500 is outside the model's vocabulary \[0, 128\).*tokenizer"):
        engine.generate([[1, 500]], max_new_tokens=4)
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(ValueError, match="empty sequence"):
        StopConditions(stop_sequences=((),))


def test_batches_the_data_axis_does_not_divide(engine):
    """3 prompts x 3 samples on a 4x2 mesh: prefill runs replicated, forked rows are padded to 12."""
    sharded = Engine(init_model(CFG, seed=1), mesh=make_mesh(4, 2))
    got = sharded.generate(PROMPTS[:3], jax.random.key(2), max_new_tokens=10, sampling=Sampling(1.0), n=3)
    want = engine.generate(PROMPTS[:3], jax.random.key(2), max_new_tokens=10, sampling=Sampling(1.0), n=3)
    assert [c.tokens for c in got] == [c.tokens for c in want] and len(got) == 9


def test_cache_fork_gather_resize_shapes():
    cache = KVCache.for_model(CFG, batch=2, max_len=8)
    cache = dataclasses.replace(cache, lengths=jnp.array([3, 5]))
    assert cache.fork(3).lengths.tolist() == [3, 3, 3, 5, 5, 5]
    assert cache.gather(jnp.array([1, 1, 0])).lengths.tolist() == [5, 5, 3]
    assert cache.resize(16).max_len == 16 and cache.resize(16).k[0].shape == (2, 2, 16, 16)
    assert cache.resize(16).v[0].shape == (2, 2, 16, 16) and cache.k[0].shape == (2, 2, 16, 8)
    with pytest.raises(ValueError, match="cannot shrink"):
        cache.resize(4)


def test_prompts_of_one_bucket_do_not_recompile(engine):
    engine.generate([[1, 2, 3]], max_new_tokens=12)
    compiled = (_prefill_jit._cache_size(), _decode_jit._cache_size())
    engine.generate([[4, 5, 6, 7, 8, 9, 10, 11, 12]], max_new_tokens=12)
    engine.generate([list(range(1, 17))], max_new_tokens=12)
    assert (_prefill_jit._cache_size(), _decode_jit._cache_size()) == compiled
    engine.generate([list(range(1, 18))], max_new_tokens=12)  # the next bucket compiles once more
    assert _prefill_jit._cache_size() == compiled[0] + 1


def test_bfloat16_compute_tracks_float32(model):
    """Compute dtype bfloat16 (cache too) decodes and stays close to float32 logits."""
    bf16 = init_model(CFG.replace(dtype="bfloat16"), seed=1)
    assert bf16.embedding[...].dtype == jnp.float32  # parameters stay float32 unless param_dtype says otherwise
    tokens, lengths = _pad(PROMPTS)
    state32 = Engine(model).prefill(tokens, lengths, max_len=64)
    state16 = Engine(bf16).prefill(tokens, lengths, max_len=64)
    assert state16.cache.k[0].dtype == jnp.bfloat16
    scale = float(jnp.abs(state32.logits).max())
    assert float(jnp.abs(state16.logits - state32.logits).max()) < 0.05 * scale
    gen, _ = Engine(bf16).decode(state16, jax.random.key(0), max_new_tokens=8)
    assert gen.lengths.tolist() == [8] * len(PROMPTS)


# ---- stop strings on the text, whatever the tokenization --------------------------------------------------


@pytest.mark.parametrize("style", ["byte_level", "sentencepiece_like"])
def test_stop_strings_match_the_text_whatever_the_tokenization(style):
    """The automaton's first hit, over random token sequences of a real BPE vocabulary (where "\\n\\n" is one
    token, two, or merged with a neighbour), is the first token at which the decoded text holds the string."""
    with tempfile.TemporaryDirectory() as d:
        specials = ["<unk>", "<s>", "</s>"] if style != "byte_level" else ["<|endoftext|>"]
        rust = _train_tokenizer(specials, sentencepiece_like=style != "byte_level")
        rust.add_tokens([".\n\n", " \n\n", "\n\nThe", "\n\n\n"])  # merged forms, as Llama 3's vocabulary has
        _save_tokenizer(rust, Path(d))
        tok = HFTokenizer(d)
    strings = ("\n\n", "ки", " - ")
    table = stop_text(tok, strings)
    texts = token_texts(tok)
    merged = [t for t, text in enumerate(texts) if "\n\n" in text and text != "\n\n"]
    assert len(merged) == 4
    rng = np.random.default_rng(0)
    likely = [t for t, text in enumerate(texts) if set(text) & set("".join(strings))]
    anchor_text = tok.decode(tok.encode("Step"))
    for trial in range(300):
        ids = tok.encode("Step") + [int(rng.choice(likely)) if rng.random() < 0.5 else int(rng.integers(tok.vocab_size))
                                    for _ in range(12)]
        state = np.zeros(len(strings), np.int64)
        first_hit = None
        for k, t in enumerate(ids):
            hit = table.hit[np.arange(len(strings)), t, state]
            state = table.next_state[np.arange(len(strings)), t, state]
            if hit.any() and first_hit is None:
                first_hit = k
        want = next((k for k in range(len(ids))
                     if any(s in tok.decode(ids[:k + 1])[len(anchor_text):] for s in strings)), None)
        assert first_hit == want, (trial, [texts[t] for t in ids])
    assert stop_text(tok, strings) is table  # cached: one compiled program per tokenizer and strings
    with pytest.raises(ValueError, match="non-empty"):
        stop_text(tok, ("",))


def test_a_tokenizer_loaded_again_reuses_the_compiled_programs():
    """Stop strings are a static argument of the decode loop, compared by content: the same strings over another
    copy of the vocabulary compile nothing new (a notebook loads the shipped policy once per cell)."""
    first, again = CharTokenizer(), CharTokenizer()
    table = stop_text(first, ("\n\n",))
    assert stop_text(again, ("\n\n",)) == table and hash(stop_text(again, ("\n\n",))) == hash(table)
    assert stop_text(again, ("\n",)) != table and stop_text(again, ("\n", "\n\n")) != table
    engine = Engine(init_model(CFG.replace(vocab_size=first.vocab_size), seed=1))
    prompt = [first.encode("Q: 1+2=", add_bos=True)]
    engine.generate(prompt, max_new_tokens=8, stop=StopConditions(text=table))
    compiled = _decode_jit._cache_size()
    engine.generate(prompt, max_new_tokens=8, stop=StopConditions(text=stop_text(again, ("\n\n",))))
    assert _decode_jit._cache_size() == compiled
