"""The public process reward models from their Hugging Face checkpoints, with their own input formats.

    family           checkpoint (config.json architectures)     head                      a step is read at
    math-shepherd    MistralForCausalLM (Math-Shepherd)          lm_head rows "+" / "-"    its " ки" tag
    rlhflow          LlamaForCausalLM (RLHFlow Llama3.1 PRMs)    lm_head rows "+" / "-"    the token before the
                                                                                           assistant's "+"
    qwen-prm         Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM) score.0 / score.2 MLP   its <extra_0>
    skywork          Qwen2ForPrmModel (Skywork-o1-Open-PRM)      v_head.summary            its appended "\\n"

Each format's `encode(tokenizer, question, steps)` reproduces the public reference code's token ids and
read positions, so `ttcjax.verifiers.reward_model.score_inputs` gives in one pass per batch the step
probabilities that code computes with one forward per prefix (causal attention makes the two equal). The token
ids a format or head needs are taken from the tokenizer the way the reference code takes them, and must be single
tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import ClassVar, Sequence

import jax.numpy as jnp
from jax.sharding import Mesh

from ttcjax.checkpoints.hf import load_hf_model, read_hf_tensors
from ttcjax.checkpoints.tokenizer import Tokenizer, check_tokenizer_fits, load_tokenizer
from ttcjax.models.config import ModelConfig
from ttcjax.models.sharding import ShardingRules, shard_model
from ttcjax.verifiers.reward_model import Head, RewardModel, ScoringInput, TokenHead, TwoClassHead, ValueHead

__all__ = ["MathShepherdFormat", "RLHFlowFormat", "QwenPRMFormat", "SkyworkFormat", "FAMILIES",
           "ARCHITECTURE_FAMILIES", "load_hf_prm"]


def _source(tokenizer: Tokenizer) -> str:
    path = getattr(tokenizer, "path", None)
    return str(path) if path is not None else repr(tokenizer)


def _single_token(tokenizer: Tokenizer, text: str, what: str) -> int:
    """The id of `text` where the tokenizer encodes it (alone, no BOS) as exactly one token."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        pieces = [tokenizer.id_to_token(i) for i in ids]
        raise ValueError(f"{what} {text!r} is not a single token of {_source(tokenizer)}: it encodes as "
                         f"{len(ids)} tokens {pieces}; use the tokenizer that ships with the checkpoint, or "
                         f"a {what} that is one token of it.")
    return ids[0]


def _require_template(tokenizer: Tokenizer, family: str) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"the {family} format renders its input with the checkpoint's chat template, and "
                         f"{_source(tokenizer)} has none; load the tokenizer from the checkpoint directory "
                         "(its tokenizer_config.json \"chat_template\" or chat_template.jinja).")


def _render_chat(tokenizer: Tokenizer, messages: list[dict[str, str]], family: str) -> list[int]:
    """`tokenizer.apply_chat_template(messages)` as ids: the rendered text encoded without special tokens
    added (transformers' `apply_chat_template(tokenize=True)`)."""
    _require_template(tokenizer, family)
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=False))


def _tag_positions(ids: Sequence[int], tag_id: int, steps: Sequence[str], what: str, tag: str) -> tuple[int, ...]:
    positions = tuple(i for i, t in enumerate(ids) if t == tag_id)
    if len(positions) != len(steps):
        raise ValueError(f"the input holds {len(positions)} {what} {tag!r} token(s) for {len(steps)} step(s): "
                         f"the question or a step contains {tag!r}, or the tokenizer merged it with its "
                         "neighbours; remove it from the text, since the model scores every occurrence.")
    return positions


@dataclasses.dataclass(frozen=True)
class MathShepherdFormat:
    """peiyi9979/math-shepherd-mistral-7b-prm (model card): `f"{question} {output}"` where each step ends
    in `" ки"` and steps are joined by "\\n", encoded with BOS; a step's score is softmax over the "+" and
    "-" logits at its tag, the candidates being `encode("+ -")` and the tag `encode("ки")`.

    Math-Shepherd was trained on steps written "Step k: ..."; keep such prefixes in the step text."""

    step_tag: str = "ки"
    good: str = "+"
    bad: str = "-"
    family: ClassVar[str] = "math-shepherd"

    def candidate_ids(self, tokenizer: Tokenizer) -> tuple[int, int]:
        """(good, bad): `tokenizer.encode(f"{good} {bad}")` without BOS, as the card does."""
        ids = tokenizer.encode(f"{self.good} {self.bad}")
        if len(ids) != 2:
            pieces = [tokenizer.id_to_token(i) for i in ids]
            raise ValueError(f"good/bad tokens {self.good!r}/{self.bad!r} are not one token each in "
                             f"{_source(tokenizer)}: {self.good + ' ' + self.bad!r} encodes as {pieces}; use the "
                             "tokenizer that ships with the checkpoint.")
        return ids[0], ids[1]

    def tag_id(self, tokenizer: Tokenizer) -> int:
        return _single_token(tokenizer, self.step_tag, "step tag")

    def head(self, tokenizer: Tokenizer) -> TokenHead:
        return TokenHead(*self.candidate_ids(tokenizer))

    def check(self, tokenizer: Tokenizer) -> None:
        """ValueError unless `tokenizer` has every token this format needs."""
        self.tag_id(tokenizer)
        self.candidate_ids(tokenizer)

    def encode(self, tokenizer: Tokenizer, question: str, steps: Sequence[str]) -> ScoringInput:
        tag = self.tag_id(tokenizer)
        self.candidate_ids(tokenizer)
        output = "\n".join(f"{step} {self.step_tag}" for step in steps)
        ids = tokenizer.encode(f"{question} {output}", add_bos=tokenizer.bos_id is not None)
        return ScoringInput(tuple(ids), _tag_positions(ids, tag, steps, "step tag", self.step_tag))


@dataclasses.dataclass(frozen=True)
class RLHFlowFormat:
    """RLHFlow/Llama3.1-8B-PRM-* (math-rm/prm_evaluate.py): a chat, user turn k holding step k (the first
    `question + " " + step`), each answered by an assistant "+"; rendered with the checkpoint's chat
    template. Step k's score is softmax over the "+"/"-" logits (ids `encode("+")`, `encode("-")`) at the
    third-last token of the conversation up to its "+", i.e. the token before that "+". Steps are stripped
    as prm_evaluate does (`strip_steps=False`: as search-and-learn does)."""

    good: str = "+"
    bad: str = "-"
    strip_steps: bool = True
    family: ClassVar[str] = "rlhflow"

    def candidate_ids(self, tokenizer: Tokenizer) -> tuple[int, int]:
        return (_single_token(tokenizer, self.good, "good token"), _single_token(tokenizer, self.bad, "bad token"))

    def head(self, tokenizer: Tokenizer) -> TokenHead:
        return TokenHead(*self.candidate_ids(tokenizer))

    def check(self, tokenizer: Tokenizer) -> None:
        _require_template(tokenizer, self.family)
        self.candidate_ids(tokenizer)

    def encode(self, tokenizer: Tokenizer, question: str, steps: Sequence[str]) -> ScoringInput:
        _require_template(tokenizer, self.family)
        good, _ = self.candidate_ids(tokenizer)
        if not steps:
            question_only = [{"role": "user", "content": question}]
            return ScoringInput(tuple(_render_chat(tokenizer, question_only, self.family)), ())
        conversation: list[dict[str, str]] = []
        prefixes = []  # the reference's input for each step: the conversation up to that step's "+"
        for k, step in enumerate(steps):
            step = step.strip() if self.strip_steps else step
            conversation += [{"role": "user", "content": f"{question} {step}" if k == 0 else step},
                             {"role": "assistant", "content": self.good}]
            prefixes.append(_render_chat(tokenizer, conversation, self.family))
        ids = prefixes[-1]
        for prefix in prefixes:
            n = len(prefix)
            if ids[:n] != prefix:
                raise ValueError("the chat template renders a conversation differently from its continuation, so "
                                 "one pass cannot reproduce the per-prefix scores; check the tokenizer's template.")
            if n < 3 or ids[n - 2] != good:
                raise ValueError(f"the chat template does not end an assistant turn {self.good!r} as "
                                 f"[{self.good!r}, end-of-turn]: the score would not be read before {self.good!r}; "
                                 "use the checkpoint's own (Llama 3 style) chat template.")
        return ScoringInput(tuple(ids), tuple(len(prefix) - 3 for prefix in prefixes))


QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class QwenPRMFormat:
    """Qwen/Qwen2.5-Math-PRM-7B (model card): system / user question / assistant
    `"<extra_0>".join(steps) + "<extra_0>"`, rendered with the chat template and encoded without BOS; a
    step's score is softmax(score(h))[1] at its separator, `encode("<extra_0>")`. `system=None` leaves the
    system turn out."""

    system: str | None = QWEN_PRM_SYSTEM
    separator: str = "<extra_0>"
    family: ClassVar[str] = "qwen-prm"

    def separator_id(self, tokenizer: Tokenizer) -> int:
        return _single_token(tokenizer, self.separator, "step separator")

    def head(self, tokenizer: Tokenizer) -> TwoClassHead:
        return TwoClassHead()

    def check(self, tokenizer: Tokenizer) -> None:
        _require_template(tokenizer, self.family)
        self.separator_id(tokenizer)

    def encode(self, tokenizer: Tokenizer, question: str, steps: Sequence[str]) -> ScoringInput:
        _require_template(tokenizer, self.family)
        sep = self.separator_id(tokenizer)
        answer = "".join(step + self.separator for step in steps)
        messages = ([{"role": "system", "content": self.system}] if self.system is not None else []) + [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids = _render_chat(tokenizer, messages, self.family)
        return ScoringInput(tuple(ids), _tag_positions(ids, sep, steps, "step separator", self.separator))


@dataclasses.dataclass(frozen=True)
class SkyworkFormat:
    """Skywork-o1-Open-PRM (skywork-o1-prm-inference `prepare_input` on `step_token.join(steps)`):
    `encode(bos_token + question + "\\n")`, then each piece of the response split on `step_token`
    encoded on its own (an empty piece as nothing) and followed by the id of `encode(step_token)`; the
    score is sigmoid(v_head(h)) at that appended token.

    A step that itself contains `step_token` is several pieces to the reference, which scores each; the
    ids are the reference's all the same, and the step's score is read at its last piece."""

    step_token: str = "\n"
    family: ClassVar[str] = "skywork"

    def step_token_id(self, tokenizer: Tokenizer) -> int:
        return _single_token(tokenizer, self.step_token, "step token")

    def head(self, tokenizer: Tokenizer) -> ValueHead:
        return ValueHead()

    def check(self, tokenizer: Tokenizer) -> None:
        self.step_token_id(tokenizer)
        self._bos(tokenizer)

    def _bos(self, tokenizer: Tokenizer) -> str:
        bos = tokenizer.bos_token
        if bos is None:
            raise ValueError(f"the skywork format starts with the BOS token and {_source(tokenizer)} has none; "
                             "use the tokenizer that ships with the checkpoint (its tokenizer_config.json sets "
                             "bos_token).")
        return bos

    def encode(self, tokenizer: Tokenizer, question: str, steps: Sequence[str]) -> ScoringInput:
        step_id = self.step_token_id(tokenizer)
        ids = tokenizer.encode(self._bos(tokenizer) + question + "\n")
        read_at = []
        for step in steps:
            for piece in step.split(self.step_token):
                ids += (tokenizer.encode(piece) if piece else []) + [step_id]
            read_at.append(len(ids) - 1)
        return ScoringInput(tuple(ids), tuple(read_at))


Format = MathShepherdFormat | RLHFlowFormat | QwenPRMFormat | SkyworkFormat
FAMILIES: dict[str, type] = {f.family: f for f in (MathShepherdFormat, RLHFlowFormat, QwenPRMFormat, SkyworkFormat)}
# config.json architectures that name their family; plain causal LMs (Mistral / Llama) do not.
ARCHITECTURE_FAMILIES = {"Qwen2ForProcessRewardModel": "qwen-prm", "Qwen2ForPrmModel": "skywork"}
_TOKEN_HEAD_FAMILIES = ("math-shepherd", "rlhflow")


def _family(path: str, family: str | None) -> str:
    config_file = os.path.join(path, "config.json")
    try:
        with open(config_file) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_file}: no config.json; pass a Hugging Face checkpoint directory.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e}).") from e
    arch = (hf.get("architectures") or [None])[0]
    named = ARCHITECTURE_FAMILIES.get(arch)
    if family is None:
        if named is None:
            raise ValueError(
                f"{config_file}: architecture {arch!r} does not say which process reward model this is; pass "
                f"family= one of {list(_TOKEN_HEAD_FAMILIES)} for a causal LM scored through its lm_head "
                f"(Math-Shepherd: Mistral; RLHFlow: Llama 3.1), or one of {sorted(FAMILIES)}.")
        return named
    if family not in FAMILIES:
        raise ValueError(f"unknown PRM family {family!r}; known: {sorted(FAMILIES)}.")
    if named is not None and family != named:
        raise ValueError(f"{config_file}: architecture {arch} is a {named} checkpoint, not {family}; "
                         f"leave family out or pass {named!r}.")
    return family


def load_hf_prm(path: str | os.PathLike, family: str | None = None, *, dtype: str | None = None,
                param_dtype: str | None = None, mesh: Mesh | None = None,
                rules: ShardingRules = ShardingRules()) -> tuple[RewardModel, Format, Tokenizer]:
    """A public process reward model from its checkpoint directory (config.json, *.safetensors and the
    tokenizer files): (the RewardModel, its input format, its tokenizer).

    The family comes from config.json's `architectures` for Qwen2ForProcessRewardModel ("qwen-prm") and
    Qwen2ForPrmModel ("skywork"); a plain causal LM needs `family="math-shepherd"` or `"rlhflow"`. `dtype` /
    `param_dtype` as in `ttcjax.checkpoints.hf.load_hf_model`; the heads compute in float32 in any case. With
    `mesh`, the backbone's tensors are placed on it by `rules` as they are read (`load_hf_model`: each process of
    a mesh that spans several keeps only its devices' slices), then the head's.
    Score solutions with `score_inputs(prm, [fmt.encode(tokenizer, question, steps), ...])`.
    """
    path = os.fspath(path)
    family = _family(path, family)
    fmt = FAMILIES[family]()
    tokenizer = load_tokenizer(path)
    fmt.check(tokenizer)  # the format's tokens and template, before any weight is read
    head: Head = fmt.head(tokenizer)
    config = ModelConfig.from_hf_json(path)
    check_tokenizer_fits(tokenizer, config.vocab_size, source=path)
    dtypes = dict(dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules)
    if family in _TOKEN_HEAD_FAMILIES:
        return RewardModel(load_hf_model(path, **dtypes), head), fmt, tokenizer

    d = config.hidden_size
    prefix = "score." if family == "qwen-prm" else "v_head."
    if family == "qwen-prm":  # nn.Sequential(Linear(d, d), ReLU(), Linear(d, 2))
        shapes = {"score.0.weight": (d, d), "score.0.bias": (d,), "score.2.weight": (2, d), "score.2.bias": (2,)}
    else:  # Skywork's ValueHead: summary = Linear(d, 1)
        shapes = {"v_head.summary.weight": (1, d), "v_head.summary.bias": (1,)}
    # the head first: a head that does not fit the config is refused before the backbone is read
    t = read_hf_tensors(path, shapes, hint=f"The {family} head must match hidden_size={d} in config.json.")
    backbone = load_hf_model(path, lm_head=False, skip_prefixes=(prefix,), **dtypes)
    prm = RewardModel(backbone, head)
    pd = backbone.config.jnp_param_dtype
    if family == "qwen-prm":  # ours computes x @ W: Hugging Face's [out, in] transposed
        values = {"c_w1": t["score.0.weight"].T, "c_b1": t["score.0.bias"],
                  "c_w2": t["score.2.weight"].T, "c_b2": t["score.2.bias"]}
    else:
        values = {"v_w": t["v_head.summary.weight"][0], "v_b": t["v_head.summary.bias"][0]}
    for name, value in values.items():
        getattr(prm, name)[...] = jnp.asarray(value, pd)
    if mesh is not None:  # the head (the backbone is in place already: moved nowhere)
        shard_model(prm, mesh, rules)
    return prm, fmt, tokenizer
