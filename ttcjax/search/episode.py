"""The compiled search episode: every round of a strategy for a batch of questions in one program.

Every question gets N rows of the batch (its beams), question-major. One compiled `lax.while_loop` runs the
episode's rounds; each iteration

  1. generates one reasoning step on every unfinished row (the decoding core's loop, stopping each row at
     the step delimiter), continuing from the row's KV cache;
  2. feeds the new step into the verifier's own per-row cache (`StepScorer.extend`) and reads the step's
     score at its last token (the verifier scores only what is new);
  3. (lookahead) rolls each row k further steps out greedily on a copy of both caches and scores the end
     of the rollout instead;
  4. selects: within each group of rows (`Strategy.groups`: beam, all N rows of a question; DVTS, each
     subtree) the kept best open rows fill the group's open rows, `width` each; rows move with an on-device
     gather of the policy's and the verifier's cache rows (the prompt is never prefilled again, and in the
     policy's shared-prefix cache, `EpisodeSpec.prompt_floor`, never copied: only the rows' own slots move).
     Finished rows keep their place. Particle filtering (`Strategy.resamples`) instead draws every row of a
     question from its N rows at random in proportion to their weights (`_resample`, with a key folded with
     the row's id; finished rows take part or keep their place, as the strategy says) and gathers the drawn
     rows the same way. Best-of-N selects nothing.

A step ends where its text completes the delimiter, whatever the tokenization, or at the step token cap (it
is scored, and the row continues it next round). A solution ends when its row emits EOS, an empty step (the
blank line that ends an example), or a step holding one of the task's final-answer marks. Finished
rows, and every row of a finished question, generate nothing further, so they add no tokens; the loop ends
when every row has finished or after the strategy's rounds. A finished question also stops costing compute:
once no more than half of the batch's questions are open, the loop returns early, the host reads the
finished questions out, and the open ones continue in a batch half the size or smaller (`_compact`, a
gather of rows on the device; a power of two times the data axis, so an episode compiles at most
log2(questions) loop programs). Each row samples from a key folded with its id, so compaction, like the
batch's other questions, changes nothing in its results.

The program's static argument is one hashable `EpisodeSpec`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ttcjax.decoding.engine import (FINISHED_EOS, FINISHED_LENGTH, FINISHED_NONFINITE, FINISHED_STOP, GREEDY,
                                    DecodeState, Engine, Sampling, StopConditions, StopText, _decode, _prefill,
                                    contains_text)
from ttcjax.distributed import to_host
from ttcjax.models.cache import KVCache
from ttcjax.models.program import Program
from ttcjax.search.strategies import Strategy
from ttcjax.verifiers.base import StepScorer


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Everything static about a compiled episode: the strategy, the policy's graph, the verifier's scorer,
    and the step and stopping settings. One hashable value, so jit compiles one program per spec."""

    strategy: Strategy
    policy_graphdef: nnx.GraphDef
    scorer: StepScorer
    rounds: int  # the most rounds (steps) the episode runs
    max_step_tokens: int
    max_len: int  # cache slots per row (prompt + solution)
    sampling: Sampling
    step_end: StopText  # the step delimiter, matched on the text whatever its tokenization
    answer_end: StopText | None  # marks of a step that holds the final answer: the solution ends after it
    eos_ids: tuple[int, ...]
    pad_id: int
    attn_chunk: int
    stop_at_open: int = 0  # return once no more than this many questions are open (0: run to the end)
    # > 0: a question's rows share its prompt's policy cache (`KVCache.share` with this floor, at most every
    # prompt's length: `prompt_floor`); 0: the prompt's cache is copied into each row
    prompt_floor: int = 0
    verifier_floor: int = 0  # the same for the verifier's reading of the prompts (its scorer may copy instead)
    mesh: Mesh | None = None
    data_axis: str | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchState:
    """What the round loop carries; rows are beams (question-major, N per question)."""

    policy: DecodeState  # the policy's cache and next-token logits per row
    verifier_cache: Any  # the verifier's per-row cache (a pytree, rows on axis 0; () for none)
    tokens: jax.Array  # [R, L] the row's solution so far
    length: jax.Array  # [R] int32
    step_scores: jax.Array  # [R, rounds] verifier score of each step (nan where none)
    step_ends: jax.Array  # [R, rounds] int32 the solution's length after each step (its tokens up to there)
    num_steps: jax.Array  # [R] int32
    finished: jax.Array  # [R] bool: the solution has ended (or cannot continue)
    generated: jax.Array  # [R] int32 tokens this row's lineage generated, rollouts included (cost)
    scored: jax.Array  # [R] int32 tokens the verifier read for this row's lineage (cost)
    slot: jax.Array  # [R] int32 the row's id (question * N + beam); its random draws depend on it alone
    nonfinite: jax.Array  # [R] bool: the row's lineage met non-finite next-token logits (a rollout's included)
    rounds: jax.Array  # [] int32


def _select(scores, open_rows, group: int, keep: int, width: int):
    """Source row (within the batch) for every row: finished rows stay; in each group the `keep` best open
    rows (by score) fill the group's open rows, `width` each, best first. scores/open_rows [R]."""
    r = scores.shape[0]
    s = jnp.where(open_rows, scores, -jnp.inf).reshape(-1, group)  # [G, group]
    open_g = open_rows.reshape(-1, group)
    order = jnp.argsort(-s, axis=1, stable=True)  # [G, group] open rows first, best first
    n_open = open_g.sum(axis=1, keepdims=True)
    n_parents = jnp.maximum(jnp.minimum(keep, n_open), 1)
    rank = jnp.cumsum(open_g, axis=1) - 1  # rank of each open row among its group's open rows
    parent_rank = jnp.where(rank // width < n_parents, rank // width, rank % n_parents)
    parent = jnp.take_along_axis(order, jnp.clip(parent_rank, 0, group - 1), axis=1)  # [G, group]
    local = jnp.where(open_g, parent, jnp.arange(group)[None, :])
    return (local + jnp.arange(0, r, group)[:, None]).reshape(r)


# the stream of a round's key that resampling draws from: above every decode step's (`fold_in(round_key, step)`)
# and every lookahead rollout's (`fold_in(round_key, j + 1)`)
RESAMPLE_STREAM = 1 << 30


def _log_weights(scores, temperature: float):
    """Each particle's log weight: logit(score) / temperature, the score clipped to [1e-7, 1 - 1e-7] (as its_hub,
    Puri et al.'s library, clips it); -inf (no weight) where the score is NaN (no step scored, or a non-finite verifier
    score). scores [R]."""
    s = jnp.clip(scores, 1e-7, 1 - 1e-7)
    return jnp.where(jnp.isnan(scores), -jnp.inf, (jnp.log(s) - jnp.log1p(-s)) / temperature)


def _resample(log_weights, pool, slot, key, group: int):
    """Source row (within the batch) for every row: in each group every row of the pool draws its source from
    the group's pool, pool row j with probability softmax(the pool's log weights)_j, with replacement
    (multinomial resampling), from `key` folded with its own id `slot`, so that its draw depends neither on its
    place in the batch nor on the batch's other questions. Rows outside the pool, and every row of a group
    whose pool has no weight, keep their place. log_weights/pool/slot [R]."""
    r = log_weights.shape[0]
    weights = jnp.where(pool, log_weights, -jnp.inf).reshape(-1, group)  # [G, group]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, slot)  # [R]
    drawn = jax.vmap(jax.random.categorical)(keys, jnp.repeat(weights, group, axis=0))  # [R] a row of its group
    draws = pool & jnp.repeat(jnp.any(weights > -jnp.inf, axis=1), group)  # [R]
    local = jnp.where(draws, drawn, jnp.arange(r) % group)
    return local + jnp.arange(r) // group * group


def _constrain(tree, spec: EpisodeSpec):
    """Rows (beams) split over the mesh's data axis; declared once for everything the loop carries."""
    mesh, data_axis = spec.mesh, spec.data_axis
    if mesh is None or data_axis is None:
        return tree

    def leaf(x):
        if x.ndim == 0 or x.shape[0] % mesh.shape[data_axis]:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(data_axis, *[None] * (x.ndim - 1))))
    return jax.tree.map(leaf, tree)


def _take_rows(state: SearchState, rows: jax.Array, questions: jax.Array | None = None) -> SearchState:
    """Every per-row leaf gathered by `rows` [R']; `rounds` is shared and stays. KV caches gather their rows
    (and, given `questions` [R' // N], their shared prefixes: compaction moves whole questions)."""
    def take(x):
        return x.gather(rows, questions) if isinstance(x, KVCache) else jnp.take(x, rows, axis=0)

    moved = jax.tree.map(take, dataclasses.replace(state, rounds=jnp.zeros(state.slot.shape[0], jnp.int32)),
                         is_leaf=lambda x: isinstance(x, KVCache))
    return dataclasses.replace(moved, rounds=state.rounds)


def _start(spec: EpisodeSpec, policy_params, scorer_params, prompt_tokens, prompt_lengths, verifier_tokens,
           verifier_lengths, active) -> SearchState:
    """Prefill every prompt once (the policy's, and what the verifier reads for it: `verifier_tokens` [Q, P'],
    `verifier_lengths` [Q]) and fork it into N rows. Rows of inactive questions (padding) start finished. The
    verifier's reading of a prompt is counted once, on the question's first row."""
    n = spec.strategy.n
    rows = prompt_tokens.shape[0] * n
    if spec.prompt_floor:  # the prompt's cache once per question, each row's own slots after it
        policy = _prefill(spec.policy_graphdef, policy_params, prompt_tokens, prompt_lengths,
                          max_len=prompt_tokens.shape[1]).share(n, spec.max_len, spec.prompt_floor)
    else:
        policy = _prefill(spec.policy_graphdef, policy_params, prompt_tokens, prompt_lengths,
                          max_len=spec.max_len).fork(n)
    verifier_cache = spec.scorer.start(scorer_params, verifier_tokens, verifier_lengths, n=n, max_len=spec.max_len,
                                       floor=spec.verifier_floor)
    finished = jnp.repeat(~active, n)
    first_row = jnp.arange(rows) % n == 0
    state = SearchState(
        policy=dataclasses.replace(policy, done=finished), verifier_cache=verifier_cache,
        tokens=jnp.full((rows, spec.max_len), spec.pad_id, jnp.int32), length=jnp.zeros(rows, jnp.int32),
        step_scores=jnp.full((rows, spec.rounds), jnp.nan, jnp.float32),
        step_ends=jnp.zeros((rows, spec.rounds), jnp.int32), num_steps=jnp.zeros(rows, jnp.int32),
        finished=finished, generated=jnp.zeros(rows, jnp.int32),
        scored=jnp.where(first_row, jnp.repeat(verifier_lengths, n), 0).astype(jnp.int32),
        slot=jnp.arange(rows, dtype=jnp.int32), nonfinite=jnp.zeros(rows, bool), rounds=jnp.int32(0))
    return _constrain(state, spec)


def _rounds(spec: EpisodeSpec, policy_params, scorer_params, state: SearchState, key) -> SearchState:
    """The round loop: until every row has finished, `spec.rounds` rounds have run, or no more than
    `spec.stop_at_open` questions are still open (the host then compacts the batch and calls again)."""
    strategy, scorer = spec.strategy, spec.scorer
    n, (group, keep), width = strategy.n, strategy.groups, strategy.width
    rows = state.slot.shape[0]
    sol_len = state.tokens.shape[1]  # solution buffer width (a solution never exceeds the cache)
    step_stop = StopConditions(eos_ids=spec.eos_ids, text=spec.step_end)
    text_length, blank = jnp.asarray(spec.step_end.text_length), jnp.asarray(spec.step_end.blank)  # [V]
    delimiter = spec.step_end.strings[0]

    def one_step(policy, verifier_cache, finished, slot, step_key, sampling):
        """Generate one step on unfinished rows and score it; returns what changed."""
        policy = dataclasses.replace(policy, done=finished)
        gen, policy = _decode(spec.policy_graphdef, policy_params, policy, step_key,
                              max_new_tokens=spec.max_step_tokens, sampling=sampling, stop=step_stop,
                              pad_id=spec.pad_id, attn_chunk=spec.attn_chunk, row_ids=slot)
        # an empty step (the delimiter alone, or only whitespace before a whitespace delimiter: the blank line
        # that ends an example) or an immediate EOS ends the solution; a step that reached the step token cap
        # is scored and continues next round; one that stopped otherwise (EOS, a full cache) or that holds a
        # final-answer mark is scored and ends the solution
        written = jnp.arange(spec.max_step_tokens)[None, :] < gen.lengths[:, None]  # [R, T]
        chars = jnp.sum(jnp.where(written, text_length[gen.tokens], 0), axis=1)
        bare = (chars == len(delimiter)) | (delimiter.isspace() & jnp.all(~written | blank[gen.tokens], axis=1))
        empty = ((gen.finish_reason == FINISHED_STOP) & bare) | ((gen.finish_reason == FINISHED_EOS) &
                                                                  (gen.lengths == 1))
        real = ~finished & ~empty
        ended = ~finished & (empty | ((gen.finish_reason != FINISHED_STOP) & (gen.finish_reason != FINISHED_LENGTH)))
        if spec.answer_end is not None:
            ended |= real & contains_text(spec.answer_end, gen.tokens, gen.lengths)
        score_logit, verifier_cache, read = scorer.extend(scorer_params, verifier_cache, gen.tokens,
                                                          jnp.where(real, gen.lengths, 0))
        return gen, policy, verifier_cache, jax.nn.sigmoid(score_logit), real, ended, jnp.where(real, read, 0)

    def body(st: SearchState) -> SearchState:
        round_key = jax.random.fold_in(key, st.rounds)
        gen, policy, verifier_cache, score, real, ended, read = one_step(
            st.policy, st.verifier_cache, st.finished, st.slot, round_key, spec.sampling)
        generated = st.generated + gen.lengths
        scored = st.scored + read
        nonfinite = st.nonfinite | (~st.finished & (gen.finish_reason == FINISHED_NONFINITE))
        # append the step to each row's solution
        col = st.length[:, None] + jnp.arange(spec.max_step_tokens)[None, :]
        col = jnp.where(jnp.arange(spec.max_step_tokens)[None, :] < gen.lengths[:, None], col, sol_len)
        tokens = st.tokens.at[jnp.arange(rows)[:, None], col].set(gen.tokens, mode="drop")
        length = st.length + gen.lengths
        select_score = score
        if strategy.lookahead:
            # roll out up to k more steps greedily on copies; the step's score is the verifier's at the end
            la_policy, la_cache, la_done, la_score = policy, verifier_cache, st.finished | ended, score
            for j in range(strategy.lookahead):
                g2, la_policy, la_cache, s2, real2, ended2, read2 = one_step(
                    la_policy, la_cache, la_done, st.slot, jax.random.fold_in(round_key, j + 1), GREEDY)
                la_score = jnp.where(real2, s2, la_score)
                nonfinite = nonfinite | (~la_done & (g2.finish_reason == FINISHED_NONFINITE))
                generated = generated + g2.lengths
                scored = scored + read2
                la_done = la_done | ended2
            select_score = la_score
        this_step = (jnp.arange(spec.rounds)[None, :] == st.num_steps[:, None]) & real[:, None]  # [R, rounds]
        step_scores = jnp.where(this_step, score[:, None], st.step_scores)
        step_ends = jnp.where(this_step, length[:, None], st.step_ends)
        num_steps = st.num_steps + real
        finished = st.finished | ended | (length >= sol_len)
        new = SearchState(policy=dataclasses.replace(policy, done=finished), verifier_cache=verifier_cache,
                          tokens=tokens, length=length, step_scores=step_scores, step_ends=step_ends,
                          num_steps=num_steps,
                          finished=finished, generated=generated, scored=scored, slot=st.slot,
                          nonfinite=nonfinite, rounds=st.rounds + 1)
        if group:
            # each row's last step's score (NaN where it has none)
            last = jnp.take_along_axis(step_scores, jnp.maximum(num_steps - 1, 0)[:, None], axis=1)[:, 0]
            if strategy.resamples:
                # each particle weighs its last step's score; finished ones take part or keep their place
                # (`ParticleFiltering.resample_finished`). As in Puri et al.'s loop, a question resamples only
                # while it has an open particle, and not after the last round.
                open_group = jnp.repeat(jnp.any(~finished.reshape(-1, group), axis=1), group)  # [R]
                pool = open_group & (st.rounds + 1 < spec.rounds) & (strategy.resample_finished | ~finished)
                src = _resample(_log_weights(last, strategy.weight_temperature), pool, st.slot,
                                jax.random.fold_in(round_key, RESAMPLE_STREAM), group)
            else:
                src = _select(jnp.where(real, select_score, last), ~finished, group, keep, width)
            # a row's place keeps its cost counts (the lineage's cost is what all rows spent) and its id
            moved = _take_rows(new, src)
            new = dataclasses.replace(moved, generated=new.generated, scored=new.scored, slot=new.slot)
        return _constrain(new, spec)

    def open_questions(st):
        return jnp.sum(jnp.any(~st.finished.reshape(rows // n, n), axis=1))

    state = _constrain(state, spec)
    return jax.lax.while_loop(lambda st: (st.rounds < spec.rounds) & (open_questions(st) > spec.stop_at_open),
                              body, state)


def _compact(spec: EpisodeSpec, state: SearchState, rows: jax.Array) -> SearchState:
    """Keep whole questions: rows [R'] are N consecutive rows of each kept question."""
    return _constrain(_take_rows(state, rows, rows[::spec.strategy.n] // spec.strategy.n), spec)


_start_jit = jax.jit(_start, static_argnames=("spec",))
_rounds_jit = jax.jit(_rounds, static_argnames=("spec",), donate_argnames=("state",))
_compact_jit = jax.jit(_compact, static_argnames=("spec",))


def start_program(spec: EpisodeSpec, engine: Engine, scorer_params, tokens, lengths, verifier_tokens,
                  verifier_lengths, active) -> Program:
    """The compiled start of an episode that `run_episode` runs (arguments as there): call it for the first
    `SearchState`, or `.export(platforms)` it."""
    return Program(_start_jit, (spec, engine.params, scorer_params, tokens, lengths, verifier_tokens,
                                verifier_lengths, active))


def rounds_program(spec: EpisodeSpec, engine: Engine, scorer_params, state: SearchState, key) -> Program:
    """The compiled round loop that `run_episode` runs on `state` (donated): call it, or `.export(platforms)` it."""
    return Program(_rounds_jit, (spec, engine.params, scorer_params, state, key))


def _questions_after_compaction(open_questions: int, data: int, floor: int = 1) -> int:
    """The batch (in questions) that `open_questions` are compacted into: a power of two times the data
    axis, and no fewer than `floor` questions, so that an episode compiles at most log2(questions) loop
    programs."""
    def size(q):
        return data * (1 << max(0, math.ceil(math.log2(max(1, -(-q // data))))))
    return max(size(open_questions), size(floor))


def _stop_at_open(questions: int, data: int, floor: int = 1) -> int:
    """The largest number of open questions at which compacting a batch of `questions` shrinks it (0: never)."""
    return max((o for o in range(1, questions) if _questions_after_compaction(o, data, floor) < questions),
               default=0)


HOST_FIELDS = ("tokens", "length", "step_scores", "step_ends", "num_steps", "generated", "scored", "nonfinite")


def run_episode(spec: EpisodeSpec, engine: Engine, scorer_params, tokens, lengths, verifier_tokens, verifier_lengths,
                active, key, n_real: int, *, compact: bool, compact_min_rows: int,
                on_segment: Callable[[int], None] | None = None) -> tuple[np.ndarray, ...]:
    """One search episode for a batch of questions (the policy's prompts tokens [Q, P], lengths [Q]; the
    verifier's reading of them verifier_tokens [Q, P'], verifier_lengths [Q]; active [Q]; all placed on the
    engine's mesh); the host fields (`HOST_FIELDS`, rows question-major) of the first `n_real` questions,
    each as it was when its question finished. `on_segment(rows)` is called before each compiled segment
    with the rows of its batch (compaction shrinks it)."""
    n = spec.strategy.n
    st = start_program(spec, engine, scorer_params, tokens, lengths, verifier_tokens, verifier_lengths, active)()
    where = np.arange(tokens.shape[0])  # the question (index into the batch) at each place; -1: padding
    where[n_real:] = -1
    out: list[np.ndarray | None] = [None] * len(HOST_FIELDS)
    data = engine.data_size
    floor = -(-compact_min_rows // n)  # questions
    while True:
        places = len(where)
        if on_segment is not None:
            on_segment(places * n)
        segment = dataclasses.replace(spec, stop_at_open=_stop_at_open(places, data, floor) if compact else 0)
        st = rounds_program(segment, engine, scorer_params, st, key)()
        # one transfer per segment: what closed, and every host field
        finished, rounds, fields = to_host((st.finished, st.rounds,
                                                   tuple(getattr(st, f) for f in HOST_FIELDS)))
        closed = finished.reshape(places, n).all(axis=1) | (rounds >= spec.rounds)
        if out[0] is None:
            out = [np.zeros((n_real * n,) + f.shape[1:], f.dtype) for f in fields]
        for place, question in enumerate(where):
            if question >= 0 and closed[place]:
                for o, f in zip(out, fields):
                    o[question * n:(question + 1) * n] = f[place * n:(place + 1) * n]
        where = np.where(closed, -1, where)
        still_open = np.flatnonzero(where >= 0)
        if not len(still_open):
            return tuple(out)
        # compact: the open questions first, then finished ones (their rows generate nothing) as padding
        size = _questions_after_compaction(len(still_open), data, floor)
        keep = np.concatenate([still_open, np.flatnonzero(where < 0)])[:size]
        rows = (keep[:, None] * n + np.arange(n)[None, :]).reshape(-1).astype(np.int32)
        st = _compact_jit(spec, st, engine.place_rows(rows))
        where = where[keep]
