"""Process reward models: the decoder backbone plus a head that scores every step of every solution of a
batch in one forward pass.

Every head reduces to one logit per token position whose sigmoid is the probability that the solution is
still on a path to the right answer at that point; a step's score is read at its step-end position:

    ValueHead        sigmoid(w . h + b)                                   ours, Skywork PRMs
    TokenHead        softmax(l_good, l_bad)[good] = sigmoid(l_good - l_bad) Math-Shepherd, RLHFlow
                     (two rows of the language-model head)
    TwoClassHead     softmax(W2 relu(W1 h + b1) + b2)[1]                   Qwen2.5-Math-PRM

where h is the backbone's final normalised hidden state. An outcome reward model (ORM) is the same model
read only at the end of the solution (trained with `orm=True`: one label, the outcome, at the last step).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from ttcjax.checkpoints.native import load_model, save_model
from ttcjax.distributed import to_host
from ttcjax.io import read_json, replace_dir, write_json
from ttcjax.models.cache import KVCache, extend_in_chunks
from ttcjax.models.llama import Transformer
from ttcjax.models.sharding import ShardingRules, batch_sharding, place, shard_model
from ttcjax.verifiers.base import AGGREGATIONS, Verifier

# ---- heads ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ValueHead:
    """A linear value head with a sigmoid (ours; Skywork's `v_head.summary`)."""

    kind: str = dataclasses.field(default="value", init=False)

    @staticmethod
    def params(hidden_size: int) -> int:
        """Its own parameters on a backbone of `hidden_size`: a weight row and a bias."""
        return hidden_size + 1


@dataclasses.dataclass(frozen=True)
class TokenHead:
    """Token-logit scoring: p(good) against p(bad) at a step tag (Math-Shepherd, RLHFlow)."""

    good_id: int
    bad_id: int
    kind: str = dataclasses.field(default="token", init=False)

    @staticmethod
    def params(hidden_size: int) -> int:
        """None of its own: it reads two rows of the backbone's lm_head."""
        return 0


@dataclasses.dataclass(frozen=True)
class TwoClassHead:
    """Linear-ReLU-Linear(2), softmax index 1 (Qwen2.5-Math-PRM's `score`)."""

    kind: str = dataclasses.field(default="two_class", init=False)

    @staticmethod
    def params(hidden_size: int) -> int:
        """A [D, D] layer and a [D, 2] layer, each with its bias."""
        return hidden_size * hidden_size + hidden_size + 2 * hidden_size + 2


@dataclasses.dataclass(frozen=True)
class LikelihoodHead:
    """A value head plus a learned weight on the solution's least likely token so far: the lowest log-probability
    that the backbone's own LM head gave any token of the solution up to the read position (ours). A backbone of
    a few layers computes a step's result only in its last layers, where no later position can compare it with
    the result that was written; its next-token distribution is that comparison (docs/prm-paper/README.md)."""

    kind: str = dataclasses.field(default="likelihood", init=False)

    @staticmethod
    def params(hidden_size: int) -> int:
        """A weight row and a bias (the value head's), and the likelihood's weight."""
        return hidden_size + 2


Head = ValueHead | TokenHead | TwoClassHead | LikelihoodHead
HEADS = {"value": ValueHead, "token": TokenHead, "two_class": TwoClassHead, "likelihood": LikelihoodHead}


def running_min(values: jax.Array, solution: jax.Array) -> jax.Array:
    """values [B, T], solution [B, T] bool -> [B, T]: at each solution position the least value over its run of
    solution positions so far; 0 elsewhere (a position outside the solution starts the run afresh)."""
    def combine(a, b):
        return a[0] | b[0], jnp.where(b[0], b[1], jnp.minimum(a[1], b[1]))

    _, out = jax.lax.associative_scan(combine, (~solution, jnp.where(solution, values, 0.0)), axis=1)
    return out


def head_from_dict(data: dict, source: str = "head") -> Head:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in HEADS:
        raise ValueError(f"{source}: head kind {kind!r} is not one of {sorted(HEADS)}.")
    try:
        return HEADS[kind](**data)
    except TypeError as e:
        raise ValueError(f"{source}: {e}") from None


class RewardModel(nnx.Module):
    """A backbone and a head. `__call__` returns the per-position score logits [B, T]."""

    def __init__(self, backbone: Transformer, head: Head, *, seed: int = 0):
        self.backbone = backbone
        self.head = head
        cfg = backbone.config
        d, pd = cfg.hidden_size, cfg.jnp_param_dtype
        rng = np.random.default_rng(seed)
        if isinstance(head, (ValueHead, LikelihoodHead)):
            self.v_w = nnx.Param(jnp.asarray(rng.normal(0, 0.02, (d,)), pd))
            self.v_b = nnx.Param(jnp.zeros((), pd))
            if isinstance(head, LikelihoodHead):
                if not cfg.has_lm_head:
                    raise ValueError("LikelihoodHead reads the backbone's lm_head, and this backbone has none "
                                     "(has_lm_head=False); start from a causal language model.")
                self.l_w = nnx.Param(jnp.ones((), pd))  # at 1: the likelihood counts from the start
        elif isinstance(head, TwoClassHead):
            self.c_w1 = nnx.Param(jnp.asarray(rng.normal(0, 0.02, (d, d)), pd))
            self.c_b1 = nnx.Param(jnp.zeros((d,), pd))
            self.c_w2 = nnx.Param(jnp.asarray(rng.normal(0, 0.02, (d, 2)), pd))
            self.c_b2 = nnx.Param(jnp.zeros((2,), pd))
        elif isinstance(head, TokenHead):
            if not cfg.has_lm_head and not cfg.tie_word_embeddings:
                raise ValueError("TokenHead reads two rows of the backbone's lm_head, and this backbone has none "
                                 "(has_lm_head=False); load it with its lm_head.")
            for name, i in (("good_id", head.good_id), ("bad_id", head.bad_id)):
                if not 0 <= i < cfg.vocab_size:
                    raise ValueError(f"TokenHead.{name}={i} is outside the backbone's vocabulary "
                                     f"[0, {cfg.vocab_size}); the tokenizer does not match the model.")
        else:
            raise TypeError(f"unknown head {head!r}")

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_params(self) -> int:
        """The backbone's parameters and the head's own."""
        return self.config.num_params() + self.head.params(self.config.hidden_size)

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None, key_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, solution: jax.Array | None = None) -> jax.Array:
        """tokens [B, T] -> score logits [B, T] (sigmoid = probability the prefix is still on path). `solution`
        [B, T] bool marks the solutions' tokens (not their prompts'), which a `LikelihoodHead` reads."""
        _, _, hidden = self.backbone(tokens, positions=positions, key_mask=key_mask, segment_ids=segment_ids,
                                     return_hidden=True, return_logits=False)
        h = hidden[-1]
        if not isinstance(self.head, LikelihoodHead):
            return self.head_logits(h)
        if solution is None:
            raise ValueError("a LikelihoodHead needs `solution`: which tokens are the solution's.")
        b = tokens.shape[0]
        logprobs = jnp.concatenate([jnp.zeros((b, 1), jnp.float32), self.token_logprobs(h[:, :-1], tokens[:, 1:])],
                                   axis=1)  # [B, T]: each token's, given those before it
        solution = solution.astype(bool)
        if segment_ids is not None:  # a packed row's first token of each input has nothing before it to predict it
            first = segment_ids != jnp.concatenate([jnp.full((b, 1), -1, segment_ids.dtype), segment_ids[:, :-1]], 1)
            solution = solution & ~first
        return self.head_logits(h, running_min(logprobs, solution))

    def token_logprobs(self, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
        """The backbone's log-probability of tokens [...] after the final hidden states [..., D] before each."""
        logits = self.backbone.logits(hidden, jnp.float32)
        picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    def head_logits(self, hidden: jax.Array, least: jax.Array | None = None) -> jax.Array:
        """The head on final normalised hidden states [..., D] -> score logits [...] (float32); a
        `LikelihoodHead` also reads `least` [...], the lowest log-probability of a solution token so far."""
        h = hidden.astype(jnp.float32)
        head = self.head
        if isinstance(head, (ValueHead, LikelihoodHead)):
            value = h @ self.v_w[...].astype(jnp.float32) + self.v_b[...].astype(jnp.float32)
            if isinstance(head, ValueHead):
                return value
            if least is None:
                raise ValueError("a LikelihoodHead reads the least log-probability of a solution token so far: "
                                 "score with RewardModel(...) or PRMStepScorer, which compute it.")
            return value + self.l_w[...].astype(jnp.float32) * least
        if isinstance(head, TwoClassHead):
            z = jax.nn.relu(h @ self.c_w1[...].astype(jnp.float32) + self.c_b1[...].astype(jnp.float32))
            logits = z @ self.c_w2[...].astype(jnp.float32) + self.c_b2[...].astype(jnp.float32)  # [..., 2]
            return logits[..., 1] - logits[..., 0]
        rows = self.backbone.logit_rows([head.good_id, head.bad_id])  # [2, D]
        logits = jnp.einsum("...D,CD->...C", h, rows)
        return logits[..., 0] - logits[..., 1]


# ---- one-pass scoring ------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0,))
def _score_jit(graphdef, state, tokens, positions, segment_ids, solution, read_at):
    """Packed rows: tokens / positions / segment_ids / solution [R, W] (segment 0 = padding), read_at [R, S] (-1:
    none) -> probabilities [R, S]."""
    model = nnx.merge(graphdef, state)
    logits = model(tokens, positions=positions, segment_ids=segment_ids, solution=solution)  # [R, W]
    picked = jnp.take_along_axis(logits, jnp.maximum(read_at, 0), axis=1)  # [R, S]
    return jnp.where(read_at >= 0, jax.nn.sigmoid(picked), jnp.nan)


@dataclasses.dataclass(frozen=True)
class ScoringInput:
    """One solution ready for the PRM: its token ids, the positions at which its step scores are read, and where
    the solution starts after its prompt (`start`; what a `LikelihoodHead` reads)."""

    tokens: tuple[int, ...]
    read_at: tuple[int, ...]
    start: int = 0

    def __post_init__(self):
        if any(not 0 <= p < len(self.tokens) for p in self.read_at):
            raise ValueError(f"read positions {list(self.read_at)} fall outside the {len(self.tokens)} tokens.")
        if not 0 <= self.start <= len(self.tokens):
            raise ValueError(f"solution start {self.start} falls outside the {len(self.tokens)} tokens.")


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(np.ceil(np.log2(max(n, 1))))))


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit packing of items of `lengths` into rows holding at most `capacity` tokens (an item longer
    than `capacity` gets a row of its own)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i, n in enumerate(lengths):
        for r, used in enumerate(fill):
            if used + n <= capacity:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows


def score_inputs(prm: RewardModel, inputs: Sequence[ScoringInput], *, mesh=None, rules=None,
                 row_tokens: int = 256, rows_per_call: int = 32, tokens_per_call: int = 8192, pad_id: int = 0
                 ) -> list[np.ndarray]:
    """Step scores (probabilities) of each input: one forward pass per call scores every step of every
    solution packed into it. Solutions are packed into rows of `row_tokens` (attention stays inside each
    solution), so padding costs little; row width and steps per row are bucketed to powers of two, so calls
    share compiled programs. With a mesh, rows are split over its data axis."""
    if not inputs:
        return []
    rules = rules or ShardingRules()
    if mesh is not None:
        shard_model(prm, mesh, rules)
    graphdef, state = nnx.split(prm)
    data = 1 if mesh is None else mesh.shape[rules.batch]
    capacity = max(row_tokens, max(len(x.tokens) for x in inputs))
    packed = pack_rows([len(x.tokens) for x in inputs], capacity)
    out: list[np.ndarray | None] = [None] * len(inputs)
    # long solutions take fewer rows per call: a call holds at most tokens_per_call tokens (and one row)
    per_call = max(1, min(rows_per_call, tokens_per_call // _bucket(capacity, 16)))
    for start in range(0, len(packed), per_call):
        rows = packed[start:start + per_call]
        n_rows = -(-len(rows) // data) * data
        width = _bucket(max(sum(len(inputs[i].tokens) for i in row) for row in rows), 16)
        steps = _bucket(max(sum(len(inputs[i].read_at) for i in row) for row in rows), 4)
        tokens = np.full((n_rows, width), pad_id, np.int32)
        positions = np.zeros((n_rows, width), np.int32)
        segment_ids = np.zeros((n_rows, width), np.int32)
        solution = np.zeros((n_rows, width), bool)
        read_at = np.full((n_rows, steps), -1, np.int32)
        for r, row in enumerate(rows):
            at, k = 0, 0
            for s, i in enumerate(row, start=1):
                x = inputs[i]
                tokens[r, at:at + len(x.tokens)] = x.tokens
                positions[r, at:at + len(x.tokens)] = np.arange(len(x.tokens))
                segment_ids[r, at:at + len(x.tokens)] = s
                solution[r, at + x.start:at + len(x.tokens)] = True
                read_at[r, k:k + len(x.read_at)] = np.asarray(x.read_at, np.int32) + at
                at, k = at + len(x.tokens), k + len(x.read_at)
        arrays = (tokens, positions, segment_ids, solution, read_at)
        if mesh is not None:
            arrays = tuple(place(a, batch_sharding(mesh, rules, a.shape)) for a in arrays)
        scores = np.asarray(to_host(_score_jit(graphdef, state, *arrays)))  # every row, whichever process holds it
        for r, row in enumerate(rows):
            k = 0
            for i in row:
                n = len(inputs[i].read_at)
                out[i] = scores[r, k:k + n]
                k += n
    return out  # type: ignore[return-value]


# ---- input formats ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepFormat:
    """ttcjax's own format, the policy's text itself: the prompt, then each step followed by `delimiter`;
    a step's score is read at its delimiter token. With the built-in task and the character tokenizer the
    PRM sees exactly the tokens the policy wrote."""

    delimiter: str = "\n"
    add_bos: bool = True

    def encode(self, tokenizer, question: str | Sequence[int], steps: Sequence[str]) -> ScoringInput:
        """The prompt (text, encoded with BOS where `add_bos` and the tokenizer has one; or the policy's prompt
        ids as they are), then each step and the delimiter; a step's score is read at its delimiter."""
        ids = (list(question) if not isinstance(question, str) else
               tokenizer.encode(question, add_bos=self.add_bos and tokenizer.bos_id is not None))
        start, read_at = len(ids), []
        for step in steps:
            ids += tokenizer.encode(step + self.delimiter)
            read_at.append(len(ids) - 1)
        return ScoringInput(tuple(ids), tuple(read_at), start)


PRM_CONFIG_FILE = "ttcjax_prm.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
HEAD_PARAMS = ("v_w", "v_b", "l_w", "c_w1", "c_b1", "c_w2", "c_b2")
PRM_FILES = (PRM_CONFIG_FILE, HEAD_FILE, BACKBONE_DIR)  # what a reward model's directory holds of it


# ---- saving and loading our reward models --------------------------------------------------------------


def save_prm(prm: RewardModel, directory: str, *, kind: str = "prm", aggregation: str = "last",
             step_format: StepFormat = StepFormat(), overwrite: bool = False) -> None:
    """`directory/backbone` (a ttcjax checkpoint), `head.safetensors` and `ttcjax_prm.json`, written whole beside
    `directory` and swapped in (`ttcjax.io.replace_dir`): a crash leaves the old reward model or the new one. An
    existing reward model is replaced only with `overwrite`; other files in `directory` are kept."""
    if os.path.exists(os.path.join(directory, PRM_CONFIG_FILE)) and not overwrite:
        raise FileExistsError(f"{directory}: already holds a reward model; pass overwrite=True.")
    head = {name: np.asarray(jax.device_get(getattr(prm, name)[...]), np.float32)
            for name in HEAD_PARAMS if hasattr(prm, name)}
    meta = {"kind": kind, "head": dataclasses.asdict(prm.head), "aggregation": aggregation,
            "format": dataclasses.asdict(step_format)}
    with replace_dir(directory, keep=lambda name: name not in PRM_FILES) as new:
        save_model(prm.backbone, os.path.join(new, BACKBONE_DIR))
        save_file(head, os.path.join(new, HEAD_FILE))
        write_json(os.path.join(new, PRM_CONFIG_FILE), meta)


def read_prm_config(directory: str) -> dict:
    """A reward model's ttcjax_prm.json, checked: its kind, head, aggregation and step format (one ValueError
    naming the file otherwise)."""
    config_path = os.path.join(directory, PRM_CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: missing; {directory} is not a ttcjax reward model (train one with "
                                "`ttcjax train prm`, or load a public PRM with ttcjax.verifiers.hub.load_hf_prm).")
    def refuse(problem: str):
        raise ValueError(f"{config_path}: {problem}; save the reward model again (`ttcjax train prm|orm` writes "
                         "it).")

    meta = read_json(config_path, "save the reward model again (`ttcjax train prm|orm` writes it).")
    if not isinstance(meta, dict) or not isinstance(meta.get("head"), dict):
        refuse("not a JSON object with a \"head\" object")
    if meta.get("kind", "prm") not in ("prm", "orm"):
        refuse(f"kind={meta['kind']!r} is not prm or orm")
    if meta.get("aggregation", "last") not in AGGREGATIONS:
        refuse(f"aggregation={meta['aggregation']!r} is not one of {AGGREGATIONS}")
    step_format, fields = meta.get("format", {}), [f.name for f in dataclasses.fields(StepFormat)]
    if (not isinstance(step_format, dict) or set(step_format) - set(fields)
            or not isinstance(step_format.get("delimiter", ""), str)
            or not isinstance(step_format.get("add_bos", True), bool)):
        refuse(f"format={step_format!r} must map {fields} to a string and true or false")
    return meta


def load_prm(directory: str, *, mesh=None, rules: ShardingRules = ShardingRules()) -> tuple[RewardModel, dict]:
    """A reward model saved by `save_prm`, and its metadata (kind, head, aggregation, format). With `mesh`, its
    parameters are placed on it by `rules` as they are read: the backbone's straight from the checkpoint (each
    process of a mesh that spans several reads only its devices' slices), then the head's."""
    config_path = os.path.join(directory, PRM_CONFIG_FILE)
    meta = read_prm_config(directory)
    head = head_from_dict(meta["head"], source=config_path)
    backbone = load_model(os.path.join(directory, BACKBONE_DIR), mesh=mesh, rules=rules)
    prm = RewardModel(backbone, head)
    saved = load_file(os.path.join(directory, HEAD_FILE))
    for name in HEAD_PARAMS:
        if hasattr(prm, name):
            want = getattr(prm, name)[...].shape
            if name not in saved or saved[name].shape != want:
                got = saved[name].shape if name in saved else "missing"
                raise ValueError(f"{os.path.join(directory, HEAD_FILE)}: {name} is {got}, the {head.kind} head "
                                 f"of this backbone needs {list(want)}.")
            getattr(prm, name)[...] = jnp.asarray(saved[name], backbone.config.jnp_param_dtype)
    if mesh is not None:  # the head (the backbone is in place already: moved nowhere)
        shard_model(prm, mesh, rules)
    return prm, meta


# ---- the Verifier interface for our reward models ----------------------------------------------------------


# the PRM reads new tokens this many at a time (`extend_steps`): a search step (its cap is 24 by default) in one pass;
# measured with beam search at 512 rows, a second pass costs more than its padding saves (16: 15% slower than 32)
PRM_CHUNK = 32
MIN_WIDTH = 96  # no narrower cache width is read (a 160-slot cache, the common search, compiles one width)
MAX_WIDTHS = 3  # widths per cache: the copies of the PRM compiled into a program that extends its cache


def attention_widths(slots: int) -> tuple[int, ...]:
    """The cache widths a PRM's step may be read against, narrowest first: the whole of a row's `slots` (its own,
    after a shared prefix), and halves of it down to MIN_WIDTH, MAX_WIDTHS in all (496 -> 124, 248, 496; 256 ->
    128, 256; 160 -> 160). A search's rows mostly fill a small part of a cache sized for its longest solution, a
    revision chain's for its window. Chosen on every backend, like the decode loop's segments: reading part of the
    cache cuts a memory-bound step's traffic on accelerators too, and the choice is a `lax.switch` on the device."""
    widths = [slots]
    while len(widths) < MAX_WIDTHS and widths[0] // 2 >= MIN_WIDTH:
        widths.insert(0, widths[0] // 2)
    return tuple(widths)


def _extend(prm: RewardModel, cache: KVCache, tokens: jax.Array, lengths: jax.Array, read_at: jax.Array,
            attn_len: int | None = None):
    """Feed tokens [R, T] (row r's first lengths[r] are real) into the PRM cache: the score logit at each row's
    position read_at[r] among them [R], and the cache advanced by lengths. `attn_len`: attend to the cache's
    first slots only (they must hold every row's tokens)."""
    _, new_cache, hidden = prm.backbone(tokens, cache=cache, attn_len=attn_len, return_hidden=True,
                                        return_logits=False)
    return _score_at(prm, hidden, read_at), dataclasses.replace(new_cache, lengths=cache.lengths + lengths)


def _score_at(prm: RewardModel, hidden, read_at: jax.Array) -> jax.Array:
    """The score logit of each row [R] at its position read_at[r] among the T tokens whose `hidden` states
    (the backbone's, last the final normalised [R, T, D]) were just computed."""
    logits = prm.head_logits(hidden[-1])  # [R, T]
    return jnp.take_along_axis(logits, jnp.clip(read_at, 0, logits.shape[1] - 1)[:, None], axis=1)[:, 0]


def extend_steps(prm: RewardModel, cache: KVCache, tokens: jax.Array, lengths: jax.Array, read_at: jax.Array,
                 carry: tuple[jax.Array, jax.Array] | None = None):
    """`_extend` as the search loop runs it: the tokens read `PRM_CHUNK` at a time for as many chunks as the longest
    row needs, each against only as much of the cache as the fullest row needs (`attention_widths`), both decided
    on the device (`extend_in_chunks`), with one copy of the PRM per width in the program.

    A `LikelihoodHead` also reads and returns `carry`: each row's final hidden state at its last token read [R, D]
    (its next token's distribution) and the lowest log-probability of a solution token so far [R]."""
    def forward(cache, tokens, at, width):
        _, new, hidden = prm.backbone(tokens, cache=cache, attn_len=width, return_hidden=True, return_logits=False,
                                      write_cache=False)
        return _score_at(prm, hidden, at), new

    def forward_likelihood(cache, tokens, at, width, carried, n):
        last, least = carried
        _, new, hidden = prm.backbone(tokens, cache=cache, attn_len=width, return_hidden=True, return_logits=False,
                                      write_cache=False)
        h = hidden[-1]  # [R, C, D]
        before = jnp.concatenate([last[:, None].astype(h.dtype), h[:, :-1]], axis=1)  # each token's predecessor
        real = jnp.arange(tokens.shape[1])[None, :] < n[:, None]
        logprobs = jnp.where(real, prm.token_logprobs(before, tokens), 0.0)
        running = jnp.minimum(least[:, None], jax.lax.cummin(logprobs, axis=1))  # [R, C]
        logits = prm.head_logits(h, running)
        score = jnp.take_along_axis(logits, at[:, None], axis=1)[:, 0]
        end = jnp.take_along_axis(h, jnp.maximum(n - 1, 0)[:, None, None], axis=1)[:, 0]
        return score, new, (jnp.where((n > 0)[:, None], end.astype(last.dtype), last), running[:, -1])

    widths = attention_widths(cache.slots)
    if carry is None:
        return extend_in_chunks(forward, cache, tokens, lengths, read_at, chunk=PRM_CHUNK, widths=widths)
    return extend_in_chunks(forward_likelihood, cache, tokens, lengths, read_at, chunk=PRM_CHUNK, widths=widths,
                            carry=carry)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LikelihoodState:
    """A `LikelihoodHead` reward model's state per row inside search: its KV cache, the final hidden state at the
    row's last token read [R, D] and the lowest log-probability of a solution token so far [R] (0: none yet)."""

    cache: KVCache
    last: jax.Array
    least: jax.Array


@dataclasses.dataclass(frozen=True)
class PRMStepScorer:
    """Our reward model inside the compiled episode: its own KV cache per row (with a `LikelihoodHead`, a
    `LikelihoodState`), extended by each round's step in the policy's own tokens (it reads what the policy
    wrote)."""

    graphdef: nnx.GraphDef

    def start(self, params, prompt_tokens, prompt_lengths, *, n: int, max_len: int, floor: int = 0):
        prm = nnx.merge(self.graphdef, params)
        q, p = prompt_tokens.shape
        cache = prm.backbone.new_cache(q, p if floor else max_len)
        if not isinstance(prm.head, LikelihoodHead):
            _, cache = _extend(prm, cache, prompt_tokens, prompt_lengths, prompt_lengths - 1)
            return cache.share(n, max_len, floor) if floor else cache.fork(n)
        _, new, hidden = prm.backbone(prompt_tokens, cache=cache, return_hidden=True, return_logits=False)
        cache = dataclasses.replace(new, lengths=cache.lengths + prompt_lengths)
        last = jnp.take_along_axis(hidden[-1], jnp.maximum(prompt_lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        return LikelihoodState(cache.share(n, max_len, floor) if floor else cache.fork(n),
                               jnp.repeat(last, n, axis=0), jnp.zeros((q * n,), jnp.float32))

    def extend(self, params, state, step_tokens, step_lengths):
        prm = nnx.merge(self.graphdef, params)
        if not isinstance(prm.head, LikelihoodHead):
            logit, cache = extend_steps(prm, state, step_tokens, step_lengths, step_lengths - 1)
            return logit, cache, step_lengths
        logit, cache, (last, least) = extend_steps(prm, state.cache, step_tokens, step_lengths, step_lengths - 1,
                                                   carry=(state.last, state.least))
        return logit, LikelihoodState(cache, last, least), step_lengths

    def rewind(self, cache: KVCache, lengths) -> KVCache:
        """Keep each row's first lengths[r] tokens (the rest are overwritten by what it reads next)."""
        if isinstance(cache, LikelihoodState):
            raise ValueError("a likelihood-head reward model cannot go back to an earlier token (it keeps only the "
                             "least likely token so far); score revision chains with a value-head ORM.")
        return dataclasses.replace(cache, lengths=lengths.astype(jnp.int32))


class RewardModelVerifier(Verifier):
    """A ttcjax reward model (PRM or ORM) that reads the policy's own text in `step_format`: the policy's
    tokenizer, the prompt, then each step followed by the delimiter."""

    def __init__(self, prm: RewardModel, tokenizer, *, aggregation: str = "last",
                 step_format: StepFormat = StepFormat(), kind: str = "prm", mesh=None, rules=None):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}.")
        self.prm, self.tokenizer, self.aggregation = prm, tokenizer, aggregation
        self.step_format, self.kind, self.mesh, self.rules = step_format, kind, mesh, rules
        self.step_delimiter = step_format.delimiter
        self._scorers: dict = {}  # (mesh, rules) -> (scorer, params): sharded and split once

    @property
    def num_params(self) -> int:
        return self.prm.num_params

    @property
    def can_rewind(self) -> bool:
        """Whether its state inside search can go back to an earlier token (revision chains need it): not a
        likelihood head's, which keeps only the least likely token so far."""
        return not isinstance(self.prm.head, LikelihoodHead)

    def score(self, questions, solutions, prompts=None):
        read = questions if prompts is None else prompts
        inputs = [self.step_format.encode(self.tokenizer, q, steps) for q, steps in zip(read, solutions)]
        return score_inputs(self.prm, inputs, mesh=self.mesh, rules=self.rules)

    def step_scorer(self, tokenizer, mesh=None, rules=None):
        probe = "Q: 12+3*4=\nThe answer is 24.\n\n"
        if tokenizer is not self.tokenizer and tokenizer.encode(probe) != self.tokenizer.encode(probe):
            raise ValueError("the reward model reads another tokenizer than the policy's; inside search it reads "
                             "the policy's tokens, so use the reward model trained for this policy.")
        if self.prm.config.vocab_size < tokenizer.vocab_size:
            raise ValueError("the reward model's vocabulary is smaller than the policy tokenizer's; use the "
                             "reward model trained for this policy.")
        rules = rules or ShardingRules()
        if (mesh, rules) not in self._scorers:
            if mesh is not None:
                shard_model(self.prm, mesh, rules)
            graphdef, params = nnx.split(self.prm)
            self._scorers[(mesh, rules)] = PRMStepScorer(graphdef), params
        return self._scorers[(mesh, rules)]

    def __repr__(self) -> str:
        return f"RewardModelVerifier({self.kind}, aggregation={self.aggregation!r})"


def load_verifier(directory: str, tokenizer, *, aggregation: str | None = None, mesh=None, rules=None
                  ) -> RewardModelVerifier:
    """A reward model saved by `save_prm` as a Verifier reading the policy's text with `tokenizer`, with the
    step format it was trained with and its aggregation (unless `aggregation` is given); its parameters are loaded
    onto `mesh` (by `rules`) where one is given, as `load_prm` says."""
    prm, meta = load_prm(directory, mesh=mesh, rules=rules or ShardingRules())
    return RewardModelVerifier(prm, tokenizer, aggregation=aggregation or meta.get("aggregation", "last"),
                               step_format=StepFormat(**meta.get("format", {})), kind=meta.get("kind", "prm"),
                               mesh=mesh, rules=rules)
