"""Process reward models: one-pass scoring, aggregation, Monte-Carlo labels, training, save/load, sharding."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from multihost import assert_placed
from toys import toy_policy

from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.decoding.engine import Engine, Sampling, StopConditions
from ttcjax.models import ModelConfig, init_model
from ttcjax.models.cache import KVCache
from ttcjax.models.sharding import make_mesh
from ttcjax.tasks import arithmetic
from ttcjax.training.labels import (LabelledSolution, flip_labels, label_solutions, load_labels, rollout_labels,
                                    save_labels)
from ttcjax.training.reward_model import PRMTrainConfig, pack_scoring, train_reward_model, validation_metrics
from ttcjax.verifiers.base import aggregate, concordance_within_groups
from ttcjax.verifiers.reward_model import (PRM_CHUNK, LikelihoodHead, PRMStepScorer, RewardModel, ScoringInput,
                                           StepFormat, TokenHead, TwoClassHead, ValueHead, _extend, attention_widths,
                                           extend_steps, load_prm, save_prm, score_inputs)

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
            max_position_embeddings=256)


def _prm(head=ValueHead(), seed=0, **overrides):
    backbone = init_model(ModelConfig(**{**TINY, **overrides}), seed=seed)
    prm = RewardModel(backbone, head, seed=seed)
    if isinstance(head, (ValueHead, LikelihoodHead)):  # a non-trivial head, so scores differ across positions
        prm.v_w[...] = jnp.asarray(np.random.default_rng(seed).normal(0, 1.0, prm.v_w[...].shape), jnp.float32)
    return prm


def _solutions(n=6, seed=0):
    tok = CharTokenizer()
    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2, 3, 4)), n, seed=seed)
    fmt = StepFormat()
    return tok, [fmt.encode(tok, arithmetic.format_prompt(p), arithmetic.format_solution(p).split("\n"))
                 for p in problems]


@pytest.mark.parametrize("head", [ValueHead(), TwoClassHead(), TokenHead(good_id=15, bad_id=17), LikelihoodHead()],
                         ids=["value", "two_class", "token", "likelihood"])
def test_one_pass_scores_equal_scoring_each_prefix_alone(head):
    prm = _prm(head)
    _, inputs = _solutions()
    together = score_inputs(prm, inputs)
    for x, scores in zip(inputs, together):
        assert len(scores) == len(x.read_at) >= 3
        alone = [score_inputs(prm, [ScoringInput(x.tokens[:r + 1], (r,), x.start)])[0][0] for r in x.read_at]
        np.testing.assert_allclose(scores, alone, atol=1e-5)
        assert np.all((scores > 0) & (scores < 1))


@pytest.mark.parametrize("head", [ValueHead(), LikelihoodHead()], ids=["value", "likelihood"])
def test_padding_and_batch_composition_do_not_change_scores(head):
    prm = _prm(head)
    _, inputs = _solutions(8)
    reference = score_inputs(prm, inputs)
    shuffled = [inputs[i] for i in [5, 2, 7, 0, 1, 3, 6, 4]]
    for scores, i in zip(score_inputs(prm, shuffled, row_tokens=40, rows_per_call=2), [5, 2, 7, 0, 1, 3, 6, 4]):
        np.testing.assert_allclose(scores, reference[i], atol=1e-5)
    # a lone short solution (narrow bucket) and beside a very long one (wide bucket, much padding)
    long = ScoringInput(tuple(5 + i % 90 for i in range(200)), (199,))
    np.testing.assert_allclose(score_inputs(prm, [inputs[0]])[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(score_inputs(prm, [long, inputs[0]])[1], reference[0], atol=1e-5)
    # an input whose solution starts at its first token, packed after another, reads nothing of it
    whole = ScoringInput(inputs[1].tokens, inputs[1].read_at)  # start 0
    np.testing.assert_allclose(score_inputs(prm, [inputs[0], whole], row_tokens=512)[1],
                               score_inputs(prm, [whole])[0], atol=1e-5)


def test_eight_devices_score_like_one():
    prm = _prm()
    _, inputs = _solutions(10)
    one = score_inputs(prm, inputs)
    sharded = score_inputs(_prm(), inputs, mesh=make_mesh(4, 2))
    for a, b in zip(one, sharded):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_aggregation():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "last") == pytest.approx(0.8)
    assert aggregate(s, "min") == pytest.approx(0.5)
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate([], "last") == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(s, "max")


@pytest.mark.parametrize("head", [ValueHead(), TwoClassHead(), TokenHead(good_id=15, bad_id=17), LikelihoodHead()],
                         ids=["value", "two_class", "token", "likelihood"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_num_params_counts_every_parameter_of_backbone_and_head(head, tie):
    prm = _prm(head, tie_word_embeddings=tie)
    leaves = jax.tree.leaves(nnx.state(prm, nnx.Param))
    assert prm.num_params == sum(leaf.size for leaf in leaves)
    d = TINY["hidden_size"]  # the head's own, counted by hand
    assert prm.num_params - prm.config.num_params() == {"value": d + 1, "two_class": d * d + d + d * 2 + 2,
                                                        "token": 0, "likelihood": d + 2}[head.kind]


def test_token_head_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="outside the backbone's vocabulary"):
        _prm(TokenHead(good_id=5, bad_id=500))


def test_a_likelihood_head_adds_the_least_likely_solution_token_so_far_to_its_value():
    """Counted by hand from the backbone's own next-token distribution: each step's logit is the value head's plus
    l_w times the lowest log-probability of a solution token up to the step's end; the prompt's tokens (however
    unlikely) never count."""
    prm = _prm(LikelihoodHead(), seed=2)
    prm.l_w[...] = jnp.float32(0.7)
    _, inputs = _solutions(3)
    with_prompt = []
    for x, scores in zip(inputs, score_inputs(prm, inputs)):
        tokens = jnp.asarray([x.tokens], jnp.int32)
        logits, _, hidden = prm.backbone(tokens, return_hidden=True)
        logprobs = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))  # row t: the distribution of token t + 1
        token_lp = np.array([logprobs[t - 1, x.tokens[t]] for t in range(1, len(x.tokens))])  # of tokens 1..
        value = np.asarray(hidden[-1][0] @ prm.v_w[...] + prm.v_b[...])
        want = [value[r] + 0.7 * token_lp[x.start - 1:r].min() for r in x.read_at]
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array(want))), atol=1e-5)
        with_prompt += [abs(value[r] + 0.7 * token_lp[:r].min() - w) for r, w in zip(x.read_at, want)]
    assert max(with_prompt) > 1e-3  # counting the prompt's tokens would have scored otherwise


def test_a_likelihood_head_reads_steps_in_search_as_one_pass_reads_the_solution():
    """Inside search the head carries each row's last hidden state and least log-probability from step to step
    and from chunk to chunk: steps of 3, PRM_CHUNK + 5 and 0 tokens (a finished row) score what one pass gives."""
    prm = _prm(LikelihoodHead(), seed=5)
    scorer = PRMStepScorer(nnx.split(prm)[0])
    params = nnx.state(prm)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(1, 90, 7)), list(rng.integers(1, 90, 4))]
    steps = [[list(rng.integers(1, 90, 3)), list(rng.integers(1, 90, PRM_CHUNK + 5)), list(rng.integers(1, 90, 6))],
             [list(rng.integers(1, 90, 5)), [], list(rng.integers(1, 90, 2))]]
    prompt_tokens = np.zeros((2, 7), np.int32)
    for q, p in enumerate(prompts):
        prompt_tokens[q, :len(p)] = p
    state = jax.jit(lambda pt, pl: scorer.start(params, pt, pl, n=1, max_len=128))(
        jnp.asarray(prompt_tokens), jnp.asarray([7, 4], jnp.int32))
    extend = jax.jit(lambda st, tk, n: scorer.extend(params, st, tk, n))
    searched = [[], []]
    for k in range(3):
        width = max(len(steps[q][k]) for q in range(2))
        tokens = np.zeros((2, width), np.int32)
        for q in range(2):
            tokens[q, :len(steps[q][k])] = steps[q][k]
        logit, state, _ = extend(state, jnp.asarray(tokens), jnp.asarray([len(steps[q][k]) for q in range(2)]))
        for q in range(2):
            if steps[q][k]:
                searched[q].append(float(jax.nn.sigmoid(logit[q])))
    for q in range(2):
        ids, read_at = list(prompts[q]), []
        for step in steps[q]:
            if step:
                ids += step
                read_at.append(len(ids) - 1)
        want = score_inputs(prm, [ScoringInput(tuple(ids), tuple(read_at), len(prompts[q]))])[0]
        np.testing.assert_allclose(searched[q], want, atol=1e-5)
    with pytest.raises(ValueError, match="cannot go back"):
        scorer.rewind(state, jnp.asarray([7, 4], jnp.int32))


def test_a_likelihood_head_needs_a_backbone_with_an_lm_head():
    with pytest.raises(ValueError, match="has none"):
        _prm(LikelihoodHead(), has_lm_head=False)
    with pytest.raises(ValueError, match="head='token' is not one of"):
        PRMTrainConfig(out_dir="x", policy="y", head="token")


@pytest.mark.parametrize("head", [TwoClassHead(), LikelihoodHead()], ids=["two_class", "likelihood"])
def test_save_and_load_round_trip(tmp_path, head):
    prm = _prm(head)
    if isinstance(head, LikelihoodHead):
        prm.l_w[...] = jnp.float32(2.5)
    save_prm(prm, str(tmp_path / "prm"), aggregation="min")
    loaded, meta = load_prm(str(tmp_path / "prm"))
    assert meta["aggregation"] == "min" and type(loaded.head) is type(head)
    _, inputs = _solutions(3)
    for a, b in zip(score_inputs(prm, inputs), score_inputs(loaded, inputs)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(FileExistsError):
        save_prm(prm, str(tmp_path / "prm"))
    with pytest.raises(FileNotFoundError, match="not a ttcjax reward model"):
        load_prm(str(tmp_path))


# ---- Monte-Carlo labels on a policy whose success probabilities are known ----------------------------------

P_X, P_Y, P_NEWLINE = 0.7, 0.2, 0.1
ROLLOUT_TOKENS = 5


def _toy_policy():
    """A policy that ignores its context (tests/toys.py). A text is correct iff what was generated after the
    question holds no 'y', so a prefix without 'y' succeeds with probability (1 - P_Y) ** ROLLOUT_TOKENS
    and a prefix with one never does."""
    return toy_policy(P_X, P_Y, P_NEWLINE)


def _no_y_after(question):
    return lambda text: "y" not in text[len(question):]


def test_a_reward_model_loads_onto_a_mesh_and_scores_as_on_one_device(tmp_path):
    prm = _prm(TwoClassHead())
    save_prm(prm, str(tmp_path / "prm"))
    mesh = make_mesh(4, 2)
    placed, _ = load_prm(str(tmp_path / "prm"), mesh=mesh)
    assert_placed(placed, load_prm(str(tmp_path / "prm"))[0], mesh)  # the backbone and the head
    assert placed.backbone.layers[0].mlp.w_up.sharding.spec == P(None, "model")  # split, not copied
    _, inputs = _solutions(4)
    for a, b in zip(score_inputs(prm, inputs), score_inputs(placed, inputs, mesh=mesh)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_rollout_labels_match_closed_form_success_probabilities():
    model, tok = _toy_policy()
    engine = Engine(model, pad_id=tok.pad_id)
    prefixes = ["Q" + "x\n" * 2] * 8 + ["Qxy\n"] * 4 + ["Qx\nxx\n"] * 8
    rollouts = 64
    got = rollout_labels(engine, tok, prefixes, [_no_y_after("Q")] * len(prefixes), rollouts=rollouts,
                         sampling=Sampling(temperature=1.0), stop=StopConditions(), key=jax.random.key(0),
                         max_new_tokens=ROLLOUT_TOKENS, batch_rows=256)
    clean = np.r_[got[:8], got[12:]]
    expected = (1 - P_Y) ** ROLLOUT_TOKENS
    sigma = np.sqrt(expected * (1 - expected) / (rollouts * len(clean)))
    assert abs(clean.mean() - expected) < 4 * sigma, (clean.mean(), expected)
    assert np.all(got[8:12] == 0.0)  # a prefix that already failed can never succeed


def test_label_solutions_labels_every_step_and_counts_cost():
    model, tok = _toy_policy()
    engine = Engine(model, pad_id=tok.pad_id)
    labelled, cost = label_solutions(
        engine, tok, ["Q"] * 6, [_no_y_after("Q")] * 6, samples=8, rollouts=16, key=jax.random.key(1),
        sampling=Sampling(temperature=1.0), stop=StopConditions(), max_new_tokens=ROLLOUT_TOKENS)
    assert cost.solutions == 48 and cost.solution_tokens == 48 * ROLLOUT_TOKENS
    steps = sum(len(x.steps) - 1 for x in labelled)
    prefixes = {(x.problem_id, x.steps[:k]) for x in labelled for k in range(1, len(x.steps))}
    # a prefix several samples wrote is rolled out once, and they share its label
    assert cost.step_prefixes == steps and cost.distinct_prefixes == len(prefixes) < steps
    assert cost.rollouts == len(prefixes) * 16 and cost.rollout_tokens == len(prefixes) * 16 * ROLLOUT_TOKENS
    label_of = {}
    for x in labelled:
        for k, label in enumerate(x.step_labels[:-1]):
            assert label_of.setdefault((x.problem_id, x.steps[:k + 1]), label) == label
    assert cost.generated_tokens == cost.solution_tokens + cost.rollout_tokens
    clean = []
    for x in labelled:
        assert len(x.step_labels) == len(x.steps) and x.step_labels[-1] == float(x.correct)
        for k, label in enumerate(x.step_labels[:-1]):
            if any("y" in s for s in x.steps[:k + 1]):
                assert label == 0.0
            else:
                clean.append(label)
    expected = (1 - P_Y) ** ROLLOUT_TOKENS
    assert len(clean) > 10
    assert abs(np.mean(clean) - expected) < 4 * np.sqrt(expected * (1 - expected) / (16 * len(clean)))


def test_labelling_interrupted_between_chunks_resumes_to_the_labels_of_an_uninterrupted_run(tmp_path, monkeypatch):
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.checkpoints.tokenizer import load_tokenizer
    from ttcjax.training import reward_model

    monkeypatch.setattr(reward_model, "LABEL_CHUNK", 2)  # 4 questions: 2 chunks
    calls = []
    real = reward_model.label_solutions

    def label_solutions(*args, **kwargs):
        calls.append(kwargs["problem_ids"])
        if len(calls) == 2 and interrupt:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(reward_model, "label_solutions", label_solutions)
    tok = load_tokenizer(model_dir("policy", "tiny"))
    made = {}
    for name in ("straight", "killed"):
        config = PRMTrainConfig(out_dir=str(tmp_path / name), policy=model_dir("policy", "tiny"), num_questions=4,
                                samples=2, rollouts=2, max_new_tokens=48, task={"difficulties": [2, 3]})
        os.makedirs(config.out_dir)
        interrupt, calls[:] = name == "killed", []
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                reward_model.make_labels(config, tok, None, progress=False)
            parts = sorted(os.listdir(tmp_path / name / reward_model.LABEL_PARTS_DIR))
            assert parts == ["0000000.cost.json", "0000000.jsonl"]  # the first chunk, whole; nothing of the second
            interrupt, calls[:] = False, []
        made[name] = reward_model.make_labels(config, tok, None, progress=False)
    assert [len(ids) for ids in calls] == [2]  # the rerun labelled the chunk it had not written
    (straight, straight_cost), (killed, killed_cost) = made["straight"], made["killed"]
    assert killed == straight and len({x.problem_id for x in straight}) == 4
    assert {k: v for k, v in killed_cost.items() if k != "seconds"} == {
        k: v for k, v in straight_cost.items() if k != "seconds"}
    assert killed_cost["chunks"] == 2 and killed_cost["rollouts"] > 0
    assert not (tmp_path / "killed" / reward_model.LABEL_PARTS_DIR).exists()  # merged into labels.jsonl
    assert load_labels(tmp_path / "killed" / "labels.jsonl") == straight


def test_labels_made_with_a_shipped_policy_match_it_wherever_the_package_lives(tmp_path):
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.training.reward_model import label_options, reused_labels_cost

    config = PRMTrainConfig(out_dir=str(tmp_path / "prm"), policy=model_dir("policy", "tiny"))
    options = label_options(config)
    cost_file = tmp_path / "labels_cost.json"
    for policy, matches in (("/elsewhere/site-packages/ttcjax/assets/policies/tiny/model", True),
                            ("/elsewhere/site-packages/ttcjax/assets/policies/small/model", False),
                            ("/elsewhere/runs/policy/model", False)):
        cost_file.write_text(json.dumps({"options": {**options, "policy": policy}}))
        if matches:
            assert reused_labels_cost(str(tmp_path / "labels.jsonl.gz"), config, "fix", required=True)
        else:
            with pytest.raises(ValueError, match=r"keys that differ: \['policy'\]"):
                reused_labels_cost(str(tmp_path / "labels.jsonl.gz"), config, "fix", required=True)


def test_a_labels_list_joins_runs_of_other_questions_each_question_once(tmp_path):
    from ttcjax.training.reward_model import distinct_solutions, label_options, reused_labels

    config = PRMTrainConfig(out_dir=str(tmp_path / "prm"), policy=str(tmp_path / "policy"), samples=2, rollouts=4)
    options = label_options(config)

    def solution(problem, steps, labels):
        return LabelledSolution(problem_id=problem, question=f"Q {problem}", steps=steps, step_labels=labels,
                                correct=labels[-1] == 1.0)

    runs = {  # run "b" drew question "q2" as run "a" did, and labelled it otherwise
        "a": ([solution("q1", ("x", "y"), (0.5, 1.0)), solution("q1", ("x", "y"), (0.5, 1.0)),
               solution("q2", ("z",), (0.0,))], {"num_questions": 2, "seed": 0}, 10),
        "b": ([solution("q2", ("w",), (1.0,)), solution("q3", ("v", "u"), (0.25, 0.0))],
              {"num_questions": 2, "seed": 1}, 7),
    }
    for name, (labelled, drawn, rollouts) in runs.items():
        (tmp_path / name).mkdir()
        save_labels(tmp_path / name / "labels.jsonl", labelled)
        (tmp_path / name / "labels_cost.json").write_text(json.dumps(
            {"rollouts": rollouts, "seconds": 1.5, "options": {**options, **drawn}}))
    both = dataclasses.replace(config, labels=[str(tmp_path / "a" / "labels.jsonl"),
                                               str(tmp_path / "b" / "labels.jsonl")])
    labelled, cost = reused_labels(both)
    assert labelled == runs["a"][0] + runs["b"][0][1:]  # q2 from the first file only
    assert cost["rollouts"] == 17 and cost["seconds"] == 3.0 and cost["questions_in_an_earlier_file"] == 1
    assert [c["rollouts"] for c in cost["files"]] == [10, 7] and len(cost["reused_from"]) == 2
    assert distinct_solutions(labelled) == [labelled[0]] + labelled[2:]  # q1's repeated sample once
    # one file alone must match the config's questions too; a file of other label options is refused by name
    with pytest.raises(ValueError, match=r"a/labels.jsonl: .*keys that differ: \['num_questions'\]"):
        reused_labels(dataclasses.replace(config, labels=[str(tmp_path / "a" / "labels.jsonl")]))
    (tmp_path / "b" / "labels_cost.json").write_text(json.dumps({"options": {**options, "rollouts": 16}}))
    with pytest.raises(ValueError, match=r"b/labels.jsonl: .*keys that differ: \['rollouts'\]"):
        reused_labels(both)
    with pytest.raises(FileNotFoundError, match="labels: .*c/labels.jsonl not found"):
        reused_labels(dataclasses.replace(both, labels=[*both.labels, str(tmp_path / "c" / "labels.jsonl")]))
    for bad in ([], [""], 3):
        with pytest.raises(ValueError, match="labels=.*one labels file or a non-empty list"):
            dataclasses.replace(config, labels=bad)
    with pytest.raises(ValueError, match="distinct_solutions='yes' must be true or false"):
        dataclasses.replace(config, distinct_solutions="yes")


def test_flip_labels_flips_each_label_independently_with_the_given_probability():
    labelled = [LabelledSolution(problem_id=str(i), question="Q", steps=("a",) * 4, step_labels=(0.25, 1.0, 0.0, 1.0),
                                 correct=True) for i in range(500)]
    flipped, count = flip_labels(labelled, 0.2, seed=3)
    changed = np.array([[a != b for a, b in zip(x.step_labels, y.step_labels)] for x, y in zip(labelled, flipped)])
    assert changed.sum() == count and abs(count / 2000 - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)
    for x, y in zip(labelled, flipped):  # a flipped label is 1 - y, the rest of the record unchanged
        assert all(b in (a, 1.0 - a) for a, b in zip(x.step_labels, y.step_labels))
        assert dataclasses.replace(y, step_labels=x.step_labels) == x
    assert np.all(changed.mean(axis=0) > 0.1)  # every position, the first as the last
    assert flip_labels(labelled, 0.2, seed=3) == (flipped, count)  # the seed fixes them
    assert flip_labels(labelled, 0.0, seed=3) == (list(labelled), 0)


# ---- training -------------------------------------------------------------------------------------------


def test_pack_scoring_places_labels_at_read_positions():
    a = ScoringInput((1, 5, 6, 7), (2, 3))
    b = ScoringInput((1, 8, 9), (2,))
    packed = pack_scoring([(a, [0.25, 1.0]), (b, [0.5])], seq_len=8)
    assert len(packed) == 1
    np.testing.assert_array_equal(packed.segment_ids[0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(packed.positions[0][:7], [0, 1, 2, 3, 0, 1, 2])
    np.testing.assert_array_equal(packed.weights[0], [0, 0, 1, 1, 0, 0, 1, 0])
    np.testing.assert_allclose(packed.labels[0], [0, 0, 0.25, 1.0, 0, 0, 0.5, 0])
    with pytest.raises(ValueError, match="labels"):
        pack_scoring([(a, [1.0])], seq_len=8)


def test_validation_ranks_each_questions_steps_by_the_scores_of_each_solution_read_alone():
    """`misordered` pairs the packed validation batches' scores with their own steps: 1 - the within-question
    concordance of the scores each solution gets read alone, whatever rows and batches it was packed into."""
    prm = _prm(num_layers=1)
    rng = np.random.default_rng(0)
    examples, questions = [], []
    for i in range(23):  # 23 solutions of 6 questions, 2 to 4 steps each, packed 3 or so to a row of 16 tokens
        length = int(rng.integers(4, 9))
        read = sorted(rng.choice(np.arange(1, length), size=min(length - 1, int(rng.integers(2, 5))), replace=False))
        examples.append((ScoringInput(tuple(int(x) for x in rng.integers(1, 20, length)), tuple(int(r) for r in read)),
                         list(rng.uniform(0, 1, len(read)).round(2))))
        questions.append(f"q{i % 6}")
    packed = pack_scoring(examples, seq_len=16)
    assert len(packed) > 3  # several rows, batched 2 at a time below, the last batch half empty
    got = validation_metrics(prm, packed, batch_size=2, questions=questions)

    # each solution alone on its own row (causal: a read position sees none of the padding after it)
    alone = np.zeros((len(examples), 8), np.int32)
    for i, (x, _) in enumerate(examples):
        alone[i, :len(x.tokens)] = x.tokens
    logits = np.asarray(prm(jnp.asarray(alone), positions=jnp.broadcast_to(jnp.arange(8), alone.shape),
                            segment_ids=jnp.ones(alone.shape, jnp.int32)))
    scores, labels, groups, depths = [], [], [], []
    for i, ((x, y), q) in enumerate(zip(examples, questions)):
        scores += list(logits[i, list(x.read_at)])
        labels += y
        groups += [q] * len(y)
        depths += [f"{q} step {k}" for k in range(len(y))]  # the solution's k-th step
    assert got["misordered"] == pytest.approx(1 - concordance_within_groups(scores, labels, groups), abs=1e-6)
    assert got["misordered_same_depth"] == pytest.approx(1 - concordance_within_groups(scores, labels, depths),
                                                         abs=1e-6)
    assert got["misordered_same_depth"] != pytest.approx(got["misordered"])
    assert len(set(np.round(scores, 5))) > len(scores) // 2 and 0.1 < got["misordered"] < 0.9  # scores differ
    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    assert got["loss"] == pytest.approx(np.mean(np.logaddexp(0, s) - y * s), rel=1e-5)  # binary cross-entropy


def test_select_by_misordered_keeps_the_checkpoint_that_orders_the_steps_best(tmp_path, monkeypatch):
    """The best checkpoint (and the early stop) follow the metric `select_by` names, here against the loss."""
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.training import reward_model
    from ttcjax.training.labels import LabelledSolution, save_labels

    save_labels(tmp_path / "labels.jsonl", [LabelledSolution(f"p{i}", "Q: 1+2=\n", ("1+2=3",), (1.0,), True)
                                            for i in range(16)])
    # evaluations at steps 1..4: the loss is best at step 4, the ordering at step 2
    seen = iter([(0.5, 0.3), (0.4, 0.1), (0.3, 0.2), (0.2, 0.4)])
    monkeypatch.setattr(reward_model, "validation_metrics",
                        lambda *args: dict(zip(("loss", "misordered"), next(seen))))
    base = dict(policy=model_dir("policy", "tiny"), labels=str(tmp_path / "labels.jsonl"), seq_len=32, batch_size=2,
                steps=4, warmup_steps=1, eval_every=1, checkpoint_every=4, mesh="none", validation_fraction=0.25)
    summary = train_reward_model(PRMTrainConfig(out_dir=str(tmp_path / "prm"), select_by="misordered", patience=2,
                                                **base), progress=False)
    assert summary["best_step"] == 2 and summary["stopped_early"] and summary["step"] == 4
    # bound to a run directory only where set: a run made before the option existed resumes as the same run
    from ttcjax.io import bound_fields
    assert "select_by" not in bound_fields(PRMTrainConfig(out_dir=str(tmp_path / "x"), **base))
    assert bound_fields(PRMTrainConfig(out_dir=str(tmp_path / "x"), select_by="misordered", **base))["select_by"] == \
        "misordered"
    with pytest.raises(ValueError, match=r"select_by='accuracy' is not one of \('loss', 'misordered', "
                                         r"'misordered_same_depth'\)"):
        PRMTrainConfig(out_dir=str(tmp_path / "x"), select_by="accuracy", **base)


def test_evaluations_made_before_select_by_named_their_metric_count_for_nothing(tmp_path, monkeypatch):
    """A run resumed with --continue under a select_by that its earlier evaluations did not measure: those
    evaluations neither win nor count towards early stopping; the run goes on and picks among the new ones."""
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.training import reward_model
    from ttcjax.training.labels import LabelledSolution, save_labels

    save_labels(tmp_path / "labels.jsonl", [LabelledSolution(f"p{i}", "Q: 1+2=\n", ("1+2=3",), (1.0,), True)
                                            for i in range(16)])
    base = dict(out_dir=str(tmp_path / "prm"), policy=model_dir("policy", "tiny"), labels=str(tmp_path / "labels.jsonl"),
                seq_len=32, batch_size=2, steps=4, warmup_steps=1, eval_every=1, checkpoint_every=2, mesh="none",
                validation_fraction=0.25, patience=1)
    monkeypatch.setattr(reward_model, "validation_metrics", lambda *args: {"loss": 0.5})  # an older run's records
    train_reward_model(PRMTrainConfig(**base), stop_after=2, progress=False)
    seen = iter([0.3, 0.2])
    monkeypatch.setattr(reward_model, "validation_metrics", lambda *args: {"loss": 0.5, "misordered": next(seen)})
    summary = train_reward_model(PRMTrainConfig(**base, select_by="misordered"), rerun="continue", progress=False)
    assert summary["resumed_from"] == 2 and summary["best_step"] == 4 and not summary["stopped_early"]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A tiny policy trained for a few steps (it writes imperfect solutions to label)."""
    from ttcjax.training.policy import PolicyTrainConfig, train_policy

    out = tmp_path_factory.mktemp("policy")
    train_policy(PolicyTrainConfig(out_dir=str(out), model_config={**TINY, "max_position_embeddings": 128},
                                   task={"difficulties": [2]}, num_train=200, seq_len=96, batch_size=8, steps=15,
                                   lr=1e-2, warmup_steps=2, eval_problems=0, mesh="none", checkpoint_every=100),
                 progress=False)
    return str(out / "model")


def test_train_prm_then_orm_end_to_end_with_resume(tiny_policy, tmp_path):
    config = PRMTrainConfig(out_dir=str(tmp_path / "prm"), policy=tiny_policy, task={"difficulties": [2]},
                            num_questions=24, samples=2, rollouts=2, max_new_tokens=40, seq_len=128, batch_size=4,
                            steps=8, lr=3e-3, warmup_steps=1, eval_every=4, patience=5, checkpoint_every=4,
                            mesh="none", validation_fraction=0.25)
    first = train_reward_model(config, stop_after=4, progress=False)
    assert not first["finished"]
    cost = first["labels"]["cost"]
    assert cost["rollouts"] > 0 and cost["generated_tokens"] == cost["solution_tokens"] + cost["rollout_tokens"]
    labels_mtime = os.path.getmtime(tmp_path / "prm" / "labels.jsonl")
    second = train_reward_model(config, progress=False)
    assert second["resumed_from"] == 4 and second["finished"]
    assert os.path.getmtime(tmp_path / "prm" / "labels.jsonl") == labels_mtime  # labels reused, not redone
    prm, meta = load_prm(str(tmp_path / "prm" / "model"))
    assert meta["kind"] == "prm"
    losses = [m["eval"]["loss"] for m in map(json.loads, open(tmp_path / "prm" / "metrics.jsonl")) if "eval" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))

    # the ORM learns from the same samples (no new sampling), read only at each solution's end
    # (here trained on labels of which a half are flipped: the weaker verifier's option)
    # (and with the likelihood head on a frozen backbone)
    orm_config = dataclasses.replace(config, out_dir=str(tmp_path / "orm"),
                                     labels=str(tmp_path / "prm" / "labels.jsonl"), label_flips=0.5,
                                     head="likelihood", freeze_backbone=True)
    orm = train_reward_model(orm_config, orm=True, progress=False)
    assert orm["finished"] and orm["labels"]["cost"]["reused_from"].endswith("labels.jsonl")
    steps = sum(len(x.step_labels) for x in load_labels(tmp_path / "prm" / "labels.jsonl"))
    assert 0.3 * steps < orm["labels"]["flipped"] < 0.7 * steps
    orm_model, meta = load_prm(str(tmp_path / "orm" / "model"))
    assert meta["kind"] == "orm" and isinstance(orm_model.head, LikelihoodHead)
    policy = load_any(tiny_policy)
    for (path, trained), start in zip(jax.tree_util.tree_leaves_with_path(nnx.state(orm_model.backbone, nnx.Param)),
                                      jax.tree.leaves(nnx.state(policy, nnx.Param))):
        np.testing.assert_array_equal(trained, start, err_msg=jax.tree_util.keystr(path))  # frozen: as it was
    assert float(orm_model.l_w[...]) != 1.0  # the head trained


def test_a_reward_model_whose_every_validation_loss_is_nan_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """No evaluation is ever the best: the run says so instead of failing to copy a best model it never saved."""
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.training import reward_model
    from ttcjax.training.labels import LabelledSolution, save_labels

    save_labels(tmp_path / "labels.jsonl", [LabelledSolution(f"p{i}", "Q: 1+2=\n", ("1+2=3",), (1.0,), True)
                                            for i in range(16)])
    monkeypatch.setattr(reward_model, "validation_metrics", lambda *args: {"loss": float("nan"), "misordered": 0.5})
    config = PRMTrainConfig(out_dir=str(tmp_path / "orm"), policy=model_dir("policy", "tiny"),
                            labels=str(tmp_path / "labels.jsonl"), seq_len=32, batch_size=2, steps=2, warmup_steps=1,
                            eval_every=1, checkpoint_every=2, mesh="none", validation_fraction=0.25)
    with pytest.raises(ValueError, match=r"orm: no validation loss of this run was a finite number \(see metrics"):
        train_reward_model(config, orm=True, progress=False)
    assert capsys.readouterr().err.count("not a finite number (written as null)") == 2
    assert not (tmp_path / "orm" / "model").exists() and not (tmp_path / "orm" / "best").exists()


def test_monte_carlo_labels_on_any_task(tmp_path):
    """Labelling takes a Task: a GSM8K-format file, prompted the way the shipped policy reads, graded by the
    task (math-verify), with the solution's own answer as its last step's label."""
    from ttcjax.checkpoints.assets import model_dir
    from ttcjax.checkpoints.tokenizer import load_tokenizer
    from ttcjax.tasks.grading import answers_equal
    from ttcjax.training.reward_model import make_labels

    problems = arithmetic.generate(arithmetic.TaskConfig(difficulties=(2, 3)), 6, seed=2, split="train")
    with open(tmp_path / "train.jsonl", "w") as f:
        for p in problems:
            f.write(json.dumps({"question": p.expression, "answer": f"...\n#### {p.answer}"}) + "\n")
    task = {"name": "gsm8k", "path": str(tmp_path), "prompt": {"template": "Q: {question}=\n"}}
    config = PRMTrainConfig(out_dir=str(tmp_path / "prm"), policy=model_dir("policy", "tiny"), task=task,
                            num_questions=6, samples=2, rollouts=2, mesh="none")
    labelled, cost = make_labels(config, load_tokenizer(model_dir("policy", "tiny")), None, progress=False)
    answers = {f"Q: {p.expression}=\n": p.answer for p in problems}
    assert cost["questions"] == 6 and len(labelled) > 0 and {x.question for x in labelled} <= set(answers)
    assert any(x.correct for x in labelled) and all(x.problem_id.startswith("gsm8k/train/") for x in labelled)
    for x in labelled:
        said = arithmetic.extract_answer(x.steps[-1])
        assert x.correct == (said is not None and answers_equal(str(said), str(answers[x.question])))
        assert x.step_labels[-1] == float(x.correct) and all(0 <= v <= 1 for v in x.step_labels)
        assert len(x.step_labels) == len(x.steps)
    with pytest.raises(ValueError, match="gsm9k"):
        PRMTrainConfig(out_dir="x", policy="y", task={"name": "gsm9k"})


def test_a_step_read_against_part_of_a_long_cache_scores_what_the_whole_cache_gives():
    config = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=512)
    prm = RewardModel(init_model(config, seed=1, std=0.5), ValueHead(), seed=2)
    assert attention_widths(512) == (128, 256, 512) and attention_widths(496) == (124, 248, 496)
    assert attention_widths(256) == (128, 256) and attention_widths(160) == (160,)
    rng = np.random.default_rng(0)
    step, lengths = jnp.asarray(rng.integers(1, 40, (2, 8)), jnp.int32), jnp.asarray([8, 5], jnp.int32)
    fast_extend = jax.jit(lambda c: extend_steps(prm, c, step, lengths, lengths - 1))
    one_pass = jax.jit(lambda c, tokens, n, at: _extend(prm, c, tokens, n, at))  # eagerly, every op compiles alone
    for filled in ((100, 37), (100, 200), (100, 300)):  # inside a quarter, a half of the cache; beyond
        cache = KVCache.for_model(prm.config, 2, 512)
        history = jnp.asarray(rng.integers(1, 40, (2, max(filled))), jnp.int32)
        _, cache = one_pass(cache, history, jnp.asarray(filled, jnp.int32), jnp.zeros(2, jnp.int32))
        cache = dataclasses.replace(cache, lengths=jnp.asarray(filled, jnp.int32))
        fast, fast_cache = fast_extend(cache)
        whole, whole_cache = one_pass(cache, step, lengths, lengths - 1)
        np.testing.assert_allclose(fast, whole, atol=1e-5)
        np.testing.assert_array_equal(fast_cache.lengths, whole_cache.lengths)


def test_a_step_longer_than_a_chunk_is_read_in_chunks_as_one_pass_reads_it():
    """`extend_steps` reads PRM_CHUNK tokens at a time, as many chunks as the longest row needs, each against the
    narrowest cache width that holds it: rows of no, part of one, and several chunks; a score read in any chunk;
    the cache written where one pass writes it and nowhere else."""
    config = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=512)
    prm = RewardModel(init_model(config, seed=3, std=0.5), ValueHead(), seed=4)
    rng = np.random.default_rng(1)
    filled = jnp.asarray([120, 3, 250], jnp.int32)  # row 0's first chunk crosses from 128 slots to 256
    cache = KVCache.for_model(prm.config, 3, 512)
    history = jnp.asarray(rng.integers(1, 40, (3, 250)), jnp.int32)
    one_pass = jax.jit(lambda c, tokens, n, at: _extend(prm, c, tokens, n, at))
    _, cache = one_pass(cache, history, filled, jnp.zeros(3, jnp.int32))
    step = jnp.asarray(rng.integers(1, 40, (3, 3 * PRM_CHUNK - 3)), jnp.int32)
    chunked = jax.jit(lambda c, n, at: extend_steps(prm, c, step, n, at))
    for lengths, read_at in (([3 * PRM_CHUNK - 3, 0, PRM_CHUNK + 1], [3 * PRM_CHUNK - 4, 0, PRM_CHUNK]),
                             ([5, PRM_CHUNK, 2 * PRM_CHUNK], [1, PRM_CHUNK - 1, 3])):
        lengths, read_at = jnp.asarray(lengths, jnp.int32), jnp.asarray(read_at, jnp.int32)
        got, got_cache = chunked(cache, lengths, read_at)
        want, want_cache = one_pass(cache, step, lengths, read_at)
        real = np.asarray(lengths) > 0
        np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got_cache.lengths, filled + lengths)
        for row, (start, n) in enumerate(zip(filled.tolist(), lengths.tolist())):
            written = slice(start, start + n)
            np.testing.assert_allclose(got_cache.v[1][row, :, written], want_cache.v[1][row, :, written], rtol=1e-5,
                                       atol=1e-5)
            np.testing.assert_array_equal(got_cache.v[1][row, :, start + n:], cache.v[1][row, :, start + n:])
