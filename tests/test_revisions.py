"""Revision chains: the compiled chain episode against a host replay, toy revisers whose pass@1 per step and best
sequential:parallel ratio are known in closed form, hierarchical versus flat selection, costs, 8 devices."""

import dataclasses
import json
import os
import shutil
import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from toys import _path_name, toy_policy, y_fraction_prm

from ttcjax.checkpoints.assets import model_dir
from ttcjax.checkpoints.native import load_any, save_model
from ttcjax.checkpoints.tokenizer import CharTokenizer, load_tokenizer
from ttcjax.cli import main
from ttcjax.decoding.engine import Engine
from ttcjax.models import ModelConfig, init_model
from ttcjax.models.sharding import make_mesh
from ttcjax.search.revisions import REVISION_SEPARATOR, revision_context, without_eos
from ttcjax.search.run import search
from ttcjax.search.selection import hierarchical, select
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Beam, Revisions, StrategySpec, strategy_from_dict
from ttcjax.tasks.base import ProblemRecord, Prompt, Task
from ttcjax.tasks.registry import task_from_dict
from ttcjax.training.revisions import evaluate_revision, revision_labels, save_revision_settings
from ttcjax.training.reward_model import PRMTrainConfig
from ttcjax.verifiers.base import NoVerifier
from ttcjax.verifiers.reward_model import (LikelihoodHead, RewardModel, RewardModelVerifier, StepFormat, ValueHead,
                                           save_prm)

TOY = CharTokenizer(alphabet="Qxy")
X, Y, Q = (TOY.token_to_id(c) for c in "xyQ")


def bigram(next_x: dict[int, float], hidden: int = 8) -> nnx.Module:
    """A policy whose next token depends only on the current one: 'x' with probability next_x[token], else 'y'.
    Embeddings are one-hot, every other weight but the LM head zero, so the final norm gives sqrt(D) one-hot."""
    config = ModelConfig(vocab_size=TOY.vocab_size, hidden_size=hidden, intermediate_size=8, num_layers=1,
                         num_heads=1, num_kv_heads=1, max_position_embeddings=256)
    graphdef, state = nnx.split(init_model(config))
    head = np.full((hidden, TOY.vocab_size), -30.0)
    for token, p in next_x.items():
        head[token, X], head[token, Y] = np.log(p), np.log(1 - p)
    head /= np.sqrt(hidden)

    def set_param(path, leaf):
        name = _path_name(path)
        if name == "embedding":
            return jnp.asarray(np.eye(leaf.shape[0], leaf.shape[1]) * 10.0, leaf.dtype)
        if name == "scale":
            return jnp.ones_like(leaf)
        if name == "lm_head":
            return jnp.asarray(head, leaf.dtype)
        return jnp.zeros_like(leaf)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(set_param, state))


def x_verifier(hidden: int = 8, strength: float = 20.0) -> RewardModelVerifier:
    """A perfect verifier for one-token attempts: the score at a token is high for 'x', low for anything else."""
    prm = RewardModel(bigram({}, hidden), ValueHead())
    prm.v_w[...] = jnp.zeros_like(prm.v_w[...]).at[X].set(strength / np.sqrt(hidden) * 2)
    prm.v_b[...] = jnp.asarray(-strength, prm.v_b[...].dtype)
    return RewardModelVerifier(prm, TOY, kind="orm")


# one-token attempts: a single round of a single token, no separator
ONE_TOKEN = SearchSettings(delimiter="\n", max_step_tokens=1, max_rounds=1, max_len=64, temperature=1.0,
                           answer_marks=(), revision_separator="", revision_max_len=64)


def chains(strategy, policy, verifier, questions: int, key: int = 0, mesh=None, settings=ONE_TOKEN):
    engine = Engine(policy, pad_id=TOY.pad_id, mesh=mesh)
    return search(strategy, engine, verifier, TOY, [[TOY.bos_id, Q]] * questions, jax.random.key(key),
                  extract_answer=lambda text: text or None, settings=settings)


def pass_at_step(results, s: int) -> np.ndarray:
    """The fraction of right attempts at each revision step."""
    return np.array([np.mean([c.answer == "x" for r in results for c in r.candidates if c.attempt == a])
                     for a in range(s)])


def test_pass_at_1_per_revision_step_follows_the_toy_revisers_chain():
    # first attempt right with q; a wrong attempt is fixed with p_fix; a right one stays right with p_keep
    q, p_fix, p_keep = 0.2, 0.6, 0.9
    results = chains(Revisions(64, sequential=4, selection="majority"), bigram({Q: q, Y: p_fix, X: p_keep}),
                     NoVerifier(), questions=8)
    expected = [q]
    for _ in range(3):
        expected.append(expected[-1] * p_keep + (1 - expected[-1]) * p_fix)
    measured = pass_at_step(results, 4)
    samples = 8 * 16  # chains per attempt
    assert np.all(np.abs(measured - expected) < 4 * np.sqrt(np.array(expected) * (1 - np.array(expected)) / samples))
    assert all(len(r.candidates) == 64 and r.generations == 64 for r in results)
    # one token per attempt; with no separator each later attempt re-reads one token (fresh logits)
    assert all(r.generated_tokens == 64 and r.reread_tokens == 16 * 3 and r.verifier_tokens == 0 for r in results)


@pytest.mark.parametrize("q, p_fix, best", [(0.1, 0.5, 4), (0.5, 0.1, 1)])
def test_the_best_sequential_to_parallel_ratio_is_the_closed_form_one(q, p_fix, best):
    # a perfect verifier and hierarchical selection: a question is right iff some attempt is; a chain of s
    # attempts misses with (1-q)(1-p_fix)^(s-1), so N/s chains miss with that to the power N/s
    n, questions = 4, 300
    policy, verifier = bigram({Q: q, Y: p_fix, X: 1.0 - 1e-6}), x_verifier()
    accuracy = {}
    for s in (1, 2, 4):
        results = chains(Revisions(n, sequential=s), policy, verifier, questions, key=s)
        accuracy[s] = np.mean([r.answer == "x" for r in results])
        expected = 1 - ((1 - q) * (1 - p_fix) ** (s - 1)) ** (n // s)
        assert abs(accuracy[s] - expected) < 4 * np.sqrt(expected * (1 - expected) / questions) + 1e-3, (s, accuracy)
    assert max(accuracy, key=accuracy.get) == best


def test_chains_read_what_a_fresh_prefill_of_the_revision_context_reads():
    """A random policy and verifier, greedy: every attempt (multi-token, the window sliding, a separator) and its
    step scores equal a search that prefills the explicit revision context from scratch."""
    tok = CharTokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=512)
    policy = init_model(config, seed=3, std=0.5)
    prm = RewardModel(init_model(config, seed=4, std=0.5), ValueHead(), seed=5)
    verifier = RewardModelVerifier(prm, tok, kind="orm")
    settings = SearchSettings(delimiter="\n", max_step_tokens=3, max_rounds=2, max_len=128, temperature=0.0,
                              answer_marks=(), revision_separator="|\n")
    engine = Engine(policy, pad_id=tok.pad_id)
    prompts = [tok.encode("Q: 3+4=\n", add_bos=True), tok.encode("Q: 12*2-5=\n", add_bos=True)]
    strategy = Revisions(10, sequential=5, window=2)
    results = search(strategy, engine, verifier, tok, prompts, jax.random.key(0), extract_answer=lambda t: t,
                     settings=settings)
    sep = tok.encode(settings.revision_separator)
    for prompt, result in zip(prompts, results):
        attempts: list[list[int]] = []
        for cand in [c for c in result.candidates if c.chain == 0]:
            context = revision_context(prompt, attempts, sep, eos_ids=tok.eos_ids, window=2)
            [fresh] = search(Beam(1, width=1), engine, verifier, tok, [context], jax.random.key(1),
                             extract_answer=lambda t: t, settings=settings)
            assert cand.tokens == fresh.candidates[0].tokens and cand.tokens
            np.testing.assert_allclose(cand.step_scores, fresh.candidates[0].step_scores, atol=2e-5)
            attempts.append(list(cand.tokens))
        assert len(attempts) == 5 and len({a for a in map(tuple, attempts)}) > 1
        # the other chain is the same greedy chain
        assert [list(c.tokens) for c in result.candidates if c.chain == 1] == attempts


def test_a_likelihood_head_verifier_is_refused_for_revision_chains_before_anything_runs():
    """It keeps only the least likely token so far, so it cannot go back between a chain's attempts."""
    likelihood = RewardModelVerifier(RewardModel(bigram({}), LikelihoodHead()), TOY, kind="orm")
    with pytest.raises(ValueError, match="likelihood head"):
        chains(Revisions(4, sequential=2), bigram({Q: 0.5, X: 0.5, Y: 0.5}), likelihood, questions=1)
    with pytest.raises(ValueError, match="head: likelihood"):
        PRMTrainConfig(out_dir="x", policy="y", revision_chains={"chains": 2, "sequential": 2}, head="likelihood")


def test_costs_are_counted_exactly_on_a_hand_counted_chain():
    # window 2 over 6 one-token attempts, no separator: before attempts 2..3 one token is re-read (the last
    # attempt, for fresh logits), before attempts 4..6 the window slides and its 2 attempts are read again;
    # the verifier reads the prompt once, each attempt, and the slid windows
    results = chains(Revisions(12, sequential=6, window=2), bigram({Q: 0.5, X: 0.5, Y: 0.5}), x_verifier(),
                     questions=3)
    for r in results:
        assert r.generated_tokens == 12
        assert r.reread_tokens == 2 * (1 + 1 + 2 + 2 + 2)
        assert r.verifier_tokens == 2 + 2 * (6 + 3 * 2)
        assert [(c.chain, c.attempt) for c in r.candidates] == [(c, a) for c in range(2) for a in range(6)]
        # the perfect verifier's scores say which attempts are right
        assert all((c.score > 0.5) == (c.answer == "x") for c in r.candidates)


def test_a_window_that_does_not_fit_the_cache_is_counted_and_warned():
    # one-token attempts after a 2-token prompt, window 4: the context before attempt a+1 is 2 + min(a, 4) tokens;
    # with a cache of 4 it leaves no room to write from the third attempt on (3 of a chain's 5 attempts)
    policy, strategy = bigram({Q: 0.5, X: 0.5, Y: 0.5}), Revisions(10, sequential=5, selection="majority")
    with pytest.warns(UserWarning, match=r"Revisions\(.*\): 12 of 20 attempts had a context .* cache of 4 "
                                         r"tokens and was cut; raise search.revision_max_len"):
        results = chains(strategy, policy, NoVerifier(), questions=2,
                         settings=dataclasses.replace(ONE_TOKEN, revision_max_len=4))
    assert [r.overflowed_contexts for r in results] == [2 * 3, 2 * 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.overflowed_contexts for r in chains(strategy, policy, NoVerifier(), questions=2)] == [0, 0]


@dataclasses.dataclass(frozen=True)
class XTask(Task):
    """The toys' task: every question is the prompt [BOS, Q], an attempt's answer is its text, and 'x' is right."""

    name: ClassVar[str] = "x"
    splits: ClassVar[tuple[str, ...]] = ("test",)
    prompt: Prompt = Prompt(style="plain")
    questions: int = 64

    def load(self, split):
        return [ProblemRecord(str(i), "Q", "x", metadata={"difficulty": 1 + i % 2}) for i in range(self.questions)]

    def encode_prompt(self, problem, tokenizer):
        return [TOY.bos_id, Q]

    def extract_answer(self, text):
        return text or None

    def is_correct(self, problem, answer):
        return answer == "x"

    def to_dict(self):
        return {"name": self.name, "questions": self.questions}

    @classmethod
    def from_dict(cls, data, source="task"):
        return cls(questions=data["questions"])


def test_eval_revision_with_a_perfect_verifier_picks_a_right_attempt_whenever_one_exists():
    # the verifier scores 'x' high and 'y' low: hierarchical, weighted and vanilla selection are right exactly when
    # some attempt is (pass@n), the scores separate right attempts perfectly, and majority is right less often
    task = XTask()
    result = evaluate_revision(bigram({Q: 0.2, Y: 0.3, X: 0.5}), TOY, task, task.problems(), settings=ONE_TOKEN,
                               separator="", chains=2, sequential=3, window=4, verifier=x_verifier())
    for part in (result["all"], *result["by_difficulty"].values()):
        assert {rule: part["by_selection"][rule] for rule in ("hierarchical", "weighted", "vanilla")} == dict.fromkeys(
            ("hierarchical", "weighted", "vanilla"), part["pass@6"])
        assert part["attempt_auc"] == 1.0 and part["majority"] == part["by_selection"]["majority"]
    assert result["all"]["majority"] < result["all"]["pass@6"] - 0.1
    assert [result["by_difficulty"][d]["problems"] for d in ("1", "2")] == [32, 32]
    # without a verifier the rules that read scores are left out
    bare = evaluate_revision(bigram({Q: 0.2, Y: 0.3, X: 0.5}), TOY, task, task.problems(), settings=ONE_TOKEN,
                             separator="", chains=2, sequential=3, window=4)
    assert "by_selection" not in bare["all"] and "attempt_auc" not in bare["all"]


def test_eight_devices_run_chains_like_one():
    policy = bigram({Q: 0.3, X: 0.8, Y: 0.4})
    strategy = Revisions(8, sequential=4, window=2)
    one = chains(strategy, policy, x_verifier(), questions=8, key=5)
    eight = chains(strategy, policy, x_verifier(), questions=8, key=5, mesh=make_mesh(4, 2))
    assert [c.text for r in one for c in r.candidates] == [c.text for r in eight for c in r.candidates]
    assert [r.answer for r in one] == [r.answer for r in eight]
    assert [r.verifier_tokens for r in one] == [r.verifier_tokens for r in eight]


def test_hierarchical_selection_differs_from_flat_on_hand_made_chains():
    # chain 0: a, a, b (b scores highest); chain 1: b; chain 2: c, c
    answers = ["a", "a", "b", "b", "c", "c"]
    scores = [0.5, 0.5, 0.9, 0.2, 0.45, 0.45]
    chain_of = [0, 0, 0, 1, 2, 2]
    # within chains: a (1.0 > 0.9), b, c; across the winners (each its own score): a 0.5, b 0.2, c 0.45 -> a
    assert answers[hierarchical(answers, scores, chain_of)] == "a"
    assert answers[select("hierarchical", answers, scores, chains=chain_of)] == "a"
    # flat weighted: b 1.1 > a 1.0 > c 0.9; flat majority over all attempts: a and c tie 2-2, a seen first
    assert answers[select("weighted", answers, scores)] == "b"
    assert answers[select("majority", answers, scores)] == "a"
    # one candidate per chain: hierarchical is weighted
    assert select("hierarchical", answers, scores) == select("weighted", answers, scores)


def test_revision_strategies_are_one_spec_form_and_refuse_bad_settings():
    assert StrategySpec.from_dict({"kind": "revisions", "sequential": 4}).at(16) == Revisions(16, 4)
    assert StrategySpec.from_dict({"kind": "revisions", "sequential": "all"}).at(8) == Revisions(8, 8)
    assert StrategySpec.from_dict({"kind": "revisions", "sequential": 4}).at(6) is None
    assert Revisions(16, 4).chains == 4 and Revisions(16, 4).budget == 16
    assert strategy_from_dict(Revisions(8, 2, selection="majority").to_dict()) == Revisions(8, 2, selection="majority")
    assert not Revisions(8, 2, selection="majority").needs_verifier and Revisions(8, 2).needs_verifier
    with pytest.raises(ValueError, match="sequential=4 must divide n=6"):
        Revisions(6, 4)
    with pytest.raises(ValueError, match="window"):
        Revisions(8, 4, window=0)
    with pytest.raises(ValueError, match="sequential"):
        StrategySpec.from_dict({"kind": "revisions", "sequential": 0})
    with pytest.raises(ValueError, match="revision window=0"):
        revision_context([1], [[2]], [3], window=0)
    assert revision_context([1], [[2, 9], [3], [4], [5, 6]], [7], eos_ids=[9], window=2) == [1, 4, 7, 5, 6, 7]
    assert without_eos([5, 9], [9]) == [5] and without_eos([], [9]) == []


def test_a_sweep_runs_revision_cells_and_records_pass_by_step(tmp_path):
    policy, tok = toy_policy(0.5, 0.2, 0.3)
    save_model(policy, tmp_path / "policy")
    tok.save(tmp_path / "policy" / "ttcjax_tokenizer.json")
    save_prm(y_fraction_prm(), str(tmp_path / "prm"))
    save_revision_settings(str(tmp_path / "policy"), REVISION_SEPARATOR)  # the policy stands in for a revision model
    out = tmp_path / "sweep"
    config = {"out_dir": str(out), "policy": str(tmp_path / "policy"), "verifier": str(tmp_path / "prm"),
              "revision_policy": str(tmp_path / "policy"), "revision_verifier": str(tmp_path / "prm"),
              "task": {"name": "arithmetic", "difficulties": [2]}, "questions": 4, "budgets": [4],
              "strategies": [{"kind": "best_of_n"}, {"kind": "revisions", "sequential": 2}],
              "search": {"max_rounds": 4, "max_step_tokens": 8, "max_len": 96}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep", "--config", str(path), "--no-progress"]) == 0
    [cell] = [f for f in os.listdir(out / "results") if f.startswith("revisions")]
    records = [json.loads(line) for line in (out / "results" / cell).read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert r["generations"] == 4 and len(r["pass_by_attempt"]) == 2 and r["reread_tokens"] > 0
        assert 0 <= r["right_to_wrong"] <= r["right_followed"] <= 2
        assert r["correct"] == r["by_selection"]["hierarchical"]


def test_the_revision_verifiers_labels_read_what_the_verifier_reads_inside_the_chains(tmp_path):
    """`revision_labels` writes each attempt after its chain's earlier ones; scored in one pass in the ORM's format,
    an attempt's last step scores what the same verifier read for it inside the chains. (The shipped tiny policy
    stands in for a revision model: its steps end at the delimiter, as the one-pass format writes them.)"""
    shutil.copytree(model_dir("policy", "tiny"), tmp_path / "reviser")
    tok = load_tokenizer(str(tmp_path / "reviser"))
    save_revision_settings(str(tmp_path / "reviser"), "|\n")
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=512)
    task = task_from_dict({"name": "arithmetic", "difficulties": [2]})
    problems = task.problems("train", limit=3, seed=0)
    SHORT = {"revision_max_len": 384}  # every window fits the cache
    labelled, cost = revision_labels(str(tmp_path / "reviser"), tok, task, problems, chains=2, sequential=6,
                                     temperature=1.0, seed=0, search_settings=SHORT)
    assert cost["attempts"] == 36 and cost["reread_tokens"] > 0 and len(labelled) == cost["labelled_solutions"] > 6
    assert cost["left_out_cut_contexts"] == 0
    assert all(x.step_labels == (float(x.correct),) * len(x.steps) for x in labelled)
    orm = RewardModelVerifier(RewardModel(init_model(config, seed=8, std=0.5), ValueHead(), seed=9), tok,
                              step_format=StepFormat(delimiter="\n", add_bos=True), kind="orm")
    settings = SearchSettings.from_dict({**task.search_defaults, **SHORT, "temperature": 1.0,
                                         "revision_separator": "|\n"}).for_task(task)
    results = search(Revisions(12, 6, selection="majority"), Engine(load_any(str(tmp_path / "reviser"))), orm, tok,
                     [task.encode_prompt(p, tok) for p in problems], jax.random.key(0),
                     extract_answer=task.extract_answer, settings=settings, questions=[p.question for p in problems])
    attempts = [c for r in results for c in r.candidates if c.steps]
    assert [tuple(c.steps) for c in attempts] == [x.steps for x in labelled]
    # where every step ended at the delimiter (not at EOS or the step cap), the one-pass format is what was written
    same = [i for i, c in enumerate(attempts) if tok.decode(c.tokens).startswith("".join(s + "\n" for s in c.steps))]
    assert len(same) > 6 and any(labelled[i].question.count("|\n") >= 2 for i in same)  # some with history
    one_pass = orm.score([labelled[i].question for i in same], [list(labelled[i].steps) for i in same])
    np.testing.assert_allclose([s[-1] for s in one_pass], [attempts[i].step_scores[-1] for i in same], atol=2e-5)
    # a cache too short for the window: the attempts written after a cut context are left out, and counted
    with pytest.warns(UserWarning, match="did not fit its cache of 64 tokens"):
        cut, cost = revision_labels(str(tmp_path / "reviser"), tok, task, problems, chains=2, sequential=6,
                                    temperature=1.0, seed=0, search_settings={"revision_max_len": 64})
    assert cost["left_out_cut_contexts"] > 0 and len(cut) + cost["left_out_cut_contexts"] <= 36
