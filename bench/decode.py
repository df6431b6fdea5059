"""Decoding throughput: ttcjax's Engine versus transformers' `generate`, on the same weights, in one run.

For each model config and batch size, the same random prompts go through

  * ttcjax: `Engine.prefill` + `Engine.decode` (greedy, no EOS), timed with `jax.block_until_ready`;
  * transformers (PyTorch, CPU): `AutoModelForCausalLM.from_pretrained` of the checkpoint that
    `ttcjax.checkpoints.hf.save_hf_model` wrote for the same model, `generate(do_sample=False)` with
    `min_new_tokens == max_new_tokens` and no EOS, so both sides generate exactly `--new-tokens` tokens.

The two sides run interleaved (ttcjax, transformers, transformers, ttcjax, ...) so that load from other
processes on a shared machine hits both alike; the headline figure of each side is its best repeat
(noise only ever adds time), the median is recorded too. The ratio is what this benchmark is for: absolute
tokens/s on a shared, noisy 2-core machine are not stable.

Also measured: the machine's f32 matmul rate (a jitted 2048x2048 `jnp.dot`, best of several), and how much
of it ttcjax's decoding achieves (model FLOPs = 2 x matmul parameters per generated token, see
`matmul_params`).

    python bench/decode.py                    # full run (~10 min on 2 cores): writes
                                              # bench/results/decode.json and docs/benchmarks.md
    python bench/decode.py --quick            # ~1 min smoke run, prints only
    python bench/decode.py --configs 25m --batches 1,256 --new-tokens 32 --repeats 2 --no-doc
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ttcjax.decoding.engine import FINISHED_LENGTH, GREEDY, Engine, StopConditions  # noqa: E402
from ttcjax.distributed import cpu_model  # noqa: E402
from ttcjax.models.config import ModelConfig  # noqa: E402
from ttcjax.models.llama import init_model  # noqa: E402

CONFIGS = {
    "3m": ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
                      num_kv_heads=2),
    "25m": ModelConfig(vocab_size=512, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
                       num_kv_heads=4),
}
RESULTS = os.path.join(ROOT, "bench", "results", "decode.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Decoding core"

# Targets (see the brief in docs/benchmarks.md): speed-up over transformers, and share of the matmul rate.
TARGET_SPEEDUP = {1: 5.0, 64: 1.5, 256: 1.5}
TARGET_MATMUL_SHARE = (256, 0.5)


# ---- model arithmetic --------------------------------------------------------------------------------


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token: q/k/v/o, gate/up/down of every layer and the LM head.

    Excludes the embedding table (a gather) and the norms (elementwise). 2 x this = FLOPs per token.
    """
    d, h, k, dh, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.intermediate_size
    per_layer = 2 * d * h * dh + 2 * d * k * dh + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, context: float) -> float:
    """QK^T and PV FLOPs of one token attending to `context` keys, over all layers."""
    return cfg.num_layers * 4 * cfg.num_heads * cfg.dim_per_head * context


# ---- machine -----------------------------------------------------------------------------------------


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    """Best-of f32 FLOP/s of a jitted n x n x n `jnp.dot` on the default device."""
    f = jax.jit(jnp.dot)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), np.float32))
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def torch_matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def matmul_floor_s(cfg: ModelConfig, batch: int, steps: int, repeats: int = 2) -> float:
    """Best-of seconds for `steps` decode steps of matmuls alone: the model's q/k/v/o, MLP and LM-head
    matmuls on [batch, hidden] activations (random weights of the same shapes), chained in a jitted
    `fori_loop`, with no attention, cache, norms or sampling. Decode time / this = overhead factor."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qd, kd = cfg.num_heads * cfg.dim_per_head, cfg.num_kv_heads * cfg.dim_per_head
    rng = np.random.default_rng(0)
    w = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02)  # noqa: E731
    layers = [dict(q=w(d, qd), k=w(d, kd), v=w(d, kd), o=w(qd, d), g=w(d, f), u=w(d, f), down=w(f, d))
              for _ in range(cfg.num_layers)]
    head = w(d, v)

    @jax.jit
    def run(layers, head, x):
        def step(_, x):
            for lw in layers:
                q, k, vv = x @ lw["q"], x @ lw["k"], x @ lw["v"]
                x = x + (q + jnp.pad(k + vv, ((0, 0), (0, qd - kd)))) @ lw["o"]
                x = x + (jax.nn.silu(x @ lw["g"]) * (x @ lw["u"])) @ lw["down"]
            return x + 1e-3 * (x @ head)[:, :1]
        return jax.lax.fori_loop(0, steps, step, x)

    x = jnp.full((batch, d), 0.01, jnp.float32)
    run(layers, head, x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        run(layers, head, x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def kv_cache_copies(engine: Engine, state, new_tokens: int) -> dict:
    """Inspect the compiled decode program: copies of a whole KV-cache buffer (the cache not being updated
    in place) and whether the donated cache aliases the output."""
    from ttcjax.decoding.engine import _decode_jit

    hlo = _decode_jit.lower(engine.graphdef, engine.params, state, jax.random.key(0), max_new_tokens=new_tokens,
                            sampling=GREEDY, stop=StopConditions(), pad_id=engine.pad_id,
                            attn_chunk=engine.attn_chunk, cache_sharding=None).compile().as_text()
    shapes = sorted({f"{str(x.dtype).replace('float', 'f')}[{','.join(map(str, x.shape))}]"
                     for x in (state.cache.k[0], state.cache.v[0])})
    ops = [op for shape in shapes for op in re.findall(rf"= {re.escape(shape)}\S* (\w[\w-]*)\(", hlo)]
    header = hlo.split("\n", 1)[0]
    return {"cache_shapes": shapes, "copies": ops.count("copy"),
            "writes": ops.count("scatter") + ops.count("dynamic-update-slice"),
            "input_output_alias": "input_output_alias" in header}


def git_revision() -> dict:
    """The commit measured, and whether ttcjax/ differs from it (read-only git queries)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": git("rev-parse", "--short", "HEAD"), "ttcjax_modified": bool(git("status", "--porcelain", "ttcjax"))}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- the two sides -----------------------------------------------------------------------------------


class TtcSide:
    def __init__(self, model, max_len: int):
        self.engine = Engine(model)
        self.max_len = max_len

    def run(self, tokens: np.ndarray, new_tokens: int):
        """-> (generated tokens [B, N] np, prefill s, decode s, lengths, finish reasons)."""
        lengths = np.full(tokens.shape[0], tokens.shape[1], np.int32)
        t0 = time.perf_counter()
        state = self.engine.prefill(tokens, lengths, self.max_len)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        gen, state = self.engine.decode(state, jax.random.key(0), max_new_tokens=new_tokens, sampling=GREEDY,
                                        stop=StopConditions())
        jax.block_until_ready((gen, state))
        t2 = time.perf_counter()
        gen = jax.device_get(gen)
        return np.asarray(gen.tokens), t1 - t0, t2 - t1, np.asarray(gen.lengths), np.asarray(gen.finish_reason)


class HfSide:
    def __init__(self, model, threads: str):
        import torch
        import transformers

        from ttcjax.checkpoints.hf import save_hf_model

        transformers.logging.set_verbosity_error()
        self.thread_choices = [1, 2] if threads == "auto" else [int(threads)]
        self.threads = max(self.thread_choices)
        torch.set_num_threads(self.threads)
        self.torch = torch
        with tempfile.TemporaryDirectory(prefix="ttcjax-bench-") as d:
            save_hf_model(model, d)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)

    def pick_threads(self, tokens: np.ndarray, new_tokens: int) -> int:
        """Set torch's thread count to the faster of the choices on a short generation, now.

        On a loaded 2-core machine, 2 OpenMP threads whose barrier partner is descheduled can run 10x
        slower than 1 thread; picking per repeat keeps transformers' figure from being inflated by that.
        """
        if len(self.thread_choices) > 1:
            short = min(new_tokens, 8)
            times = {}
            for threads in self.thread_choices:
                self.torch.set_num_threads(threads)
                times[threads] = self.run(tokens, short)[1]
            self.threads = min(times, key=times.get)
        self.torch.set_num_threads(self.threads)
        return self.threads

    def run(self, tokens: np.ndarray, new_tokens: int):
        """-> (generated tokens [B, N] np, seconds)."""
        torch = self.torch
        ids = torch.from_numpy(tokens.astype(np.int64))
        mask = torch.ones_like(ids)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=0, eos_token_id=None)
        t1 = time.perf_counter()
        return out[:, tokens.shape[1]:].numpy(), t1 - t0


# ---- one cell: a config at a batch size ----------------------------------------------------------------


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Greedy token agreement of two [B, N] outputs: elementwise, whole rows, and where rows first differ."""
    if a.shape != b.shape:
        return {"shape_mismatch": [list(a.shape), list(b.shape)]}
    eq = a == b
    first_diff = np.where(eq.all(axis=1), a.shape[1], np.argmin(eq, axis=1))
    return {
        "token_match": float(eq.mean()),
        "rows_identical": float(eq.all(axis=1).mean()),
        "mean_prefix_match": float((first_diff / a.shape[1]).mean()),
    }


def run_cell(name: str, cfg: ModelConfig, ttc: TtcSide, hf: HfSide | None, batch: int, args, rate: float) -> dict:
    rng = np.random.default_rng(args.seed + batch)
    tokens = rng.integers(1, cfg.vocab_size, (batch, args.prompt_len), dtype=np.int64).astype(np.int32)
    n = args.new_tokens

    # first call: compiles prefill and decode for this shape
    first_tokens, p, d, lengths, reasons = ttc.run(tokens, n)
    first_s = p + d
    checks = {
        "ttcjax_all_rows_generated_n": bool((lengths == n).all()),
        "ttcjax_all_rows_finish_length": bool((reasons == FINISHED_LENGTH).all()),
    }
    if hf is not None:
        hf_tokens, hf_warm_s = hf.run(tokens, n)
        checks["transformers_generated_n"] = bool(hf_tokens.shape == (batch, n))

    cell_rate = matmul_rate(repeats=3)  # how loaded the machine is right now
    ttc_prefill, ttc_decode, ttc_total, hf_total, hf_threads = [], [], [], [], []
    deterministic = True
    cell_start = time.perf_counter()
    for r in range(args.repeats):
        # alternate the order, so neither side always runs right after the other's (thread pools, caches)
        order = ("ttc", "hf") if r % 2 == 0 else ("hf", "ttc")
        for side in order:
            if side == "ttc":
                toks, p, d, lengths, reasons = ttc.run(tokens, n)
                ttc_prefill.append(p)
                ttc_decode.append(d)
                ttc_total.append(p + d)
                deterministic &= bool(np.array_equal(toks, first_tokens))
                checks["ttcjax_all_rows_generated_n"] &= bool((lengths == n).all())
            elif hf is not None:
                hf_threads.append(hf.pick_threads(tokens, n))
                toks, s = hf.run(tokens, n)
                hf_total.append(s)
                checks["transformers_generated_n"] &= bool(toks.shape == (batch, n))
        if r + 1 >= args.min_repeats and time.perf_counter() - cell_start > args.cell_budget:
            break
    checks["ttcjax_deterministic_across_repeats"] = deterministic

    floor = None if args.no_floor else matmul_floor_s(cfg, batch, n)

    gen_tokens = batch * n
    best = int(np.argmin(ttc_total))
    ttc_best = ttc_total[best]
    ttc_median = statistics.median(ttc_total)
    mm = matmul_params(cfg)
    tok_s = gen_tokens / ttc_best
    decode_tok_s = gen_tokens / min(ttc_decode)
    # attention context of generated tokens: prompt + half the generation on average
    context = args.prompt_len + (n + 1) / 2
    cell = {
        "config": name,
        "batch": batch,
        "prompt_len": args.prompt_len,
        "new_tokens": n,
        "repeats": len(ttc_total),
        "matmul_rate_at_cell": cell_rate,
        "ttcjax": {
            "tokens_per_s": tok_s,
            "tokens_per_s_median": gen_tokens / ttc_median,
            "best_s": ttc_best,
            "median_s": ttc_median,
            "all_s": ttc_total,
            "prefill_s": ttc_prefill[best],
            "decode_s": ttc_decode[best],
            "prefill_share": ttc_prefill[best] / ttc_best,
            "decode_only_tokens_per_s": decode_tok_s,
            "ms_per_decode_step": 1e3 * min(ttc_decode) / n,
            "first_call_s": first_s,
            "compile_s": first_s - ttc_median,
            "model_flops_per_s": 2 * mm * tok_s,
            "matmul_share": 2 * mm * tok_s / rate,
            "decode_only_matmul_share": 2 * mm * decode_tok_s / rate,
            "matmul_share_incl_attention": (2 * mm + attention_flops_per_token(cfg, context)) * tok_s / rate,
            # all matmul work done (prompt tokens too; the LM head runs on one prompt position per row)
            "achieved_flops_share": (2 * mm * batch * (n + args.prompt_len)
                                     - 2 * cfg.hidden_size * cfg.vocab_size * batch * (args.prompt_len - 1))
                                    / ttc_best / rate,
            "matmul_floor_decode_s": floor,
            "decode_over_floor": None if floor is None else min(ttc_decode) / floor,
        },
        "checks": checks,
    }
    if hf is not None:
        hf_best, hf_median = min(hf_total), statistics.median(hf_total)
        cell["transformers"] = {
            "tokens_per_s": gen_tokens / hf_best,
            "tokens_per_s_median": gen_tokens / hf_median,
            "best_s": hf_best,
            "median_s": hf_median,
            "all_s": hf_total,
            "warmup_s": hf_warm_s,
            "torch_threads": hf_threads,
            "torch_threads_best": hf_threads[int(np.argmin(hf_total))],
            "matmul_share": 2 * mm * gen_tokens / hf_best / rate,
        }
        cell["speedup"] = hf_best / ttc_best
        cell["speedup_median"] = hf_median / ttc_median
        cell["greedy_agreement"] = agreement(first_tokens, hf_tokens)
    return cell


# ---- reporting ---------------------------------------------------------------------------------------


def verdicts(cells: list[dict]) -> list[dict]:
    out = []
    for cell in cells:
        b, name = cell["batch"], cell["config"]
        if b in TARGET_SPEEDUP and "speedup" in cell:
            want = TARGET_SPEEDUP[b]
            out.append({"target": f"ttcjax >= {want}x transformers tokens/s at batch {b}", "config": name,
                        "batch": b, "value": round(cell["speedup"], 2), "want": want,
                        "pass": cell["speedup"] >= want})
        if b == TARGET_MATMUL_SHARE[0]:
            want = TARGET_MATMUL_SHARE[1]
            share = cell["ttcjax"]["matmul_share"]
            out.append({"target": f"ttcjax >= {want:.0%} of the matmul rate at batch {b}", "config": name,
                        "batch": b, "value": round(share, 3), "want": want, "pass": share >= want,
                        "definition": "2 x matmul params x generated tokens/s (prefill time counted, its FLOPs "
                                      "not)"})
            share = cell["ttcjax"]["achieved_flops_share"]
            out.append({"target": f"ttcjax >= {want:.0%} of the matmul rate at batch {b}, prefill FLOPs counted",
                        "config": name, "batch": b, "value": round(share, 3), "want": want, "pass": share >= want,
                        "definition": "all matmul FLOPs done (prompt and generated tokens) / (prefill + decode "
                                      "time); secondary, for context"})
    return out


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def table_rows(cells: list[dict]) -> list[list[str]]:
    rows = []
    for c in cells:
        t, h = c["ttcjax"], c.get("transformers")
        agree = c.get("greedy_agreement", {}).get("token_match")
        rows.append([
            c["config"], str(c["batch"]), fmt_rate(t["tokens_per_s"]), fmt_rate(h and h["tokens_per_s"]),
            "-" if h is None else f"{c['speedup']:.2f}x", f"{t['compile_s']:.1f}",
            f"{t['matmul_share']:.1%}", f"{t['achieved_flops_share']:.1%}", f"{t['decode_only_matmul_share']:.1%}",
            f"{t['prefill_share']:.0%}", f"{t['ms_per_decode_step']:.2f}",
            "-" if t["decode_over_floor"] is None else f"{t['decode_over_floor']:.2f}",
            "-" if agree is None else f"{agree:.3f}", f"{c['matmul_rate_at_cell'] / 1e9:.0f}", str(c["repeats"]),
        ])
    return rows


HEADER = ["config", "batch", "ttcjax tok/s", "transformers tok/s", "ratio", "compile s", "MFU-vs-matmul",
          "all-FLOPs MFU", "decode-only MFU", "prefill share", "ms/step", "decode/floor", "greedy agree",
          "matmul GF/s", "repeats"]


def print_table(cells: list[dict]):
    rows = [HEADER] + table_rows(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for i, r in enumerate(rows):
        print("  ".join(x.rjust(w) for x, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def markdown(report: dict) -> str:
    m, a = report["machine"], report["args"]
    lines = [
        SECTION,
        "",
        "`bench/decode.py` measures generated tokens/s of ttcjax's `Engine` (prefill + one `decode` call) "
        "against Hugging Face transformers' `generate` (PyTorch, CPU, "
        f"`{report.get('transformers_attn_implementation') or 'default'}` attention) on the same weights: "
        "ttcjax writes the model with `save_hf_model` and transformers loads it. Greedy decoding, random "
        f"prompts of {a['prompt_len']} tokens, exactly {a['new_tokens']} new tokens per row (no EOS; "
        "`min_new_tokens` pins transformers), tokens/s = batch x new tokens / (prefill + decode time).",
        "",
        "**These figures are ratios measured side by side on a shared, noisy "
        f"{m['cpu_count']}-core machine** ({m['cpu']}; load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end). The two implementations run interleaved in one process; each "
        "side's figure is its best repeat. Absolute tokens/s move by 2x or more between runs on this "
        "machine; compare the ratio columns, and re-run before trusting a small difference.",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Run {report['date']} on commit {m['git']['commit']}"
        + (" (ttcjax/ modified)" if m["git"]["ttcjax_modified"] else "")
        + f"; jax {m['jax']}, flax {m['flax']}, torch {m['torch']}, transformers "
        f"{m['transformers']}. torch threads: {m['torch_threads']}"
        + (" (before each timed transformers repeat, the faster of 1 and 2 threads on an 8-token generation "
           "is chosen: with another process on one core, 2 OpenMP threads ran 10x slower than 1)"
           if m["torch_threads"] == "auto" else "")
        + ". Machine matmul rate "
        f"(jitted 2048x2048 f32 `jnp.dot`, best of 10 before and after the run, best of 3 before each cell): "
        f"{report['matmul_rate_start'] / 1e9:.1f} before, {report['matmul_rate_end'] / 1e9:.1f} after, "
        f"{min(c['matmul_rate_at_cell'] for c in report['cells']) / 1e9:.1f} to "
        f"{max(c['matmul_rate_at_cell'] for c in report['cells']) / 1e9:.1f} GFLOP/s at the cells (column "
        f"'matmul GF/s': a low value means another process was busy); MFU columns divide by the best, "
        f"{report['matmul_rate'] / 1e9:.1f} GFLOP/s. torch's 2048 matmul at the start: "
        f"{report['torch_matmul_rate'] / 1e9:.1f} GFLOP/s.",
        "",
    ]
    for name, info in report["configs"].items():
        lines.append(f"- `{name}`: {info['num_params']:,} parameters ({info['num_params_non_embedding']:,} "
                     f"without embedding/LM head; {info['matmul_params']:,} matmul parameters = q/k/v/o + MLP "
                     f"+ LM head, which is what MFU counts: 2 FLOPs per matmul parameter per generated token, "
                     f"attention score FLOPs not counted). Model: {info['shape']}.")
        hlo = info.get("decode_hlo")
        if hlo:
            lines.append(f"  Its compiled decode program (batch {hlo['batch']}) holds {hlo['copies']} copies of a "
                         f"whole KV-cache buffer ({' / '.join(hlo['cache_shapes'])}) and {hlo['writes']} scatter/dynamic-update-slice "
                         f"writes into them (k and v of each layer, in place); donated cache aliased to the "
                         f"output: {hlo['input_output_alias']}.")
    lines += [
        "",
        "| " + " | ".join(HEADER[:-1]) + " |",
        "|---|" + "---:|" * (len(HEADER) - 2),
    ]
    for r in table_rows(report["cells"]):
        lines.append("| " + " | ".join(r[:-1]) + " |")
    lines += [
        "",
        "ratio: transformers time / ttcjax time (best repeats). compile s: ttcjax's first call minus its "
        "median steady call. MFU-vs-matmul: 2 x matmul params x generated tok/s / matmul rate (prefill time "
        "counted, prefill FLOPs not: at a constant efficiency it comes out near new/(new+prompt) of the "
        "all-FLOPs figure); all-FLOPs MFU: every matmul FLOP done, prompt tokens included, over the same time; "
        "decode-only MFU: generated-token FLOPs over the decode loop alone. ms/step: decode loop time / new "
        "tokens. decode/floor: decode loop time / the same number of steps of the model's matmuls alone "
        "(jitted chain, no attention, cache, norms or sampling): 1.0 means all overhead is gone. greedy "
        "agree: fraction of generated tokens equal between the two implementations (float differences can "
        "flip a near-tie, after which that row diverges).",
        "",
        "Targets (the 25m config is the one that matters; 3m is shown for context):",
        "",
    ]
    for v in report["verdicts"]:
        value = f"{v['value']:.1%}" if "matmul" in v["target"] else f"{v['value']:.2f}x"
        lines.append(f"- {'PASS' if v['pass'] else 'FAIL'}: {v['target']} ({v['config']}): {value}")
    lines.append("")
    return "\n".join(lines)


def write_atomic(path: str, text: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def update_doc(path: str, section: str, title: str = SECTION):
    """Replace the `title` section of `path` (up to the next '## ' heading), or append it."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_atomic(path, text.rstrip("\n") + "\n")


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="3m,25m", help=f"comma-separated, of {','.join(CONFIGS)}")
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per side (after one warm-up)")
    p.add_argument("--min-repeats", type=int, default=2, help="repeats run even past --cell-budget")
    p.add_argument("--cell-budget", type=float, default=60.0,
                   help="seconds of timed repeats per (config, batch) after which no further repeat starts")
    p.add_argument("--threads", default="auto",
                   help="torch threads: 1, 2, ... or auto (before each timed transformers repeat, the faster of "
                        "1 and 2 on a short generation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hf", action="store_true", help="ttcjax only (no transformers comparison)")
    p.add_argument("--no-floor", action="store_true", help="skip the matmul-only floor of each cell")
    p.add_argument("--quick", action="store_true",
                   help="~1 min smoke run: batches 1,16, 16 new tokens, 1 repeat; writes nothing unless --out")
    p.add_argument("--out", default=None, help=f"results JSON (default {os.path.relpath(RESULTS, ROOT)})")
    p.add_argument("--doc", default=None, help=f"markdown to update (default {os.path.relpath(DOC, ROOT)})")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        explicit = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--batches" not in explicit:
            args.batches = "1,16"
        if "--new-tokens" not in explicit:
            args.new_tokens = 16
        if "--repeats" not in explicit:
            args.repeats = 1
        args.min_repeats = min(args.min_repeats, args.repeats)
        if args.doc is None:
            args.no_doc = True
    if args.out is None and not args.quick:
        args.out = RESULTS
    if args.doc is None:
        args.doc = DOC
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import flax

    started = time.perf_counter()
    info = {
        "jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(), "loadavg_start": loadavg(),
        "git": git_revision(),
    }
    if not args.no_hf:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=args.threads)
    else:
        info.update(torch=None, transformers=None, torch_threads=None)

    rate_start = matmul_rate()
    torch_rate = None if args.no_hf else torch_matmul_rate()
    print(f"matmul rate (jnp.dot 2048^2 f32, best of 10): {rate_start / 1e9:.1f} GFLOP/s"
          + ("" if torch_rate is None else f"; torch: {torch_rate / 1e9:.1f} GFLOP/s"), flush=True)

    max_len = -(-(args.prompt_len + args.new_tokens) // 64) * 64  # as Engine.generate chooses
    cells, configs, attn_impl = [], {}, None
    for name in args.configs:
        cfg = CONFIGS[name]
        configs[name] = {
            "num_params": cfg.num_params(), "num_params_non_embedding": cfg.num_params(include_embeddings=False),
            "matmul_params": matmul_params(cfg),
            "shape": (f"vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, mlp {cfg.intermediate_size}, "
                      f"{cfg.num_layers} layers, {cfg.num_heads} heads, {cfg.num_kv_heads} kv heads"),
        }
        print(f"\n== {name}: {cfg.num_params():,} params ({cfg.num_params(include_embeddings=False):,} "
              f"non-embedding, {matmul_params(cfg):,} matmul) ==", flush=True)
        model = init_model(cfg, seed=args.seed)
        ttc = TtcSide(model, max_len)
        hf = None if args.no_hf else HfSide(model, args.threads)
        attn_impl = attn_impl or (hf and hf.attn_implementation)
        for batch in args.batches:
            cell = run_cell(name, cfg, ttc, hf, batch, args, rate_start)
            cells.append(cell)
            t, h = cell["ttcjax"], cell.get("transformers")
            best_rate = max([rate_start] + [c["matmul_rate_at_cell"] for c in cells])
            print(f"  batch {batch:4d}: ttcjax {t['tokens_per_s']:9,.0f} tok/s "
                  f"(prefill {t['prefill_share']:.0%}, compile {t['compile_s']:.1f}s, "
                  f"{t['model_flops_per_s'] / best_rate:.1%} of the best matmul rate so far)"
                  + ("" if h is None else f" | transformers {h['tokens_per_s']:9,.0f} tok/s | "
                     f"ratio {cell['speedup']:.2f}x | greedy agree {cell['greedy_agreement']['token_match']:.3f}")
                  + ("" if all(cell["checks"].values()) else f" | CHECK FAILED {cell['checks']}"), flush=True)
        # after the timed cells, so that this extra compilation cannot shorten a measured first call
        probe = ttc.engine.prefill(np.ones((args.batches[0], args.prompt_len), np.int32),
                                   np.full(args.batches[0], args.prompt_len, np.int32), max_len)
        configs[name]["decode_hlo"] = {"batch": args.batches[0],
                                       **kv_cache_copies(ttc.engine, probe, args.new_tokens)}
        print(f"  compiled decode program (batch {args.batches[0]}): {configs[name]['decode_hlo']}", flush=True)
        del hf, ttc, model, probe

    rate_end = matmul_rate()
    # the machine's rate: the best of every measurement (load from other processes only lowers it)
    rate = max([rate_start, rate_end] + [c["matmul_rate_at_cell"] for c in cells])
    for cell in cells:  # shares against the better of the two matmul measurements
        t = cell["ttcjax"]
        for key in ("matmul_share", "decode_only_matmul_share", "matmul_share_incl_attention",
                    "achieved_flops_share"):
            t[key] *= rate_start / rate
        if "transformers" in cell:
            cell["transformers"]["matmul_share"] *= rate_start / rate
    info["loadavg_end"] = loadavg()
    report = {
        "benchmark": "decode",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                                        + (argv if argv is not None else sys.argv[1:])),
        "args": {k: v for k, v in vars(args).items()},
        "machine": info,
        "matmul_rate_start": rate_start,
        "matmul_rate_end": rate_end,
        "matmul_rate": rate,
        "torch_matmul_rate": torch_rate,
        "transformers_attn_implementation": attn_impl,
        "mfu_definition": "2 * matmul_params * generated tokens/s / matmul_rate; matmul_params = q,k,v,o,gate,"
                          "up,down of every layer + lm_head (no embedding gather, no norms, no attention scores)",
        "configs": configs,
        "cells": cells,
        "wall_s": None,
    }
    report["verdicts"] = verdicts(cells)
    report["wall_s"] = time.perf_counter() - started

    print(f"\nmatmul rate: {rate_start / 1e9:.1f} GFLOP/s at start, {rate_end / 1e9:.1f} at end, "
          f"{min(c['matmul_rate_at_cell'] for c in cells) / 1e9:.1f}..{max(c['matmul_rate_at_cell'] for c in cells) / 1e9:.1f}"
          f" during the cells (shares use the best, {rate / 1e9:.1f}); load average {info['loadavg_start']} -> "
          f"{info['loadavg_end']}\n")
    print_table(cells)
    print()
    for v in report["verdicts"]:
        value = f"{v['value']:.1%}" if "matmul" in v["target"] else f"{v['value']:.2f}x"
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {v['target']} [{v['config']}]: {value}")
    failed = [c for c in cells if not all(c["checks"].values())]
    for c in failed:
        print(f"CHECK FAILED: {c['config']} batch {c['batch']}: {c['checks']}")
    print(f"\nwall time {report['wall_s']:.0f} s")

    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {os.path.relpath(args.out, ROOT)}")
    if not args.no_doc and not args.no_hf:
        update_doc(args.doc, markdown(report))
        print(f"updated {os.path.relpath(args.doc, ROOT)} ({SECTION!r})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
