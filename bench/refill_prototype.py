"""A prototype of revision chains by refill, timed beside the lock-step chain episode and best-of-N (issue 15).

Not ttcjax code: a measurement of the design issue 15's 1.5x target needs (docs/benchmarks.md, "where the chains'
time goes"). Every chain of the run goes through one compiled `lax.while_loop` on `--rows` rows: each row decodes
its own chain token after token, the revision ORM reading each token into its own cache beside the policy; a row
whose attempt ends reads the separator and starts the next attempt, and a row whose chain has ended takes the next
chain of the run (its prompt read token by token, one a step). No shared rounds, so no row waits for another.

An attempt follows the search's step rules, row by row: a step ends at the delimiter, an EOS or the step cap
(`max_step_tokens`, where it is scored and the line goes on as the next step); an empty step (a blank line) or an
immediate EOS ends the attempt unscored; a scored step that ends on EOS or holds a final-answer mark, or the
`max_rounds`-th step, ends it. Each token's draw comes from a key folded with its chain, attempt and index, so a
chain's attempts do not depend on its row or on the batch. What it leaves out, against `ttcjax.search.chains`: only
each attempt's last step's score is kept, the window never slides (sequential <= window + 1), prompts are not
shared, one device. Its time is an estimate of what a built refill would cost, not a result.

The three, on the same built-in test questions, each after a warm-up run with its timed key, best of --repeats:
best-of-N (N, the shipped tiny policy and ORM, cache 160, `questions_per_batch` as a sweep batches), the lock-step
chain episode (Revisions(N, sequential), the shipped revision model and its ORM, cache 512, as a sweep batches)
and the refill prototype (the same models and cache, every chain in one program).

    python bench/refill_prototype.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from decode import cpu_model, git_revision, loadavg, update_doc, write_atomic  # noqa: E402
from flax import nnx  # noqa: E402
from revisions import revision_model_dir  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.native import load_any  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import Engine, stop_text  # noqa: E402
from ttcjax.search.run import search  # noqa: E402
from ttcjax.search.settings import SearchSettings  # noqa: E402
from ttcjax.search.strategies import BestOfN, Revisions  # noqa: E402
from ttcjax.tasks.registry import task_from_dict  # noqa: E402
from ttcjax.verifiers.reward_model import load_prm, load_verifier  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "refill_prototype.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Revisions: a refill prototype beside the lock-step chains"


def refill_program(policy, orm, prompts: list[list[int]], separator: list[int], *, chains: int, sequential: int,
                   rows: int, slots: int, attempt_tokens: int, newline: int, eos: int, temperature: float,
                   max_step_tokens: int, max_rounds: int, answer_marks):
    """The prototype as a jitted function of (policy params, ORM params, key) -> (decode steps, generated tokens,
    attempt lengths [questions * chains, sequential], attempt scores [same])."""
    questions, width = len(prompts), max(map(len, prompts))
    table = np.zeros((questions, width), np.int32)
    for q, p in enumerate(prompts):
        table[q, :len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    total, forced_width = questions * chains, width + len(separator)
    policy_graph, _ = nnx.split(policy)
    orm_graph, _ = nnx.split(orm)

    def forced_for(chain):
        """[R, forced_width] each chain's question's prompt, and its length (a chain past the last: anything)."""
        q = jnp.clip(chain, 0, total - 1) // chains
        return jnp.zeros((rows, forced_width), jnp.int32).at[:, :width].set(jnp.asarray(table)[q]), \
            jnp.asarray(lengths)[q]

    separator_rows = jnp.zeros((rows, forced_width), jnp.int32).at[:, :len(separator)].set(
        jnp.asarray(separator, jnp.int32))

    @jax.jit
    def run(policy_params, orm_params, key):
        model, verifier = nnx.merge(policy_graph, policy_params), nnx.merge(orm_graph, orm_params)
        chain = jnp.arange(rows, dtype=jnp.int32)
        forced, forced_len = forced_for(chain)
        marks = answer_marks.strings if answer_marks is not None else ()  # none: only EOS and blank lines end
        next_state = jnp.asarray(answer_marks.next_state) if marks else jnp.zeros((0, 1, 1), jnp.int32)
        hit = jnp.asarray(answer_marks.hit) if marks else jnp.zeros((0, 1, 1), bool)
        state = dict(policy=model.new_cache(rows, slots), orm=verifier.backbone.new_cache(rows, slots), chain=chain,
                     step_len=jnp.zeros(rows, jnp.int32), steps=jnp.zeros(rows, jnp.int32),
                     mark=jnp.zeros((rows, len(marks)), jnp.int32), marked=jnp.zeros(rows, bool),
                     last_score=jnp.full(rows, jnp.nan, jnp.float32),
                     attempt=jnp.zeros(rows, jnp.int32), forced=forced, forced_len=forced_len,
                     forced_at=jnp.zeros(rows, jnp.int32), written=jnp.zeros(rows, jnp.int32),
                     logits=jnp.zeros((rows, model.config.vocab_size)),
                     next_chain=jnp.int32(rows), decode_steps=jnp.int32(0), generated=jnp.int32(0),
                     length=jnp.zeros((total, sequential), jnp.int32),
                     score=jnp.full((total, sequential), jnp.nan, jnp.float32))

        def body(st):
            active = st["chain"] < total
            reading = st["forced_at"] < st["forced_len"]
            keys = jax.vmap(lambda c, a, i: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, c), a), i))(
                st["chain"], st["attempt"], st["written"])  # the chain's own stream, not the row's
            sampled = jax.vmap(lambda k, x: jax.random.categorical(k, x / temperature))(keys, st["logits"]).astype(
                jnp.int32)
            at = jnp.minimum(st["forced_at"], forced_width - 1)[:, None]
            token = jnp.where(active, jnp.where(reading, jnp.take_along_axis(st["forced"], at, 1)[:, 0], sampled), 0)
            logits, policy_cache, _ = model(token[:, None], cache=st["policy"])
            _, orm_cache, hidden = verifier.backbone(token[:, None], cache=st["orm"], return_logits=False,
                                                     return_hidden=True)
            score = jax.nn.sigmoid(verifier.head_logits(hidden[-1][:, 0]))
            wrote = active & ~reading
            written = st["written"] + wrote
            full = policy_cache.lengths >= slots - 1
            # the search's step rules, row by row
            step_len = st["step_len"] + wrote
            if marks:
                strings = jnp.arange(len(marks))[None, :]
                marked = st["marked"] | jnp.any(hit[strings, token[:, None], st["mark"]], axis=1)
                mark = next_state[strings, token[:, None], st["mark"]]
            else:
                marked, mark = st["marked"], st["mark"]
            stop = (token == newline) | (token == eos)
            step_done = wrote & (stop | (step_len >= max_step_tokens))
            empty = step_done & stop & (step_len == 1)
            scored = step_done & ~empty
            steps = st["steps"] + scored
            last_score = jnp.where(scored, score, st["last_score"])
            ended = empty | (scored & ((token == eos) | marked | (steps >= max_rounds))) | (wrote & full) | (
                wrote & (written >= attempt_tokens))
            c, a = jnp.clip(st["chain"], 0, total - 1), jnp.minimum(st["attempt"], sequential - 1)
            length = st["length"].at[c, a].set(jnp.where(ended, written, st["length"][c, a]))
            scores = st["score"].at[c, a].set(jnp.where(ended, last_score, st["score"][c, a]))
            attempt = st["attempt"] + ended
            done = ended & (attempt >= sequential)  # the chain's last attempt: the row takes the next chain
            taken = st["next_chain"] + jnp.cumsum(done) - 1
            chain = jnp.where(done, jnp.minimum(taken, total), st["chain"])
            prompt, prompt_len = forced_for(chain)
            forced = jnp.where(done[:, None], prompt, jnp.where(ended[:, None], separator_rows, st["forced"]))
            forced_len = jnp.where(done, prompt_len, jnp.where(ended, len(separator), st["forced_len"]))
            restart = jnp.where(done, 0, policy_cache.lengths)
            return dict(policy=dataclasses.replace(policy_cache, lengths=restart),
                        orm=dataclasses.replace(orm_cache, lengths=jnp.where(done, 0, orm_cache.lengths)),
                        chain=chain, attempt=jnp.where(done, 0, attempt), forced=forced, forced_len=forced_len,
                        forced_at=jnp.where(ended, 0, st["forced_at"] + (active & reading)),
                        written=jnp.where(ended, 0, written), step_len=jnp.where(step_done | ended, 0, step_len),
                        steps=jnp.where(ended, 0, steps),
                        mark=jnp.where((step_done | ended)[:, None], 0, jnp.where(wrote[:, None], mark, st["mark"])),
                        marked=jnp.where(step_done | ended, False, marked),
                        last_score=jnp.where(ended, jnp.nan, last_score),
                        logits=logits[:, 0], next_chain=st["next_chain"] + jnp.sum(done),
                        decode_steps=st["decode_steps"] + 1,
                        generated=st["generated"] + jnp.sum(wrote), length=length, score=scores)

        st = jax.lax.while_loop(lambda st: jnp.any(st["chain"] < total), body, state)
        return st["decode_steps"], st["generated"], st["length"], st["score"]

    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--sequential", type=int, default=4)
    p.add_argument("--rows", type=int, default=256, help="the prototype's rows (a sweep gives a chain episode 1024 "
                                                          "// (N / sequential) questions: 256 rows at N=64, 4)")
    p.add_argument("--max-len", type=int, default=512, help="the chains' cache (best-of-N's is 160)")
    p.add_argument("--attempt-tokens", type=int, default=168)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    if args.sequential > 5:
        raise SystemExit("--sequential: the prototype never slides its window of 4 attempts: at most 5.")
    load_start = loadavg()
    tok = load_tokenizer(model_dir("policy", "tiny"))
    revision_dir, separator = revision_model_dir()
    policy, reviser = Engine(load_any(model_dir("policy", "tiny")), pad_id=tok.pad_id), load_any(revision_dir)
    orm, revision_orm = load_verifier(model_dir("orm", "tiny"), tok), load_verifier(model_dir("orm", "revision-tiny"),
                                                                                    tok)
    task = task_from_dict({"name": "arithmetic"})
    prompts = [task.encode_prompt(q, tok) for q in task.problems("test", limit=args.questions, seed=1)]
    chains = Revisions(args.n, args.sequential)
    common = dict(delimiter="\n", max_step_tokens=24, max_rounds=12, temperature=0.8)
    best_settings = SearchSettings(max_len=160, **common).for_task(task)
    chain_settings = SearchSettings(max_len=args.max_len, revision_separator=separator,
                                    revision_max_len=args.max_len, **common).for_task(task)
    revision_prm = load_prm(model_dir("orm", "revision-tiny"))[0]
    program = refill_program(reviser, revision_prm, prompts,
                             tok.encode(separator) if separator else [], chains=args.n // args.sequential,
                             sequential=args.sequential, rows=args.rows, slots=args.max_len,
                             attempt_tokens=args.attempt_tokens, newline=tok.encode("\n")[-1], eos=tok.eos_id,
                             temperature=0.8, max_step_tokens=chain_settings.max_step_tokens,
                             max_rounds=chain_settings.max_rounds,
                             answer_marks=stop_text(tok, chain_settings.answer_marks)
                             if chain_settings.answer_marks else None)
    _, reviser_params = nnx.split(reviser)
    _, orm_params = nnx.split(revision_prm)
    key = jax.random.key(1)

    def best_of_n():
        return search(BestOfN(args.n), policy, orm, tok, prompts, key, extract_answer=task.extract_answer,
                      settings=best_settings, questions_per_batch=max(1, 1024 // args.n))

    def lock_step():
        return search(chains, Engine(reviser, pad_id=tok.pad_id), revision_orm, tok, prompts, key,
                      extract_answer=task.extract_answer, settings=chain_settings,
                      questions_per_batch=max(1, 1024 // chains.batch_rows))

    def refill():
        return jax.block_until_ready(program(reviser_params, orm_params, key))

    runs = {"best_of_n": best_of_n, "lock_step_chains": lock_step, "refill_prototype": refill}
    outcomes = {name: run() for name, run in runs.items()}  # warm-up: compile what the timed calls run
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            outcomes[name] = run()
            times[name].append(time.perf_counter() - t)
    steps, generated, lengths, _ = outcomes["refill_prototype"]
    best = {name: min(t) for name, t in times.items()}
    report = {
        "command": "python bench/refill_prototype.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "questions": args.questions, "n": args.n, "sequential": args.sequential, "rows": args.rows,
        "max_len": args.max_len, "seconds": best, "all_seconds": times,
        "generated_tokens": {"best_of_n": int(sum(r.generated_tokens for r in outcomes["best_of_n"])),
                             "lock_step_chains": int(sum(r.generated_tokens for r in outcomes["lock_step_chains"])),
                             "refill_prototype": int(generated)},
        "refill_decode_steps": int(steps), "refill_mean_attempt_tokens": float(np.mean(lengths)),
        "lock_step_over_best_of_n": best["lock_step_chains"] / best["best_of_n"],
        "refill_over_best_of_n": best["refill_prototype"] / best["best_of_n"],
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "loadavg_start": load_start, "loadavg_end": loadavg(), "git": git_revision()},
    }
    print(json.dumps(report, indent=2))
    if not args.no_doc:
        write_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
        update_doc(DOC, markdown(report), title=SECTION)


def markdown(r: dict) -> str:
    m, s, g = r["machine"], r["seconds"], r["generated_tokens"]
    return "\n".join([
        SECTION, "",
        f"`{r['command'].strip()}` on a {m['cpu_count']}-core {m['cpu']} ({m['backend']}; load average "
        f"{m['loadavg_start']} -> {m['loadavg_end']}), commit {m['git']['commit']}; {r['questions']} built-in test "
        f"questions, N={r['n']}, sequential={r['sequential']}; each after a warm-up, best of "
        f"{len(r['all_seconds']['best_of_n'])}.", "",
        "| run | seconds | generated tokens | / best-of-N |", "|---|---:|---:|---:|",
        *[f"| {name} | {s[name]:.2f} | {g[name]} | {s[name] / s['best_of_n']:.2f}x |" for name in s], "",
        f"**The refill prototype takes {r['refill_over_best_of_n']:.2f}x best-of-N's time** (the lock-step chain "
        f"episode {r['lock_step_over_best_of_n']:.2f}x; issue 15's target is 1.5x): {r['refill_decode_steps']} "
        f"decode steps on {r['rows']} rows for every chain of the run, attempts of "
        f"{r['refill_mean_attempt_tokens']:.1f} tokens on average. Its tokens alone would fill "
        f"{g['refill_prototype'] / r['rows']:.0f} steps: the rest is the run's tail, its last chains running on few "
        "rows, which a run of more questions spreads thinner. It is a prototype (`bench/refill_prototype.py`'s "
        "docstring says what it follows, the search's step rules and a chain's own draws, and what it leaves out: "
        "every step's score but the last, the sliding window, shared prompts, sharding), so this is what a built "
        "refill could cost, not what ttcjax's chains cost.", ""])


if __name__ == "__main__":
    main()
