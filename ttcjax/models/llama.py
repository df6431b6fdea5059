"""A Llama-family decoder-only transformer (Llama, Mistral, Qwen2) in Flax NNX.

RMSNorm, RoPE in Hugging Face's half-split layout, SwiGLU, grouped-query attention, optional biases and
sliding windows. One forward pass serves training (no cache), prefill and decode (with a `KVCache`).

Shapes: B batch, T new tokens, S cache slots, D embed, H query heads, K kv heads, G = H // K,
Dh head dim, F mlp width, V vocab.

Attention is lowered for one platform, `Transformer.platform` (static, in the model's graph; `set_platform`):
on CPUs keys are stored transposed and a decode step multiplies and sums (`transposes_keys` says why), and
the score dot runs in float32 (XLA:CPU has no native bf16 dot); on accelerators keys keep
head_dim last and every attention product is a dot_general accumulating in float32. It defaults to JAX's
default backend, so a program exported for TPU or CUDA from a CPU host needs `set_platform` first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttcjax.models.cache import KVCache, transposes_keys, write_slots as _write
from ttcjax.models.config import ModelConfig

# Logical axes of every parameter, by its attribute name. ttcjax.models.sharding maps them onto a mesh.
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embedding": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "wq": ("embed", "heads", "head_dim"),
    "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"),
    "wo": ("heads", "head_dim", "embed"),
    "bq": ("heads", "head_dim"),
    "bk": ("kv_heads", "head_dim"),
    "bv": ("kv_heads", "head_dim"),
    "bo": ("embed",),
    "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
    "b_gate": ("mlp",),
    "b_up": ("mlp",),
    "b_down": ("embed",),
    "scale": ("embed",),
    # reward-model heads (ttcjax.verifiers.reward_model)
    "v_w": ("embed",),
    "v_b": (),
    "l_w": (),
    "c_w1": ("embed", None),
    "c_b1": (None,),
    "c_w2": ("embed", None),
    "c_b2": (None,),
}

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def param_path(tree_path) -> tuple:
    """('layers', 0, 'attn', 'wq') from a jax tree path into an nnx State (its '.value' step dropped)."""
    names = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in tree_path)
    return names[:-1] if names and names[-1] == "value" else names


def _normal(rngs: nnx.Rngs, shape, dtype, std: float = 0.02) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype))


# ---- RoPE ------------------------------------------------------------------------------------------


def rope_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [Dh // 2] and the cos/sin multiplier, as Hugging Face computes them."""
    dim = config.dim_per_head
    base = config.rope_theta
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32), 1.0
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32), 1.0
    if scaling.kind == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    if scaling.kind == "yarn":
        factor = scaling.factor
        old_len = scaling.original_max_position_embeddings or config.max_position_embeddings
        attention_factor = scaling.attention_factor
        if attention_factor is None:
            attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

        def correction_dim(rotations):
            return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
        if scaling.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
        inv = (1 / (factor * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation
        return inv.astype(np.float32), float(attention_factor)
    raise ValueError(f"unknown rope scaling {scaling.kind!r}")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray, multiplier: float) -> jax.Array:
    """Rotate x [B, T, N, Dh] at positions [B, T]; half-split layout (rotate_half), as in Hugging Face."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, Dh/2]
    cos = (jnp.cos(angles) * multiplier)[:, :, None, :]
    sin = (jnp.sin(angles) * multiplier)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ---- Layers ----------------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, rngs: nnx.Rngs):
        d, h, k, dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.dim_per_head
        pd = config.jnp_param_dtype
        self.wq = _normal(rngs, (d, h, dh), pd)
        self.wk = _normal(rngs, (d, k, dh), pd)
        self.wv = _normal(rngs, (d, k, dh), pd)
        self.wo = _normal(rngs, (h, dh, d), pd)
        if config.qkv_bias:
            self.bq = nnx.Param(jnp.zeros((h, dh), pd))
            self.bk = nnx.Param(jnp.zeros((k, dh), pd))
            self.bv = nnx.Param(jnp.zeros((k, dh), pd))
        if config.o_bias:
            self.bo = nnx.Param(jnp.zeros((d,), pd))
        self.config = config
        self.window = config.layer_window(layer)

    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # [B, T] RoPE positions
        rope: tuple[np.ndarray, float],
        kv: tuple[jax.Array, jax.Array] | None,  # this layer's cache: keys as `_attend` has them, values [B, K, S, Dh]
        write_slots: jax.Array | None,  # [B, T] cache slot of each new token (own slots: after a shared prefix)
        attn_len: int | None,
        key_mask: jax.Array | None,  # [B, T] (no cache) keys that are real tokens
        segment_ids: jax.Array | None = None,  # [B, T] (no cache) packed sequences: attend within a segment
        platform: str = "cpu",  # the platform attention is lowered for: Transformer.platform, which passes it
        # a shared prefix: its keys and values [Q, ...], lengths [Q], and each row's own slots below its capacity [B]
        prefix: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None = None,
        write: bool = True,  # False: read the cache only; return the new tokens' keys and values (`_attend_appended`)
    ):
        cfg, dt = self.config, x.dtype
        transposed = transposes_keys(platform)
        q = jnp.einsum("BTD,DHd->BTHd", x, self.wq[...].astype(dt))
        k = jnp.einsum("BTD,DKd->BTKd", x, self.wk[...].astype(dt))
        v = jnp.einsum("BTD,DKd->BTKd", x, self.wv[...].astype(dt))
        if cfg.qkv_bias:
            q, k, v = q + self.bq[...].astype(dt), k + self.bk[...].astype(dt), v + self.bv[...].astype(dt)
        q = apply_rope(q, positions, *rope)
        k = apply_rope(k, positions, *rope)
        key_slot_axis = 3 if transposed else 2
        k = k.transpose(0, 2, 3, 1) if transposed else k.transpose(0, 2, 1, 3)  # [B, K, Dh, T] or [B, K, T, Dh]
        v = v.transpose(0, 2, 1, 3)  # [B, K, T, Dh]

        if kv is not None and not write:  # the cache read only; the new tokens' keys and values go back instead
            cache_k, cache_v = kv
            width = attn_len or cache_v.shape[2]
            limit = jnp.full(x.shape[:1], cache_v.shape[2]) if prefix is None else prefix[3]
            out = _attend_appended(q, jax.lax.slice_in_dim(cache_k, 0, width, axis=key_slot_axis),
                                   cache_v[:, :, :width], write_slots, k, v, limit,
                                   None if prefix is None else prefix[:3], self.window, platform=platform)
            kv = (k, v)
        elif kv is None:
            out = _attend(q, k, v, jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2]), self.window, key_mask,
                          segment_ids, platform=platform)
        else:
            cache_k, cache_v = kv
            # not written: a negative own slot (a token a shared prefix already holds, read again), and, after a
            # shared prefix, a slot at or past the row's capacity (a plain cache has no slot there)
            limit = cache_v.shape[2] if prefix is None else prefix[3][:, None]
            written = jnp.where((write_slots < 0) | (write_slots >= limit), cache_v.shape[2], write_slots)
            cache_k = _write(cache_k, k, written, slot_axis=key_slot_axis)
            cache_v = _write(cache_v, v, written, slot_axis=2)
            kv = (cache_k, cache_v)
            width = attn_len or cache_v.shape[2]
            keys = jax.lax.slice_in_dim(cache_k, 0, width, axis=key_slot_axis)
            values = cache_v[:, :, :width]
            if prefix is not None:
                out = _attend_shared(q, keys, values, write_slots, *prefix, self.window, platform=platform)
            else:
                out = _attend(q, keys, values, write_slots, self.window, None, None, platform=platform)
        out = jnp.einsum("BTHd,HdD->BTD", out, self.wo[...].astype(dt))
        if cfg.o_bias:
            out = out + self.bo[...].astype(dt)
        return out, kv


def _attend(q, keys, values, q_slots, window, key_mask, segment_ids=None, *, platform: str) -> jax.Array:
    """Grouped-query attention. q [B, T, H, Dh]; keys [B, K, Dh, S] on CPUs, [B, K, S, Dh] on accelerators
    (`transposes_keys(platform)`); values [B, K, S, Dh]; q_slots [B, T].

    Query t of row b sees key slot s iff s <= q_slots[b, t] (and within the sliding window, and, without a
    cache, s is a real token of the same packed segment: key_mask [B, S], segment_ids [B, S] with S == T).
    Returns [B, T, H, Dh].
    """
    b, t, h, dh = q.shape
    kh = keys.shape[1]
    transposed = transposes_keys(platform)
    q = q.reshape(b, t, kh, h // kh, dh)
    key_slots = jnp.arange(values.shape[2])
    allowed = key_slots[None, None, :] <= q_slots[:, :, None]  # [B, T, S]
    if window is not None:
        allowed &= q_slots[:, :, None] - key_slots[None, None, :] < window
    if key_mask is not None:
        allowed &= key_mask[:, None, :].astype(bool)
    if segment_ids is not None:
        allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
    if t == 1 and transposed:
        # On CPUs one query per row (decoding) is memory-bound: multiply-and-sum over a non-minor axis streams
        # the cache once and fuses the window slice, where a batched matmul with 1-row operands does not.
        qf = q[:, 0].astype(jnp.float32)  # [B, K, G, Dh]
        scores = jnp.sum(qf[..., None] * keys[:, :, None].astype(jnp.float32), axis=3)  # [B, K, G, S]
        scores = jnp.where(allowed[:, 0][:, None, None], scores * dh**-0.5, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.sum(probs[..., None] * values[:, :, None].astype(jnp.float32), axis=3)  # [B, K, G, Dh]
        return out.reshape(b, 1, h, dh).astype(q.dtype)
    key_axes = "BKdS" if transposed else "BKSd"
    if platform == "cpu":
        # XLA:CPU has no native bf16 x bf16 -> f32 dot (it emulates one); accelerators accumulate in f32 natively
        scores = jnp.einsum(f"BTKGd,{key_axes}->BKGTS", q.astype(jnp.float32), keys.astype(jnp.float32))
    else:
        scores = jnp.einsum(f"BTKGd,{key_axes}->BKGTS", q, keys.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(allowed[:, None, None], scores * dh**-0.5, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("BKGTS,BKSd->BTKGd", probs, values)
    return out.reshape(b, t, h, dh).astype(q.dtype)


def _dot(spec, x, y):
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _operands(q, platform: str):
    """The queries and a cast for keys and values: CPUs compute in float32 (XLA:CPU has no native bf16 dot);
    accelerators keep the model's dtype and accumulate in float32."""
    if platform == "cpu":
        return q.astype(jnp.float32), (lambda x: x.astype(jnp.float32))
    return q, (lambda x: x.astype(q.dtype))


def _partial(scores, allowed, scale):
    """One part of a softmax: its scores' max, the sum of exp(score - max) and those weights."""
    scores = jnp.where(allowed, scores * scale, _MASK_VALUE)
    top = jnp.max(scores, axis=-1)
    weights = jnp.exp(scores - top[..., None])
    return top, jnp.sum(weights, axis=-1), weights


def _prefix_part(qc, q_slots, prefix_keys, prefix_values, prefix_lengths, window, cast, transposed):
    """The shared prefix's part of attention for queries qc [B, T, H, Dh] at own slots q_slots [B, T]: every query
    of a question's rows against its prompt at once. (max, sum, unnormalised output), each [B, T, K, G, ...]."""
    b, t, h, dh = qc.shape
    nq, kh, width = prefix_values.shape[0], prefix_values.shape[1], prefix_values.shape[2]
    n, g = b // nq, h // kh
    positions = prefix_lengths[:, None, None] + q_slots.reshape(nq, n, t)  # [Q, N, T]
    slot = jnp.arange(width)
    allowed = (slot < prefix_lengths[:, None, None, None]) & (slot <= positions[..., None])  # [Q, N, T, P]
    if window is not None:
        allowed &= positions[..., None] - slot < window
    scores = _dot(f"QNTKGd,{'QKdP' if transposed else 'QKPd'}->QKNTGP", qc.reshape(nq, n, t, kh, g, dh),
                  cast(prefix_keys))
    top, total, weights = _partial(scores, allowed[:, None, :, :, None, :], dh**-0.5)
    out = _dot("QKNTGP,QKPd->QKNTGd", weights.astype(qc.dtype), cast(prefix_values))

    def rows(x):  # [Q, K, N, T, G, ...] -> [B, T, K, G, ...]
        x = jnp.moveaxis(x, 1, 3)  # [Q, N, T, K, G, ...]
        return x.reshape((b, t, kh, g) + x.shape[5:])

    return rows(top), rows(total), rows(out)


def _merge(parts):
    """Parts of one softmax, each (max, sum, unnormalised output) over its keys, as the softmax over all of them:
    (o1 e^(m1-m) + o2 e^(m2-m)) / (l1 e^(m1-m) + l2 e^(m2-m)) with m = max(m1, m2)."""
    top = parts[0][0]
    for part in parts[1:]:
        top = jnp.maximum(top, part[0])
    out = total = 0
    for m, l, o in parts:
        w = jnp.exp(m - top)
        out, total = out + o * w[..., None], total + l * w
    return out / total[..., None]


def _attend_shared(q, keys, values, q_slots, prefix_keys, prefix_values, prefix_lengths, own_limit, window, *,
                   platform: str) -> jax.Array:
    """Attention over a shared prefix and each row's own slots, combined exactly.

    q [B, T, H, Dh] with rows question-major (B = Q*N: row b reads prompt b // N); own keys and values as
    `_attend` has them, S slots; q_slots [B, T] the query's own slot (its position minus its prompt's length;
    negative for a prompt token read again); the prefix's keys [Q, K, Dh, P] on CPUs, [Q, K, P, Dh] on
    accelerators, values [Q, K, P, Dh], lengths [Q]; own_limit [B] the own slots below the row's capacity (those
    past it are never written). Returns [B, T, H, Dh].

    Each part gives its scores' max, the sum of exp(score - max) and the unnormalised output, merged as the
    softmax over both parts (`_merge`: Hydragen; FlashInfer's cascade attention). The prefix part is one product
    per question for all of its rows' queries, so a decode step reads each prompt once, however many rows share it.
    """
    b, t, h, dh = q.shape
    kh = values.shape[1]
    g = h // kh
    transposed = transposes_keys(platform)
    qc, cast = _operands(q, platform)
    prefix = _prefix_part(qc, q_slots, prefix_keys, prefix_values, prefix_lengths, window, cast, transposed)

    # the row's own slots
    slot = jnp.arange(values.shape[2])
    allowed = (slot <= q_slots[:, :, None]) & (slot < own_limit[:, None, None])  # [B, T, S]
    if window is not None:
        allowed &= q_slots[:, :, None] - slot < window
    qr = qc.reshape(b, t, kh, g, dh)
    if t == 1 and transposed:  # one query per row on CPUs: multiply and sum streams the cache (as `_attend`)
        scores = jnp.sum(qr[:, 0, :, :, :, None] * cast(keys)[:, :, None], axis=3)[:, None]  # [B, 1, K, G, S]
    else:
        scores = _dot(f"BTKGd,{'BKdS' if transposed else 'BKSd'}->BTKGS", qr, cast(keys))
    o_top, o_sum, weights = _partial(scores, allowed[:, :, None, None, :], dh**-0.5)
    if t == 1 and transposed:
        o_out = jnp.sum(weights[:, 0, :, :, :, None] * cast(values)[:, :, None], axis=3)[:, None]  # [B, 1, K, G, Dh]
    else:
        o_out = _dot("BTKGS,BKSd->BTKGd", weights.astype(qc.dtype), cast(values))
    return _merge([prefix, (o_top, o_sum, o_out)]).reshape(b, t, h, dh).astype(q.dtype)


def _attend_appended(q, keys, values, q_slots, new_keys, new_values, limit, prefix, window, *,
                     platform: str) -> jax.Array:
    """Attention of T new tokens over a cache they are not written into: the cache's filled own slots, read only,
    and the new tokens themselves (causally), in one softmax (and a shared prefix's part merged with it).

    q [B, T, H, Dh]; the cache's own keys and values as `_attend` has them, W slots; q_slots [B, T] the new tokens'
    own slots (the first is the row's filled count); new keys [B, K, Dh, T] on CPUs, [B, K, T, Dh] on accelerators,
    values [B, K, T, Dh]; limit [B] the own slots below the row's capacity (a new token at or past it, or at a
    negative slot, would not be written, so no query sees it); prefix None or (keys, values, lengths) as
    `_attend_shared` has them. Returns [B, T, H, Dh]: what writing the new tokens and then attending gives.

    Nothing here writes the cache, so a caller that picks among such calls with `lax.switch` passes the cache in
    read only and writes the keys and values it gets back once, outside: a branch that updates a cache makes XLA
    copy the whole cache into and out of the conditional on every call."""
    b, t, h, dh = q.shape
    kh = values.shape[1]
    g = h // kh
    transposed = transposes_keys(platform)
    qc, cast = _operands(q, platform)
    spec = "BKdS" if transposed else "BKSd"
    qr = qc.reshape(b, t, kh, g, dh)
    slot = jnp.arange(values.shape[2])
    cached = slot[None, None, :] < q_slots[:, :1, None]  # [B, 1, W] the filled slots
    if window is not None:
        cached = cached & (q_slots[:, :, None] - slot[None, None, :] < window)
    col = jnp.arange(t)
    written = (q_slots >= 0) & (q_slots < limit[:, None])  # [B, T]
    fresh = (col[None, None, :] <= col[None, :, None]) & written[:, None, :]  # [B, T, T]
    if window is not None:
        fresh &= (col[None, :, None] - col[None, None, :]) < window
    allowed = jnp.concatenate([jnp.broadcast_to(cached, (b, t, slot.shape[0])), fresh], axis=2)
    scores = jnp.concatenate([_dot(f"BTKGd,{spec}->BTKGS", qr, cast(keys)),
                              _dot(f"BTKGd,{spec}->BTKGS", qr, cast(new_keys))], axis=-1)
    top, total, weights = _partial(scores, allowed[:, :, None, None, :], dh**-0.5)
    weights = weights.astype(qc.dtype)
    out = (_dot("BTKGS,BKSd->BTKGd", weights[..., :slot.shape[0]], cast(values))
           + _dot("BTKGS,BKSd->BTKGd", weights[..., slot.shape[0]:], cast(new_values)))
    parts = [(top, total, out)]
    if prefix is not None:
        parts.insert(0, _prefix_part(qc, q_slots, *prefix, window, cast, transposed))
    return _merge(parts).reshape(b, t, h, dh).astype(q.dtype)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        d, f, pd = config.hidden_size, config.intermediate_size, config.jnp_param_dtype
        self.w_gate = _normal(rngs, (d, f), pd)
        self.w_up = _normal(rngs, (d, f), pd)
        self.w_down = _normal(rngs, (f, d), pd)
        if config.mlp_bias:
            self.b_gate = nnx.Param(jnp.zeros((f,), pd))
            self.b_up = nnx.Param(jnp.zeros((f,), pd))
            self.b_down = nnx.Param(jnp.zeros((d,), pd))
        self.bias = config.mlp_bias

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        gate = x @ self.w_gate[...].astype(dt)
        up = x @ self.w_up[...].astype(dt)
        if self.bias:
            gate, up = gate + self.b_gate[...].astype(dt), up + self.b_up[...].astype(dt)
        out = (jax.nn.silu(gate) * up) @ self.w_down[...].astype(dt)
        return out + self.b_down[...].astype(dt) if self.bias else out


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, rngs: nnx.Rngs):
        pd = config.jnp_param_dtype
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.attn = Attention(config, layer, rngs)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.mlp = MLP(config, rngs)

    def __call__(self, x, positions, rope, kv, write_slots, attn_len, key_mask, segment_ids=None, platform="cpu",
                 prefix=None, write=True):
        attn_out, kv = self.attn(self.attn_norm(x), positions, rope, kv, write_slots, attn_len, key_mask,
                                 segment_ids, platform, prefix, write)
        x = x + attn_out
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nnx.Module):
    """The decoder. `__call__` runs training (no cache), prefill and decode steps alike.

    `platform` (static): the JAX platform its attention is lowered for (see the module docstring), JAX's
    default backend unless `set_platform` names another."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, platform: str | None = None):
        self.config = config
        self.platform = platform or jax.default_backend()
        pd = config.jnp_param_dtype
        self.embedding = _normal(rngs, (config.vocab_size, config.hidden_size), pd)
        self.layers = nnx.List([Block(config, i, rngs) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        if config.has_lm_head and not config.tie_word_embeddings:
            self.lm_head = _normal(rngs, (config.hidden_size, config.vocab_size), pd)

    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int
        positions: jax.Array | None = None,  # [B, T]; defaults to the cache slots (or 0..T-1)
        cache: KVCache | None = None,
        *,
        attn_len: int | None = None,
        key_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        logits_at: jax.Array | None = None,
        return_hidden: bool = False,
        return_logits: bool = True,
        write_cache: bool = True,
    ):
        """Run the model on `tokens`.

        With a cache, the new tokens of row b go to positions `cache.lengths[b] + arange(T)` (its own slots
        `cache.filled[b] + arange(T)`: after a shared prefix, the prompt is not in them) and the returned cache has
        `lengths + T`. `attn_len` (static) limits attention to the first `attn_len` own slots, which must hold
        every filled one; a shared prefix is read whole. `logits_at` [B] picks one position per row and returns logits
        [B, V] instead of [B, T, V]. `segment_ids` [B, T] (training on packed sequences, no cache) keeps
        attention inside each segment; pass per-segment `positions` with it. `return_logits=False` skips
        the vocabulary projection (logits None), for heads that read the hidden states. `write_cache=False` reads the
        cache without writing it and returns, in the cache's place, the new tokens' keys and values (per layer, in
        the cache's layout), for `KVCache.append` to write: outside a `lax.switch` that picks among such calls, so
        the switch takes the cache read only (a branch that writes it copies the whole cache). Returns
        (logits, cache, hidden) where hidden, if asked for, is the tuple of inputs to each layer followed by the
        final normalised hidden state, as Hugging Face's `output_hidden_states`.
        """
        cfg = self.config
        dt = cfg.jnp_dtype
        b, t = tokens.shape
        write_slots = None
        if cache is not None and cache.keys_transposed != transposes_keys(self.platform):
            raise ValueError(f"a KV cache laid out for another platform (keys_transposed={cache.keys_transposed}) "
                             f"was fed to a model lowered for {self.platform!r}; make caches with model.new_cache.")
        own_limit = None
        if cache is not None:
            offsets = cache.offsets  # [B] where each row's own slots begin (0 without a shared prefix)
            write_slots = (cache.lengths - offsets)[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T] own slots
            if cache.prefix is not None:
                own_limit = cache.max_len - offsets  # [B] own slots below each row's capacity
        if positions is None:
            positions = (cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32) if cache is not None
                         else jnp.broadcast_to(jnp.arange(t), (b, t)))
        rope = rope_frequencies(cfg)

        x = jnp.take(self.embedding[...], tokens, axis=0).astype(dt)  # [B, T, D]
        hidden = []
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            if return_hidden:
                hidden.append(x)
            kv = None if cache is None else (cache.k[i], cache.v[i])
            prefix = None if cache is None or cache.prefix is None else (
                cache.prefix.k[i], cache.prefix.v[i], cache.prefix.lengths, own_limit)
            x, kv = block(x, positions, rope, kv, write_slots, attn_len, key_mask, segment_ids, self.platform, prefix,
                          write_cache)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        x = self.final_norm(x)
        if return_hidden:
            hidden.append(x)
        if cache is not None and not write_cache:
            cache = (tuple(new_k), tuple(new_v))
        elif cache is not None:
            cache = dataclasses.replace(cache, k=tuple(new_k), v=tuple(new_v), lengths=cache.lengths + t)
        if not return_logits:
            return None, cache, (tuple(hidden) if return_hidden else None)
        if not cfg.has_lm_head:
            raise ValueError("this model has no lm_head (config.has_lm_head=False: a reward model's backbone); "
                             "call it with return_logits=False and read the hidden states.")
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[:, None, None].astype(jnp.int32), axis=1)[:, 0]  # [B, D]
        return self.logits(x), cache, (tuple(hidden) if return_hidden else None)

    def logits(self, x: jax.Array, dtype=None) -> jax.Array:
        """The vocabulary projection (the tied embedding or `lm_head`): final normalised hidden states [..., D] ->
        logits [..., V] float32, multiplied in `dtype` (the compute dtype unless given: a reward model reads its
        backbone's likelihoods in float32)."""
        dt = dtype or self.config.jnp_dtype
        x = x.astype(dt)
        if self.config.tie_word_embeddings:
            return jnp.einsum("...D,VD->...V", x, self._projection().astype(dt)).astype(jnp.float32)
        return jnp.einsum("...D,DV->...V", x, self._projection().astype(dt)).astype(jnp.float32)

    def logit_rows(self, ids: Sequence[int]) -> jax.Array:
        """The vocabulary projection's rows for token `ids`, [len(ids), D] float32: logits of those tokens alone are
        hidden @ rows.T."""
        ids = jnp.asarray(ids)
        if self.config.tie_word_embeddings:
            return self._projection()[ids].astype(jnp.float32)
        return self._projection()[:, ids].T.astype(jnp.float32)

    def _projection(self) -> jax.Array:
        """[V, D] (tied embedding) or [D, V] (lm_head)."""
        if self.config.tie_word_embeddings:
            return self.embedding[...]
        if not hasattr(self, "lm_head"):
            raise ValueError("this model has no vocabulary projection (config.has_lm_head=False: a reward model's "
                             "backbone, loaded without its lm_head).")
        return self.lm_head[...]

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache of `max_len` slots per row, laid out for this model's platform."""
        return KVCache.for_model(self.config, batch, max_len, self.platform)


def set_platform(model: nnx.Module, platform: str) -> nnx.Module:
    """Lower the attention of every Transformer in `model` (a policy, or a reward model's backbone) for
    `platform` ('cpu', or an accelerator: 'tpu', 'cuda', 'rocm', a device's 'gpu'); in place, returns the
    model. Split the model again afterwards: the platform is part of its graph."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Transformer):
            module.platform = platform
    return model


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct parameters: structure and shapes, no memory, no random init."""
    return nnx.eval_shape(lambda: Transformer(config, nnx.Rngs(0)))


def init_model(config: ModelConfig, seed: int = 0, std: float = 0.02) -> Transformer:
    """A randomly initialised model, deterministic in `seed`: weights normal(0, std), norms 1, biases 0.

    Drawn with NumPy on the host: XLA's CPU compiler takes seconds for a program of many random draws.
    """
    graphdef, state = nnx.split(abstract_model(config))
    rng = np.random.default_rng(seed)
    dtype = config.jnp_param_dtype

    def draw(path, leaf):
        name = param_path(path)[-1]
        if name == "scale":
            return jnp.ones(leaf.shape, dtype)
        if name.startswith("b"):  # bq, bk, bv, bo, b_gate, b_up, b_down
            return jnp.zeros(leaf.shape, dtype)
        return jnp.asarray(rng.normal(0.0, std, leaf.shape).astype(np.float32), dtype)

    state = jax.tree_util.tree_map_with_path(draw, state)
    return nnx.merge(graphdef, state)


@nnx.jit(static_argnames=("return_hidden",))
def forward(model: Transformer, tokens: jax.Array, key_mask: jax.Array | None = None, return_hidden: bool = False):
    """Jitted full forward pass without a cache: logits [B, T, V] (and hidden states if asked)."""
    logits, _, hidden = model(tokens, key_mask=key_mask, return_hidden=return_hidden)
    return (logits, hidden) if return_hidden else logits
