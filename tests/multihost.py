"""Helpers for tests of models placed on a mesh and of commands run on several local processes (jax.distributed)."""

import os
import socket
import subprocess
import sys

import numpy as np
from flax import nnx, traverse_util

from ttcjax.models.sharding import ShardingRules, param_axes

PROCESSES = 2


def assert_placed(model: nnx.Module, reference: nnx.Module, mesh, rules: ShardingRules = ShardingRules()) -> None:
    """Every parameter of `model` lies on `mesh` as `rules` place it, with `reference`'s value."""
    flat = [traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(m, nnx.Param))) for m in (model, reference)]
    assert flat[0].keys() == flat[1].keys()
    for path, value in flat[0].items():
        assert value.sharding == rules.sharding(param_axes(path), value.shape, mesh), path
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat[1][path]), err_msg=str(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(argv: list[str], cache, cwd=None) -> list[subprocess.Popen]:
    """`ttcjax ARGV` on PROCESSES processes of 4 CPU devices each, joined by jax.distributed on localhost (a rerun
    reads the programs the first run compiled from JAX's persistent cache `cache`). Their stdout and stderr are
    pipes: read them with `finish`."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "ttcjax.cli", *map(str, argv), "--coordinator",
                              f"localhost:{port}", "--num-processes", str(PROCESSES), "--process-id", str(i)],
                             env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(PROCESSES)]


def finish(procs, timeout=240.0) -> list[tuple[int, str, str]]:
    """Each process's (exit status, stdout, stderr), once all have ended (those still running after `timeout`
    seconds are killed)."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
