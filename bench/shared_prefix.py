"""Shared-prefix decoding against the forked cache: decode tokens/s and KV memory per question.

    python bench/shared_prefix.py                      # all cells, ~15 min on 2 cores; writes
                                                       # bench/results/shared_prefix.json and its docs section
    python bench/shared_prefix.py --prompts 128 --ns 16 --repeats 1 --no-doc   # a smoke run

One question, its prompt of P random tokens prefilled once, then N rows decode one step of 32 greedy tokens (no
EOS: every row writes all 32), with the 25m configuration of bench/decode.py. Both sides run in one process,
interleaved, on the same weights and prompt:

- forked: `engine.prefill(..., max_len=P + 32).fork(N)`: the prompt's keys and values copied into every row;
- shared: `engine.prefill(..., max_len=P).share(N, P + 32, P)`: the prompt held once, each row 32 own slots.

Timed: the decode loop alone (prefill, fork and share are done before the clock starts; one warm-up call compiles
each side), the best of `--repeats`. Memory: the bytes of every KV array the decode state holds, per question, and
of the prompt's part of them. Both sides' greedy tokens are compared (they must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from decode import CONFIGS, cpu_model, git_revision, loadavg, update_doc, write_atomic  # noqa: E402

from ttcjax.decoding.engine import GREEDY, Engine  # noqa: E402
from ttcjax.models.llama import init_model  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "shared_prefix.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Shared-prefix decoding"
STEP = 32  # new tokens per row: one reasoning step
TARGET = (1024, 64, 2.0)  # prompt, N, tokens/s ratio shared / forked


def kv_bytes(cache) -> tuple[int, int]:
    """(every KV array's bytes, the prompt's part of them) of a cache holding one question."""
    arrays = [*cache.k, *cache.v]
    total = sum(x.nbytes for x in arrays)
    if cache.prefix is not None:
        prefix = sum(x.nbytes for x in (*cache.prefix.k, *cache.prefix.v))
        return total + prefix, prefix
    return total, None


def run_cell(engine: Engine, prompt: np.ndarray, n: int, repeats: int) -> dict:
    p = prompt.shape[1]
    lengths = np.array([p], np.int32)

    def state(side):
        if side == "forked":
            return engine.prefill(prompt, lengths, p + STEP).fork(n)
        return engine.prefill(prompt, lengths, p).share(n, p + STEP, p)

    out = {}
    for side in ("forked", "shared"):  # compile, and read the memory
        st = state(side)
        total, prompt_part = kv_bytes(st.cache)
        if prompt_part is None:  # forked: the prompt's slots of every row
            prompt_part = total * p // (p + STEP)
        gen, _ = engine.decode(st, jax.random.key(0), max_new_tokens=STEP, sampling=GREEDY)
        out[side] = {"kv_bytes_per_question": total, "prompt_kv_bytes_per_question": prompt_part,
                     "tokens": np.asarray(gen.tokens), "seconds": []}
    for _ in range(repeats):  # interleaved
        for side in ("forked", "shared"):
            st = jax.block_until_ready(state(side))
            t0 = time.perf_counter()
            gen, st = engine.decode(st, jax.random.key(0), max_new_tokens=STEP, sampling=GREEDY)
            jax.block_until_ready((gen, st))
            out[side]["seconds"].append(time.perf_counter() - t0)
            assert int(np.asarray(gen.lengths).min()) == STEP
            del st, gen
    cell = {"prompt": p, "n": n, "same_tokens": bool((out["forked"]["tokens"] == out["shared"]["tokens"]).all())}
    for side in ("forked", "shared"):
        best = min(out[side]["seconds"])
        cell[side] = {"seconds": out[side]["seconds"], "tokens_per_s": n * STEP / best,
                      "kv_bytes_per_question": out[side]["kv_bytes_per_question"],
                      "prompt_kv_bytes_per_question": out[side]["prompt_kv_bytes_per_question"]}
    cell["speedup"] = cell["shared"]["tokens_per_s"] / cell["forked"]["tokens_per_s"]
    cell["kv_ratio"] = cell["forked"]["kv_bytes_per_question"] / cell["shared"]["kv_bytes_per_question"]
    cell["prompt_kv_ratio"] = (cell["forked"]["prompt_kv_bytes_per_question"]
                               / cell["shared"]["prompt_kv_bytes_per_question"])
    return cell


def mib(x: int) -> str:
    return f"{x / 2**20:,.1f}"


def markdown(report: dict) -> str:
    cells = report["cells"]
    lines = [SECTION, "",
             f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cores']} cores, load "
             f"{report['machine']['loadavg_before']} before), commit {report['git']['commit']}, "
             f"{report['finished']}. The 25m configuration (8 layers, 8 heads, 4 kv heads of 64, float32), one "
             f"question, N rows decoding one step of {STEP} greedy tokens after a P-token prompt; best of "
             f"{report['repeats']} interleaved repeats. Raw: `bench/results/shared_prefix.json`.", "",
             "| prompt P | N | forked tok/s | shared tok/s | speed-up | KV MiB per question forked / shared | "
             "prompt KV forked / shared | same tokens |",
             "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for c in cells:
        f, s = c["forked"], c["shared"]
        lines.append(f"| {c['prompt']} | {c['n']} | {f['tokens_per_s']:,.0f} | {s['tokens_per_s']:,.0f} | "
                     f"{c['speedup']:.2f}x | {mib(f['kv_bytes_per_question'])} / {mib(s['kv_bytes_per_question'])} "
                     f"| {c['prompt_kv_ratio']:.0f}x less | {'yes' if c['same_tokens'] else 'NO'} |")
    target = next((c for c in cells if (c["prompt"], c["n"]) == TARGET[:2]), None)
    lines.append("")
    if target is not None:
        met = target["speedup"] >= TARGET[2] and target["prompt_kv_ratio"] >= TARGET[1]
        lines.append(f"Target (issue 18) at P={TARGET[0]}, N={TARGET[1]}: at least {TARGET[2]:.0f}x tokens/s and "
                     f"the prompt's KV memory divided by N. Measured {target['speedup']:.2f}x and "
                     f"{target['prompt_kv_ratio']:.0f}x: {'met' if met else 'NOT met'}.")
    skipped = report.get("skipped", [])
    if skipped:
        lines.append("Not run (the forked cache would pass `--max-gib`): " +
                     ", ".join(f"P={p}, N={n}" for p, n in skipped) + ".")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", default="128,1024,2048")
    p.add_argument("--ns", default="16,64,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-gib", type=float, default=10.0, help="skip cells whose forked cache is larger")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--doc", default=DOC)
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    prompts, ns = [int(x) for x in args.prompts.split(",")], [int(x) for x in args.ns.split(",")]
    cfg = dataclasses.replace(CONFIGS["25m"], max_position_embeddings=max(prompts) + STEP)
    engine = Engine(init_model(cfg, seed=0))
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.dim_per_head * 4
    report = {"command": "python bench/shared_prefix.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": loadavg()},
              "git": git_revision(), "repeats": args.repeats, "cells": [], "skipped": []}
    rng = np.random.default_rng(0)
    for length in prompts:
        prompt = rng.integers(0, cfg.vocab_size, size=(1, length)).astype(np.int32)
        for n in ns:
            if n * (length + STEP) * per_token > args.max_gib * 2**30:
                report["skipped"].append((length, n))
                continue
            cell = run_cell(engine, prompt, n, args.repeats)
            report["cells"].append(cell)
            print(f"P={length:5d} N={n:4d}  forked {cell['forked']['tokens_per_s']:9,.0f} tok/s  shared "
                  f"{cell['shared']['tokens_per_s']:9,.0f} tok/s  {cell['speedup']:.2f}x  KV "
                  f"{mib(cell['forked']['kv_bytes_per_question'])} / {mib(cell['shared']['kv_bytes_per_question'])} "
                  f"MiB  same tokens: {cell['same_tokens']}", flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_atomic(args.out, json.dumps(report, indent=1, allow_nan=False) + "\n")
    if not args.no_doc:
        update_doc(args.doc, markdown(report), SECTION)
    print(markdown(report))


if __name__ == "__main__":
    main()
