"""The public PRM families (ttcjax.verifiers.hub) against their reference code, run with transformers (PyTorch, CPU)
on tiny random twins (tests/prm_twins.py). Nothing is downloaded.

For each family the reference is computed the way the public code computes it (one forward per prefix for
RLHFlow, softmax over the two candidate logits for Math-Shepherd, ...), with transformers' own tokenizer and
chat template rendering, and compared with our one-pass `score_inputs` on the ids our formats build.
"""

from __future__ import annotations

import json
import shutil

import jinja2
import numpy as np
import pytest
import torch
from multihost import assert_placed
from prm_twins import QUESTION, SOLUTIONS
from safetensors.torch import load_file, save_file

from ttcjax.checkpoints.hf import load_hf_model
from ttcjax.checkpoints.tokenizer import HFTokenizer
from ttcjax.models.sharding import make_mesh
from ttcjax.verifiers.hub import MathShepherdFormat, QwenPRMFormat, RLHFlowFormat, SkyworkFormat, load_hf_prm
from ttcjax.verifiers.reward_model import ScoringInput, TokenHead, TwoClassHead, ValueHead, score_inputs

ATOL = 1e-4


# ---- parity with the reference code ----------------------------------------------------------------------


def _assert_scores(ours: list[np.ndarray], reference: list[np.ndarray], label: str):
    assert [len(s) for s in ours] == [len(r) for r in reference]
    flat_ours, flat_ref = np.concatenate(ours), np.concatenate(reference)
    np.testing.assert_allclose(flat_ours, flat_ref, atol=ATOL, rtol=0, err_msg=label)
    assert flat_ref.std() > 0.02, f"{label}: reference scores {flat_ref} are too uniform to test anything"
    print(f"\n[{label}] max |diff| {np.abs(flat_ours - flat_ref).max():.1e} over {flat_ref.size} steps")


def test_math_shepherd(math_shepherd):
    path, model, hf_tok = math_shepherd
    prm, fmt, tok = load_hf_prm(path, "math-shepherd")
    assert isinstance(fmt, MathShepherdFormat) and isinstance(tok, HFTokenizer)
    # the model card: candidates encode("+ -")[1:], the tag encode("ки")[-1], input f"{question} {output}"
    candidates, tag = hf_tok.encode("+ -")[1:], hf_tok.encode("ки")[-1]
    assert prm.head == TokenHead(*candidates) and fmt.tag_id(tok) == tag
    reference, inputs = [], []
    for steps in SOLUTIONS:
        output = "\n".join(f"{s} ки" for s in steps)
        ids = hf_tok.encode(f"{QUESTION} {output}")
        assert ids[0] == hf_tok.bos_token_id
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0][:, candidates]
        probs = logits.softmax(-1)[:, 0]
        reference.append(probs[torch.tensor(ids) == tag].numpy())
        x = fmt.encode(tok, QUESTION, steps)
        assert list(x.tokens) == ids and list(x.read_at) == [i for i, t in enumerate(ids) if t == tag]
        inputs.append(x)
    _assert_scores(score_inputs(prm, inputs), reference, "math-shepherd")


def test_rlhflow(rlhflow):
    path, model, hf_tok = rlhflow
    prm, fmt, tok = load_hf_prm(path, "rlhflow")
    assert isinstance(fmt, RLHFlowFormat)
    plus, minus = hf_tok.encode("+")[-1], hf_tok.encode("-")[-1]  # prm_evaluate.py
    assert prm.head == TokenHead(plus, minus)
    reference, inputs = [], []
    for steps in SOLUTIONS:  # prm_evaluate.py: one forward per prefix, read at -3
        conversation, scores = [], []
        for k, step in enumerate(s.strip() for s in steps):
            conversation.append({"content": QUESTION + " " + step if k == 0 else step, "role": "user"})
            conversation.append({"content": "+", "role": "assistant"})
            input_ids = hf_tok.apply_chat_template(conversation, return_tensors="pt", return_dict=False)
            with torch.no_grad():
                logits = model(input_ids).logits[:, -3, [plus, minus]]
            scores.append(logits.softmax(dim=-1)[:, 0].item())
        reference.append(np.array(scores))
        x = fmt.encode(tok, QUESTION, steps)
        assert list(x.tokens) == input_ids[0].tolist()  # the last prefix is the whole conversation
        assert [x.tokens[i + 1] for i in x.read_at] == [plus] * len(steps)
        inputs.append(x)
    _assert_scores(score_inputs(prm, inputs), reference, "rlhflow")


def test_qwen_prm(qwen_prm):
    path, (backbone, head), hf_tok = qwen_prm
    prm, fmt, tok = load_hf_prm(path)  # the family from config.json
    assert isinstance(fmt, QwenPRMFormat) and prm.head == TwoClassHead()
    assert not prm.config.has_lm_head and not hasattr(prm.backbone, "lm_head")
    sep = hf_tok.encode("<extra_0>")[0]
    reference, inputs = [], []
    for steps in SOLUTIONS:  # the model card
        messages = [{"role": "system", "content": fmt.system}, {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        assert text == tok.apply_chat_template(messages)
        ids = hf_tok.encode(text)
        with torch.no_grad():
            probs = head(backbone(input_ids=torch.tensor([ids])).last_hidden_state).softmax(-1)[0]
        reference.append(probs[torch.tensor(ids) == sep, 1].numpy())
        x = fmt.encode(tok, QUESTION, steps)
        assert list(x.tokens) == ids and list(x.read_at) == [i for i, t in enumerate(ids) if t == sep]
        inputs.append(x)
    _assert_scores(score_inputs(prm, inputs), reference, "qwen-prm")


def test_a_public_prm_loads_onto_a_mesh(qwen_prm):
    path = qwen_prm[0]
    mesh = make_mesh(4, 2)
    placed, fmt, tok = load_hf_prm(path, mesh=mesh)
    whole = load_hf_prm(path)[0]
    assert_placed(placed, whole, mesh)  # the backbone and the two-class head
    inputs = [fmt.encode(tok, QUESTION, steps) for steps in SOLUTIONS]
    _assert_scores(score_inputs(placed, inputs, mesh=mesh), score_inputs(whole, inputs), "qwen-prm on a mesh")


def _skywork_prepare_input(problem: str, response: str, tokenizer, step_token: str = "\n"):
    """skywork-o1-prm-inference's prepare_input, restated: the prompt after the BOS string, then each piece
    of the response tokenized alone and followed by the step token, flagged."""
    input_ids = tokenizer.encode(tokenizer.bos_token + problem + "\n")
    flags = [0] * len(input_ids)
    step_id = tokenizer.encode(step_token)[-1]
    for piece in response.split(step_token):
        ids = (tokenizer.encode(piece) if piece != "" else []) + [step_id]
        input_ids += ids
        flags += [0] * (len(ids) - 1) + [1]
    return input_ids, flags


def test_skywork(skywork):
    path, (model, v_head), hf_tok = skywork
    prm, fmt, tok = load_hf_prm(path)
    assert isinstance(fmt, SkyworkFormat) and prm.head == ValueHead()
    solutions = SOLUTIONS + [["Step 1: 12 - 3 = 9.\nSo 9 apples.", "", "The answer is: 9"]]  # a step of 2 pieces
    prepared = [_skywork_prepare_input(QUESTION, "\n".join(steps), hf_tok) for steps in solutions]
    width = max(len(ids) for ids, _ in prepared)  # prepare_batch_input_for_model: right padding, a mask
    batch = torch.tensor([ids + [hf_tok.pad_token_id or 0] * (width - len(ids)) for ids, _ in prepared])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in prepared])
    with torch.no_grad():
        hidden = model(input_ids=batch, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        probs = torch.sigmoid(v_head(hidden).squeeze(-1)).numpy()
    reference, inputs = [], []
    for (ids, flags), steps, row in zip(prepared, solutions, probs):
        flagged = [i for i, f in enumerate(flags) if f == 1]
        x = fmt.encode(tok, QUESTION, steps)
        assert list(x.tokens) == ids
        # one score per step, at the flag ending its last piece
        ends = np.cumsum([s.count("\n") + 1 for s in steps]) - 1
        assert list(x.read_at) == [flagged[e] for e in ends]
        reference.append(row[list(x.read_at)])
        inputs.append(x)
    assert len(prepared[-1][0]) and len([f for f in prepared[-1][1] if f]) == 4
    _assert_scores(score_inputs(prm, inputs), reference, "skywork")


def test_skywork_tied_checkpoint_without_lm_head(skywork, tmp_path):
    """The 1.5B ties its embeddings and need not ship lm_head.weight."""
    path = tmp_path / "tied"
    shutil.copytree(skywork[0], path)
    tensors = load_file(path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    prm, _, _ = load_hf_prm(path)
    assert prm.config.tie_word_embeddings and not prm.config.has_lm_head
    np.testing.assert_array_equal(np.asarray(prm.v_w[...]), tensors["v_head.summary.weight"][0].numpy())


# ---- chat templates --------------------------------------------------------------------------------------


def test_chat_template_matches_transformers(rlhflow, qwen_prm):
    conversation = [{"role": "user", "content": "  2 + 2?  "}, {"role": "assistant", "content": "4", "name": None}]
    for path, hf_tok in ((rlhflow[0], rlhflow[2]), (qwen_prm[0], qwen_prm[2])):
        ours = HFTokenizer(path)
        for generation_prompt in (False, True):
            assert ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt) == \
                hf_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
    ours = HFTokenizer(rlhflow[0])  # the template came from tokenizer_config.json, bos_token is a variable
    assert ours.apply_chat_template([]) == "<|begin_of_text|>"
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_forms(skywork, tmp_path):
    """A named template list in tokenizer_config.json, {% generation %} blocks, and the sandbox."""
    shutil.copy(skywork[0] / "tokenizer.json", tmp_path / "tokenizer.json")
    template = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}]}))
    assert HFTokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "a"}]) == "[a]"
    (tmp_path / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")  # the file wins
    with pytest.raises(jinja2.exceptions.SecurityError):
        HFTokenizer(tmp_path).apply_chat_template([])


# ---- errors ----------------------------------------------------------------------------------------------


def test_tokens_that_are_not_single_tokens(math_shepherd, rlhflow, qwen_prm, skywork):
    ms, rl, qw, sk = (HFTokenizer(f[0]) for f in (math_shepherd, rlhflow, qwen_prm, skywork))
    cases = [(MathShepherdFormat(step_tag="Ж"), ms, "step tag 'Ж'"),
             (MathShepherdFormat(good="+-+ -+"), ms, "good/bad tokens '\\+-\\+ -\\+'/'-'"),
             (RLHFlowFormat(bad="ки"), rl, "bad token 'ки'"),
             (QwenPRMFormat(separator="<extra_1>"), qw, "step separator '<extra_1>'"),
             (SkyworkFormat(step_token="ки"), sk, "step token 'ки'")]
    for fmt, tok, message in cases:
        with pytest.raises(ValueError, match=f"{message}.*{tok.path}"):
            fmt.encode(tok, QUESTION, SOLUTIONS[0])


def test_step_text_holding_the_tag(math_shepherd, qwen_prm):
    with pytest.raises(ValueError, match="4 step tag 'ки' token.*3 step"):
        MathShepherdFormat().encode(HFTokenizer(math_shepherd[0]), QUESTION, ["a ки b", "c", "d"])
    with pytest.raises(ValueError, match="step separator '<extra_0>'"):
        QwenPRMFormat().encode(HFTokenizer(qwen_prm[0]), QUESTION + "<extra_0>", ["a"])


def test_chat_format_needs_a_template(skywork, qwen_prm, tmp_path):
    no_template = HFTokenizer(skywork[0])
    for fmt in (QwenPRMFormat(), RLHFlowFormat()):
        with pytest.raises(ValueError, match=f"{fmt.family} format.*chat template.*{no_template.path}"):
            fmt.encode(no_template, QUESTION, SOLUTIONS[0])
    with pytest.raises(ValueError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "hi"}])
    path = tmp_path / "qwen"
    shutil.copytree(qwen_prm[0], path)
    (path / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="qwen-prm format.*chat template"):  # at load, before the weights
        load_hf_prm(path)


def _copy_with(path, tmp_path, edit):
    out = tmp_path / path.name
    shutil.copytree(path, out)
    tensors = load_file(out / "model.safetensors")
    edit(tensors)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_head_tensors_are_shape_checked(qwen_prm, skywork, tmp_path):
    bad = _copy_with(qwen_prm[0], tmp_path, lambda t: t.update({"score.2.weight": torch.zeros(3, 32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor score\.2\.weight has shape \[3, 32\], "
                                         r"expected \[2, 32\].*config\.json"):
        load_hf_prm(bad)
    gone = _copy_with(skywork[0], tmp_path, lambda t: t.pop("v_head.summary.bias"))
    with pytest.raises(ValueError, match=r"v_head\.summary\.bias.*missing.*\[1\]"):
        load_hf_prm(gone)


def test_family_detection(math_shepherd, qwen_prm):
    with pytest.raises(ValueError, match="config.json.*MistralForCausalLM.*family=.*math-shepherd.*rlhflow"):
        load_hf_prm(math_shepherd[0])
    with pytest.raises(ValueError, match="unknown PRM family 'shepherd'"):
        load_hf_prm(math_shepherd[0], "shepherd")
    with pytest.raises(ValueError, match="Qwen2ForProcessRewardModel is a qwen-prm checkpoint, not skywork"):
        load_hf_prm(qwen_prm[0], "skywork")
    with pytest.raises(ValueError, match=r"score\.0\..*process reward model.*load_hf_prm"):
        load_hf_model(qwen_prm[0])  # the plain loader points at the PRM loader
    backbone = load_hf_model(qwen_prm[0], lm_head=False, skip_prefixes=("score.",))
    with pytest.raises(ValueError, match="no lm_head"):
        backbone(np.zeros((1, 4), np.int32))


def test_scoring_input_of_empty_solution(qwen_prm, skywork):
    for path, fmt in ((qwen_prm[0], QwenPRMFormat()), (skywork[0], SkyworkFormat())):
        x = fmt.encode(HFTokenizer(path), QUESTION, [])
        assert isinstance(x, ScoringInput) and x.read_at == () and len(x.tokens) > 0
