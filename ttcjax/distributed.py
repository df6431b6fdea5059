"""Several JAX processes (a TPU pod's hosts, a GPU or CPU cluster) running one ttcjax command.

`initialize` starts `jax.distributed` before any other JAX use, from flags or the environment:
    TTCJAX_COORDINATOR / JAX_COORDINATOR_ADDRESS   host:port of process 0's coordinator
    TTCJAX_NUM_PROCESSES / JAX_NUM_PROCESSES       how many processes take part
    TTCJAX_PROCESS_ID / JAX_PROCESS_ID             this process's index, 0 .. processes - 1
and, with none of those, on a multi-host Cloud TPU (TPU_WORKER_HOSTNAMES names several hosts), where JAX finds
them itself. One process (none of these set) starts nothing.

After it: `process_index()` and `process_count()` say who this is; process 0 (`is_writer()`) writes every file
the processes share; `barrier` waits for all of them; `to_host` brings arrays the processes hold between them
back to every process (a plain `jax.device_get` reads only what this process holds), and `gathered` a whole model,
for the one process that saves it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
# the coordination service's client: a barrier that waits as long as it is told without a device collective
from jax._src import distributed as coordination
from jax.experimental import multihost_utils

from ttcjax.io import bind_run_dir

# the coordination service's barrier waits this long (ms) for the slowest process's share of a run
BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000

ENVIRONMENT = {
    "coordinator": ("TTCJAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("TTCJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("TTCJAX_PROCESS_ID", "JAX_PROCESS_ID"),
}


def _from_environment(name: str) -> str | None:
    for variable in ENVIRONMENT[name]:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be an integer (flag --{name.replace('_', '-')} or "
                         f"{' / '.join(ENVIRONMENT[name])}).") from None


def _multihost_tpu() -> bool:
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start `jax.distributed` where this command runs on several processes (flags first, then the environment;
    see the module docstring); True if it did. Call it before anything touches a JAX device."""
    coordinator = coordinator or _from_environment("coordinator")
    num_processes = _count("num_processes", num_processes if num_processes is not None
                           else _from_environment("num_processes"))
    process_id = _count("process_id", process_id if process_id is not None else _from_environment("process_id"))
    if jax.distributed.is_initialized():
        return True
    if coordinator is None and num_processes is None and process_id is None:
        if not _multihost_tpu():
            return False
        jax.distributed.initialize()  # a TPU pod: the hosts, their number and index come from its metadata
        return True
    if num_processes == 1 and process_id in (None, 0):
        return False
    missing = [flag for flag, value in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                        ("--process-id", process_id)) if value is None]
    if missing:
        raise ValueError(f"several processes need a coordinator (host:port), the number of processes and this "
                         f"one's id; {', '.join(missing)} missing (or TTCJAX_COORDINATOR, TTCJAX_NUM_PROCESSES, "
                         "TTCJAX_PROCESS_ID in the environment).")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} must lie in [0, {num_processes}) (--num-processes "
                         f"{num_processes}).")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def run_role(job=None) -> str:
    """The part of a run this process does, as the run directory's holds name it (`ttcjax.io.bind_run_dir`): "" for
    all of it; else its job of an array (a `ttcjax.eval.shards.Job`) and its process of several, e.g.
    "job-1-of-4-process-0-of-2"."""
    parts = [f"job-{job.index}-of-{job.count}"] if job is not None else []
    if jax.process_count() > 1:
        parts.append(f"process-{jax.process_index()}-of-{jax.process_count()}")
    return "-".join(parts)


def is_writer() -> bool:
    """Whether this process writes the files all processes share (process 0 does)."""
    return jax.process_index() == 0


def agreed(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a collective: every process calls it at the same point), so that
    all of them take the branch the writer decides."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))


def bind_run(out_dir, config: dict[str, Any], command: str, rerun: str = "resume", job=None) -> str | None:
    """`ttcjax.io.bind_run_dir` for this process of a run (its `job` of an array, if any): the writing process binds
    the directory first (for --fresh, moving the earlier run aside), then the others check it and take their holds,
    so that none of them looks at, or holds, a directory about to be moved. Returns the invocation's id (None on
    the processes that write no shared files)."""
    role = run_role(job)
    invocation = (bind_run_dir(out_dir, config, command, rerun, write=True, machine=machine(), role=role)
                  if is_writer() else None)
    barrier(f"ttcjax-bind-{command}")
    if not is_writer():
        bind_run_dir(out_dir, config, command, rerun, write=False, role=role)
    return invocation


def machine() -> dict[str, Any]:
    """What a run runs on, as its run log records it: the platform, the devices by kind (every process's), the
    processes, and this host's CPU, cores and memory."""
    kinds = collections.Counter(d.device_kind for d in jax.devices())
    described = {"platform": jax.default_backend(), "devices": ", ".join(f"{n} x {k}" for k, n in kinds.items()),
                 "processes": jax.process_count(), "cpu": cpu_model(), "cpu_cores": os.cpu_count()}
    with contextlib.suppress(OSError, ValueError):
        described["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return described


def cpu_model() -> str:
    """This host's CPU model, as /proc/cpuinfo names it."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (at once, with one process)."""
    if jax.process_count() == 1:
        return
    client = coordination.global_state.client
    if client is None:  # processes jax.distributed did not start (none known): a device collective instead
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, BARRIER_TIMEOUT_MS)


def to_host(tree: Any) -> Any:
    """`tree`'s arrays as numpy on this process, whole: arrays that span several processes are gathered from
    all of them (every process must call this with the same tree), the rest read with `jax.device_get`."""
    leaves, treedef = jax.tree.flatten(tree)
    spread = [isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves]
    if any(spread):
        gathered = multihost_utils.process_allgather([x for x, s in zip(leaves, spread) if s], tiled=True)
        it = iter(gathered)
        leaves = [np.asarray(next(it)) if s else x for x, s in zip(leaves, spread)]
    return jax.tree.unflatten(treedef, jax.device_get(leaves))


def gathered(model: nnx.Module) -> nnx.Module:
    """`model` with every parameter whole on this process's first device: gathered from all processes where they
    hold it between them (every process must call this), as the one process that saves it needs it. With one
    process `model` itself: it is whole here already, and a sharded model need not fit on one device."""
    if jax.process_count() == 1:
        return model
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, to_host(state)))
