"""The KV cache: an explicit pytree that jitted code takes in and gives back.

Rows are independent sequences. Row b holds `lengths[b]` filled slots, 0..lengths[b]-1, with no gaps;
its next token is written at slot `lengths[b]`. Search forks a prefilled prompt into N rows and gathers
rows to keep the selected beams; neither re-runs the model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    # Keys are stored transposed, slots last: a decode step then sums over head_dim, a non-minor axis,
    # which streams the cache at memory speed on CPUs (see Attention).
    k: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, head_dim, max_len]
    v: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, max_len, head_dim]
    lengths: jax.Array  # [batch] int32: filled slots per row

    @classmethod
    def init(cls, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int,
             dtype=jnp.float32) -> "KVCache":
        return cls(
            k=tuple(jnp.zeros((batch, num_kv_heads, head_dim, max_len), dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros((batch, num_kv_heads, max_len, head_dim), dtype) for _ in range(num_layers)),
            lengths=jnp.zeros((batch,), jnp.int32),
        )

    @classmethod
    def for_model(cls, config, batch: int, max_len: int) -> "KVCache":
        return cls.init(config.num_layers, batch, config.num_kv_heads, max_len, config.dim_per_head,
                        config.jnp_dtype)

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def fork(self, n: int) -> "KVCache":
        """Replicate each row n times: row b becomes rows b*n .. b*n+n-1. [B, ...] -> [B*n, ...]."""
        return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), self)

    def gather(self, rows: jax.Array) -> "KVCache":
        """Keep rows `rows` [R] (any order, repeats allowed): beam selection. [B, ...] -> [R, ...]."""
        rows = jnp.asarray(rows, jnp.int32)
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), self)

    def resize(self, max_len: int) -> "KVCache":
        """Grow (zero-pad) or shrink the slot axis; shrinking below a filled slot is an error."""
        cur = self.max_len
        if max_len == cur:
            return self
        if max_len > cur:
            grow_k = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, max_len - cur)))  # noqa: E731
            grow_v = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, max_len - cur), (0, 0)))  # noqa: E731
            return KVCache(tuple(map(grow_k, self.k)), tuple(map(grow_v, self.v)), self.lengths)
        if not isinstance(self.lengths, jax.core.Tracer) and int(jnp.max(self.lengths)) > max_len:
            raise ValueError(f"cannot shrink the cache to {max_len} slots: a row holds {int(jnp.max(self.lengths))}.")
        return KVCache(tuple(x[..., :max_len] for x in self.k), tuple(x[:, :, :max_len] for x in self.v),
                       self.lengths)
