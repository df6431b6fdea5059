"""What one decode step of revision chains costs, by how it reads (issue 15's lever, measured before it is built).

Both parts run the shipped revision model (and its ORM) on `--rows` rows of a `--slots`-slot cache filled to
`--filled`, 32 single-token steps in one jitted `lax.fori_loop`, best of `--repeats` after a warm-up:

  * by attention width: the policy's step reading the first W slots of the cache (`attn_len`), which is how
    `Engine.decode`'s segments read it (`segment_widths`);
  * a refill step: what a row costs per token when every row decodes its own chain token after token (no shared
    rounds): the policy's token, its sample, and the verifier reading that token into its own cache. Against the
    lock-step chain step that bench/revisions_tail.py measures (its seconds over its decode steps), this says what
    the refill schedule's decode steps (`refill_steps`) would cost.

    python bench/chain_step.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from decode import cpu_model, git_revision, loadavg  # noqa: E402
from flax import nnx  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.native import load_any  # noqa: E402
from ttcjax.verifiers.reward_model import load_prm  # noqa: E402

STEPS = 32


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--slots", type=int, default=512)
    p.add_argument("--filled", type=int, default=300)
    p.add_argument("--widths", default="128,256,384,448,512")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    load_start = loadavg()
    policy = load_any(model_dir("revision", "tiny"))
    orm, _ = load_prm(model_dir("orm", "revision-tiny"))
    rows, slots = args.rows, args.slots

    def filled(cache):
        return dataclasses.replace(cache, lengths=jnp.full((rows,), args.filled, jnp.int32))

    policy_graph, policy_params = nnx.split(policy)
    orm_graph, orm_params = nnx.split(orm)
    policy_cache, orm_cache = filled(policy.new_cache(rows, slots)), filled(orm.backbone.new_cache(rows, slots))

    @functools.partial(jax.jit, static_argnames=("width", "verify"))
    def steps(policy_params, orm_params, policy_cache, orm_cache, token, key, width, verify):
        model, verifier = nnx.merge(policy_graph, policy_params), nnx.merge(orm_graph, orm_params)

        def body(i, carry):
            policy_cache, orm_cache, token = carry
            logits, new, _ = model(token[:, None], cache=policy_cache, attn_len=width)
            policy_cache = dataclasses.replace(new, lengths=policy_cache.lengths)  # the same slot each step
            sampled = jax.random.categorical(jax.random.fold_in(key, i), logits[:, 0] / 0.8).astype(jnp.int32)
            if verify:
                _, new, hidden = verifier.backbone(token[:, None], cache=orm_cache, attn_len=width,
                                                   return_logits=False, return_hidden=True)
                score = verifier.head_logits(hidden[-1][:, 0])
                orm_cache = dataclasses.replace(new, lengths=orm_cache.lengths)
                sampled = jnp.where(score > 1e30, 0, sampled)  # the score is used, so it is computed
            return policy_cache, orm_cache, sampled

        return jax.lax.fori_loop(0, STEPS, body, (policy_cache, orm_cache, token))

    def timed(width, verify) -> float:
        call = functools.partial(steps, policy_params, orm_params, policy_cache, orm_cache,
                                 jnp.ones((rows,), jnp.int32), jax.random.key(0), width=width, verify=verify)
        jax.block_until_ready(call())
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(call())
            best = min(best, (time.perf_counter() - t) / STEPS * 1000)
        return best

    by_width = {w: timed(w, False) for w in map(int, args.widths.split(","))}
    refill = {"policy_token": timed(slots, False), "policy_and_verifier_token": timed(slots, True)}
    print(json.dumps({"command": "python bench/chain_step.py " + " ".join(argv or sys.argv[1:]),
                      "rows": rows, "slots": slots, "filled": args.filled, "ms_per_step_by_width": by_width,
                      "ms_per_refill_step": refill, "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                                                               "loadavg_start": load_start, "loadavg_end": loadavg(),
                                                               "git": git_revision()}}, indent=1))


if __name__ == "__main__":
    main()
