"""Judging a verifier on a task: how well it orders the policy's own samples (never used by search itself).

For the task's problems, the policy samples N solutions each; the verifier scores every step. Reported, overall
and per difficulty: the accuracy of each selection rule (vanilla best-of-N, weighted, majority) over the same N
samples with pass@N (the ceiling) beside them, and, where the task has an exact step oracle (the built-in
arithmetic task), the step-level ROC-AUC of the step score for "this prefix is still on a path to the right
answer", over every step (`step_auc`) and within each question (`step_auc_within_question`: the mean over the
questions whose steps hold both labels of the AUC among that question's own steps). The two differ where a verifier
has learned which questions are hard rather than which steps are wrong: the first rewards it, the second does not,
and only the second helps selection, which compares one question's candidates. `solution_auc_within_question`
(any task, for a verifier that scores): the same within each question for the solution scores that selection reads,
against whether each sample's answer is right. `picks_right_when_present`: per rule, the share of the questions with
a right answer among the N samples for which the rule picks one.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import jax
import numpy as np

from ttcjax.decoding.engine import Engine, Sampling
from ttcjax.search.sampling import MAX_NEW_TOKENS, is_nonfinite, sample_completions
from ttcjax.search.selection import select
from ttcjax.tasks.base import ProblemRecord, Task
from ttcjax.verifiers.base import Verifier, roc_auc, same_depth_groups


def evaluate_verifier(task: Task, verifier: Verifier, engine: Engine, tokenizer, problems: Sequence[ProblemRecord],
                      *, samples: int = 16, sampling: Sampling = Sampling(temperature=0.8), seed: int = 0,
                      max_new_tokens: int = MAX_NEW_TOKENS, keep_samples: bool = False) -> dict[str, Any]:
    """Sample `samples` solutions per problem from `engine`, score them with `verifier` and judge the scores: step
    ROC-AUCs against the task's step oracle (over all steps, within a question, and among a question's steps at the
    same depth), the solution-level AUC within a question, and what each selection rule picks. With `keep_samples`,
    the result's "scored_samples" holds every sample (its question's index, difficulty, steps, step scores, oracle
    labels, answer and whether it is right): what `ttcjax eval prm --samples-output` writes."""
    completions = sample_completions(task, engine, tokenizer, problems, n=samples, sampling=sampling,
                                     key=jax.random.key(seed), max_new_tokens=max_new_tokens)
    texts = [[tokenizer.decode(c.tokens) for c in cs] for cs in completions]
    owners = [(i, task.split_steps(t) or [""], t) for i, ts in enumerate(texts) for t in ts]
    prompts = [task.encode_prompt(p, tokenizer) for p in problems]  # the ids search reads
    scores = verifier.score([problems[i].question for i, _, _ in owners], [steps for _, steps, _ in owners],
                            prompts=[prompts[i] for i, _, _ in owners])
    nonfinite_scores = int(sum(np.sum(~np.isfinite(np.asarray(s, np.float64))) for s in scores))
    if nonfinite_scores:
        warnings.warn(f"evaluate_verifier: {nonfinite_scores} of {sum(map(len, scores))} step scores are non-finite "
                      "(a NaN or inf in the verifier's weights or activations); the selections that read them are not "
                      "to be trusted.", stacklevel=2)
    step_scores, step_labels, step_difficulty, step_question, step_depth = [], [], [], [], []
    scored_samples: list[dict[str, Any]] = []
    per_problem: list[list[tuple[Any, float]]] = [[] for _ in problems]
    for (i, steps, text), s in zip(owners, scores):
        p = problems[i]
        labels = [task.step_oracle(p, steps[:k + 1]) if verifier.scores_steps else None for k in range(len(steps))]
        for k, on_path in enumerate(labels):
            if on_path is not None:
                step_scores.append(float(s[k]))
                step_labels.append(on_path)
                step_difficulty.append(p.difficulty)
                step_question.append(i)
                step_depth.append(k)
        answer = task.extract_answer(text)
        per_problem[i].append((answer, verifier.solution_score(s)))
        if keep_samples:
            scored_samples.append({"question": i, "difficulty": p.difficulty, "steps": steps,
                                   "scores": [float(x) for x in s], "on_path": labels, "answer": answer})
    step_scores, step_labels = np.array(step_scores), np.array(step_labels, bool)
    step_difficulty, step_question = np.array(step_difficulty), np.array(step_question, int)
    step_group = same_depth_groups(step_question, np.array(step_depth, int))

    rules = {"best_of_n": "vanilla", "weighted": "weighted", "majority": "majority"}
    if not verifier.scores_steps:
        rules = {"majority": "majority"}
    chosen: dict[str, list[bool]] = {k: [] for k in (*rules, "pass@n")}
    solution_scores: list[list[float]] = []  # per problem, each sample's solution score and whether its answer is right
    solution_right: list[list[bool]] = []
    for p, cands in zip(problems, per_problem):
        answers = [a for a, _ in cands]
        ok = task.grade(p, answers)
        for name, rule in rules.items():
            chosen[name].append(ok[select(rule, answers, [s for _, s in cands], task.same_answer)])
        chosen["pass@n"].append(any(ok))
        solution_scores.append([s for _, s in cands])
        solution_right.append(list(ok))
    difficulty = np.array([-1 if p.difficulty is None else p.difficulty for p in problems])

    def summary(mask, step_mask):
        out = {"problems": int(mask.sum()),
               "step_auc": roc_auc(step_scores[step_mask], step_labels[step_mask]) if len(step_scores) else None}
        out.update(within_question_auc(step_scores[step_mask], step_labels[step_mask], step_question[step_mask]))
        out.update(same_depth_auc(step_scores[step_mask], step_labels[step_mask], step_group[step_mask]))
        if verifier.scores_steps:
            kept = np.flatnonzero(mask)
            out.update(solution_auc_within_question(
                np.array([s for i in kept for s in solution_scores[i]], np.float64),
                np.array([r for i in kept for r in solution_right[i]], bool),
                np.array([i for i in kept for _ in solution_scores[i]], int)))
        out.update({k: float(np.mean(np.array(v)[mask])) for k, v in chosen.items()})
        # how often each rule picks a right answer where one is among the candidates: the verifier's share of the
        # gap between a rule and pass@N (issue 17's target: weighted at N=64 at least 0.85)
        present = mask & np.array(chosen["pass@n"], bool)
        out["picks_right_when_present"] = {k: float(np.mean(np.array(v)[present])) if present.any() else None
                                           for k, v in chosen.items() if k != "pass@n"}
        return out

    # scored_samples are in the order of `owners`: problem-major, as solution_right
    for record, right in zip(scored_samples, (r for rs in solution_right for r in rs)):
        record["right"] = bool(right)
    return {"task": task.to_dict(), "samples": samples, "temperature": sampling.temperature,
            "aggregation": verifier.aggregation, "steps_scored": int(len(step_scores)),
            # samples that ended on non-finite logits, and step scores that are NaN or inf: what the accuracies and
            # the AUC were computed over in part (each warned of)
            "nonfinite_samples": int(sum(is_nonfinite(c) for cs in completions for c in cs)),
            "nonfinite_step_scores": nonfinite_scores,
            "on_path_fraction": float(step_labels.mean()) if len(step_labels) else None,
            "all": summary(np.ones(len(problems), bool), np.ones(len(step_scores), bool)),
            "by_difficulty": {str(d): summary(difficulty == d, step_difficulty == d)
                              for d in sorted(set(difficulty.tolist())) if d >= 0},
            **({"scored_samples": scored_samples} if keep_samples else {})}


def _mean_auc_within(scores: np.ndarray, labels: np.ndarray, questions: np.ndarray) -> tuple[float | None, int]:
    """The mean over questions of the ROC-AUC among each question's own items, over the questions that hold both
    labels (None where none does), and how many questions that is."""
    aucs = [roc_auc(scores[questions == q], labels[questions == q]) for q in np.unique(questions)
            if 0 < labels[questions == q].sum() < (questions == q).sum()]
    return (float(np.mean(aucs)) if aucs else None), len(aucs)


def solution_auc_within_question(scores: np.ndarray, right: np.ndarray, questions: np.ndarray) -> dict[str, Any]:
    """How the solution scores (the verifier's aggregate, what selection reads) rank a question's right answers
    above its wrong ones: the mean over questions with both of the AUC among that question's own samples
    (`solution_auc_within_question`, None where no question has both), and how many questions that is."""
    auc, count = _mean_auc_within(scores, right, questions)
    return {"solution_auc_within_question": auc, "questions_with_right_and_wrong_answers": count}


def same_depth_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """The mean ROC-AUC among the steps of one question at one depth (groups [steps]: a question's samples' k-th
    steps), over the groups that hold both labels (`step_auc_same_depth`, None where none does), and how many groups
    that is (`step_groups_same_depth`). It compares "16-4=12" with "16-4=10" written at the same point of the same
    question, so neither the question's difficulty nor the step's depth can carry it: whether the verifier checks
    the step."""
    auc, count = _mean_auc_within(scores, labels, groups)
    return {"step_auc_same_depth": auc, "step_groups_same_depth": count}


def within_question_auc(scores: np.ndarray, labels: np.ndarray, questions: np.ndarray) -> dict[str, Any]:
    """The mean over questions of the ROC-AUC among each question's own steps (scores/labels/questions [steps]),
    over the questions whose steps hold both labels (`step_auc_within_question`, None where none does), and how many
    questions that is (`questions_with_both_labels`)."""
    auc, count = _mean_auc_within(scores, labels, questions)
    return {"step_auc_within_question": auc, "questions_with_both_labels": count}
