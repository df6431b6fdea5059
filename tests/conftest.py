"""Every test process sees 8 simulated CPU devices, so sharded code is tested against 1 device."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402
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
