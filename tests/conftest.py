"""Every test process sees 8 simulated CPU devices, so sharded code is tested against 1 device.

The tests' programs are compiled without LLVM's optimisations (`--xla_backend_optimization_level=0`): most tests
run tiny models for a few steps, where compiling costs far more than running, and this halves the compile time. The
programs are the same (XLA's own passes, fusion included, still run) and every test passes either way; floats may
differ in the last bits from an optimised build. A test that runs long, or that compares with numbers written by an
optimised build, runs its command with `optimized_cli` (a subprocess at XLA's default level, what users run).
A caller's XLA_FLAGS are used as given."""

import os
import subprocess
import sys

DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("XLA_FLAGS", f"{DEVICES_FLAG} --xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

# One XLA compilation cache per test run, shared by its xdist workers and the CLI subprocesses they start (they
# inherit the environment): the same tiny-model programs are compiled by many tests, in several processes and again
# after `_release_compiled_programs`. Made by the process that starts the run and removed when the run ends; a cache
# the caller names (JAX_COMPILATION_CACHE_DIR) is used and kept.
CACHE_SETTINGS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # an xdist worker (it inherited the run's cache) or a cache named by the caller
    import tempfile

    config._xla_cache = tempfile.mkdtemp(prefix="ttcjax-tests-xla-cache-")
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": config._xla_cache, **CACHE_SETTINGS})
    jax.config.update("jax_compilation_cache_dir", config._xla_cache)  # this process imported jax already
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    cache = getattr(config, "_xla_cache", None)
    if cache is not None:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
# the public PRM families' tiny twins, built once per session for every test module that asks for one
from prm_twins import math_shepherd, qwen_prm, rlhflow, skywork  # noqa: E402, F401

from ttcjax.eval.sweep import release_compiled_programs_when_crowded  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the compiled programs after a test module once the process holds a third of the memory maps the
    kernel allows. Each XLA CPU executable holds maps of its own, and one process running the whole suite
    otherwise reaches ``vm.max_map_count`` (65530), where LLVM's next mmap fails and the compiler segfaults (CI
    exit 139 mid-suite); clearing after every module instead recompiles what the next module shares."""
    yield
    release_compiled_programs_when_crowded(1 / 3)


def optimized_cli(*argv: str) -> subprocess.CompletedProcess:
    """`ttcjax ARGV` in a subprocess compiled at XLA's default optimisation level (8 simulated devices, the run's
    compilation cache); stdout and stderr captured. Fails the test, showing stderr, when the command fails."""
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_backend_optimiz"))
    env = {**os.environ, "XLA_FLAGS": flags or DEVICES_FLAG}
    proc = subprocess.run([sys.executable, "-m", "ttcjax.cli", *argv], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"ttcjax {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc
