"""A compiled call and the arguments it runs on, so that what runs is what gets exported.

The engine (prefill, decode), the search episode (start, rounds) and the training loop (one step) build a
`Program` for each jitted call and run it. `Program.export(platforms)` serialises the same call with
`jax.export` for other platforms, from any host: the arguments become their shapes, dtypes and shardings
(placed arrays keep their mesh), so a CPU-only CI can check that every program lowers for TPU and CUDA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np


def abstract(tree):
    """Every array of `tree` as a jax.ShapeDtypeStruct with its sharding where it is placed over several devices
    (one on a single device, such as a fresh random key, goes where the others are); the rest as is."""
    def leaf(x):
        if isinstance(x, jax.Array):
            sharding = None if isinstance(x.sharding, jax.sharding.SingleDeviceSharding) else x.sharding
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x
    return jax.tree.map(leaf, tree)


@dataclasses.dataclass(frozen=True)
class Program:
    """`fn(*args, **static)`: a `jax.jit`-wrapped function, its positional arguments (static ones included, as
    the function declares them) and its static keyword arguments."""

    fn: Callable
    args: tuple
    static: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self):
        return self.fn(*self.args, **self.static)

    def export(self, platforms: Sequence[str]) -> jax.export.Exported:
        """The call lowered for `platforms` ('tpu', 'cuda', 'rocm', 'cpu'), as `jax.export` serialises it."""
        return jax.export.export(self.fn, platforms=tuple(platforms))(*abstract(self.args), **self.static)
