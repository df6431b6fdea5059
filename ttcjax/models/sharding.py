"""Sharding, declared once: logical axis names map to the ('data', 'model') mesh through `ShardingRules`.

Parameters are split along 'model' (heads, kv heads, mlp, vocab); batch rows and the KV cache along
'data' (and kv heads along 'model' where they divide). An axis whose size the mesh axis does not divide
is replicated instead, so the same code runs on any mesh, including one device.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ttcjax.models.cache import KVCache, Prefix
from ttcjax.models.llama import PARAM_AXES, param_path

DATA, MODEL = "data", "model"


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis -> mesh axis (None: replicated)."""

    batch: str | None = DATA
    embed: str | None = None
    heads: str | None = MODEL
    kv_heads: str | None = MODEL
    head_dim: str | None = None
    mlp: str | None = MODEL
    vocab: str | None = MODEL
    cache_slots: str | None = None

    def spec(self, logical: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
        """A PartitionSpec for an array of `shape` whose axes are named `logical`."""
        axes = []
        for name, size in zip(logical, shape):
            mesh_axis = getattr(self, name) if name is not None else None
            if mesh_axis is not None and (size % mesh.shape[mesh_axis] or mesh_axis in axes):
                mesh_axis = None  # does not divide: replicate this axis
            axes.append(mesh_axis)
        return P(*axes)

    def sharding(self, logical, shape, mesh: Mesh) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical, shape, mesh))


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A ('data', 'model') mesh. `data` defaults to all devices left after `model`."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        if len(devices) % model:
            raise ValueError(f"model={model} does not divide the {len(devices)} available devices.")
        data = len(devices) // model
    if data * model > len(devices):
        raise ValueError(f"mesh {data}x{model} needs {data * model} devices; {len(devices)} are available.")
    grid = np.asarray(devices[: data * model]).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


def param_axes(path: tuple) -> tuple[str | None, ...]:
    """Logical axes of the parameter at an nnx state path such as ('layers', 0, 'attn', 'wq')."""
    name = path[-1]
    if name not in PARAM_AXES:
        raise KeyError(f"no logical axes declared for parameter {'/'.join(map(str, path))}; add it to PARAM_AXES.")
    return PARAM_AXES[name]


def shard_model(model: nnx.Module, mesh: Mesh, rules: ShardingRules = ShardingRules()) -> nnx.Module:
    """Place every parameter of `model` on `mesh` according to `rules` (in place; returns the model)."""
    graphdef, state = nnx.split(model)

    def place_param(path, x):
        return place(x, rules.sharding(param_axes(path), x.shape, mesh))

    state = jax.tree_util.tree_map_with_path(lambda p, x: place_param(param_path(p), x), state)
    nnx.update(model, state)
    return model


def place(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """`x` (a host array, or an array this process holds whole) with `sharding`. Where the sharding spans several
    processes, each copies only its own devices' slices of its copy of `x` (which must be the same on every
    process, as a checkpoint read by each is): a device-to-device move there would cross hosts."""
    if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable
                                     or sharding.is_fully_addressable):
        return jax.device_put(x, sharding)
    if not isinstance(x, jax.Array) and sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def feed_rows(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """Host array `x` (the same on every process: a training step's global batch) with `sharding`, each process
    handing JAX only the rows its own devices hold (`jax.make_array_from_process_local_data`). The mesh lists a
    process's devices together, so those rows are one range; were they not, each copies its devices' slices
    (`place`)."""
    x = np.asarray(x)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    held = sorted({(index[0].start or 0, x.shape[0] if index[0].stop is None else index[0].stop)
                   for index in sharding.addressable_devices_indices_map(x.shape).values()})
    if any(stop != start for (_, stop), (start, _) in zip(held, held[1:])):  # not one range of rows
        return place(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x[held[0][0]:held[-1][1]], x.shape)


def batch_sharding(mesh: Mesh, rules: ShardingRules, shape: tuple[int, ...]) -> NamedSharding:
    """Rows along the batch axis (replicated if the data axis does not divide them), the rest replicated."""
    return rules.sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)


def cache_shardings(cache, mesh: Mesh, rules: ShardingRules):
    """NamedShardings for a KVCache (keys [batch, kv_heads, head_dim, max_len] or [batch, kv_heads, max_len,
    head_dim] as its layout says, values [batch, kv_heads, max_len, head_dim], per layer), its lengths [batch], and a
    shared prefix's arrays laid out alike with questions in place of rows."""
    key_axes = ("batch", "kv_heads", "head_dim", "cache_slots") if cache.keys_transposed else (
        "batch", "kv_heads", "cache_slots", "head_dim")
    k = lambda x: rules.sharding(key_axes, x.shape, mesh)  # noqa: E731
    v = lambda x: rules.sharding(("batch", "kv_heads", "cache_slots", "head_dim"), x.shape, mesh)  # noqa: E731
    prefix = cache.prefix
    if prefix is not None:  # one prompt per question: questions split like rows, where the data axis divides them
        prefix = Prefix(k=tuple(map(k, prefix.k)), v=tuple(map(v, prefix.v)),
                        lengths=rules.sharding(("batch",), prefix.lengths.shape, mesh))
    return KVCache(k=tuple(map(k, cache.k)), v=tuple(map(v, cache.v)),
                   lengths=rules.sharding(("batch",), cache.lengths.shape, mesh), keys_transposed=cache.keys_transposed,
                   prefix=prefix, capacity=cache.capacity)


def mesh_shape(spec: str | None, devices: int) -> tuple[int, int]:
    """(data, model) of a mesh spec on `devices` devices: 'none' (one device), 'auto' (every device on 'data')
    or 'D,M'. The one grammar of `--mesh` and config `mesh:` keys; `parse_mesh` builds the Mesh."""
    if spec in (None, "none", "1", "1,1"):
        return 1, 1
    if not isinstance(spec, str):
        raise ValueError(f"mesh={spec!r} must be a string: 'auto', 'none' or DATA,MODEL such as '4,2'.")
    if spec == "auto":
        return devices, 1
    try:
        data, model = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--mesh {spec!r}: use 'auto', 'none' or DATA,MODEL such as 4,2.") from None
    if data < 1 or model < 1:
        raise ValueError(f"--mesh {spec!r}: DATA and MODEL must be integers >= 1.")
    return data, model


def parse_mesh(spec: str | None, devices=None):
    """'auto' (every device on 'data'), 'none' (one device) or 'D,M' -> a Mesh or None, over `devices` (default:
    every process's, `jax.devices()`; a process's own, `jax.local_devices()`, for work it does alone)."""
    devices = list(devices if devices is not None else jax.devices())
    data, model = mesh_shape(spec, len(devices))
    return None if (data, model) == (1, 1) else make_mesh(data, model, devices)
