"""The KV cache: an explicit pytree that jitted code takes in and gives back.

Rows are independent sequences. Row b holds `lengths[b]` tokens, positions 0..lengths[b]-1, with no gaps; its
next token goes to position `lengths[b]`. Search forks a prefilled prompt into N rows and gathers rows to keep
the selected beams; neither re-runs the model.

Two layouts. A plain cache holds every token of a row in the row's own slots (slot = position). A shared-prefix
cache (`share`, Hydragen's layout) holds each question's prompt once, in `prefix` [Q, ...], and gives each of
its n rows (rows q*n .. q*n+n-1, question-major) only slots of its own for what follows the prompt: position p
of row b sits at own slot p - prefix.lengths[b // n]. Attention reads the prompt with one product for all of
a question's rows and merges it with each row's own slots through the softmax's log-sum-exp
(`ttcjax.models.llama`), so a decode step reads the prompt once per question instead of once per row, and the
memory holds one copy of it. A gather that keeps every row inside its question's group leaves the prefix
untouched; one that moves whole questions (dropping finished ones) gathers the prefix by question too.

The key layout depends on the platform the model is lowered for (`transposes_keys`): slots last on CPUs,
head_dim last on accelerators. Values are [batch, kv_heads, max_len, head_dim] everywhere.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def transposes_keys(platform: str) -> bool:
    """Whether a cache for `platform` (a JAX platform name: 'cpu', 'tpu', 'cuda', 'rocm', or a device's
    'gpu') stores keys transposed, slots last.

    On CPUs it does: a decode step then multiplies and sums over head_dim, a non-minor axis, which streams the
    cache at memory speed (2.3x faster per layer-step than a dot_general with one-row operands). Accelerators
    keep head_dim last: it is the minor (lane) axis that TPU and GPU matrix units tile, a new token's keys are
    one contiguous row, and the decode step is a dot_general on those units."""
    return platform == "cpu"


def write_slots(cache: jax.Array, new: jax.Array, slots: jax.Array, slot_axis: int) -> jax.Array:
    """Write new tokens into one layer's keys or values at per-row slots [B, T].

    Transposed keys: cache [B, K, Dh, S], new [B, K, Dh, T] (slot_axis=3). Values, and keys on accelerators:
    cache [B, K, S, Dh], new [B, K, T, Dh] (slot_axis=2). Out-of-range slots are dropped.
    """
    b, t = slots.shape
    rows = jnp.arange(b)[:, None]
    # The advanced indices (rows, slots) broadcast to [B, T] and lead the update's shape: [B, T, K, Dh].
    update = jnp.moveaxis(new, slot_axis, 1).astype(cache.dtype)
    index = (rows, slice(None), slice(None), slots) if slot_axis == 3 else (rows, slice(None), slots)
    return cache.at[index].set(update, mode="drop")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Prefix:
    """The prompts a shared-prefix cache holds once per question (Q questions, P slots; layout as `KVCache`'s)."""

    k: tuple[jax.Array, ...]  # per layer: [Q, kv_heads, head_dim, P] if keys transposed, else [Q, kv_heads, P, Dh]
    v: tuple[jax.Array, ...]  # per layer: [Q, kv_heads, P, head_dim]
    lengths: jax.Array  # [Q] int32: the prompt's tokens (positions 0 .. lengths[q]-1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    # keys per layer: [batch, kv_heads, head_dim, slots] if keys_transposed, else [batch, kv_heads, slots, head_dim]
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, slots, head_dim]
    lengths: jax.Array  # [batch] int32: tokens per row, its prompt included (the next token's position)
    # static: the key layout (`transposes_keys`), chosen by the model that made the cache
    keys_transposed: bool = dataclasses.field(default=True, metadata=dict(static=True))
    prefix: Prefix | None = None  # the prompts, once per question (`share`); None: every row holds its own
    # static, shared-prefix caches only: the most tokens a row holds, its prompt included (a plain cache: its slots)
    capacity: int = dataclasses.field(default=0, metadata=dict(static=True))

    @classmethod
    def init(cls, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int,
             dtype=jnp.float32, keys_transposed: bool = True) -> "KVCache":
        key_shape = (batch, num_kv_heads, head_dim, max_len) if keys_transposed else (batch, num_kv_heads, max_len,
                                                                                      head_dim)
        return cls(
            k=tuple(jnp.zeros(key_shape, dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros((batch, num_kv_heads, max_len, head_dim), dtype) for _ in range(num_layers)),
            lengths=jnp.zeros((batch,), jnp.int32),
            keys_transposed=keys_transposed,
        )

    @classmethod
    def for_model(cls, config, batch: int, max_len: int, platform: str | None = None) -> "KVCache":
        """An empty cache for a model of `config` lowered for `platform` (default: JAX's default backend);
        `Transformer.new_cache` passes the model's own."""
        return cls.init(config.num_layers, batch, config.num_kv_heads, max_len, config.dim_per_head,
                        config.jnp_dtype, transposes_keys(platform or jax.default_backend()))

    @property
    def key_slot_axis(self) -> int:
        """The axis of `k`'s arrays that holds the slots."""
        return 3 if self.keys_transposed else 2

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def slots(self) -> int:
        """Slots each row has of its own (a plain cache: all of them)."""
        return self.v[0].shape[2]

    @property
    def max_len(self) -> int:
        """The most tokens a row holds, its prompt included."""
        return self.capacity if self.prefix is not None else self.slots

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def offsets(self) -> jax.Array:
        """[batch] int32: the position of each row's first own slot (its prompt's length; 0 in a plain cache)."""
        if self.prefix is None:
            return jnp.zeros_like(self.lengths)
        return jnp.repeat(self.prefix.lengths, self.batch // self.prefix.lengths.shape[0])

    @property
    def filled(self) -> jax.Array:
        """[batch] int32: own slots each row has filled."""
        return self.lengths - self.offsets

    def append(self, k: tuple[jax.Array, ...], v: tuple[jax.Array, ...], lengths: jax.Array) -> "KVCache":
        """This cache with the first lengths[b] of T new tokens of row b written after its filled slots and counted:
        the keys and values a model call with `write_cache=False` returned (per layer, [B, K, Dh, T] or
        [B, K, T, Dh] as this cache's keys, [B, K, T, Dh] values). Tokens past a row's capacity (or at a negative
        own slot: a prompt token a shared prefix holds) are dropped."""
        t = v[0].shape[2]
        slots = self.filled[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T] own slots
        below_capacity = slots < (self.max_len - self.offsets)[:, None]
        keep = (jnp.arange(t)[None, :] < lengths[:, None]) & (slots >= 0) & below_capacity
        slots = jnp.where(keep, slots, self.slots)
        return dataclasses.replace(
            self, k=tuple(write_slots(c, x, slots, self.key_slot_axis) for c, x in zip(self.k, k)),
            v=tuple(write_slots(c, x, slots, 2) for c, x in zip(self.v, v)), lengths=self.lengths + lengths)

    def share(self, n: int, max_len: int, floor: int) -> "KVCache":
        """This cache, one prompt per row, as the shared prefix of n rows each (row b*n+i reads prompt b in place:
        no copy): rows that hold at most `max_len` tokens, with `max_len - floor` slots of their own, where `floor`
        is at most every prompt's length (so a row fills its own slots no sooner than max_len). [B] -> [B*n]."""
        if self.prefix is not None:
            raise ValueError("share: this cache already has a shared prefix; fork its rows instead.")
        if not 1 <= floor < max_len:
            raise ValueError(f"share: floor={floor} must be in [1, max_len={max_len}).")
        if not isinstance(self.lengths, jax.core.Tracer) and int(jnp.min(self.lengths)) < floor:
            raise ValueError(f"share: a prompt of {int(jnp.min(self.lengths))} tokens is shorter than floor={floor}.")
        rows, slots = self.batch * n, max_len - floor
        key_shape = list(self.k[0].shape)
        key_shape[0], key_shape[self.key_slot_axis] = rows, slots
        value_shape = (rows, self.v[0].shape[1], slots, self.v[0].shape[3])
        return KVCache(k=tuple(jnp.zeros(key_shape, x.dtype) for x in self.k),
                       v=tuple(jnp.zeros(value_shape, x.dtype) for x in self.v),
                       lengths=jnp.repeat(self.lengths, n), keys_transposed=self.keys_transposed,
                       prefix=Prefix(k=self.k, v=self.v, lengths=self.lengths), capacity=max_len)

    def fork(self, n: int) -> "KVCache":
        """Replicate each row n times: row b becomes rows b*n .. b*n+n-1. [B, ...] -> [B*n, ...]. A shared prefix
        stays as it is (its questions now have n times the rows)."""
        own = dataclasses.replace(self, prefix=None)
        return dataclasses.replace(jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), own), prefix=self.prefix)

    def gather(self, rows: jax.Array, questions: jax.Array | None = None) -> "KVCache":
        """Keep rows `rows` [R] (any order, repeats allowed): beam selection. [B, ...] -> [R, ...].

        A shared prefix stays in place where every kept row stays among its question's rows (`questions` None);
        where whole questions move, `questions` [R // n] names the question whose prefix each group of n reads."""
        rows = jnp.asarray(rows, jnp.int32)
        own = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), dataclasses.replace(self, prefix=None))
        prefix = self.prefix
        if prefix is not None and questions is not None:
            questions = jnp.asarray(questions, jnp.int32)
            prefix = jax.tree.map(lambda x: jnp.take(x, questions, axis=0), prefix)
        return dataclasses.replace(own, prefix=prefix)

    def resize(self, max_len: int) -> "KVCache":
        """Grow (zero-pad) or shrink the slot axis; shrinking below a filled slot is an error."""
        if self.prefix is not None:
            raise ValueError("resize: a shared-prefix cache's capacity is fixed by `share`.")
        cur = self.max_len
        if max_len == cur:
            return self
        shrink = max_len < cur and not isinstance(self.lengths, jax.core.Tracer)
        if shrink and int(jnp.max(self.lengths)) > max_len:
            raise ValueError(f"cannot shrink the cache to {max_len} slots: a row holds {int(jnp.max(self.lengths))}.")

        def fit(x, axis):
            if max_len > cur:
                return jnp.pad(x, [(0, max_len - cur) if a == axis else (0, 0) for a in range(x.ndim)])
            return jax.lax.slice_in_dim(x, 0, max_len, axis=axis)

        return dataclasses.replace(self, k=tuple(fit(x, self.key_slot_axis) for x in self.k),
                                   v=tuple(fit(x, 2) for x in self.v))


def extend_in_chunks(forward, cache: KVCache, tokens: jax.Array, lengths: jax.Array, read_at: jax.Array, *,
                     chunk: int, widths: tuple[int, ...] | None = None, carry=None):
    """Feed tokens [R, T] (row r's first lengths[r] are real; 0: none) into `cache`, `chunk` columns at a time
    in a `lax.while_loop` that stops after the longest row's last chunk: what row r's `forward` gives at its
    position read_at[r] among the T tokens, and the cache advanced by lengths.

    `forward(cache, tokens [R, chunk], at [R], attn_len)` reads the cache without writing it (a model call with
    `write_cache=False`) and gives (what it reads at each row's column `at` of the chunk, (keys, values) of the
    chunk), which `KVCache.append` then writes. With `widths` (ascending own-slot counts, the last the cache's),
    each chunk attends only to the narrowest that holds every row's tokens after it, picked by a `lax.switch`
    whose branches read the cache and write nothing (a branch that wrote it would make XLA copy all of it into
    and out of the conditional). One copy of `forward` per width is compiled, whatever T is: the loop, not a
    switch over token buckets, makes a long read and a short one cost what their tokens cost (a chunk wider than
    T is cut to T).

    With `carry` (a pytree, rows on axis 0: what a row's tokens so far left, beyond the cache), `forward` is
    `forward(cache, tokens, at, attn_len, carry, n)`, with n [R] the row's real tokens in the chunk, and gives the
    carry after them as a third item; the result is then (what it read, the cache, the carry)."""
    if carry is None:
        def step(c, tk, a, w, cr, n):
            got, kv = forward(c, tk, a, w)
            return got, kv, cr
    else:
        step = forward
    r, t = tokens.shape
    chunk = min(chunk, t)
    n_chunks = -(-t // chunk)
    tokens = jnp.pad(tokens, ((0, 0), (0, n_chunks * chunk - t)))
    widths = widths or (None,)
    zeros = jnp.zeros(r, jnp.int32)
    out = jax.eval_shape(lambda c, tk, cr: step(c, tk, zeros, widths[-1], cr, zeros)[0], cache, tokens[:, :chunk],
                         carry)
    out = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)
    longest = jnp.max(lengths)

    def body(loop):
        i, cache, out, carried = loop
        start = i * chunk
        cols = jax.lax.dynamic_slice_in_dim(tokens, start, chunk, axis=1)
        n = jnp.clip(lengths - start, 0, chunk)  # [R] real tokens of each row in this chunk
        at = jnp.clip(read_at - start, 0, chunk - 1)
        if len(widths) == 1:
            got, (k, v), carried = step(cache, cols, at, widths[0], carried, n)
        else:
            which = jnp.searchsorted(jnp.asarray(widths), jnp.max(cache.filled + n))
            got, (k, v), carried = jax.lax.switch(
                jnp.minimum(which, len(widths) - 1),
                [lambda c, tk, a, cr, m, w=w: step(c, tk, a, w, cr, m) for w in widths], cache, cols, at, carried,
                n)
        here = (read_at >= start) & (read_at < start + chunk)
        out = jax.tree.map(lambda new, old: jnp.where(here.reshape((r,) + (1,) * (new.ndim - 1)), new, old),
                           got, out)
        return i + 1, cache.append(k, v, n), out, carried

    _, cache, out, carry = jax.lax.while_loop(lambda c: c[0] * chunk < longest, body,
                                              (jnp.int32(0), cache, out, carry))
    return (out, cache) if carry is None else (out, cache, carry)
