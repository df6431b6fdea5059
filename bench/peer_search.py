"""The peer's design measured beside ours: search-and-learn's host-loop beam search and best-of-N against ttcjax.

search-and-learn (github.com/huggingface/search-and-learn, `src/sal/search/beam_search.py`, `best_of_n.py`,
`src/sal/models/reward_models.py`) runs test-time search as a Python loop around vLLM and a transformers PRM.
Here the same loop runs on transformers for both models (PyTorch, CPU), on our shipped tiny policy and PRM
exported to Hugging Face format with ttcjax's own exporter (`ttcjax.checkpoints.hf.save_hf_model`); the PRM's
value head is a torch `Linear` on the exported Llama backbone's final normalised hidden state, loaded from
the PRM's `head.safetensors`. What carries over from search-and-learn:

  beam search    one question at a time (its config demands search_batch_size=1); each round the active beams
                 are refilled to N by copying the survivors in order (`(active * repeats)[:N]`), every beam's
                 next step is generated in one batched `generate` call that re-reads the whole prefix (no
                 cache survives a round), the PRM re-reads every whole prefix from scratch in batches of 8
                 (RLHFlow's default), completed beams leave the active set for a list of completions, the
                 top N/M of the open beams by aggregated score survive, at most 40 rounds, the last round
                 generates to the end; the answer is chosen among the first N completions (sort_completed off).
  best-of-N      a batch of questions (its search_batch_size, 25) x N rows in one `generate` call to the solution
                 end, then the PRM scores every solution in batches of 8.

What is ttcjax's, so that both do the same work: the step delimiter is the built-in task's "\\n" (our "\\n\\n"),
the step token cap (24) and the row's cache (160 tokens) are ttcjax's, a step is scored at its last token
(the delimiter), and a solution ends where ttcjax's episode ends one: EOS, an empty step (the blank line that
ends an example), or a full cache; a step cut at the cap is scored and continued next round. Sampling is at the
same temperature (0.8, no top-k, top-p 1), the aggregation is the PRM's ("last"), and the answer is chosen by
weighted selection (`ttcjax.search.selection.weighted`) on both sides. ttcjax runs the same questions through
`ttcjax.search.run.search` (one compiled round loop per batch, every question's rows in one batch), with
max_rounds 40.

Timed: ttcjax after a warm-up call of each strategy (compilation excluded, and reported apart); the host loop
after a short warm-up generation. Before timing, parity: the exported PRM's step scores against ttcjax's on a
few solutions, and the exported policy's logits against ttcjax's, both within 1e-4.
Target (issue 18): ttcjax beam search at least 5x faster than the host loop's.

    python bench/peer_search.py                  # 32 questions, N = 16 and 64; writes bench/results/peer_search.json
                                                 # and its section of docs/benchmarks.md
    python bench/peer_search.py --quick --no-doc # 4 questions, N = 16
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
from typing import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from decode import cpu_model, git_revision, loadavg, update_doc, write_atomic  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from ttcjax.checkpoints.assets import model_dir  # noqa: E402
from ttcjax.checkpoints.hf import save_hf_model  # noqa: E402
from ttcjax.checkpoints.native import load_any  # noqa: E402
from ttcjax.checkpoints.tokenizer import load_tokenizer  # noqa: E402
from ttcjax.decoding.engine import Engine  # noqa: E402
from ttcjax.search.run import search  # noqa: E402
from ttcjax.search.selection import weighted  # noqa: E402
from ttcjax.search.settings import SearchSettings  # noqa: E402
from ttcjax.search.strategies import Beam, BestOfN  # noqa: E402
from ttcjax.tasks import arithmetic  # noqa: E402
from ttcjax.verifiers.base import aggregate  # noqa: E402
from ttcjax.verifiers.reward_model import HEAD_FILE, RewardModelVerifier, load_prm  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "peer_search.json")
# a second run with XLA on one thread (as torch runs here): `--out` this file with XLA_FLAGS set, then `--render`
ONE_THREAD_RESULTS = os.path.join(ROOT, "bench", "results", "peer_search_xla_one_thread.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## The peer's design: search-and-learn's host loop beside ttcjax"
TARGET = 5.0  # host-loop beam seconds / ttcjax beam seconds


@dataclasses.dataclass(frozen=True)
class PeerSettings:
    """What both sides share (ttcjax's built-in task defaults, search-and-learn's rounds and batch sizes)."""

    delimiter: str = "\n"
    max_step_tokens: int = 24
    max_len: int = 160  # prompt + solution tokens per row (ttcjax's cache)
    rounds: int = 40  # search-and-learn's num_iterations
    temperature: float = 0.8
    aggregation: str = "last"
    prm_batch_size: int = 8  # search-and-learn's RLHFlow PRM scores 8 sequences per forward pass
    questions_per_call: int = 25  # search-and-learn's search_batch_size (best-of-N)

    def ttcjax(self) -> SearchSettings:
        return SearchSettings(delimiter=self.delimiter, max_step_tokens=self.max_step_tokens, max_len=self.max_len,
                              max_rounds=self.rounds, temperature=self.temperature)


# ---- the models on transformers ----------------------------------------------------------------------------


def load_ttcjax_models():
    """The shipped tiny policy (a Transformer) and PRM (a RewardModel, and its metadata)."""
    return load_any(model_dir("policy", "tiny")), *load_prm(model_dir("prm", "tiny"))


def export_models(directory: str, policy=None, prm=None) -> dict[str, str]:
    """The shipped tiny policy and the tiny PRM's backbone (or the loaded `policy` and `prm`) as Hugging Face
    checkpoints (ttcjax's exporter), and the PRM's head file: {"policy": dir, "prm": dir, "head": file}."""
    if policy is None or prm is None:
        policy, prm, _ = load_ttcjax_models()
    paths = {"policy": os.path.join(directory, "policy"), "prm": os.path.join(directory, "prm"),
             "head": os.path.join(model_dir("prm", "tiny"), HEAD_FILE)}
    save_hf_model(policy, paths["policy"])
    save_hf_model(prm.backbone, paths["prm"])
    return paths


class StopAfter(transformers.StoppingCriteria):
    """A row is done once its last tokens are `ids` (the step delimiter; "\\n\\n" for a whole solution)."""

    def __init__(self, ids: Sequence[int]):
        self.ids = torch.tensor(list(ids))

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -len(self.ids):] == self.ids).all(dim=1)


@dataclasses.dataclass
class Generation:
    tokens: list[int]  # what the row generated, its stop token included
    reason: str  # "stop" (the stop sequence), "eos", "cap" (the token cap) or "length" (the row's cache is full)


class HfPolicy:
    """The policy on transformers: one batched, left-padded `generate` per call, sampled at `temperature`
    (greedy at 0), each row stopped at EOS or at `stop`."""

    def __init__(self, path: str, tokenizer, settings: PeerSettings):
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tok, self.settings = tokenizer, settings
        self.eos = tokenizer.eos_ids[0]
        self.seconds = 0.0  # inside `generate` (the host loop's time on the policy)
        self.prefix_tokens = 0  # prefix tokens read again (prefilled) by `generate`

    def generate(self, prefixes: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[int] | None,
                 temperature: float | None = None) -> list[Generation]:
        temperature = self.settings.temperature if temperature is None else temperature
        width = max(map(len, prefixes))
        room = [self.settings.max_len - len(p) for p in prefixes]
        new = max(1, min(max_new_tokens, max(room)))
        ids = torch.full((len(prefixes), width), self.tok.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prefixes):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
            dict(do_sample=False)
        start = time.perf_counter()
        self.prefix_tokens += sum(map(len, prefixes))
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new, eos_token_id=self.eos,
                                      pad_token_id=self.tok.pad_id, num_beams=1,
                                      stopping_criteria=transformers.StoppingCriteriaList(
                                          [StopAfter(stop)] if stop else []), **sampling)
        self.seconds += time.perf_counter() - start
        return [self._cut(out[r, width:].tolist(), list(prefixes[r]), room[r], stop, max_new_tokens)
                for r in range(len(prefixes))]

    def _cut(self, row: list[int], prefix: list[int], room: int, stop, max_new_tokens: int) -> Generation:
        """The row's own tokens: up to its EOS, its stop sequence (read with the prefix's last tokens, as the
        stopping criterion reads them), its token cap or its cache, whichever comes first."""
        stop = list(stop or [])
        tail = prefix[-len(stop):] if stop else []
        joined = tail + row  # row[k] is joined[len(tail) + k]
        for k, t in enumerate(row[:room]):
            if t == self.eos:
                return Generation(row[:k + 1], "eos")
            end = len(tail) + k + 1
            if stop and end >= len(stop) and joined[end - len(stop):end] == stop:
                return Generation(row[:k + 1], "stop")
        if max_new_tokens < room:
            return Generation(row[:max_new_tokens], "cap")
        return Generation(row[:room], "length")


class HfPRM:
    """Our PRM on transformers: the exported Llama backbone's final normalised hidden state through the value
    head (a torch Linear from `head.safetensors`), sigmoid; each sequence re-read whole, right-padded,
    `batch_size` sequences per forward pass."""

    def __init__(self, backbone_path: str, head_file: str, batch_size: int = 8):
        self.backbone = transformers.AutoModelForCausalLM.from_pretrained(backbone_path,
                                                                          dtype=torch.float32).eval().model
        head = load_file(head_file)
        self.head = torch.nn.Linear(head["v_w"].shape[0], 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(head["v_w"])[None, :])
            self.head.bias.copy_(torch.from_numpy(head["v_b"]).reshape(1))
        self.batch_size = batch_size
        self.seconds = 0.0  # inside `score`
        self.tokens = 0  # tokens read

    def score(self, sequences: Sequence[Sequence[int]], read_at: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The probability at each position read_at[i] of sequence i (its step ends)."""
        out = []
        began = time.perf_counter()
        self.tokens += sum(map(len, sequences))
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start:start + self.batch_size]
            width = max(map(len, batch))
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(batch):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            with torch.no_grad():
                hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, D]
                probs = torch.sigmoid(self.head(hidden)[..., 0]).numpy()  # [B, T]
            out += [probs[r, list(read_at[start + r])].astype(np.float64) for r in range(len(batch))]
        self.seconds += time.perf_counter() - began
        return out


# ---- search-and-learn's loops ------------------------------------------------------------------------------


@dataclasses.dataclass
class HostBeam:
    tokens: list[int] = dataclasses.field(default_factory=list)  # the solution so far
    step_ends: list[int] = dataclasses.field(default_factory=list)  # len(tokens) after each scored step
    scores: list[float] = dataclasses.field(default_factory=list)  # the PRM's score of each step
    completed: bool = False


@dataclasses.dataclass
class HostResult:
    answer: object
    candidates: list[HostBeam]
    texts: list[str]
    generated_tokens: int
    rounds: int


def _advance(beam: HostBeam, gen: Generation, tokenizer, settings: PeerSettings, prompt_len: int) -> None:
    """Append a generated step and decide, as ttcjax's episode does, whether it is a step and whether the
    solution has ended: an empty step (only whitespace before the delimiter) or an immediate EOS ends it
    unscored; EOS or a full cache end it after the step; a step cut at the cap continues next round."""
    text = tokenizer.decode(gen.tokens)
    empty = (gen.reason == "stop" and not text.strip()) or (gen.reason == "eos" and len(gen.tokens) == 1)
    beam.tokens += gen.tokens
    if not empty:
        beam.step_ends.append(len(beam.tokens))
    beam.completed = (empty or gen.reason in ("eos", "length")
                      or prompt_len + len(beam.tokens) >= settings.max_len)


def _score(prm: HfPRM, prompt: list[int], beams: Sequence[HostBeam]) -> None:
    """search-and-learn's `prm.score(prompts, completions)`: every beam's whole prefix read from scratch, each
    step's score read at its last token."""
    scores = prm.score([prompt + b.tokens for b in beams],
                       [[len(prompt) + e - 1 for e in b.step_ends] for b in beams])
    for b, s in zip(beams, scores):
        b.scores = list(s)


def host_beam_search(policy: HfPolicy, prm: HfPRM, prompt: list[int], n: int, width: int, settings: PeerSettings,
                     *, on_round: Callable[[int, list[HostBeam], list[int]], None] | None = None) -> HostResult:
    """search-and-learn's `_beam_search` for one question: N beams, keep the top N/width open beams each round.
    `on_round(round, open_beams, kept)` is called after each round's selection with the open beams and the
    indices of those kept."""
    tok = policy.tok
    delimiter = tok.encode(settings.delimiter)
    active = [HostBeam() for _ in range(n)]
    completed: list[HostBeam] = []
    generated = 0
    rounds = 0
    for i in range(settings.rounds):
        rounds = i + 1
        if len(active) != n:  # refill to N by copying the survivors in order
            active = [copy.deepcopy(b) for b in (active * (n // len(active) + 1))[:n]]
        last = i == settings.rounds - 1  # the last round generates to the end
        gens = policy.generate([prompt + b.tokens for b in active],
                               max_new_tokens=settings.max_len if last else settings.max_step_tokens,
                               stop=None if last else delimiter)
        for b, g in zip(active, gens):
            generated += len(g.tokens)
            _advance(b, g, tok, settings, len(prompt))
            if last:
                b.completed = True
            if b.completed:
                completed.append(b)
        _score(prm, prompt, active)
        active = [b for b in active if not b.completed]
        if not active:
            break
        agg = np.array([aggregate(b.scores, settings.aggregation) for b in active])
        top = set(np.argsort(agg)[-(n // width):].tolist())
        if on_round is not None:
            on_round(i, list(active), sorted(top))
        active = [b for j, b in enumerate(active) if j in top]
    if not completed:  # nothing ended in time: the open beams stand in
        completed = active
    final = [copy.deepcopy(b) for b in (completed * (n // len(completed) + 1))[:n]]  # the first N completions
    return _choose(final, tok, settings, generated, rounds)


def host_best_of_n(policy: HfPolicy, prm: HfPRM, prompts: Sequence[list[int]], n: int, settings: PeerSettings
                   ) -> list[HostResult]:
    """search-and-learn's `best_of_n`: each batch of questions x N rows sampled whole in one `generate` call
    (to EOS or the blank line that ends a solution), then every solution scored by the PRM; the steps are the
    solution's lines."""
    tok = policy.tok
    delimiter = tok.encode(settings.delimiter)
    results = []
    per_call = settings.questions_per_call
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        rows = [p for p in chunk for _ in range(n)]
        gens = policy.generate(rows, max_new_tokens=settings.max_len, stop=delimiter * 2)
        beams = []
        for g in gens:
            b = HostBeam(tokens=list(g.tokens), completed=True)
            at = 0
            for k, t in enumerate(g.tokens):
                if g.tokens[k:k + len(delimiter)] == delimiter:
                    if tok.decode(g.tokens[at:k]).strip():
                        b.step_ends.append(k + len(delimiter))
                    at = k + len(delimiter)
            if at < len(g.tokens) and tok.decode(g.tokens[at:]).strip():
                b.step_ends.append(len(g.tokens))  # an unterminated last step is read at its last token
            beams.append(b)
        for q, p in enumerate(chunk):
            _score(prm, p, beams[q * n:(q + 1) * n])
        for q in range(len(chunk)):
            own = beams[q * n:(q + 1) * n]
            results.append(_choose(own, tok, settings, sum(len(g.tokens) for g in gens[q * n:(q + 1) * n]), 1))
    return results


def _choose(beams: list[HostBeam], tok, settings: PeerSettings, generated: int, rounds: int) -> HostResult:
    texts = [tok.decode(b.tokens) for b in beams]
    answers = [arithmetic.extract_answer(t) for t in texts]
    chosen = weighted(answers, [aggregate(b.scores, settings.aggregation) for b in beams])
    return HostResult(answer=answers[chosen], candidates=beams, texts=texts, generated_tokens=generated,
                      rounds=rounds)


# ---- parity --------------------------------------------------------------------------------------------------


def parity(policy: HfPolicy, prm: HfPRM, tokenizer, problems, ttc_policy, ttc_prm) -> dict:
    """Largest differences between the exported models and ttcjax's (`ttc_policy`, `ttc_prm`) on the problems'
    reference solutions and a wrong one each: PRM step scores (ttcjax `RewardModelVerifier.score`), and the
    policy's logits at every position."""
    verifier = RewardModelVerifier(ttc_prm, tokenizer)
    prompts, solutions = [], []
    for q in problems:
        steps = arithmetic.format_solution(q).split("\n")
        prompts.append(tokenizer.encode(arithmetic.format_prompt(q), add_bos=True))
        solutions.append(steps)
        prompts.append(prompts[-1])
        solutions.append(steps[:-1] + [f"The answer is {q.answer + 1}"])
    ours = verifier.score(None, solutions, prompts=prompts)
    seqs, reads = [], []
    for p, steps in zip(prompts, solutions):
        ids, at = list(p), []
        for s in steps:
            ids += tokenizer.encode(s + "\n")
            at.append(len(ids) - 1)
        seqs.append(ids)
        reads.append(at)
    theirs = prm.score(seqs, reads)
    prm_diff = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(ours, theirs))
    width = max(map(len, seqs))  # right-padded: a causal model's logits at the real positions do not see it
    padded = np.array([ids + [tokenizer.pad_id] * (width - len(ids)) for ids in seqs], np.int32)
    ttc_logits = np.asarray(ttc_policy(jax.numpy.asarray(padded))[0])  # [B, T, V]
    with torch.no_grad():
        hf_logits = policy.model(torch.from_numpy(padded).long()).logits.numpy()
    logit_diff = max(float(np.max(np.abs(ttc_logits[r, :len(ids)] - hf_logits[r, :len(ids)])))
                     for r, ids in enumerate(seqs))
    return {"solutions": len(seqs), "steps": sum(map(len, reads)), "prm_max_abs_diff": prm_diff,
            "policy_logits_max_abs_diff": logit_diff}


# ---- the benchmark ---------------------------------------------------------------------------------------------


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% at z = 1.96)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pick_threads(policy: HfPolicy, prompt: list[int]) -> int:
    """torch's thread count: the faster of 1 and 2 on a short batched generation (on a loaded 2-core machine two
    OpenMP threads can run far slower than one)."""
    times = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        policy.generate([prompt] * 16, max_new_tokens=8, stop=None)
        times[threads] = time.perf_counter() - t
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--ns", default="16,64")
    p.add_argument("--width", type=int, default=4, help="beam width M (search-and-learn's beam_width)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 questions, N=16, one repeat")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--out", default=RESULTS, help="the results file; the doc section is written only with the default")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the docs/benchmarks.md section from bench/results/peer_search.json")
    args = p.parse_args(argv)
    if args.render:
        with open(RESULTS) as f:
            report = json.load(f)
        report["findings"] = findings(report)
        if os.path.exists(ONE_THREAD_RESULTS):
            with open(ONE_THREAD_RESULTS) as f:
                second = json.load(f)
            report["second_run"] = {
                "file": os.path.relpath(ONE_THREAD_RESULTS, ROOT), "xla_flags": second["machine"].get("xla_flags", ""),
                "loadavg": [second["machine"]["loadavg_start"][0], second["machine"]["loadavg_end"][0]],
                "cells": [{"strategy": c["strategy"], "n": c["n"], "ttcjax_s": c["ttcjax"]["seconds"],
                           "host_s": c["host"]["seconds"], "host_over_ttcjax": c["host_over_ttcjax"],
                           "same_outcomes": all(c[side][k] == first[side][k] for side in ("ttcjax", "host")
                                                for k in ("correct", "generated_tokens"))}
                          for c in second["cells"]
                          for first in [next(f for f in report["cells"]
                                             if (f["strategy"], f["n"]) == (c["strategy"], c["n"]))]]}
        write_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
        update_doc(DOC, markdown(report), title=SECTION)
        return
    if args.quick:
        args.questions, args.ns, args.repeats = 4, "16", 1
    ns = [int(x) for x in args.ns.split(",")]
    transformers.logging.set_verbosity_error()
    settings = PeerSettings()
    load_start = loadavg()
    tok = load_tokenizer(model_dir("policy", "tiny"))
    problems = arithmetic.generate(arithmetic.TaskConfig(), args.questions, seed=1, split="test")
    prompt_texts = [arithmetic.format_prompt(q) for q in problems]
    prompts = [tok.encode(t, add_bos=True) for t in prompt_texts]

    ttc_policy, prm_model, meta = load_ttcjax_models()
    engine = Engine(ttc_policy, pad_id=tok.pad_id)
    verifier = RewardModelVerifier(prm_model, tok, aggregation=meta["aggregation"])
    assert meta["aggregation"] == settings.aggregation
    with tempfile.TemporaryDirectory(prefix="ttcjax-peer-") as d:
        paths = export_models(d, ttc_policy, prm_model)
        policy = HfPolicy(paths["policy"], tok, settings)
        prm = HfPRM(paths["prm"], paths["head"], settings.prm_batch_size)
    check = parity(policy, prm, tok, problems[:4], ttc_policy, prm_model)
    print("parity:", check, flush=True)
    if check["prm_max_abs_diff"] > 1e-4 or check["policy_logits_max_abs_diff"] > 1e-4:
        raise SystemExit(f"parity failed: {check}")

    def ttcjax_run(strategy, seed):
        t = time.perf_counter()
        out = search(strategy, engine, verifier, tok, prompt_texts, jax.random.key(seed),
                     extract_answer=arithmetic.extract_answer, settings=settings.ttcjax())
        seconds = time.perf_counter() - t
        return seconds, [r.answer for r in out], sum(r.generated_tokens for r in out), {
            "verifier_tokens": sum(r.verifier_tokens for r in out)}

    def host_run(kind, n, seed):
        torch.manual_seed(seed)
        policy.seconds = prm.seconds = 0.0
        policy.prefix_tokens = prm.tokens = 0
        t = time.perf_counter()
        if kind == "beam":
            out = [host_beam_search(policy, prm, pr, n, args.width, settings) for pr in prompts]
        else:
            out = host_best_of_n(policy, prm, prompts, n, settings)
        seconds = time.perf_counter() - t
        return seconds, [r.answer for r in out], sum(r.generated_tokens for r in out), {
            "generate_s": policy.seconds, "prm_s": prm.seconds,
            "host_s": seconds - policy.seconds - prm.seconds, "prefix_tokens_reread": policy.prefix_tokens,
            "verifier_tokens": prm.tokens, "rounds": sum(r.rounds for r in out) / len(out)}

    cells = []
    for n in ns:
        for kind, strategy in (("best_of_n", BestOfN(n)), ("beam", Beam(n, args.width))):
            # the warm-up call is the timed call's twin (same key), so every compacted batch size it reaches is
            # compiled before timing
            first = ttcjax_run(strategy, args.seed)[0]
            ttc, host, threads = [], [], []
            for _ in range(args.repeats):  # interleaved; the best repeat counts (noise only adds time)
                ttc.append(ttcjax_run(strategy, args.seed))
                threads.append(pick_threads(policy, prompts[0]))
                host.append(host_run(kind, n, args.seed))
            ttc_s, ttc_answers, ttc_tokens, ttc_more = min(ttc, key=lambda x: x[0])
            host_s, host_answers, host_tokens, host_more = min(host, key=lambda x: x[0])
            cell = {"strategy": kind, "n": n, "width": args.width if kind == "beam" else None,
                    "ttcjax": {**_side(ttc_s, ttc_answers, ttc_tokens, problems), **ttc_more},
                    "host": {**_side(host_s, host_answers, host_tokens, problems), **host_more},
                    "ttcjax_all_s": [x[0] for x in ttc], "host_all_s": [x[0] for x in host],
                    "ttcjax_first_call_s": first, "torch_threads": threads, "loadavg": loadavg()}
            cell["ttcjax"]["compile_s"] = max(0.0, first - ttc_s)
            cell["host_over_ttcjax"] = host_s / ttc_s
            cell["host_over_ttcjax_per_token"] = (host_s / max(host_tokens, 1)) / (ttc_s / max(ttc_tokens, 1))
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    beams = [c for c in cells if c["strategy"] == "beam"]
    report = {
        "command": "python bench/peer_search.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "questions": args.questions, "ns": ns, "width": args.width, "settings": dataclasses.asdict(settings),
        "parity": check, "cells": cells,
        "target": f"host-loop beam seconds / ttcjax beam seconds >= {TARGET}",
        "beam_ratios": {c["n"]: c["host_over_ttcjax"] for c in beams},
        "meets_target": all(c["host_over_ttcjax"] >= TARGET for c in beams),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "loadavg_start": load_start, "loadavg_end": loadavg(), "git": git_revision()},
    }
    report["findings"] = findings(report)
    print(json.dumps({k: v for k, v in report.items() if k != "cells"}, indent=2))
    if not args.no_doc:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        if args.out == RESULTS:
            update_doc(DOC, markdown(report), title=SECTION)


def _side(seconds: float, answers, tokens: int, problems) -> dict:
    correct = sum(a == q.answer for a, q in zip(answers, problems))
    return {"seconds": seconds, "correct": int(correct), "accuracy": correct / len(problems),
            "accuracy_ci95": wilson(int(correct), len(problems)), "generated_tokens": int(tokens),
            "tokens_per_s": tokens / seconds}


def findings(r: dict) -> dict:
    """Per cell ("beam_64", ...): the ratio, what it would be if the host loop's PRM and Python cost nothing
    (its `generate` calls alone against ttcjax's whole search), the PRM's share of the host loop's time, and how
    many times as many tokens the host loop's PRM and policy read as ttcjax's."""
    out = {}
    for c in r["cells"]:
        host, ttc = c["host"], c["ttcjax"]
        out[f"{c['strategy']}_{c['n']}"] = {
            "host_over_ttcjax": c["host_over_ttcjax"],
            "host_generate_only_over_ttcjax": host["generate_s"] / ttc["seconds"],
            "host_prm_share": host["prm_s"] / host["seconds"],
            "prm_tokens_host_over_ttcjax": host["verifier_tokens"] / ttc["verifier_tokens"],
            "policy_tokens_read_over_generated": (host["prefix_tokens_reread"] + host["generated_tokens"])
            / host["generated_tokens"],
            "accuracy_intervals_overlap": (host["accuracy_ci95"][0] <= ttc["accuracy_ci95"][1]
                                           and ttc["accuracy_ci95"][0] <= host["accuracy_ci95"][1]),
        }
    return out


def markdown(r: dict) -> str:
    m, s = r["machine"], r["settings"]
    rows = []
    for c in r["cells"]:
        name = "best-of-N" if c["strategy"] == "best_of_n" else f"beam (M={c['width']})"
        for side, label in (("ttcjax", "ttcjax"), ("host", "host loop")):
            x = c[side]
            lo, hi = x["accuracy_ci95"]
            rows.append(f"| {name} | {c['n']} | {label} | {x['seconds']:.2f} | {x['generated_tokens']} | "
                        f"{x['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] | "
                        + (f"{c['host_over_ttcjax']:.2f}x | {c['host_over_ttcjax_per_token']:.2f}x |"
                           if side == "host" else f"compile {x['compile_s']:.1f} s | |"))
    verdict = ", ".join(f"N={n}: {v:.2f}x" for n, v in r["beam_ratios"].items())
    last_n = r["ns"][-1]
    reread = r["findings"][f"beam_{last_n}"]["policy_tokens_read_over_generated"]
    apart = [k for k, f in r["findings"].items() if not f["accuracy_intervals_overlap"]]
    overlap = ("in every cell the two 95% intervals overlap" if not apart else
               f"the two 95% intervals do not overlap in {', '.join(apart)}")
    python = max(c["host"]["host_s"] / c["host"]["seconds"] for c in r["cells"])
    spread = max(max(c[k]) / min(c[k]) - 1 for c in r["cells"] for k in ("ttcjax_all_s", "host_all_s"))
    return "\n".join([
        SECTION, "",
        f"`{r['command'].strip()}` on a {m['cpu_count']}-core {m['cpu']}, shared with other jobs ({m['backend']}; "
        f"load average {m['loadavg_start']} -> {m['loadavg_end']}), commit {m['git']['commit']}; jax "
        f"{r['versions']['jax']}, torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.",
        "",
        f"search-and-learn's beam search and best-of-N as a host loop (`bench/peer_search.py`: transformers `generate` "
        f"for the policy, a transformers Llama with our value head for the PRM, both exported from the shipped tiny "
        f"models by `save_hf_model`) beside `ttcjax.search.run.search`, on the same {r['questions']} built-in test "
        f"questions. Shared: step delimiter {s['delimiter']!r}, step cap {s['max_step_tokens']} tokens, "
        f"{s['max_len']}-token rows, at most {s['rounds']} rounds, temperature {s['temperature']}, "
        f"'{s['aggregation']}' aggregation, weighted selection. The host loop runs beam search one question at a "
        f"time and best-of-N {s['questions_per_call']} questions per `generate` call, re-reads every prefix in "
        f"both models each round, and scores {s['prm_batch_size']} sequences per PRM pass, as search-and-learn "
        "does; ttcjax searches all questions in one batch with one compiled round loop. ttcjax's time excludes "
        f"compilation (its first call, shown apart); best of {len(r['cells'][0]['host_all_s'])} interleaved "
        "repeats. Parity before timing: "
        f"PRM step scores within {r['parity']['prm_max_abs_diff']:.1e}, policy logits within "
        f"{r['parity']['policy_logits_max_abs_diff']:.1e} ({r['parity']['solutions']} solutions, "
        f"{r['parity']['steps']} steps).", "",
        "| strategy | N | implementation | seconds | generated tokens | accuracy [95% Wilson CI] | host / ttcjax "
        "| per generated token |",
        "|---|---:|---|---:|---:|---|---:|---:|",
        *rows, "",
        "Where the host loop's time goes, and what it reads again (PRM tokens: every token the PRM read, prompts "
        "included; ttcjax's PRM reads each token once, into its per-row cache):", "",
        "| strategy | N | generate s | PRM s | Python s | policy prefix tokens re-read | PRM tokens host "
        "| PRM tokens ttcjax | mean rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {'best-of-N' if c['strategy'] == 'best_of_n' else 'beam'} | {c['n']} | {c['host']['generate_s']:.2f} | "
          f"{c['host']['prm_s']:.2f} | {c['host']['host_s']:.2f} | {c['host']['prefix_tokens_reread']} | "
          f"{c['host']['verifier_tokens']} | {c['ttcjax']['verifier_tokens']} | {c['host']['rounds']:.1f} |"
          for c in r["cells"]], "",
        f"**Host-loop beam / ttcjax beam: {verdict}** (target >= {TARGET:.0f}x: "
        f"{'met' if r['meets_target'] else 'NOT met'}). Accuracies differ by sampling only (the two sides draw "
        f"different random numbers; {overlap}); 'per generated token' divides each "
        "side's time by the tokens it generated (the two generate about as many).", "",
        "Why the target is not met: " + "; ".join(
            f"at N={f_n}, the host loop's `generate` calls alone take {f['host_generate_only_over_ttcjax']:.2f}x "
            f"ttcjax's whole beam search, and its PRM, reading {f['prm_tokens_host_over_ttcjax']:.1f}x the tokens "
            f"ttcjax's PRM reads, takes {f['host_prm_share']:.0%} of its time"
            for f_n, f in ((c["n"], r["findings"][f"beam_{c['n']}"]) for c in r["cells"] if c["strategy"] == "beam"))
        + ". So even with its PRM and Python free the host loop would not be 5x slower: on these CPU cores a "
        "transformers decoding step of a 0.76M-parameter model at a batch of 16-64 rows costs about what ttcjax's "
        "compiled step costs per row (the 'Decoding core' section measures 1.0-1.3x at batches 64-256), and ttcjax's "
        "remaining advantage is its larger batch (every question's rows at once) and reading each token once. The "
        "host loop's design costs are real but small here: the policy re-reads every prefix each round "
        f"({reread:.1f}x the tokens it generates, at N={last_n}), but as prefill, which is cheap per token, and its "
        f"Python bookkeeping is at most {python:.0%} of its time. The PRM's re-reading is the design cost that grows "
        "with N and with the length of the prefixes; where a 5x gap could come from (long solutions re-read every "
        "round, per-call overhead on an accelerator) is not measured here. The machine was shared (load average "
        f"{m['loadavg_start'][0]} -> {m['loadavg_end'][0]} on {m['cpu_count']} cores): one cell's repeats differ "
        f"by up to {spread:.0%}.", "", *_second_run(r)])


def _second_run(r: dict) -> list[str]:
    """A sentence on the second run (XLA on one thread), where there is one."""
    second = r.get("second_run")
    if not second:
        return []
    cells = "; ".join(f"{'best-of-N' if c['strategy'] == 'best_of_n' else 'beam'} N={c['n']}: ttcjax "
                      f"{c['ttcjax_s']:.1f} s, host loop {c['host_s']:.1f} s, {c['host_over_ttcjax']:.2f}x"
                      for c in second["cells"])
    return [f"A second run with `XLA_FLAGS=\"{second['xla_flags']}\"` (XLA asked for one thread, as torch used one; "
            f"load average {second['loadavg'][0]} -> {second['loadavg'][1]}; `{second['file']}`): {cells}. "
            + ("Each side's answers and generated tokens equal the first run's (same seeds); only the times move."
               if all(c["same_outcomes"] for c in second["cells"]) else
               "Some outcomes differ from the first run's (see the file)."), ""]


if __name__ == "__main__":
    main()
