"""Every test process sees 8 simulated CPU devices, so sharded code is tested against 1 device."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# the public PRM families' tiny twins, built once per session for every test module that asks for one
from prm_twins import math_shepherd, qwen_prm, rlhflow, skywork  # noqa: E402, F401
