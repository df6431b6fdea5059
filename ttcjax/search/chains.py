"""The compiled revision-chain episode: every attempt of every chain of a batch of questions in one program.

Each question gets `chains` rows of the batch (question-major); a row is one chain. The prompt is prefilled
once per question and forked into its chains. A `lax.fori_loop` over the chain's `sequential` attempts runs,
per attempt,

  1. the search episode's round loop (`ttcjax.search.episode._rounds`, best-of-N: no selection between
     rounds) on every row, which generates the attempt step by step from the row's KV cache and feeds each
     step into the verifier's own cache (an attempt's score is its last step's);
  2. records the attempt (tokens, steps, step scores);
  3. turns both caches into the next attempt's context (`ttcjax.search.revisions.revision_context`): while
     the chain holds no more than `window` attempts, the new attempt stays where it was written (a final EOS
     is dropped) and only the separator is read; once the window slides, the cache is cut back to the prompt
     and the last `window` attempts are read again. The prompt is never read again. What either cache reads
     is counted: `generated` (policy tokens sampled) and `scored` (verifier tokens read) per row, and
     `reread` (policy tokens read into the cache between attempts). An attempt whose context does not fit the
     cache with room to write is cut (counted in `overflowed`: `ttcjax.search.run.search` warns).

Rows draw from keys folded with their id and the attempt, so a chain's samples do not depend on its place in
the batch. The program's static argument is one hashable `ChainSpec`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttcjax.decoding.engine import DecodeState, Engine
from ttcjax.distributed import to_host
from ttcjax.models.cache import extend_in_chunks
from ttcjax.models.program import Program
from ttcjax.search.episode import EpisodeSpec, SearchState, _constrain, _rounds, _start

CONTEXT_CHUNK = 64  # the policy reads a chain's context (the last attempt, or the window) this many tokens at a time


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """Everything static about a chain episode: the per-attempt episode (its strategy is best-of-N over the
    chains), the attempts per chain, the window and the separator's ids."""

    attempt: EpisodeSpec
    sequential: int
    window: int
    separator: tuple[int, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChainState:
    """What the attempt loop carries; rows are chains (question-major). S = sequential attempts."""

    search: SearchState  # the current attempt (its fields are reset before each attempt)
    tokens: jax.Array  # [R, S, L] every attempt's tokens as generated
    length: jax.Array  # [R, S] int32
    step_scores: jax.Array  # [R, S, rounds]
    step_ends: jax.Array  # [R, S, rounds] int32
    num_steps: jax.Array  # [R, S] int32
    body: jax.Array  # [R] int32 context tokens after the prompt (earlier attempts and separators)
    policy_prompt: jax.Array  # [R] int32 the policy's prompt length
    prompt_last: jax.Array  # [R] int32 the prompt's last token
    verifier_prompt: jax.Array  # [R] int32 what the verifier read for the prompt
    active: jax.Array  # [R] bool: a real question's row (not padding)
    reread: jax.Array  # [R] int32 policy tokens read into the cache between attempts
    overflowed: jax.Array  # [R] int32 attempts whose context (prompt and window) did not fit the cache and was cut


def _extend_policy(graphdef, params, state: DecodeState, tokens: jax.Array, lengths: jax.Array) -> DecodeState:
    """Feed tokens [R, T] (row r's first lengths[r] real; 0: nothing) into the policy's cache at each row's
    length; logits at each row's last real token. Read `CONTEXT_CHUNK` tokens at a time, for as many chunks as
    the longest row needs (`extend_in_chunks`: one copy of the model in the program whatever T is)."""
    model = nnx.merge(graphdef, params)

    def forward(cache, tokens, at, width):
        logits, new, _ = model(tokens, cache=cache, logits_at=at, attn_len=width, write_cache=False)
        return logits, new

    logits, cache = extend_in_chunks(forward, state.cache, tokens, lengths, jnp.maximum(lengths - 1, 0),
                                     chunk=CONTEXT_CHUNK)
    return DecodeState(cache=cache, logits=jnp.where((lengths > 0)[:, None], logits, state.logits), done=state.done)


def _window_body(st: ChainState, attempt, in_context, window: int, separator: tuple[int, ...], width: int):
    """The context after the prompt for the attempt after `attempt`: its chain's last `window` attempts up to
    `attempt`, each `in_context` [R, S] tokens long, each followed by the separator. ([R, width] tokens,
    [R] lengths.)"""
    sep = jnp.asarray(separator or (0,), jnp.int32)
    first = jnp.maximum(0, attempt + 1 - window)
    which = first + jnp.arange(window)  # [W] the window's attempts
    inside = which <= attempt
    which = jnp.minimum(which, st.length.shape[1] - 1)
    seg = jnp.where(inside[None, :], in_context[:, which] + len(separator), 0)  # [R, W]
    ends = jnp.cumsum(seg, axis=1)
    col = jnp.arange(width)[None, :]  # [1, width]
    j = jnp.minimum(jnp.sum(col[:, :, None] >= ends[:, None, :], axis=2), window - 1)  # [R, width] its segment
    offset = col - jnp.take_along_axis(ends - seg, j, axis=1)
    own = jnp.take_along_axis(in_context[:, which], j, axis=1)  # [R, width] that attempt's length in context
    rows = jnp.arange(st.tokens.shape[0])[:, None]
    from_attempt = st.tokens[rows, which[j], jnp.clip(offset, 0, st.tokens.shape[2] - 1)]
    from_sep = sep[jnp.clip(offset - own, 0, len(sep) - 1)]
    return jnp.where(offset < own, from_attempt, from_sep), ends[:, -1]


def _reset(search: SearchState, active: jax.Array, spec: EpisodeSpec) -> SearchState:
    """The search state before an attempt: an empty solution on every row of a real question."""
    rows, rounds = search.slot.shape[0], spec.rounds
    finished = ~active
    return dataclasses.replace(
        search, policy=dataclasses.replace(search.policy, done=finished),
        tokens=jnp.full_like(search.tokens, spec.pad_id), length=jnp.zeros(rows, jnp.int32),
        step_scores=jnp.full((rows, rounds), jnp.nan, jnp.float32), step_ends=jnp.zeros((rows, rounds), jnp.int32),
        num_steps=jnp.zeros(rows, jnp.int32), finished=finished, rounds=jnp.int32(0))


def _chains(spec: ChainSpec, policy_params, scorer_params, prompt_tokens, prompt_lengths, verifier_tokens,
            verifier_lengths, active, key) -> ChainState:
    episode = spec.attempt
    chains, s = episode.strategy.n, spec.sequential
    search = _start(episode, policy_params, scorer_params, prompt_tokens, prompt_lengths, verifier_tokens,
                    verifier_lengths, active)
    rows, sol_len = search.tokens.shape
    eos = jnp.asarray(episode.eos_ids or (-1,), jnp.int32)
    st = ChainState(
        search=search, tokens=jnp.full((rows, s, sol_len), episode.pad_id, jnp.int32),
        length=jnp.zeros((rows, s), jnp.int32),
        step_scores=jnp.full((rows, s, episode.rounds), jnp.nan, jnp.float32),
        step_ends=jnp.zeros((rows, s, episode.rounds), jnp.int32), num_steps=jnp.zeros((rows, s), jnp.int32),
        body=jnp.zeros(rows, jnp.int32), policy_prompt=jnp.repeat(prompt_lengths, chains),
        prompt_last=jnp.repeat(jnp.take_along_axis(prompt_tokens, (prompt_lengths - 1)[:, None], axis=1)[:, 0],
                               chains),
        verifier_prompt=jnp.repeat(verifier_lengths, chains), active=jnp.repeat(active, chains),
        reread=jnp.zeros(rows, jnp.int32), overflowed=jnp.zeros(rows, jnp.int32))

    def next_context(a, st: ChainState) -> ChainState:
        """Both caches hold the context for the attempt after `a`."""
        search = st.search
        last = jnp.take_along_axis(st.tokens, jnp.maximum(st.length - 1, 0)[:, :, None], axis=2)  # [R, S, 1]
        ends_in_eos = (st.length > 0) & jnp.any(last == eos[None, None, :], axis=2)
        in_context = st.length - ends_in_eos  # [R, S] the attempts without a final EOS
        body, body_len = _window_body(st, a, in_context, spec.window, spec.separator, sol_len)
        slid = a + 1 > spec.window  # the window dropped an attempt: the cache is cut back to the prompt
        prompt, v_prompt = st.policy_prompt, st.verifier_prompt
        # the policy: keep what already stands where it belongs, read at least one token (fresh logits)
        kept = jnp.where(slid, prompt, prompt + st.body + in_context[:, a])
        kept = jnp.minimum(jnp.minimum(kept, prompt + body_len - 1), search.policy.cache.lengths)
        col = kept[:, None] + jnp.arange(sol_len)[None, :] - prompt[:, None]  # body index of each read token
        feed = jnp.where(col < 0, st.prompt_last[:, None],
                         jnp.take_along_axis(body, jnp.clip(col, 0, sol_len - 1), axis=1))
        feed_len = jnp.where(st.active, jnp.maximum(jnp.minimum(prompt + body_len, episode.max_len) - kept, 0), 0)
        policy = dataclasses.replace(search.policy, cache=dataclasses.replace(search.policy.cache, lengths=kept))
        policy = _extend_policy(episode.policy_graphdef, policy_params, policy, feed, feed_len)
        # the verifier read the attempt's scored steps (an ending empty step and nothing else is unread)
        last_end = jnp.take_along_axis(st.step_ends[:, a], jnp.maximum(st.num_steps[:, a] - 1, 0)[:, None],
                                       axis=1)[:, 0]
        read = jnp.where(st.num_steps[:, a] > 0, jnp.minimum(last_end, in_context[:, a]), 0)
        v_kept = jnp.minimum(jnp.where(slid, v_prompt, v_prompt + st.body + read), episode.max_len)
        v_col = v_kept[:, None] + jnp.arange(sol_len)[None, :] - v_prompt[:, None]
        v_feed = jnp.take_along_axis(body, jnp.clip(v_col, 0, sol_len - 1), axis=1)
        v_len = jnp.where(st.active, jnp.maximum(jnp.minimum(v_prompt + body_len, episode.max_len) - v_kept, 0), 0)
        scorer = episode.scorer
        verifier_cache = scorer.rewind(search.verifier_cache, v_kept)
        _, verifier_cache, v_read = scorer.extend(scorer_params, verifier_cache, v_feed, v_len)
        search = dataclasses.replace(search, policy=policy, verifier_cache=verifier_cache,
                                     scored=search.scored + jnp.where(v_len > 0, v_read, 0))
        overflowed = st.overflowed + (st.active & (prompt + body_len >= episode.max_len))  # no room left to write
        return dataclasses.replace(st, search=search, body=body_len, reread=st.reread + feed_len,
                                   overflowed=overflowed)

    def attempt(a, st: ChainState) -> ChainState:
        search = _rounds(episode, policy_params, scorer_params, _reset(st.search, st.active, episode),
                         jax.random.fold_in(key, a))
        st = dataclasses.replace(
            st, search=search, tokens=st.tokens.at[:, a].set(search.tokens),
            length=st.length.at[:, a].set(search.length), step_scores=st.step_scores.at[:, a].set(search.step_scores),
            step_ends=st.step_ends.at[:, a].set(search.step_ends),
            num_steps=st.num_steps.at[:, a].set(search.num_steps))
        st = jax.lax.cond(a + 1 < s, next_context, lambda a, st: st, a, st)
        return _constrain(st, episode)

    return jax.lax.fori_loop(0, s, attempt, _constrain(st, episode))


_chains_jit = jax.jit(_chains, static_argnames=("spec",))


def chains_program(spec: ChainSpec, engine: Engine, scorer_params, tokens, lengths, verifier_tokens, verifier_lengths,
                   active, key) -> Program:
    """The compiled chain episode that `run_chains` runs (arguments as there): call it, or `.export(platforms)` it."""
    return Program(_chains_jit, (spec, engine.params, scorer_params, tokens, lengths, verifier_tokens,
                                 verifier_lengths, active, key))

HOST_FIELDS = ("tokens", "length", "step_scores", "step_ends", "num_steps")


def run_chains(spec: ChainSpec, engine: Engine, scorer_params, tokens, lengths, verifier_tokens, verifier_lengths,
               active, key) -> dict[str, Any]:
    """The chain episode for a batch of questions (as `ttcjax.search.episode.run_episode` takes them); on the
    host: every attempt's `HOST_FIELDS` ([rows, S, ...], rows question-major), each row's costs (`generated`,
    `scored`, `reread`, `overflowed`) and whether any of its attempts met non-finite logits (`nonfinite`)."""
    st = chains_program(spec, engine, scorer_params, tokens, lengths, verifier_tokens, verifier_lengths, active, key)()
    fields = {f: getattr(st, f) for f in HOST_FIELDS}
    fields.update(generated=st.search.generated, scored=st.search.scored, reread=st.reread,
                  overflowed=st.overflowed, nonfinite=st.search.nonfinite)
    return {k: np.asarray(v) for k, v in to_host(fields).items()}
