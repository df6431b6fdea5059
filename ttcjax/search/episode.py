"""Test-time search on the device: best-of-N, PRM-guided beam search, lookahead and DVTS.

Strategies are data (frozen dataclasses); `search` runs any of them for a batch of questions. Every
question gets N rows of the batch (its beams). One compiled program runs the episode's rounds: a
`lax.while_loop`, each iteration of which

  1. generates one reasoning step on every unfinished row (the decoding core's loop, stopping each row at
     the step delimiter), continuing from the row's KV cache;
  2. feeds the new step into the PRM's own KV cache and reads the step's score at its last token (the PRM
     scores only what is new);
  3. (lookahead) rolls each row k further steps out greedily on a copy of both caches and scores the end
     of the rollout instead;
  4. selects: within each group of rows (beam: all N rows of a question; DVTS: each subtree of M rows) the
     top group/M unfinished rows are kept and each fills M rows; rows are moved with an on-device gather
     of the policy's and the PRM's cache rows (the shared prefix is never prefilled again). Finished
     rows keep their place. Best-of-N selects nothing.

A solution ends when its row emits EOS or an empty step (the blank line that ends an example). Finished
rows, and every row of a finished question, generate nothing further (`done`), so they add no tokens;
the loop ends when every row has finished or after `max_rounds`. A finished question also stops costing
compute: once no more than half of the batch's questions are open, the loop returns early, the host reads
the finished questions out, and the open ones continue in a batch half the size or smaller (`_compact`, a
gather of rows on the device; a power of two times the data axis, so an episode compiles at most
log2(questions) loop programs). Each row samples from a key folded with its id, so compaction, like the
batch's other questions, changes nothing in its results.

Answers are chosen on the host from all N final rows: weighted best-of-N by default (scores of equivalent
answers summed), or vanilla best-of-N or majority vote.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ttcjax.decoding.engine import (FINISHED_STOP, GREEDY, DecodeState, Engine, Sampling, StopConditions, _decode,
                                    _prefill, bucket)
from ttcjax.models.cache import KVCache
from ttcjax.models.sharding import shard_model
from ttcjax.search.selection import best_of_n, majority, weighted
from ttcjax.verifiers.reward_model import AGGREGATIONS, RewardModel, aggregate

SELECTIONS = ("weighted", "vanilla", "majority")


# ---- strategies ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BestOfN:
    """N independent samples; the answer by `selection` over their PRM scores."""

    n: int
    selection: str = "weighted"

    def __post_init__(self):
        _check(self.n >= 1, f"BestOfN(n={self.n}): n must be >= 1.")
        _check(self.selection in SELECTIONS, f"selection={self.selection!r} is not one of {SELECTIONS}.")

    @property
    def budget(self) -> int:
        return self.n


@dataclasses.dataclass(frozen=True)
class Beam:
    """PRM-guided step-level beam search: N beams; each round keep the top N/width, expand each by width."""

    n: int
    width: int
    max_rounds: int = 40
    selection: str = "weighted"

    def __post_init__(self):
        _check_tree(type(self).__name__, self.n, self.width, self.max_rounds, self.selection)

    @property
    def budget(self) -> int:
        return self.n


@dataclasses.dataclass(frozen=True)
class Lookahead:
    """Beam search whose step score is the PRM's at the end of a greedy rollout of up to k more steps.
    Budget counted as N * (k + 1), as in the paper."""

    n: int
    width: int
    k: int = 1
    max_rounds: int = 40
    selection: str = "weighted"

    def __post_init__(self):
        _check_tree(type(self).__name__, self.n, self.width, self.max_rounds, self.selection)
        _check(self.k >= 0, f"Lookahead(k={self.k}): k must be >= 0.")

    @property
    def budget(self) -> int:
        return self.n * (self.k + 1)


@dataclasses.dataclass(frozen=True)
class DVTS:
    """Diverse verifier tree search: N/width independent subtrees of width rows, each keeping its best row
    and expanding it by width every round."""

    n: int
    width: int
    max_rounds: int = 40
    selection: str = "weighted"

    def __post_init__(self):
        _check_tree(type(self).__name__, self.n, self.width, self.max_rounds, self.selection)

    @property
    def budget(self) -> int:
        return self.n


Strategy = BestOfN | Beam | Lookahead | DVTS


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_tree(name, n, width, max_rounds, selection):
    _check(width >= 1, f"{name}(width={width}): width must be >= 1.")
    _check(n >= width, f"{name}(n={n}, width={width}): the budget n is below the beam width; use n >= width.")
    _check(n % width == 0, f"{name}(n={n}, width={width}): n must be divisible by width (n/width beams are "
                           "kept and each expanded width times).")
    _check(max_rounds >= 1, f"{name}(max_rounds={max_rounds}): must be >= 1.")
    _check(selection in SELECTIONS, f"selection={selection!r} is not one of {SELECTIONS}.")


def _groups(strategy: Strategy) -> tuple[int, int]:
    """(rows per selection group, rows kept per group); (0, 0) means no selection."""
    if isinstance(strategy, BestOfN):
        return 0, 0
    if isinstance(strategy, DVTS):
        return strategy.width, 1
    return strategy.n, strategy.n // strategy.width


# ---- the compiled episode --------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchState:
    """What the round loop carries; rows are beams (question-major, N per question)."""

    policy: DecodeState  # the policy's cache and next-token logits per row
    prm_cache: KVCache  # the PRM's cache per row (prompt + the row's steps)
    tokens: jax.Array  # [R, L] the row's solution so far
    length: jax.Array  # [R] int32
    step_scores: jax.Array  # [R, max_rounds] PRM score of each step (nan where none)
    num_steps: jax.Array  # [R] int32
    finished: jax.Array  # [R] bool: the solution has ended (or cannot continue)
    generated: jax.Array  # [R] int32 tokens this row's lineage generated, rollouts included (cost)
    scored: jax.Array  # [R] int32 tokens the PRM read for this row's lineage (cost)
    slot: jax.Array  # [R] int32 the row's id (question * N + beam); its random draws depend on it alone
    rounds: jax.Array  # [] int32


def _prm_extend(prm: RewardModel, cache: KVCache, tokens: jax.Array, lengths: jax.Array):
    """Feed tokens [R, T] (row r's first lengths[r] are real) into the PRM cache; the score logit at each
    row's last real token [R], and the cache advanced by lengths."""
    _, new_cache, hidden = prm.backbone(tokens, cache=cache, return_hidden=True, return_logits=False)
    logits = prm.head_logits(hidden[-1])  # [R, T]
    read = jnp.take_along_axis(logits, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    return read, dataclasses.replace(new_cache, lengths=cache.lengths + lengths)


PRM_STEP_WIDTHS = (8, 16, 32, 64)  # the PRM reads a round's steps at the narrowest of these that holds them


def _prm_extend_step(prm: RewardModel, cache: KVCache, tokens: jax.Array, lengths: jax.Array):
    """`_prm_extend` for one round's steps [R, T]: the PRM reads only the first w columns, w the narrowest of
    `PRM_STEP_WIDTHS` (or T) that holds the round's longest step, so short steps cost short reads."""
    t = tokens.shape[1]
    widths = sorted({w for w in PRM_STEP_WIDTHS if w < t} | {t})
    if len(widths) == 1:
        return _prm_extend(prm, cache, tokens, lengths)
    index = jnp.searchsorted(jnp.asarray(widths), jnp.max(lengths))  # the first width >= the longest step
    branches = [lambda c, tk, ln, w=w: _prm_extend(prm, c, tk[:, :w], ln) for w in widths]
    return jax.lax.switch(index, branches, cache, tokens, lengths)


def _select(scores, open_rows, group: int, keep: int, width: int):
    """Source row (within the batch) for every row: finished rows stay; in each group the `keep` best open
    rows (by score) fill the group's open rows, `width` each, best first. scores/open_rows [R]."""
    r = scores.shape[0]
    s = jnp.where(open_rows, scores, -jnp.inf).reshape(-1, group)  # [G, group]
    open_g = open_rows.reshape(-1, group)
    order = jnp.argsort(-s, axis=1, stable=True)  # [G, group] open rows first, best first
    n_open = open_g.sum(axis=1, keepdims=True)
    n_parents = jnp.maximum(jnp.minimum(keep, n_open), 1)
    slot = jnp.cumsum(open_g, axis=1) - 1  # rank of each open row among its group's open rows
    parent_rank = jnp.where(slot // width < n_parents, slot // width, slot % n_parents)
    parent = jnp.take_along_axis(order, jnp.clip(parent_rank, 0, group - 1), axis=1)  # [G, group]
    local = jnp.where(open_g, parent, jnp.arange(group)[None, :])
    return (local + jnp.arange(0, r, group)[:, None]).reshape(r)


def _constrain(tree, mesh, data_axis):
    """Rows (beams) split over the mesh's data axis; declared once for everything the loop carries."""
    if mesh is None or data_axis is None:
        return tree

    def leaf(x):
        if x.ndim == 0 or x.shape[0] % mesh.shape[data_axis]:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(data_axis, *[None] * (x.ndim - 1))))
    return jax.tree.map(leaf, tree)


def _take_rows(state: SearchState, rows: jax.Array) -> SearchState:
    """Every per-row leaf gathered by `rows` [R']; `rounds` is shared and stays."""
    moved = jax.tree.map(lambda x: jnp.take(x, rows, axis=0),
                         dataclasses.replace(state, rounds=jnp.zeros(state.slot.shape[0], jnp.int32)))
    return dataclasses.replace(moved, rounds=state.rounds)


def _start(policy_graphdef, policy_params, prm_graphdef, prm_params, prompt_tokens, prompt_lengths, active, *,
           n: int, max_rounds: int, max_len: int, pad_id: int, mesh=None, data_axis=None) -> SearchState:
    """Prefill every prompt once (policy and PRM) and fork it into N rows. Rows of inactive questions
    (padding) start finished."""
    prm = nnx.merge(prm_graphdef, prm_params)
    q = prompt_tokens.shape[0]
    rows = q * n
    policy = _prefill(policy_graphdef, policy_params, prompt_tokens, prompt_lengths, max_len=max_len).fork(n)
    prm_cache = KVCache.for_model(prm.config, q, max_len)
    _, prm_cache = _prm_extend(prm, prm_cache, prompt_tokens, prompt_lengths)
    finished = jnp.repeat(~active, n)
    state = SearchState(
        policy=dataclasses.replace(policy, done=finished), prm_cache=prm_cache.fork(n),
        tokens=jnp.full((rows, max_len), pad_id, jnp.int32), length=jnp.zeros(rows, jnp.int32),
        step_scores=jnp.full((rows, max_rounds), jnp.nan, jnp.float32), num_steps=jnp.zeros(rows, jnp.int32),
        finished=finished, generated=jnp.zeros(rows, jnp.int32), scored=jnp.zeros(rows, jnp.int32),
        slot=jnp.arange(rows, dtype=jnp.int32), rounds=jnp.int32(0))
    return _constrain(state, mesh, data_axis)


def _rounds(policy_graphdef, policy_params, prm_graphdef, prm_params, state: SearchState, key, *,
            n: int, group: int, keep: int, width: int, lookahead: int, max_rounds: int, max_step_tokens: int,
            sampling: Sampling, delimiter_id: int, eos_ids: tuple[int, ...], pad_id: int, attn_chunk: int,
            stop_at_open: int = 0, mesh=None, data_axis: str | None = None) -> SearchState:
    """The round loop: until every row has finished, `max_rounds` rounds have run, or no more than
    `stop_at_open` questions are still open (the host then compacts the batch and calls again)."""
    prm = nnx.merge(prm_graphdef, prm_params)
    rows = state.slot.shape[0]
    sol_len = state.tokens.shape[1]  # solution buffer width (a solution never exceeds the cache)
    step_stop = StopConditions(eos_ids=eos_ids, stop_sequences=((delimiter_id,),))
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)

    def one_step(policy, prm_cache, finished, slot, step_key, sampling):
        """Generate one step on unfinished rows and score it; returns what changed."""
        policy = dataclasses.replace(policy, done=finished)
        gen, policy = _decode(policy_graphdef, policy_params, policy, step_key, max_new_tokens=max_step_tokens,
                              sampling=sampling, stop=step_stop, pad_id=pad_id, attn_chunk=attn_chunk,
                              row_ids=slot)
        first = gen.tokens[:, 0]
        # an empty step (the blank line that ends an example) or an immediate EOS ends the solution; a step
        # that stopped other than at its delimiter (EOS, token limit, full cache) is scored and ends it
        empty = (first == delimiter_id) | jnp.any(first[:, None] == eos, axis=1)
        real = ~finished & ~empty
        ended = ~finished & (empty | (gen.finish_reason != FINISHED_STOP))
        score_logit, new_prm_cache = _prm_extend_step(prm, prm_cache, gen.tokens, jnp.where(real, gen.lengths, 0))
        return gen, policy, new_prm_cache, jax.nn.sigmoid(score_logit), real, ended

    def body(st: SearchState) -> SearchState:
        round_key = jax.random.fold_in(key, st.rounds)
        gen, policy, prm_cache, score, real, ended = one_step(st.policy, st.prm_cache, st.finished, st.slot,
                                                              round_key, sampling)
        generated = st.generated + gen.lengths
        scored = st.scored + jnp.where(real, gen.lengths, 0)
        # append the step to each row's solution
        col = st.length[:, None] + jnp.arange(max_step_tokens)[None, :]
        col = jnp.where(jnp.arange(max_step_tokens)[None, :] < gen.lengths[:, None], col, sol_len)
        tokens = st.tokens.at[jnp.arange(rows)[:, None], col].set(gen.tokens, mode="drop")
        length = st.length + gen.lengths
        select_score = score
        if lookahead:
            # roll out up to k more steps greedily on copies; the step's score is the PRM's at the rollout's end
            la_policy, la_prm, la_done, la_score = policy, prm_cache, st.finished | ended, score
            for j in range(lookahead):
                g2, la_policy, la_prm, s2, real2, ended2 = one_step(la_policy, la_prm, la_done, st.slot,
                                                                    jax.random.fold_in(round_key, j + 1), GREEDY)
                la_score = jnp.where(real2, s2, la_score)
                generated = generated + g2.lengths
                scored = scored + jnp.where(real2, g2.lengths, 0)
                la_done = la_done | ended2
            select_score = la_score
        step_scores = jnp.where(
            (jnp.arange(max_rounds)[None, :] == st.num_steps[:, None]) & real[:, None], score[:, None],
            st.step_scores)
        num_steps = st.num_steps + real
        finished = st.finished | ended | (length >= sol_len)
        new = SearchState(policy=dataclasses.replace(policy, done=finished), prm_cache=prm_cache, tokens=tokens,
                          length=length, step_scores=step_scores, num_steps=num_steps, finished=finished,
                          generated=generated, scored=scored, slot=st.slot, rounds=st.rounds + 1)
        if group:
            last = jnp.take_along_axis(step_scores, jnp.maximum(num_steps - 1, 0)[:, None], axis=1)[:, 0]
            src = _select(jnp.where(real, select_score, last), ~finished, group, keep, width)
            # a row's place keeps its cost counts (the lineage's cost is what all rows spent) and its id
            moved = _take_rows(new, src)
            new = dataclasses.replace(moved, generated=new.generated, scored=new.scored, slot=new.slot)
        return _constrain(new, mesh, data_axis)

    def open_questions(st):
        return jnp.sum(jnp.any(~st.finished.reshape(rows // n, n), axis=1))

    state = _constrain(state, mesh, data_axis)
    return jax.lax.while_loop(lambda st: (st.rounds < max_rounds) & (open_questions(st) > stop_at_open),
                              body, state)


def _compact(state: SearchState, rows: jax.Array, *, mesh=None, data_axis=None) -> SearchState:
    return _constrain(_take_rows(state, rows), mesh, data_axis)


_start_jit = jax.jit(_start, static_argnums=(0, 2),
                     static_argnames=("n", "max_rounds", "max_len", "pad_id", "mesh", "data_axis"))
_rounds_jit = jax.jit(
    _rounds, static_argnums=(0, 2),
    static_argnames=("n", "group", "keep", "width", "lookahead", "max_rounds", "max_step_tokens", "sampling",
                     "delimiter_id", "eos_ids", "pad_id", "attn_chunk", "stop_at_open", "mesh", "data_axis"),
    donate_argnames=("state",))
_compact_jit = jax.jit(_compact, static_argnames=("mesh", "data_axis"))


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


# ---- the host side -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    text: str
    answer: Any
    step_scores: list[float]
    score: float  # aggregated


@dataclasses.dataclass
class SearchResult:
    """Per question: the chosen answer and solution, every candidate, and the exact cost."""

    answer: Any
    solution: str
    chosen: int
    candidates: list[Candidate]
    generations: int  # the strategy's budget in generations (N, or N*(k+1) for lookahead)
    generated_tokens: int
    prm_tokens: int
    policy_flops: float
    verifier_flops: float


def _cost_flops(params: int, tokens: int) -> float:
    return 2.0 * params * tokens


_HOST_FIELDS = ("tokens", "length", "step_scores", "num_steps", "generated", "scored")


def _run_episode(engine: Engine, prm_graphdef, prm_state, tokens, lengths, active, key, n_real: int, *,
                 compact: bool, compact_min_rows: int, n: int, max_rounds: int, max_len: int, pad_id: int, **loop
                 ) -> tuple[np.ndarray, ...]:
    """One search episode for a batch of questions; the host fields (`_HOST_FIELDS`, rows question-major)
    of the first `n_real` questions, each as it was when its question finished."""
    mesh = engine.mesh
    data_axis = engine.rules.batch if mesh is not None else None
    placement = dict(mesh=mesh, data_axis=data_axis)
    st = _start_jit(engine.graphdef, engine.params, prm_graphdef, prm_state, tokens, lengths, active, n=n,
                    max_rounds=max_rounds, max_len=max_len, pad_id=pad_id, **placement)
    where = np.arange(tokens.shape[0])  # the question (index into the batch) at each place; -1: padding
    where[n_real:] = -1
    out: list[np.ndarray | None] = [None] * len(_HOST_FIELDS)
    data = engine.data_size
    floor = -(-compact_min_rows // n)  # questions
    while True:
        places = len(where)
        st = _rounds_jit(engine.graphdef, engine.params, prm_graphdef, prm_state, st, key, n=n,
                         max_rounds=max_rounds, pad_id=pad_id,
                         stop_at_open=_stop_at_open(places, data, floor) if compact else 0, **loop, **placement)
        # one transfer per segment: what closed, and every host field
        finished, rounds, fields = jax.device_get((st.finished, st.rounds,
                                                   tuple(getattr(st, f) for f in _HOST_FIELDS)))
        closed = finished.reshape(places, n).all(axis=1) | (rounds >= max_rounds)
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
        st = _compact_jit(st, engine._place_rows(rows), **placement)
        where = where[keep]


def search(strategy: Strategy, engine: Engine, prm: RewardModel, tokenizer, questions: Sequence[str], key, *,
           extract_answer: Callable[[str], Any], equal: Callable[[Any, Any], bool] | None = None,
           sampling: Sampling = Sampling(temperature=0.8), max_step_tokens: int = 32, max_len: int = 192,
           delimiter: str = "\n", aggregation: str = "last", questions_per_batch: int | None = None,
           compact: bool = True, compact_min_rows: int = 128) -> list[SearchResult]:
    """Run `strategy` for every question (prompt text) with the policy in `engine` and the PRM `prm`.

    `extract_answer(solution_text)` gives a candidate's answer (None if it has none); `equal` compares two
    answers (default ==). Questions are searched `questions_per_batch` at a time (default: all), each with N
    rows of one batch. With `compact` (the default), once at most half of a batch's questions are still
    open the loop returns, the finished questions' rows are read out and dropped, and the rest continue in a
    batch half the size or less: a finished question stops costing compute. Batches are not shrunk below
    `compact_min_rows` rows, where a smaller batch saves less time than compiling its loop costs. The results
    are the same either way (a row's random draws depend on its id, not on its place in the batch).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}.")
    delimiter_ids = tokenizer.encode(delimiter)
    if len(delimiter_ids) != 1:
        raise ValueError(f"the step delimiter {delimiter!r} must be one token of the tokenizer; it is "
                         f"{len(delimiter_ids)}.")
    if prm.config.vocab_size < tokenizer.vocab_size:
        raise ValueError("the PRM's vocabulary is smaller than the tokenizer's; use the PRM trained for this policy.")
    group, keep = _groups(strategy)
    n = strategy.n
    rounds = getattr(strategy, "max_rounds", max(1, max_len // 2))
    lookahead = getattr(strategy, "k", 0)
    width = getattr(strategy, "width", 1)
    encoded = [tokenizer.encode(q, add_bos=tokenizer.bos_id is not None) for q in questions]
    per_batch = questions_per_batch or len(encoded)
    policy_params = engine.config.num_params()
    prm_params = prm.config.num_params()
    if engine.mesh is not None:
        shard_model(prm, engine.mesh, engine.rules)
    prm_graphdef, prm_state = nnx.split(prm)
    results: list[SearchResult] = []
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start:start + per_batch]
        longest = max(map(len, chunk))
        if longest >= max_len:
            raise ValueError(f"a prompt of {longest} tokens leaves no room to generate in max_len={max_len}; "
                             "raise max_len.")
        width_p = min(bucket(longest), max_len)
        # with a mesh, questions (and so their rows) are padded to a multiple of the data axis and split over it
        data = engine.data_size
        padded = chunk + [chunk[0]] * (-len(chunk) % data)
        tokens = np.full((len(padded), width_p), tokenizer.pad_id, np.int32)
        for i, p in enumerate(padded):
            tokens[i, :min(len(p), width_p)] = p[:width_p]
        lengths = np.array([len(p) for p in padded], np.int32)
        active = np.arange(len(padded)) < len(chunk)
        tokens, lengths = engine._place_rows(tokens), engine._place_rows(lengths)
        host = _run_episode(engine, prm_graphdef, prm_state, tokens, lengths, engine._place_rows(active),
                            jax.random.fold_in(key, start), len(chunk), compact=compact,
                            compact_min_rows=compact_min_rows, n=n, group=group, keep=keep, width=width,
                            lookahead=lookahead, max_rounds=rounds,
                            max_step_tokens=max_step_tokens, max_len=max_len, sampling=sampling,
                            delimiter_id=delimiter_ids[0], eos_ids=tuple(tokenizer.eos_ids),
                            pad_id=tokenizer.pad_id, attn_chunk=engine.attn_chunk)
        sol_tokens, sol_len, step_scores, num_steps, generated, scored = host
        for i in range(len(chunk)):
            cands = []
            for r in range(i * n, (i + 1) * n):
                text = tokenizer.decode(sol_tokens[r, :sol_len[r]])
                s = [float(x) for x in step_scores[r, :num_steps[r]]]
                cands.append(Candidate(text=text, answer=extract_answer(text), step_scores=s,
                                       score=aggregate(s, aggregation)))
            answers, scores = [c.answer for c in cands], [c.score for c in cands]
            chosen = (weighted(answers, scores, equal) if strategy.selection == "weighted" else
                      best_of_n(scores) if strategy.selection == "vanilla" else majority(answers, equal))
            gen_tokens = int(generated[i * n:(i + 1) * n].sum())
            prm_tokens = int(scored[i * n:(i + 1) * n].sum()) + len(chunk[i])
            results.append(SearchResult(
                answer=cands[chosen].answer, solution=cands[chosen].text, chosen=chosen, candidates=cands,
                generations=strategy.budget, generated_tokens=gen_tokens, prm_tokens=prm_tokens,
                policy_flops=_cost_flops(policy_params, gen_tokens + len(chunk[i])),
                verifier_flops=_cost_flops(prm_params, prm_tokens)))
    return results
