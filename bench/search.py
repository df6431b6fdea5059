"""Search cost: beam search (N=64, M=8) against best-of-N (N=64) on the same questions, in one run.

Both run through `ttcjax.search.run.search` (one compiled round loop per batch size; finished questions are
compacted away, and the same episodes are also timed with compaction off) with the shipped tiny
policy and PRM. Timed after a warm-up with the same key (compilation excluded), interleaved, best of `--repeats`. The
verifier's share of search time is measured by running the same episodes with a stand-in PRM of one layer
and width 8 (same vocabulary, negligible cost): share = 1 - t(stand-in) / t(real PRM), per strategy.
Target (issue 5): beam / best-of-N wall time at most 1.3.

    python bench/search.py               # writes bench/results/search.json and its docs/benchmarks.md section
    python bench/search.py --quick --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from decode import cpu_model, git_revision, loadavg, update_doc, write_atomic  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.native import load_any  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import Engine  # noqa: E402
from ttcjax.models import ModelConfig, init_model  # noqa: E402
from ttcjax.search.run import search  # noqa: E402
from ttcjax.search.settings import SearchSettings  # noqa: E402
from ttcjax.search.strategies import Beam, BestOfN  # noqa: E402
from ttcjax.tasks import arithmetic  # noqa: E402
from ttcjax.verifiers.reward_model import RewardModel, RewardModelVerifier, ValueHead, load_prm  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "search.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Search: beam search versus best-of-N"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 questions, N=16, M=4, 1 repeat")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.questions, args.n, args.width, args.repeats = 4, 16, 4, 1
    load_start = loadavg()
    policy_dir = model_dir("policy", "tiny")
    tok = load_tokenizer(policy_dir)
    engine = Engine(load_any(policy_dir), pad_id=tok.pad_id)
    prm_model, meta = load_prm(model_dir("prm", "tiny"))
    prm = RewardModelVerifier(prm_model, tok, aggregation=meta["aggregation"])
    stand_in_config = ModelConfig(vocab_size=prm_model.config.vocab_size, hidden_size=8, intermediate_size=8,
                                  num_layers=1, num_heads=1, num_kv_heads=1, max_position_embeddings=512)
    stand_in = RewardModelVerifier(RewardModel(init_model(stand_in_config), ValueHead()), tok)
    problems = arithmetic.generate(arithmetic.TaskConfig(), args.questions, seed=1, split="test")
    questions = [arithmetic.format_prompt(q) for q in problems]
    strategies = {"best_of_n": BestOfN(args.n), "beam": Beam(args.n, args.width)}
    kw = dict(extract_answer=arithmetic.extract_answer,
              settings=SearchSettings(delimiter="\n", max_step_tokens=24, max_len=160, max_rounds=12, temperature=0.8))

    def run(strategy, verifier, seed, compact=True):
        t = time.perf_counter()
        results = search(strategy, engine, verifier, tok, questions, jax.random.key(seed), compact=compact, **kw)
        return time.perf_counter() - t, results

    # warm-up: compile both episodes with both verifiers, with the timed calls' key (compaction closes questions
    # at times the key decides, into batch sizes another key may not have compiled)
    for s in strategies.values():
        run(s, prm, 1)
        run(s, stand_in, 1)
        run(s, prm, 1, compact=False)
    times = {name: [] for name in strategies}
    whole_times = {name: [] for name in strategies}
    stand_in_times = {name: [] for name in strategies}
    outcomes = {}
    for r in range(args.repeats):
        for name, s in strategies.items():
            seconds, results = run(s, prm, 1)
            times[name].append(seconds)
            outcomes[name] = results
            stand_in_times[name].append(run(s, stand_in, 1)[0])
            whole_times[name].append(run(s, prm, 1, compact=False)[0])
    best = {k: min(v) for k, v in times.items()}
    share = {k: max(0.0, 1 - min(stand_in_times[k]) / best[k]) for k in strategies}
    report = {
        "command": "python bench/search.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "questions": args.questions, "n": args.n, "width": args.width,
        "seconds": best, "all_seconds": times, "stand_in_seconds": stand_in_times,
        "seconds_without_compaction": {k: min(v) for k, v in whole_times.items()},
        "all_seconds_without_compaction": whole_times,
        "beam_over_best_of_n": best["beam"] / best["best_of_n"],
        "verifier_share": share,
        "accuracy": {k: float(np.mean([r.answer == q.answer for r, q in zip(v, problems)]))
                     for k, v in outcomes.items()},
        "generated_tokens": {k: int(sum(r.generated_tokens for r in v)) for k, v in outcomes.items()},
        "target": "beam / best-of-N <= 1.3",
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "loadavg_start": load_start, "loadavg_end": loadavg(), "git": git_revision()},
    }
    report["meets_target"] = report["beam_over_best_of_n"] <= 1.3
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("all_")}, indent=2))
    if not args.no_doc:
        write_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
        update_doc(DOC, markdown(report), title=SECTION)


def markdown(r: dict) -> str:
    m = r["machine"]
    return "\n".join([
        SECTION, "",
        f"`{r['command'].strip()}` on a {m['cpu_count']}-core {m['cpu']} ({m['backend']}; load average "
        f"{m['loadavg_start']} -> {m['loadavg_end']}), commit {m['git']['commit']}; shipped tiny policy and PRM, "
        f"{r['questions']} built-in test questions searched together, best of {len(r['all_seconds']['beam'])} "
        "interleaved repeats, compilation excluded.", "",
        "| strategy | seconds | generated tokens | accuracy | verifier share | seconds without compaction |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {r['seconds'][name]:.2f} | {r['generated_tokens'][name]} | {r['accuracy'][name]:.3f} | "
          f"{r['verifier_share'][name]:.0%} | {r['seconds_without_compaction'][name]:.2f} |"
          for name in ("best_of_n", "beam")], "",
        f"**Beam (N={r['n']}, M={r['width']}) / best-of-N (N={r['n']}) = {r['beam_over_best_of_n']:.2f}** "
        f"(target <= 1.3: {'met' if r['meets_target'] else 'NOT met'}). The verifier share is measured by "
        "swapping the PRM for a one-layer stand-in of width 8. 'Without compaction': the same episodes with "
        "`search(..., compact=False)`, where finished questions keep their rows in the batch to the end (the "
        "results are identical; only the time differs).", ""])


if __name__ == "__main__":
    main()
