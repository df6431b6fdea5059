"""The compiled programs lower for TPU and CUDA: no machine here has either, so a change that only lowers on
CPU would otherwise pass CI.

Each test builds the program the library runs (`Engine.prefill_program`, `Engine.decode_program`, the search
episode's `start_program` / `rounds_program` with the spec `search` builds, the revision chains'
`chains_program`, `train_step_program`) on a tiny model sharded over a 4 x 2 ('data', 'model') mesh of the 8
CPU devices, and exports it with `jax.export` for both platforms. The models are lowered for 'tpu' (`Engine(platform=...)`, `set_platform`),
so the exported attention is the accelerator path: keys with head_dim last and bf16 dot_generals
accumulating in float32, where the CPU path stores keys transposed and upcasts first.

Not exported: the public-PRM scorer (`ttcjax.verifiers.public`) renders each step on the host through
`jax.pure_callback`. A host callback lowers only for the backend of the host that lowers it (for 'tpu' here:
"the platform for the specified backend cpu is different from the lowering platform tpu"), and `jax.export`
serialises none ("serialization of host_callbacks is not yet implemented"). On an accelerator host it lowers
and runs; it cannot be checked from this one.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.decoding.engine import GREEDY, Engine, Sampling, StopConditions
from ttcjax.models import ModelConfig, forward, init_model
from ttcjax.models.llama import set_platform
from ttcjax.models.sharding import ShardingRules, batch_sharding, make_mesh
from ttcjax.search.chains import chains_program
from ttcjax.search.episode import rounds_program, start_program
from ttcjax.search.run import chain_spec, episode_spec
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Beam, ParticleFiltering, Revisions
from ttcjax.training.loop import OptimConfig, init_train_state, lm_loss, train_step_program
from ttcjax.verifiers.reward_model import RewardModel, RewardModelVerifier, ValueHead

ACCELERATORS = ("tpu", "cuda")
TOKENIZER = CharTokenizer(alphabet="Qxy\n")
# bf16 compute, as on an accelerator; 4 heads and 2 kv heads split over the mesh's 'model' axis
CFG = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=128, dtype="bfloat16")
ROWS, PROMPT, MAX_LEN = 8, 16, 64
SETTINGS = SearchSettings(delimiter="\n", max_step_tokens=8, max_rounds=4, max_len=MAX_LEN, revision_max_len=MAX_LEN)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(4, 2)


@pytest.fixture(scope="module")
def engine(mesh):
    # attention widths 16, 32, 48, 64: four segments of the decode loop
    return Engine(init_model(CFG, seed=1), mesh=mesh, platform="tpu", attn_chunk=16)


@pytest.fixture(scope="module")
def prm_verifier():
    backbone = init_model(dataclasses.replace(CFG, has_lm_head=False), seed=2)
    return RewardModelVerifier(RewardModel(set_platform(backbone, "tpu"), ValueHead()), TOKENIZER)


def _rows(mesh, x):
    return jax.device_put(x, batch_sharding(mesh, ShardingRules(), np.shape(x)))


def _prompts(mesh, questions):
    tokens = np.tile(np.array([TOKENIZER.token_to_id("Q")] + [0] * (PROMPT - 1), np.int32), (questions, 1))
    return _rows(mesh, tokens), _rows(mesh, np.ones(questions, np.int32))


def _check(exported: jax.export.Exported, mesh) -> str:
    """What every export must show: both platforms, the 4 x 2 mesh and arguments split over both its axes."""
    assert exported.platforms == ACCELERATORS
    assert exported.nr_devices == 8
    text = exported.mlir_module()
    assert re.search(r'sdy.mesh @mesh = <\["data"=4, "model"=2\]>', text)
    specs = {s.spec for s in exported.in_shardings_jax(mesh) if s is not None}
    assert any("data" in spec for spec in specs) and any("model" in spec for spec in specs)
    assert exported.mlir_module_serialized  # the StableHLO bytecode a TPU or GPU host would compile
    return text


def _bf16_dot_to_f32(text: str) -> bool:
    """A dot_general of bf16 operands with a float32 result (the accelerator path's attention scores)."""
    return bool(re.search(r"stablehlo.dot_general.*tensor<[0-9x]*xbf16>, tensor<[0-9x]*xbf16>\) -> "
                          r"tensor<[0-9x]*xf32>", text))


def test_prefill_and_the_decode_loop_lower_for_tpu_and_cuda(engine, mesh):
    tokens, lengths = _prompts(mesh, ROWS)
    prefill = _check(engine.prefill_program(tokens, lengths, MAX_LEN).export(ACCELERATORS), mesh)
    assert _bf16_dot_to_f32(prefill)

    state = engine.prefill(tokens, lengths, MAX_LEN)
    assert state.cache.k[0].shape == (ROWS, 2, MAX_LEN, CFG.dim_per_head)  # keys head_dim last, for accelerators
    stop = StopConditions(eos_ids=(TOKENIZER.token_to_id("\n"),))
    program = engine.decode_program(state, jax.random.key(0), max_new_tokens=8, sampling=Sampling(0.8, top_k=3),
                                    stop=stop)
    exported = program.export(ACCELERATORS)
    decode = _check(exported, mesh)
    # one while loop per attention-width segment, the carried state donated
    assert decode.count("stablehlo.while") == 4 and "jax.buffer_donor" in decode
    assert _bf16_dot_to_f32(decode)
    shapes = {a.shape for a in exported.in_avals}
    assert (ROWS, 2, MAX_LEN, CFG.dim_per_head) in shapes and (ROWS, 2, CFG.dim_per_head, MAX_LEN) not in shapes


@pytest.mark.parametrize("strategy", [Beam(4, 2), ParticleFiltering(4)], ids=["beam", "particle_filtering"])
def test_a_search_episode_with_a_prm_lowers_for_tpu_and_cuda(engine, mesh, prm_verifier, strategy):
    spec, scorer_params = episode_spec(strategy, engine, prm_verifier, TOKENIZER, SETTINGS)
    questions = 4  # 16 rows: 4 per data shard
    tokens, lengths = _prompts(mesh, questions)
    active = _rows(mesh, np.ones(questions, bool))
    start = start_program(spec, engine, scorer_params, tokens, lengths, tokens, lengths, active)
    assert _bf16_dot_to_f32(_check(start.export(ACCELERATORS), mesh))

    state = start()
    assert state.verifier_cache.k[0].shape == (16, 2, MAX_LEN, CFG.dim_per_head)  # the PRM's cache too
    rounds = _check(rounds_program(spec, engine, scorer_params, state, jax.random.key(0)).export(ACCELERATORS), mesh)
    # the round loop, the decode loop's segments inside it, and the PRM's step-width switch
    assert rounds.count("stablehlo.while") >= 5 and "stablehlo.case" in rounds and "jax.buffer_donor" in rounds


def test_revision_chains_lower_for_tpu_and_cuda(engine, mesh, prm_verifier):
    strategy = Revisions(4, sequential=2, window=2)
    settings = dataclasses.replace(SETTINGS, max_len=SETTINGS.chain_max_len(CFG))  # as `search` sets it
    spec, scorer_params = episode_spec(strategy, engine, prm_verifier, TOKENIZER, settings)
    chains = chain_spec(strategy, spec, prm_verifier, TOKENIZER, settings)
    questions = 4  # 8 chains: 2 per data shard
    tokens, lengths = _prompts(mesh, questions)
    program = chains_program(chains, engine, scorer_params, tokens, lengths, tokens, lengths,
                             _rows(mesh, np.ones(questions, bool)), jax.random.key(0))
    text = _check(program.export(ACCELERATORS), mesh)
    # the attempt loop around the round loop, a re-read of the window between attempts
    assert text.count("stablehlo.while") >= 6 and _bf16_dot_to_f32(text)


def test_a_training_step_lowers_for_tpu_and_cuda(mesh):
    model = init_model(CFG, seed=3)
    set_platform(model, "tpu")
    optim = OptimConfig(steps=10, warmup_steps=2)
    graphdef, state = init_train_state(model, optim, mesh)
    shape = (8, 32)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, CFG.vocab_size, shape, np.int32),
             "targets": rng.integers(0, CFG.vocab_size, shape, np.int32),
             "loss_mask": np.ones(shape, np.float32), "segment_ids": np.ones(shape, np.int32),
             "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape)}
    batch = {name: _rows(mesh, x) for name, x in batch.items()}
    text = _check(train_step_program(graphdef, optim, lm_loss, state, batch).export(ACCELERATORS), mesh)
    assert _bf16_dot_to_f32(text) and "jax.buffer_donor" in text


def test_the_platform_picks_the_attention_path():
    """By default the host's backend (CPU here) picks the CPU path; naming an accelerator picks its path, which
    runs on CPUs too and generates what teacher forcing through the CPU path predicts (float32, greedy)."""
    cfg = dataclasses.replace(CFG, dtype="float32")
    cpu, tpu = Engine(init_model(cfg, seed=4)), Engine(init_model(cfg, seed=4), platform="tpu", attn_chunk=16)
    assert (cpu.platform, tpu.platform) == (jax.default_backend(), "tpu") == ("cpu", "tpu")
    prompts = [[1, 2, 3, 2], [3, 3, 1, 2], [1, 1, 1, 1]]
    out = tpu.generate(prompts, max_new_tokens=20, sampling=GREEDY, max_len=32)  # attention widths 16 and 32
    generated = np.array([c.tokens for c in out])
    logits = forward(init_model(cfg, seed=4), jnp.asarray([p + c.tokens for p, c in zip(prompts, out)]))[:, 3:-1]
    np.testing.assert_array_equal(np.argmax(logits, -1), generated)
    logprobs = np.take_along_axis(jax.nn.log_softmax(logits), generated[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose([c.logprobs for c in out], logprobs, atol=1e-4)

    tokens, lengths = jnp.zeros((2, PROMPT), jnp.int32), jnp.ones(2, jnp.int32)
    for engine, key_shape in ((cpu, (2, 2, 8, 32)), (tpu, (2, 2, 32, 8))):
        state = jax.eval_shape(engine.prefill_program(tokens, lengths, 32))
        assert state.cache.k[0].shape == key_shape
    # exported for the CPU, a bf16 model's attention upcasts to float32 before its dots
    bf16 = Engine(init_model(CFG, seed=4))
    assert not _bf16_dot_to_f32(bf16.prefill_program(tokens, lengths, 32).export(("cpu",)).mlir_module())
    # the platform is part of the model's graph: programs compiled for one are never reused for another
    assert nnx.split(set_platform(init_model(CFG), "cuda"))[0] != nnx.split(init_model(CFG))[0]
