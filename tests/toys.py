"""Toy models whose behaviour is known in closed form, for testing labels and search.

The policy ignores its context: every next token is x, y or a newline with fixed probabilities (all weights
zero but the embeddings, all ones, and the LM head, whose column sums are the log-probabilities). The PRM
scores a prefix by the fraction of its tokens that are 'y': one attention layer with zero queries and keys
attends uniformly to the whole prefix and carries the 'y' indicator into a residual channel that the value
head reads with a negative weight, so a prefix without 'y' gets the highest possible score.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.models import ModelConfig, init_model
from ttcjax.verifiers.reward_model import RewardModel, ValueHead

ALPHABET = "Qxy\n"


def toy_tokenizer() -> CharTokenizer:
    return CharTokenizer(alphabet=ALPHABET)


def _path_name(path) -> str:
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    return names[-2] if names[-1] == "value" else names[-1]


def toy_policy(p_x: float, p_y: float, p_newline: float):
    tok = toy_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=256)
    graphdef, state = nnx.split(init_model(config))
    logits = np.full(tok.vocab_size, -30.0)
    for ch, p in (("x", p_x), ("y", p_y), ("\n", p_newline)):
        logits[tok.token_to_id(ch)] = np.log(p)

    def set_param(path, leaf):
        name = _path_name(path)
        if name in ("embedding", "scale"):
            return jnp.ones_like(leaf)
        if name == "lm_head":
            return jnp.broadcast_to(jnp.asarray(logits / config.hidden_size, leaf.dtype), leaf.shape)
        return jnp.zeros_like(leaf)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(set_param, state)), tok


def y_fraction_prm(strength: float = 20.0) -> RewardModel:
    """Score logit = -strength * (normalised) fraction of 'y' among the prefix's tokens, plus a constant."""
    tok = toy_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=1,
                         num_kv_heads=1, max_position_embeddings=256)
    graphdef, state = nnx.split(init_model(config))
    y = tok.token_to_id("y")

    def set_param(path, leaf):
        name = _path_name(path)
        if name == "embedding":
            emb = np.zeros(leaf.shape, np.float32)
            emb[:, 2] = 10.0  # a large constant channel keeps every RMS norm nearly the same
            emb[y, 0] = 1.0  # the 'y' indicator
            return jnp.asarray(emb)
        if name == "scale":
            return jnp.ones_like(leaf)
        if name == "wv":  # [D, K, Dh]: head dim 0 <- channel 0 (the indicator)
            return jnp.zeros_like(leaf).at[0, 0, 0].set(1.0)
        if name == "wo":  # [H, Dh, D]: channel 1 <- head dim 0 (the prefix mean of the indicator)
            return jnp.zeros_like(leaf).at[0, 0, 1].set(1.0)
        return jnp.zeros_like(leaf)

    backbone = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(set_param, state))
    prm = RewardModel(backbone, ValueHead())
    prm.v_w[...] = jnp.zeros_like(prm.v_w[...]).at[1].set(-strength * 10.0)
    prm.v_b[...] = jnp.asarray(3.0, prm.v_b[...].dtype)
    return prm


def last_token_prm(logit_x: float, logit_y: float) -> RewardModel:
    """Score logit = `logit_x` at an 'x', `logit_y` at a 'y', 0 elsewhere: the score of a prefix is its last
    token's alone. Attention and MLP weights are zero, so each position's hidden state is its token's embedding;
    'x' and 'y' carry a unit indicator in channels 0 and 1 beside the constant channel 2, so both have the same
    RMS norm, and the value head reads the indicators scaled by it."""
    tok = toy_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=1,
                         num_kv_heads=1, max_position_embeddings=256)
    graphdef, state = nnx.split(init_model(config))
    x, y = tok.token_to_id("x"), tok.token_to_id("y")

    def set_param(path, leaf):
        name = _path_name(path)
        if name == "embedding":
            emb = np.zeros(leaf.shape, np.float32)
            emb[:, 2] = 10.0
            emb[x, 0] = emb[y, 1] = 1.0
            return jnp.asarray(emb)
        if name == "scale":
            return jnp.ones_like(leaf)
        return jnp.zeros_like(leaf)

    prm = RewardModel(nnx.merge(graphdef, jax.tree_util.tree_map_with_path(set_param, state)), ValueHead())
    normed = 1.0 / np.sqrt((1.0 + 10.0 ** 2) / config.hidden_size + config.rms_norm_eps)  # an indicator, normed
    prm.v_w[...] = jnp.zeros_like(prm.v_w[...]).at[0].set(logit_x / normed).at[1].set(logit_y / normed)
    prm.v_b[...] = jnp.zeros_like(prm.v_b[...])
    return prm


def p_solution_without_y(p_x: float, p_y: float, p_newline: float) -> float:
    """P(a solution of the toy policy ends without a 'y'). A solution ends at an empty step (a newline at
    the start of a step). From a step start: newline -> ends clean; x -> mid-step; y -> fails. Mid-step:
    x -> mid-step; newline -> step start; y -> fails."""
    a, c = p_x, p_newline
    return c * (1 - a) / (1 - a - a * c)
