"""Where revision chains spend their time: every attempt waits for the longest of its batch's rows.

A chain episode runs its attempts in lock step: attempt a+1 of every row starts once attempt a has ended on all of
the episode's rows, so each attempt lasts as long as its longest sample. Best-of-N has one attempt and drops
finished questions from its batch as they close (compaction), so a long sample keeps only its own question's rows
busy. This measures both sides of that on the same questions, with the shipped tiny models:

- best-of-N (N=64, cache 512, as `ttcjax sweep` batches it) with and without compaction: what lock step costs a
  strategy whose samples are as long as the chains' attempts;
- Revisions(64, sequential=4) (cache 512): the mean length of an attempt against the longest of each attempt, which
  is how many decode steps the attempt takes.

Timed after a warm-up with the same key (compilation excluded), interleaved, best of `--repeats`.

    python bench/revisions_tail.py          # writes bench/results/revisions_tail.json and its docs/benchmarks.md section
"""

from __future__ import annotations

import argparse
import heapq
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
from revisions import revision_model_dir  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.native import load_any  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import Engine  # noqa: E402
from ttcjax.search.run import search  # noqa: E402
from ttcjax.search.settings import SearchSettings  # noqa: E402
from ttcjax.search.strategies import BestOfN, Revisions  # noqa: E402
from ttcjax.tasks.registry import task_from_dict  # noqa: E402
from ttcjax.verifiers.reward_model import load_verifier  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "revisions_tail.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Revisions: where the chains' time goes"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--rows-per-batch", type=int, default=1024, help="the sweep's rows per compiled episode")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--sequential", type=int, default=4)
    p.add_argument("--max-len", type=int, default=512, help="the cache of both (the chains' revision_max_len)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--schedules-only", action="store_true",
                   help="run the chains once (untimed) and print their decode steps under each schedule")
    args = p.parse_args(argv)
    load_start = loadavg()
    policy_dir = model_dir("policy", "tiny")
    revision_dir, separator = revision_model_dir()
    tok = load_tokenizer(policy_dir)
    policy = Engine(load_any(policy_dir), pad_id=tok.pad_id)
    reviser = Engine(load_any(revision_dir), pad_id=tok.pad_id)
    orm = load_verifier(model_dir("orm", "tiny"), tok)
    revision_orm = load_verifier(model_dir("orm", "revision-tiny"), tok)
    task = task_from_dict({"name": "arithmetic"})
    problems = task.problems("test", limit=args.questions, seed=1)
    prompts = [task.encode_prompt(q, tok) for q in problems]
    settings = SearchSettings(delimiter="\n", max_step_tokens=24, max_len=args.max_len, max_rounds=12,
                              temperature=0.8, revision_separator=separator,
                              revision_max_len=args.max_len).for_task(task)
    chains = Revisions(args.n, args.sequential)
    runs = {  # name: (strategy, engine, verifier, compact)
        "best_of_n": (BestOfN(args.n), policy, orm, True),
        "best_of_n_lock_step": (BestOfN(args.n), policy, orm, False),
        "revisions": (chains, reviser, revision_orm, True),
    }

    def run(name):
        strategy, engine, verifier, compact = runs[name]
        t = time.perf_counter()
        results = search(strategy, engine, verifier, tok, prompts, jax.random.key(1),
                         extract_answer=task.extract_answer, settings=settings, compact=compact,
                         questions_per_batch=max(1, args.rows_per_batch // strategy.batch_rows))
        return time.perf_counter() - t, results

    if args.schedules_only:
        _, results = run("revisions")
        rounds = {}
        for q, result in enumerate(results):
            for c in sorted(result.candidates, key=lambda c: (c.chain, c.attempt)):
                rounds.setdefault((q, c.chain), []).append(attempt_rounds(c, tok))
        per_episode = max(1, args.rows_per_batch // chains.batch_rows)
        print(json.dumps({str(k): decode_steps(rounds, k) for k in sorted({per_episode, args.questions})}, indent=1))
        return
    for name in runs:  # warm-up: compile every program the timed calls run (the same key closes the same questions)
        run(name)
    times, outcomes = {name: [] for name in runs}, {}
    for _ in range(args.repeats):
        for name in runs:
            seconds, outcomes[name] = run(name)
            times[name].append(seconds)
    lengths = np.zeros((args.questions, args.n // args.sequential, args.sequential), int)  # [Q, chains, attempts]
    rounds = {}  # (question, chain) -> every attempt's tokens per round, in order
    for q, result in enumerate(outcomes["revisions"]):
        for c in sorted(result.candidates, key=lambda c: (c.chain, c.attempt)):
            lengths[q, c.chain, c.attempt] = len(c.tokens)
            rounds.setdefault((q, c.chain), []).append(attempt_rounds(c, tok))
    per_episode = max(1, args.rows_per_batch // chains.batch_rows)
    samples = np.array([[len(c.tokens) for c in r.candidates] for r in outcomes["best_of_n"]])  # [Q, N]
    best = {name: min(t) for name, t in times.items()}
    report = {
        "command": "python bench/revisions_tail.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "questions": args.questions, "n": args.n, "sequential": args.sequential, "max_len": args.max_len,
        "rows_per_batch": args.rows_per_batch, "revision_model": os.path.relpath(revision_dir, ROOT),
        "seconds": best, "all_seconds": times,
        "lock_step_over_compacted": best["best_of_n_lock_step"] / best["best_of_n"],
        "revisions_over_best_of_n": best["revisions"] / best["best_of_n"],
        "generated_tokens": {k: int(sum(r.generated_tokens for r in v)) for k, v in outcomes.items()},
        "attempt_tokens": {"mean": float(lengths.mean()), "mean_by_attempt": lengths.mean(axis=(0, 1)).tolist(),
                           "longest_by_attempt": lengths.max(axis=(0, 1)).tolist()},
        "chain_decode_steps": {str(k): decode_steps(rounds, k) for k in sorted({per_episode, args.questions})},
        "chain_questions_per_episode": per_episode,
        "best_of_n_sample_tokens": {"mean": float(samples.mean()), "longest": int(samples.max()),
                                    "mean_of_each_questions_longest": float(samples.max(axis=1).mean())},
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "loadavg_start": load_start, "loadavg_end": loadavg(), "git": git_revision()},
    }
    print(json.dumps(report, indent=2))
    if not args.no_doc:
        write_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
        update_doc(DOC, markdown(report), title=SECTION)


def attempt_rounds(candidate, tok) -> list[int]:
    """The tokens an attempt generated in each round: each scored step with its delimiter, then what ended it (an
    EOS or the blank line), if anything did."""
    per_step = [len(tok.encode(step)) + 1 for step in candidate.steps]
    rest = len(candidate.tokens) - sum(per_step)
    return per_step + ([rest] if rest > 0 else [])


def refill_steps(rounds: dict, rows: int) -> int:
    """Decode steps of every chain of the run through `rows` rows, where a row takes the next chain (in question
    order) as soon as its own has ended and shares no rounds: each chain costs its tokens, the run lasts until its
    last row ends (greedy list scheduling). A new chain's prompt is taken as read in one chunk, not counted."""
    ends = [0] * rows
    for key in sorted(rounds):
        heapq.heapreplace(ends, ends[0] + sum(sum(a) for a in rounds[key]))
    return max(ends)


def refill_rounds_steps(rounds: dict, rows: int) -> int:
    """As `refill_steps`, but rounds stay shared: each round every busy row writes its chain's next step (attempts
    one after another), the round lasting as long as the longest of them; a row whose chain has ended takes the next
    chain at the next round."""
    queue = [steps for key in sorted(rounds) if (steps := sum(rounds[key], []))]  # each chain's steps, in order
    busy, at, steps = [], 0, 0  # busy: [chain's steps, next step]
    while at < len(queue) or busy:
        while len(busy) < rows and at < len(queue):
            busy.append([queue[at], 0])
            at += 1
        steps += max(chain[i] for chain, i in busy)
        for row in busy:
            row[1] += 1
        busy = [row for row in busy if row[1] < len(row[0])]
    return steps


def decode_steps(rounds: dict, per_episode: int) -> dict:
    """Decode steps that chain episodes of `per_episode` questions take under three schedules, from every chain's
    tokens per round (`attempt_rounds`): as they run now (a round lasts as long as the longest step written in it,
    and attempt a+1 starts once attempt a has ended on every row); with each row starting its next attempt when its
    own has ended (rounds still shared by all rows); with no shared rounds at all (each row generates its chain
    token after token: the longest chain of the episode)."""
    questions = sorted({q for q, _ in rounds})
    out = {"lock_step": 0, "per_row_attempts": 0, "per_row_tokens": 0}
    for start in range(0, len(questions), per_episode):
        keep = set(questions[start:start + per_episode])
        chains = [a for (q, _), a in rounds.items() if q in keep]
        for attempt in zip(*chains):  # attempt a of every chain
            out["lock_step"] += sum(max(r[t] if t < len(r) else 0 for r in attempt)
                                    for t in range(max(map(len, attempt))))
        flat = [sum(a, []) for a in chains]
        out["per_row_attempts"] += sum(max(r[t] if t < len(r) else 0 for r in flat)
                                       for t in range(max(map(len, flat))))
        out["per_row_tokens"] += max(map(sum, flat))
    chains_per_question = len(rounds) // len(questions)
    out["refill"] = refill_steps(rounds, per_episode * chains_per_question)
    out["refill_shared_rounds"] = refill_rounds_steps(rounds, per_episode * chains_per_question)
    return out


def markdown(r: dict) -> str:
    m, s, a = r["machine"], r["seconds"], r["attempt_tokens"]
    b = r["best_of_n_sample_tokens"]
    rows = [f"| {name} | {s[name]:.2f} | {r['generated_tokens'][name]} |" for name in s]
    per = r["chain_questions_per_episode"]
    steps = r["chain_decode_steps"][str(per)]["lock_step"] / -(-r["questions"] // per)
    return "\n".join([
        SECTION, "",
        f"`{r['command'].strip()}` on a {m['cpu_count']}-core {m['cpu']} ({m['backend']}; load average "
        f"{m['loadavg_start']} -> {m['loadavg_end']}), commit {m['git']['commit']}; {r['questions']} built-in test "
        f"questions, N={r['n']}, cache {r['max_len']} for both, {r['rows_per_batch']} rows per compiled episode; "
        f"best of {len(r['all_seconds']['revisions'])} interleaved repeats, compilation excluded.", "",
        "| run | seconds | generated tokens |", "|---|---:|---:|", *rows, "",
        f"**Lock step costs best-of-N {r['lock_step_over_compacted']:.2f}x**: without compaction its batch runs "
        f"until its longest sample ends ({b['longest']} tokens here, against a mean of {b['mean']:.1f} and "
        f"{b['mean_of_each_questions_longest']:.1f} for the mean question's longest). A chain episode is lock step "
        f"by construction: attempt a+1 starts once attempt a has ended on every row, so each attempt takes as many "
        f"decode steps as its longest row. The chains' attempts are {a['mean']:.1f} tokens long on average (by "
        f"attempt: {', '.join(f'{x:.1f}' for x in a['mean_by_attempt'])}) and the longest of each attempt "
        f"{', '.join(map(str, a['longest_by_attempt']))} over all {r['questions']} questions; an episode of "
        f"{per} questions took {steps:.0f} decode steps on average (the table below) for about "
        f"{a['mean'] * r['sequential']:.0f} tokens a chain, {steps / (a['mean'] * r['sequential']):.1f}x. Here "
        f"Revisions({r['n']}, sequential={r['sequential']}) take {r['revisions_over_best_of_n']:.2f}x best-of-N's "
        f"time at the same cache (chain episodes of {r['chain_questions_per_episode']} questions, as a sweep batches "
        "them).", "",
        "Decode steps of the chain episodes under other schedules, counted from the same chains' tokens per round "
        "(`decode_steps`): *lock step* is how they run; *per-row attempts* lets each row start its next attempt when "
        "its own ends, rounds still shared by every row; *per-row tokens* shares nothing (each episode lasts as long "
        "as its longest chain).", "",
        "| questions per episode | rows | lock step | per-row attempts | per-row tokens | refill "
        "| refill, shared rounds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {k} | {int(k) * r['n'] // r['sequential']} | {d['lock_step']} | {d['per_row_attempts']} | "
          f"{d['per_row_tokens']} | {d['refill']} | {d['refill_shared_rounds']} |"
          for k, d in r["chain_decode_steps"].items()], "",
        "*Refill* runs every chain of the run through the same rows, a row taking the next chain when its own ends "
        "(`refill_steps`; a new chain's prompt read in one chunk, not counted); *refill, shared rounds* does the same "
        "while every row still writes one step a round (`refill_rounds_steps`).", "",
        "Starting each row's next attempt early does not shorten an episode: a round lasts as long as the longest "
        "step written in it, and rows out of step with each other put a long step (a restated first line) into "
        "more rounds. Dropping shared rounds as well saves "
        + ", ".join(f"{1 - d['per_row_tokens'] / d['lock_step']:.0%}" for d in r["chain_decode_steps"].values())
        + " of the decode steps, because a few chains are long: the episode waits for its longest chain. What a "
        "decode step costs depends on the rows and the cache they read: the step reads every row's cache "
        "up to the widest row's length (`segment_widths`), and a chain's cache is 512 slots, 3.2x best-of-N's. The "
        "levers are the step's cost (attention over the slots each row has filled, a cache in blocks) and keeping "
        "every row busy (a finished chain's row taking the next question's chain); neither is built.", ""])

if __name__ == "__main__":
    main()
