"""Revision chains: Revisions(N=64, sequential=4) against best-of-N (N=64) on the same questions, in one run.

Both run through `ttcjax.search.run.search` with the shipped tiny models: the chains with the revision model
(the shipped tiny policy where none is shipped yet: the time depends on shapes, not weights) and best-of-N with
the policy, both scored by the shipped tiny ORM. A chain's attempts read the earlier ones, so its cache is
longer (`--revision-max-len`, default 512 against best-of-N's 160); best-of-N is also timed at that cache
length. Timed after a warm-up (compilation excluded), interleaved, best of `--repeats`.
Target (issue 15): revisions / best-of-N wall time at most 1.5.

    python bench/revisions.py               # writes bench/results/revisions.json and its docs/benchmarks.md section
    python bench/revisions.py --quick --no-doc
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
from ttcjax.search.run import search  # noqa: E402
from ttcjax.search.settings import SearchSettings  # noqa: E402
from ttcjax.search.strategies import BestOfN, Revisions  # noqa: E402
from ttcjax.tasks.registry import task_from_dict  # noqa: E402
from ttcjax.verifiers.reward_model import load_verifier  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "revisions.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Revisions: sequential chains versus best-of-N"


def revision_model_dir() -> tuple[str, str]:
    """The shipped revision model and its separator, or the shipped policy (a stand-in of the same shape)."""
    try:
        directory = model_dir("revision", "tiny")
        with open(os.path.join(directory, "revision.json")) as f:
            return directory, json.load(f)["separator"]
    except (FileNotFoundError, KeyError, ValueError):
        return model_dir("policy", "tiny"), "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--sequential", type=int, default=4)
    p.add_argument("--revision-max-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 questions, N=16, 1 repeat")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.questions, args.n, args.repeats = 4, 16, 1
    load_start = loadavg()
    policy_dir = model_dir("policy", "tiny")
    revision_dir, separator = revision_model_dir()
    tok = load_tokenizer(policy_dir)
    policy = Engine(load_any(policy_dir), pad_id=tok.pad_id)
    reviser = Engine(load_any(revision_dir), pad_id=tok.pad_id)
    orm = load_verifier(model_dir("orm", "tiny"), tok)
    try:  # the revision verifier reads the chains (the ORM trained on the policy's samples where none is shipped)
        revision_orm = load_verifier(model_dir("orm", "revision-tiny"), tok)
        revision_verifier = "orms/revision-tiny"
    except FileNotFoundError:
        revision_orm, revision_verifier = orm, "orms/tiny"
    task = task_from_dict({"name": "arithmetic"})
    problems = task.problems("test", limit=args.questions, seed=1)
    prompts = [task.encode_prompt(q, tok) for q in problems]
    base = SearchSettings(delimiter="\n", max_step_tokens=24, max_len=160, max_rounds=12, temperature=0.8,
                          revision_separator=separator).for_task(task)
    runs = {  # name: (strategy, engine, verifier, settings)
        "best_of_n": (BestOfN(args.n), policy, orm, base),
        f"best_of_n_max_len_{args.revision_max_len}": (BestOfN(args.n), policy, orm,
                                                       SearchSettings(**{**base.to_dict(),
                                                                         "max_len": args.revision_max_len})),
        "revisions": (Revisions(args.n, args.sequential), reviser, revision_orm,
                      SearchSettings(**{**base.to_dict(), "revision_max_len": args.revision_max_len})),
    }

    def run(name, seed):
        strategy, engine, verifier, settings = runs[name]
        t = time.perf_counter()
        results = search(strategy, engine, verifier, tok, prompts, jax.random.key(seed),
                         extract_answer=task.extract_answer, settings=settings)
        return time.perf_counter() - t, results

    for name in runs:  # warm-up: compile every episode
        run(name, 0)
    times = {name: [] for name in runs}
    outcomes = {}
    for r in range(args.repeats):
        for name in runs:
            seconds, outcomes[name] = run(name, r + 1)
            times[name].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    report = {
        "command": "python bench/revisions.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "questions": args.questions, "n": args.n, "sequential": args.sequential,
        "revision_model": os.path.relpath(revision_dir, ROOT), "revision_verifier": revision_verifier,
        "revision_max_len": args.revision_max_len,
        "seconds": best, "all_seconds": times,
        "revisions_over_best_of_n": best["revisions"] / best["best_of_n"],
        "revisions_over_best_of_n_same_cache": best["revisions"] / best[f"best_of_n_max_len_{args.revision_max_len}"],
        "accuracy": {k: float(np.mean([task.grade(q, [r.answer])[0] for r, q in zip(v, problems)]))
                     for k, v in outcomes.items()},
        "generated_tokens": {k: int(sum(r.generated_tokens for r in v)) for k, v in outcomes.items()},
        "reread_tokens": {k: int(sum(r.reread_tokens for r in v)) for k, v in outcomes.items()},
        "verifier_tokens": {k: int(sum(r.verifier_tokens for r in v)) for k, v in outcomes.items()},
        "target": "revisions / best-of-N <= 1.5",
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "loadavg_start": load_start, "loadavg_end": loadavg(), "git": git_revision()},
    }
    report["meets_target"] = report["revisions_over_best_of_n"] <= 1.5
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("all_")}, indent=2))
    if not args.no_doc:
        write_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
        update_doc(DOC, markdown(report), title=SECTION)


def markdown(r: dict) -> str:
    m = r["machine"]
    same = f"best_of_n_max_len_{r['revision_max_len']}"
    return "\n".join([
        SECTION, "",
        f"`{r['command'].strip()}` on a {m['cpu_count']}-core {m['cpu']} ({m['backend']}; load average "
        f"{m['loadavg_start']} -> {m['loadavg_end']}), commit {m['git']['commit']}; revision model "
        f"`{r['revision_model']}` with its verifier `{r.get('revision_verifier', 'orms/tiny')}`, the shipped tiny "
        f"policy with its ORM, {r['questions']} built-in test questions searched "
        f"together, best of {len(r['all_seconds']['revisions'])} interleaved repeats, compilation excluded.", "",
        "| run | seconds | generated tokens | tokens read again | verifier tokens | accuracy |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {r['seconds'][name]:.2f} | {r['generated_tokens'][name]} | {r['reread_tokens'][name]} | "
          f"{r['verifier_tokens'][name]} | {r['accuracy'][name]:.3f} |" for name in r["seconds"]], "",
        f"**Revisions (N={r['n']}, sequential={r['sequential']}, cache {r['revision_max_len']}) / best-of-N "
        f"(N={r['n']}, cache 160) = {r['revisions_over_best_of_n']:.2f}** (target <= 1.5: "
        f"{'met' if r['meets_target'] else 'NOT met'}). A chain's attempt reads the chain's earlier attempts, so its "
        f"cache is longer; best-of-N at the chains' cache length is the second row, and against it the chains take "
        f"{r['revisions_over_best_of_n_same_cache']:.2f}x (the chains' {r['sequential']} sequential attempts on "
        f"{r['sequential']}x fewer rows, filling more of the cache), while the longer cache alone costs best-of-N "
        f"{r['seconds'][same] / r['seconds']['best_of_n']:.2f}x. Accuracy: hierarchical selection with the revision "
        "verifier; the shipped revision model does not improve with revisions (see its TRAINING.md).", ""])


if __name__ == "__main__":
    main()
