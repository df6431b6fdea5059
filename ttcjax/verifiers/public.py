"""A public process reward model as a Verifier, inside search too: its own tokenizer, its own input format.

The policy writes steps in its tokens; Math-Shepherd, RLHFlow, Qwen2.5-Math-PRM and Skywork read a question
and steps rendered in their family's format (step tags, separator tokens, chat turns; `ttcjax.verifiers.hub`)
in their own vocabulary. Inside the compiled search episode, after each round:

  1. the host renders every row that wrote a step: its question and all its step texts (`step_texts`:
     the policy's ids decoded, the delimiter dropped) through the family's `encode`, exactly the ids that a
     one-pass scoring of the finished solution reads;
  2. those ids are compared with the ids already in the row's verifier cache; the row's cache is cut back
     to the common prefix (a chat turn's closing tokens, a merge at a token boundary: a few tokens) and only
     the rest is fed, through the verifier's own KV cache; the step's score is read at its position;
  3. the device carries, per row, the verifier's cache and ids, the policy ids of the row's steps and its
     question, so selection and compaction move all of it with the row (`jax.pure_callback` is stateless).

The prefix is never scored again: each round's verifier work is the new step plus the few tokens of the
format's closing that follow it. Step scores equal a one-pass scoring of the finished candidates in the
family's format (causal attention: a position's logit depends only on the ids before it).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttcjax.models.cache import KVCache
from ttcjax.models.sharding import ShardingRules, shard_model
from ttcjax.verifiers.base import AGGREGATIONS, Verifier, step_texts
from ttcjax.verifiers.hub import FAMILIES, load_hf_prm
from ttcjax.verifiers.reward_model import RewardModel, _extend, extend_steps, score_inputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderedCache:
    """A public verifier's per-row state inside search (rows on axis 0 of every leaf)."""

    kv: KVCache  # the verifier's own cache; kv.lengths: how many of `ids` it holds
    ids: jax.Array  # [R, Lv] int32 the verifier's ids in kv (its rendering of question and steps so far)
    steps: jax.Array  # [R, L] int32 the policy's ids of the row's steps so far, back to back
    step_ends: jax.Array  # [R, L] int32 where each step ends in `steps`
    num_steps: jax.Array  # [R] int32
    question: jax.Array  # [R] int32 the row's question: an index into the bound batch's questions


class StepRenderer:
    """The host half: renders rows' steps in the family's format with the verifier's tokenizer. Hashable by
    identity (it is part of the episode's static scorer); the batch's question texts are bound per episode."""

    def __init__(self, fmt, tokenizer, policy_tokenizer):
        self.fmt, self.tokenizer, self.policy_tokenizer = fmt, tokenizer, policy_tokenizer
        self.questions: list[str] = []
        self.delimiter: str | None = None

    def encode(self, question: str, steps: Sequence[str]):
        return self.fmt.encode(self.tokenizer, question, steps)

    def render_round(self, question, steps, step_ends, num_steps, ids, ids_len, new_tokens, new_lengths, *,
                     width: int):
        """For every row that wrote a step (new_lengths > 0): where its cache is cut back to [R], the ids to
        feed from there [R, width] and how many [R], and the position among them to read the score at [R]."""
        rows = new_tokens.shape[0]
        start = np.asarray(ids_len, np.int32).copy()
        feed = np.zeros((rows, width), np.int32)
        feed_len = np.zeros(rows, np.int32)
        read_at = np.zeros(rows, np.int32)
        for r in np.flatnonzero(np.asarray(new_lengths) > 0):
            texts = step_texts(self.policy_tokenizer, steps[r], step_ends[r, :num_steps[r]], self.delimiter)
            texts += step_texts(self.policy_tokenizer, new_tokens[r], [new_lengths[r]], self.delimiter)
            x = self.encode(self.questions[int(question[r])], texts)
            full, at = np.asarray(x.tokens, np.int32), x.read_at[-1]
            if len(full) > ids.shape[1]:
                raise ValueError(f"the verifier's rendering of a solution takes {len(full)} tokens, more than its "
                                 f"cache of {ids.shape[1]}; raise the verifier's max_len.")
            held = ids[r, :ids_len[r]]
            n = min(len(held), len(full))
            differ = np.flatnonzero(held[:n] != full[:n])
            common = min(int(differ[0]) if len(differ) else n, at)
            segment = full[common:]
            if len(segment) > width:
                raise ValueError(f"the verifier's rendering of one step takes {len(segment)} tokens, more than "
                                 f"{width}; raise the verifier's segment_tokens.")
            start[r], feed_len[r], read_at[r] = common, len(segment), at - common
            feed[r, :len(segment)] = segment
        return start, feed, feed_len, read_at


@dataclasses.dataclass(frozen=True)
class RenderingStepScorer:
    """A public PRM inside the compiled episode (see the module docstring). `max_len`: the verifier's cache
    slots per row (None: twice the policy's plus 256, room for a chat format's turns); `segment_tokens`: the most
    ids one round feeds a row (None: twice the step cap, plus 64), read `PRM_CHUNK` at a time."""

    graphdef: nnx.GraphDef
    renderer: StepRenderer
    max_len: int | None = None
    segment_tokens: int | None = None

    def start(self, params, prompt_tokens, prompt_lengths, *, n: int, max_len: int, floor: int = 0) -> RenderedCache:
        # the prompt is copied into each row: a round's rendering may rewrite a row from inside it
        prm = nnx.merge(self.graphdef, params)
        q, p = prompt_tokens.shape
        slots = self.max_len or 2 * max_len + 256
        if p > slots:
            raise ValueError(f"the verifier's rendering of a question takes up to {p} tokens, more than its cache "
                             f"of {slots}; raise the verifier's max_len.")
        kv = prm.backbone.new_cache(q, slots)
        _, kv = _extend(prm, kv, prompt_tokens, prompt_lengths, prompt_lengths - 1)
        ids = jnp.zeros((q, slots), jnp.int32).at[:, :p].set(prompt_tokens)
        cache = RenderedCache(kv=kv, ids=ids, steps=jnp.zeros((q, max_len), jnp.int32),
                              step_ends=jnp.zeros((q, max_len), jnp.int32), num_steps=jnp.zeros(q, jnp.int32),
                              question=jnp.arange(q, dtype=jnp.int32))
        return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache)

    def extend(self, params, cache: RenderedCache, step_tokens, step_lengths):
        prm = nnx.merge(self.graphdef, params)
        rows, t = step_tokens.shape
        width = self.segment_tokens or 2 * t + 64
        shapes = (jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows, width), jnp.int32),
                  jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.int32))
        start, feed, feed_len, read_at = jax.pure_callback(
            functools.partial(self.renderer.render_round, width=width), shapes, cache.question, cache.steps,
            cache.step_ends, cache.num_steps, cache.ids, cache.kv.lengths, step_tokens, step_lengths)
        logit, kv = extend_steps(prm, dataclasses.replace(cache.kv, lengths=start), feed, feed_len, read_at)
        rows_ix = jnp.arange(rows)[:, None]
        cols = start[:, None] + jnp.arange(width)[None, :]
        cols = jnp.where(jnp.arange(width)[None, :] < feed_len[:, None], cols, cache.ids.shape[1])  # dropped
        ids = cache.ids.at[rows_ix, cols].set(feed, mode="drop")
        written = jnp.take_along_axis(cache.step_ends, jnp.maximum(cache.num_steps - 1, 0)[:, None], axis=1)[:, 0]
        written = jnp.where(cache.num_steps > 0, written, 0)
        cols = written[:, None] + jnp.arange(t)[None, :]
        cols = jnp.where(jnp.arange(t)[None, :] < step_lengths[:, None], cols, cache.steps.shape[1])
        steps = cache.steps.at[rows_ix, cols].set(step_tokens, mode="drop")
        wrote = step_lengths > 0
        step_ends = cache.step_ends.at[jnp.arange(rows), jnp.where(wrote, cache.num_steps, cache.steps.shape[1])].set(
            written + step_lengths, mode="drop")
        new = dataclasses.replace(cache, kv=kv, ids=ids, steps=steps, step_ends=step_ends,
                                  num_steps=cache.num_steps + wrote)
        return logit, new, feed_len


class PublicPRMVerifier(Verifier):
    """A public PRM (`ttcjax.verifiers.hub.load_hf_prm`: model, family format, its tokenizer) as a Verifier:
    on the host it scores whole solutions in one pass; inside search it follows a policy with any tokenizer
    (`RenderingStepScorer`)."""

    step_delimiter = None  # it reads steps however the policy ends them

    def __init__(self, prm: RewardModel, fmt, tokenizer, *, aggregation: str = "last", max_len: int | None = None,
                 segment_tokens: int | None = None, name: str | None = None, mesh=None, rules=None):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}.")
        self.prm, self.fmt, self.tokenizer, self.aggregation = prm, fmt, tokenizer, aggregation
        self.max_len, self.segment_tokens, self.name = max_len, segment_tokens, name or fmt.family
        self.mesh, self.rules = mesh, rules or ShardingRules()
        self._scorers: dict = {}
        self._renderer: StepRenderer | None = None

    @property
    def num_params(self) -> int:
        return self.prm.num_params

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def score(self, questions, solutions, prompts=None):
        inputs = [self.fmt.encode(self.tokenizer, q, steps) for q, steps in zip(questions, solutions)]
        return score_inputs(self.prm, inputs, mesh=self.mesh, rules=self.rules, pad_id=self.pad_id)

    def scorer_prompts(self, questions, prompts):
        return [list(self.fmt.encode(self.tokenizer, q, []).tokens) for q in questions]

    def bind_batch(self, questions, delimiter):
        if self._renderer is not None:
            self._renderer.questions, self._renderer.delimiter = list(questions), delimiter

    def step_scorer(self, tokenizer, mesh=None, rules=None):
        rules = rules or ShardingRules()
        key = (id(tokenizer), mesh, rules)
        if key not in self._scorers:
            if mesh is not None:
                shard_model(self.prm, mesh, rules)
            graphdef, params = nnx.split(self.prm)
            self._renderer = StepRenderer(self.fmt, self.tokenizer, tokenizer)
            self._scorers[key] = (RenderingStepScorer(graphdef, self._renderer, self.max_len, self.segment_tokens),
                                  params)
        scorer, params = self._scorers[key]
        self._renderer = scorer.renderer
        return scorer, params

    def __repr__(self) -> str:
        return f"PublicPRMVerifier({self.name}, aggregation={self.aggregation!r})"


def load_public_verifier(path: str | os.PathLike, family: str | None = None, *, aggregation: str = "last",
                         max_len: int | None = None, mesh=None, rules=None, **dtypes: Any) -> PublicPRMVerifier:
    """A public PRM checkpoint directory (`load_hf_prm`; `family` as there) as a Verifier, its parameters loaded
    onto `mesh` (by `rules`) where one is given."""
    prm, fmt, tokenizer = load_hf_prm(path, family, mesh=mesh, rules=rules or ShardingRules(), **dtypes)
    return PublicPRMVerifier(prm, fmt, tokenizer, aggregation=aggregation, max_len=max_len,
                             name=f"{fmt.family}:{os.fspath(path)}", mesh=mesh, rules=rules)


__all__ = ["PublicPRMVerifier", "RenderingStepScorer", "StepRenderer", "RenderedCache", "load_public_verifier",
           "FAMILIES"]
