"""`search`: run a strategy for a batch of questions with a policy and a verifier, and choose each answer.

The rounds run on the device (`ttcjax.search.episode`); here the host encodes the prompts, batches the
questions, reads the final rows back, extracts every candidate's answer and applies the strategy's
selection rule (`ttcjax.search.selection.SELECTION_RULES`) over all N final rows. Costs are exact: the
tokens each row's lineage generated (rollouts included) and the tokens the verifier read.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ttcjax.decoding.engine import Engine, StopText, bucket, prompt_floor, stop_text
from ttcjax.search.chains import ChainSpec, run_chains
from ttcjax.search.episode import EpisodeSpec, run_episode
from ttcjax.search.selection import select
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import BestOfN, Revisions, Strategy
from ttcjax.verifiers.base import Verifier, step_texts


@dataclasses.dataclass
class Candidate:
    text: str
    answer: Any
    step_scores: list[float]
    score: float  # aggregated
    steps: list[str] = dataclasses.field(default_factory=list)  # the step texts the verifier scored
    tokens: tuple[int, ...] = ()  # the policy's ids as generated (the text decodes them without special tokens)
    chain: int = 0  # revisions: the candidate's chain, and its attempt within the chain (from 0)
    attempt: int = 0


@dataclasses.dataclass
class SearchResult:
    """Per question: the chosen answer and solution, every candidate, and the exact cost."""

    answer: Any
    solution: str
    chosen: int
    candidates: list[Candidate]
    generations: int  # the strategy's budget in generations (N, or N*(k+1) for lookahead)
    generated_tokens: int
    verifier_tokens: int
    policy_flops: float
    verifier_flops: float
    reread_tokens: int = 0  # revisions: tokens the policy read again between attempts (the window's attempts)
    overflowed_contexts: int = 0  # revisions: attempts whose context (prompt and window) was cut to fit max_len
    # rows (beams; revisions: chains) that met non-finite policy logits, and rows with a NaN verifier score: a NaN
    # or inf in a model's weights or activations; their candidates are not what the models would write or judge
    nonfinite_logits: int = 0
    nonfinite_scores: int = 0


def inference_flops(params: float, tokens: float) -> float:
    """Inference FLOPs of `tokens` tokens through a model of `params` parameters: 2 N D."""
    return 2.0 * params * tokens


def step_end(tokenizer, delimiter: str | None) -> StopText:
    """What ends a step: the delimiter's text, matched whatever the policy's tokenization (one token, several,
    or merged with its neighbours); ValueError where the delimiter is unset."""
    if delimiter is None:
        raise ValueError("the step delimiter is unset: SearchSettings.for_task(task) takes the task's.")
    return stop_text(tokenizer, (delimiter,))


def episode_spec(strategy: Strategy, engine: Engine, verifier: Verifier, tokenizer, settings: SearchSettings
                 ) -> tuple[EpisodeSpec, Any]:
    """The static spec of `strategy`'s compiled episode with the policy in `engine` and `verifier` (its step
    scorer), as `search` runs it, and the scorer's parameters; ValueError where the verifier cannot serve."""
    if strategy.needs_verifier and not verifier.scores_steps:
        raise ValueError(f"{strategy.label} reads verifier scores, and the verifier is {verifier!r}; use "
                         "selection='majority' with best-of-N, or name a verifier.")
    delimiter = step_end(tokenizer, settings.delimiter)
    if verifier.step_delimiter not in (None, settings.delimiter):
        raise ValueError(f"the verifier reads steps ended by {verifier.step_delimiter!r} and the search ends them with "
                         f"{settings.delimiter!r}; set search.delimiter to the verifier's.")
    scorer, scorer_params = verifier.step_scorer(tokenizer, engine.mesh, engine.rules)
    # the loop never reads the selection rule: one program serves every rule
    spec = EpisodeSpec(strategy=dataclasses.replace(strategy, selection="weighted"), policy_graphdef=engine.graphdef,
                       scorer=scorer,
                       rounds=strategy.max_rounds(settings.max_rounds, settings.max_len),
                       max_step_tokens=settings.max_step_tokens, max_len=settings.max_len,
                       sampling=settings.sampling, step_end=delimiter,
                       answer_end=stop_text(tokenizer, settings.answer_marks) if settings.answer_marks else None,
                       eos_ids=tuple(tokenizer.eos_ids),
                       pad_id=tokenizer.pad_id, attn_chunk=engine.attn_chunk, mesh=engine.mesh,
                       data_axis=engine.rules.batch if engine.mesh is not None else None)
    return spec, scorer_params


def chain_spec(strategy: Revisions, spec: EpisodeSpec, verifier: Verifier, tokenizer, settings: SearchSettings
               ) -> ChainSpec:
    """The static spec of `strategy`'s chain episode, whose attempts run `spec` (`episode_spec` with the chains'
    settings: max_len `settings.chain_max_len`) as best-of-N over the chains; ValueError where the verifier
    cannot follow a chain."""
    if not hasattr(spec.scorer, "rewind"):
        raise ValueError(f"{strategy.label}: the verifier {verifier!r} renders steps in its own format; revision "
                         "chains need one that reads the policy's own text (a ttcjax ORM trained on the revision "
                         "model's outputs) or none (selection='majority').")
    if not getattr(verifier, "can_rewind", True):
        raise ValueError(f"{strategy.label}: the verifier {verifier!r} has a likelihood head, which cannot go back to "
                         "an earlier token between a chain's attempts; use a value-head ORM trained on the revision "
                         "model's outputs, or none (selection='majority').")
    sep = tokenizer.encode(settings.revision_separator) if settings.revision_separator else []
    return ChainSpec(attempt=dataclasses.replace(spec, strategy=BestOfN(strategy.chains)),
                     sequential=strategy.sequential, window=strategy.window, separator=tuple(sep))


def search(strategy: Strategy, engine: Engine, verifier: Verifier, tokenizer, prompts: Sequence[str | Sequence[int]],
           key: jax.Array, *, extract_answer: Callable[[str], Any], settings: SearchSettings,
           equal: Callable[[Any, Any], bool] | None = None, questions: Sequence[str] | None = None,
           questions_per_batch: int | None = None, compact: bool = True, compact_min_rows: int = 128,
           on_segment: Callable[[int], None] | None = None) -> list[SearchResult]:
    """Run `strategy` for every prompt (text, encoded with BOS where the tokenizer has one, or token ids) with
    the policy in `engine` and `verifier` scoring each step. `questions` are the problems' texts, which a
    verifier with its own input format renders (default: the prompts, where they are text).

    `extract_answer(solution_text)` gives a candidate's answer (None if it has none); `equal` compares two
    answers (default ==). Questions are searched `questions_per_batch` at a time (default: all), each with N
    rows of one batch. With `compact` (the default), once at most half of a batch's questions are still
    open the loop returns, the finished questions' rows are read out and dropped, and the rest continue in a
    batch half the size or less: a finished question stops costing compute. Batches are not shrunk below
    `compact_min_rows` rows, where a smaller batch saves less time than compiling its loop costs. The results
    are the same either way: a row's random draws depend on its id (its question's index among this call's
    prompts, and its beam), not on where compaction moves it; other prompts in the call do change the ids.
    `on_segment(rows)` is called before each compiled segment with its batch's rows.
    """
    revisions = isinstance(strategy, Revisions)
    if revisions:  # a chain's cache holds the prompt, the window's earlier attempts and the attempt being written
        settings = dataclasses.replace(settings, max_len=settings.chain_max_len(engine.config))
    spec, scorer_params = episode_spec(strategy, engine, verifier, tokenizer, settings)
    encoded = [list(p) if not isinstance(p, str) else tokenizer.encode(p, add_bos=tokenizer.bos_id is not None)
               for p in prompts]
    if questions is None:
        questions = [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]
    if len(questions) != len(prompts):
        raise ValueError(f"search: {len(questions)} questions for {len(prompts)} prompts; pass one per prompt.")
    per_batch = questions_per_batch or len(encoded)
    if revisions:
        chains = chain_spec(strategy, spec, verifier, tokenizer, settings)
    n = strategy.rows
    results: list[SearchResult] = []
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start:start + per_batch]
        chunk_questions = list(questions[start:start + per_batch])
        longest = max(map(len, chunk))
        if longest >= settings.max_len:
            raise ValueError(f"a prompt of {longest} tokens leaves no room to generate in max_len="
                             f"{settings.max_len}; raise max_len.")
        prompt_bucket = min(bucket(longest), settings.max_len)
        # with a mesh, questions (and so their rows) are padded to a multiple of the data axis and split over it
        padded = chunk + [chunk[0]] * (-len(chunk) % engine.data_size)
        tokens = np.full((len(padded), prompt_bucket), tokenizer.pad_id, np.int32)  # [Q, P]
        for i, p in enumerate(padded):
            tokens[i, :min(len(p), prompt_bucket)] = p[:prompt_bucket]
        lengths = np.array([len(p) for p in padded], np.int32)  # [Q]
        active = np.arange(len(padded)) < len(chunk)  # [Q]
        padded_questions = chunk_questions + [chunk_questions[0]] * (len(padded) - len(chunk))
        read = verifier.scorer_prompts(padded_questions, padded)  # what the verifier reads for each prompt
        v_tokens = np.full((len(padded), bucket(max(1, max(map(len, read))))), tokenizer.pad_id, np.int32)
        for i, p in enumerate(read):
            v_tokens[i, :len(p)] = p
        v_lengths = np.array([len(p) for p in read], np.int32)
        verifier.bind_batch(padded_questions, settings.delimiter)
        # the prompt's caches held once per question, each row's own slots after them
        shared = engine.shared_prefix
        floors = dict(prompt_floor=prompt_floor(lengths) if shared else 0,
                      verifier_floor=prompt_floor(v_lengths) if shared and v_lengths.max() < settings.max_len else 0)
        if revisions:
            placed = map(engine.place_rows, (tokens, lengths, v_tokens, v_lengths, active))
            if on_segment is not None:
                on_segment(len(padded) * n)
            host = run_chains(dataclasses.replace(chains, attempt=dataclasses.replace(chains.attempt, **floors)),
                              engine, scorer_params, *placed, jax.random.fold_in(key, start))
            results += [_chain_result(strategy, engine, verifier, tokenizer, settings, host, i, len(chunk[i]),
                                      extract_answer, equal) for i in range(len(chunk))]
            continue
        host = run_episode(dataclasses.replace(spec, **floors), engine, scorer_params, *map(engine.place_rows, (tokens, lengths, v_tokens, v_lengths,
                                                                                  active)),
                           jax.random.fold_in(key, start), len(chunk), compact=compact,
                           compact_min_rows=compact_min_rows, on_segment=on_segment)
        sol_tokens, sol_len, step_scores, step_ends, num_steps, generated, scored, nonfinite = host  # [Q * n, ...]
        broken_scores = _nonfinite_scores(step_scores, num_steps)  # [len(chunk) * n]
        for i in range(len(chunk)):
            cands = []
            for r in range(i * n, (i + 1) * n):
                text = tokenizer.decode(sol_tokens[r, :sol_len[r]])
                s = [float(x) for x in step_scores[r, :num_steps[r]]] if verifier.scores_steps else []
                steps = step_texts(tokenizer, sol_tokens[r], step_ends[r, :num_steps[r]], settings.delimiter)
                cands.append(Candidate(text=text, answer=extract_answer(text), step_scores=s,
                                       score=verifier.solution_score(s), steps=steps,
                                       tokens=tuple(map(int, sol_tokens[r, :sol_len[r]]))))
            chosen = select(strategy.selection, [c.answer for c in cands], [c.score for c in cands], equal)
            gen_tokens = int(generated[i * n:(i + 1) * n].sum())
            verifier_tokens = int(scored[i * n:(i + 1) * n].sum())
            results.append(SearchResult(
                answer=cands[chosen].answer, solution=cands[chosen].text, chosen=chosen, candidates=cands,
                generations=strategy.budget, generated_tokens=gen_tokens, verifier_tokens=verifier_tokens,
                policy_flops=inference_flops(engine.config.num_params(), gen_tokens + len(chunk[i])),
                verifier_flops=inference_flops(verifier.num_params, verifier_tokens),
                nonfinite_logits=int(nonfinite[i * n:(i + 1) * n].sum()),
                nonfinite_scores=int(broken_scores[i * n:(i + 1) * n].sum())))
    _warn_nonfinite(strategy, results)
    overflowed = sum(r.overflowed_contexts for r in results)
    if overflowed:
        warnings.warn(f"{strategy.label}: {overflowed} of {len(results) * strategy.budget} attempts had a context (the "
                      f"prompt and the window's earlier attempts) that did not fit its cache of {settings.max_len} "
                      "tokens and was cut; raise search.revision_max_len or lower the strategy's window.",
                      stacklevel=2)
    return results


def _nonfinite_scores(step_scores: np.ndarray, num_steps: np.ndarray) -> np.ndarray:
    """Per row: whether a step it scored holds a NaN (a sigmoid of a NaN or inf logit; unscored places are NaN by
    design). step_scores [R, ..., rounds], num_steps [R, ...]: the steps each row scored."""
    scored = np.arange(step_scores.shape[-1]) < num_steps[..., None]
    return np.any(scored & ~np.isfinite(step_scores), axis=tuple(range(1, step_scores.ndim)))


def _warn_nonfinite(strategy: Strategy, results: Sequence[SearchResult]) -> None:
    """One warning line where rows met non-finite policy logits or verifier scores (counted per row)."""
    logits, scores = sum(r.nonfinite_logits for r in results), sum(r.nonfinite_scores for r in results)
    if logits or scores:
        questions = sum(bool(r.nonfinite_logits or r.nonfinite_scores) for r in results)
        rows = len(results) * strategy.rows
        warnings.warn(f"{strategy.label}: {logits} of {rows} rows met non-finite policy logits and {scores} of {rows} "
                      f"rows non-finite verifier scores ({questions} of {len(results)} questions): a NaN or inf in a "
                      "model's weights or activations; those rows' candidates are not the models' work.",
                      stacklevel=3)


def _chain_result(strategy: Revisions, engine: Engine, verifier: Verifier, tokenizer, settings: SearchSettings,
                  host: dict, i: int, prompt_len: int, extract_answer, equal) -> SearchResult:
    """Question i's result from the chain episode's host fields: every attempt of every chain a candidate
    (chain-major), the answer by the strategy's selection rule."""
    chains, s = strategy.chains, strategy.sequential
    cands = []
    for c, r in enumerate(range(i * chains, (i + 1) * chains)):
        for a in range(s):
            tokens, k = host["tokens"][r, a], host["num_steps"][r, a]
            text = tokenizer.decode(tokens[:host["length"][r, a]])
            scores = [float(x) for x in host["step_scores"][r, a, :k]] if verifier.scores_steps else []
            cands.append(Candidate(text=text, answer=extract_answer(text), step_scores=scores,
                                   score=verifier.solution_score(scores), chain=c, attempt=a,
                                   tokens=tuple(map(int, tokens[:host["length"][r, a]])),
                                   steps=step_texts(tokenizer, tokens, host["step_ends"][r, a, :k], settings.delimiter)))
    chosen = select(strategy.selection, [c.answer for c in cands], [c.score for c in cands], equal,
                    [c.chain for c in cands])
    rows = slice(i * chains, (i + 1) * chains)
    generated, scored, reread = (int(host[f][rows].sum()) for f in ("generated", "scored", "reread"))
    return SearchResult(answer=cands[chosen].answer, solution=cands[chosen].text, chosen=chosen, candidates=cands,
                        generations=strategy.budget, generated_tokens=generated, verifier_tokens=scored,
                        policy_flops=inference_flops(engine.config.num_params(), generated + reread + prompt_len),
                        verifier_flops=inference_flops(verifier.num_params, scored), reread_tokens=reread,
                        overflowed_contexts=int(host["overflowed"][rows].sum()),
                        nonfinite_logits=int(host["nonfinite"][rows].sum()),
                        nonfinite_scores=int(_nonfinite_scores(host["step_scores"][rows],
                                                               host["num_steps"][rows]).sum()))
