"""Helpers for tests of models placed on a mesh and of commands run on several local processes (jax.distributed).

Run as a script (`launch_commands` does), it is one process of such a run: it joins the others, runs each `ttcjax`
command given (as JSON) through `ttcjax.cli.main` in turn, and records every file it opens for writing or renames
into place in AUDIT/process-I.txt, so that a test can tell which process wrote each file.
"""

import builtins
import json
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


def _start(program: list[str], cache) -> list[subprocess.Popen]:
    """`program` followed by each process's flags, on PROCESSES processes of 4 CPU devices each (a rerun reads the
    programs the first run compiled from JAX's persistent cache `cache`)."""
    # the run's XLA flags (its optimisation level: the 1-process reference compiles alike), with 4 devices each
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    env = {**os.environ, "XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=4", *flags]),
           "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    port = free_port()
    return [subprocess.Popen([*map(str, program), "--coordinator", f"localhost:{port}", "--num-processes",
                              str(PROCESSES), "--process-id", str(i)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(PROCESSES)]


def launch(argv: list[str], cache) -> list[subprocess.Popen]:
    """`ttcjax ARGV` on PROCESSES processes joined by jax.distributed on localhost. Their stdout and stderr are
    pipes: read them with `finish`."""
    return _start([sys.executable, "-m", "ttcjax.cli", *argv], cache)


def launch_commands(commands: list[list[str]], cache, audit) -> list[subprocess.Popen]:
    """Each of `commands` (ttcjax argument lists) in turn, in the same PROCESSES processes joined by jax.distributed
    (one start for them all); each process records the files it writes in `audit` (`written`)."""
    return _start([sys.executable, os.path.abspath(__file__), str(audit), json.dumps(list(map(
        lambda argv: list(map(str, argv)), commands)))], cache)


def written(audit, process: int) -> set[str]:
    """The files process `process` of a `launch_commands` run opened for writing or renamed into place."""
    path = os.path.join(audit, f"process-{process}.txt")
    return set(open(path).read().split("\n")) - {""} if os.path.exists(path) else set()


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


def _record_writes(log_path: str) -> None:
    """Note in `log_path` every file this process opens to write (open's modes w, a, x, +) or renames or replaces
    into place, by its real path."""
    original_open, log = builtins.open, builtins.open(log_path, "a")

    def note(path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            log.write(os.path.realpath(os.fsdecode(path)) + "\n")
            log.flush()

    def recording_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            note(file)
        return original_open(file, mode, *args, **kwargs)

    def moving(move):
        def recorded(source, target, *args, **kwargs):
            note(target)
            return move(source, target, *args, **kwargs)
        return recorded

    builtins.open = recording_open
    os.replace, os.rename = moving(os.replace), moving(os.rename)


if __name__ == "__main__":  # one process of `launch_commands`: AUDIT COMMANDS --coordinator .. --process-id I
    audit, commands, flags = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    _record_writes(os.path.join(audit, f"process-{flags[flags.index('--process-id') + 1]}.txt"))
    from ttcjax.cli import main

    for argv in commands:
        status = main([*argv, *flags])
        if status:
            sys.exit(status)
