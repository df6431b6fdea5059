"""`ttcjax plan`: before a run, the memory each device needs for it, and where it does not fit, the mesh or
`rows_per_batch` that would. Read from the checkpoints' configs alone (no weights are loaded).

A run goes through stages, each with its own peak; the plan counts every stage in bytes per device:

    search       one compiled episode per batch of questions (`ttcjax.search.episode`), for the worst
                 (strategy, budget) cell of the grid: weights, the policy's and the verifier's KV caches for
                 every row, the loop's state, and the largest working set of its steps
    difficulty   `ttcjax experiment` stage 1: whole solutions sampled with `Engine.generate`
    scoring      stage 1 again: the verifier reads those whole solutions in one pass (`score_inputs`)
    larger       stage 4: the larger policy answers greedily, all three models resident

Arrays are split as ttcjax splits them. Parameters follow `ShardingRules` over the mesh's model axis (heads,
kv heads, mlp and vocab where the axis divides them; an axis it does not divide stays whole). Rows follow the
data axis. The KV cache of `Engine.decode` splits kv heads over the model axis too; inside a search episode
every carried array is constrained to rows only (`episode._constrain`), so there the caches are whole on
each model-axis device.

Constants below were read off XLA's own `compiled.memory_analysis()` of the compiled programs on CPU (small
models, shapes scaled one at a time): the lookahead rollout keeps a second copy of the policy's cache, while beam and
DVTS row gathers and the verifier's reading of a step (`PRM_CHUNK` tokens at a time) add none;
`Engine.decode` holds a compute-dtype copy of every weight stored in another dtype (a cast hoisted out of its loop);
attention materialises its float32 scores (2 copies with a cache, 3 in the packed scoring pass); next-token
logits take 4 float32 copies of [rows, vocab] in the search loop and 6 in `Engine.decode` (3 more with
top_p < 1). What the planner cannot know before the run is an `Estimates` field: the longest prompt of a
batch, how many tokens a public PRM's own format spends per policy token, and the share of each device's
memory the plan may fill.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from ttcjax.checkpoints.assets import resolve
from ttcjax.checkpoints.native import HF_CONFIG_FILE, checkpoint_config
from ttcjax.decoding.engine import bucket
from ttcjax.eval.sweep import SweepConfig, is_revision, plan_cells, revision_policy_dir, revision_verifier_name
from ttcjax.models.config import ModelConfig
from ttcjax.models.llama import abstract_model, param_path
from ttcjax.models.sharding import DATA, MODEL, ShardingRules, mesh_shape, param_axes
from ttcjax.search.chains import CONTEXT_CHUNK
from ttcjax.search.sampling import sample_solutions
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Revisions, Strategy
from ttcjax.verifiers.hub import ARCHITECTURE_FAMILIES, FAMILIES
from ttcjax.verifiers.loading import is_verifier_free
from ttcjax.verifiers.reward_model import BACKBONE_DIR, HEADS, PRM_CHUNK, PRM_CONFIG_FILE, score_inputs

GiB = 1 << 30
F32 = 4  # bytes: attention scores and logits are float32 whatever the compute dtype

# Measured with XLA's memory_analysis on CPU (see the module docstring).
SEARCH_LOGIT_COPIES = 4  # float32 [rows, vocab] alive at once in a search round
DECODE_LOGIT_COPIES = 6  # ... in Engine.decode's loop
TOP_P_LOGIT_COPIES = 3  # more of them for the sort, softmax and cumsum of top-p sampling
CACHED_ATTENTION_COPIES = 2  # float32 [rows, heads, new tokens, slots] while new tokens attend to a cache
PACKED_ATTENTION_COPIES = 3  # ... in the one-pass scoring of packed rows (segment mask, scores, softmax)
MLP_COPIES = 3  # [rows, tokens, intermediate]: gate, up and their product (an estimate)

# What the run's code does, read from its signatures so that the plan follows the code it plans.
SAMPLE_ROWS = inspect.signature(sample_solutions).parameters["batch_size"].default  # rows per generate call
SCORE_ROWS = inspect.signature(score_inputs).parameters["rows_per_call"].default  # packed rows per scoring call
SCORE_ROW_TOKENS = inspect.signature(score_inputs).parameters["row_tokens"].default  # the narrowest packed row
SCORE_TOKENS = inspect.signature(score_inputs).parameters["tokens_per_call"].default  # tokens per scoring call

# The head each public PRM family scores with (`ttcjax.verifiers.hub`): its parameters besides the backbone.
FAMILY_HEADS = {"math-shepherd": "token", "rlhflow": "token", "qwen-prm": "two_class", "skywork": "value"}
TTCJAX = "ttcjax"  # the family of a reward model trained here (`ttcjax train prm|orm`)

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """'80GB' (10^9), '16GiB' (2^30), '512 MiB' -> bytes; a number needs its unit."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"device memory {text!r}: write a number and a unit, e.g. 80GB or 16GiB.")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


# ---- the hardware ------------------------------------------------------------------------------------------


def _host_available() -> int | None:
    """The host's available memory in bytes (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The devices a run gets: how many, the memory of each (bytes; None: unknown) and where that figure
    came from. `measured` is True where the accelerator reported it itself."""

    devices: int
    memory: int | None
    source: str
    measured: bool = False

    @classmethod
    def detect(cls, devices: int | None = None, memory: int | str | None = None) -> "Hardware":
        """`devices` and `memory` (bytes, or text such as '80GB') where given, else this machine's: the first
        device's `memory_stats()["bytes_limit"]` on an accelerator (what JAX lets a program allocate), or on
        CPU the host's available memory (an estimate: its CPU devices share it)."""
        count = devices if devices is not None else jax.device_count()
        if count < 1:
            raise ValueError(f"--devices {count}: plan for at least one device.")
        if memory is not None:
            return cls(count, parse_bytes(memory) if isinstance(memory, str) else int(memory), "--device-memory")
        device = jax.local_devices()[0]  # memory_stats answers for this process's devices only
        try:
            stats = device.memory_stats()
        except (RuntimeError, NotImplementedError):  # backends without the call raise instead of answering None
            stats = None
        if stats and stats.get("bytes_limit"):
            return cls(count, int(stats["bytes_limit"]), f"{device.platform} memory_stats bytes_limit", True)
        host = _host_available()
        if host is None:
            return cls(count, None, "unknown (pass --device-memory)")
        # CPU devices share the host's memory: a one-device run may use all of it, a mesh of them less each
        return cls(count, host, f"the host's available memory, shared by its {device.platform} devices")

    def describe(self) -> str:
        memory = "unknown memory" if self.memory is None else f"{gib(self.memory)} GiB"
        return f"{self.devices} device(s) x {memory} ({self.source})"


# ---- the models, from their configs --------------------------------------------------------------------------


def _directory(kind: str, name: str, what: str) -> str:
    if os.path.isdir(name) or os.path.isfile(name) and name.endswith(".gguf"):
        return name
    if os.sep in name or name.startswith("."):
        raise FileNotFoundError(f"{what} {name}: no such checkpoint directory.")
    return resolve(kind, name)  # a shipped asset name (FileNotFoundError naming the shipped ones)


def policy_config(name_or_dir: str, what: str = "policy") -> ModelConfig:
    """The config of a policy as a config names it (a shipped name or a checkpoint directory), as
    `ttcjax.eval.sweep.load_policy` loads it."""
    return checkpoint_config(_directory("policy", name_or_dir, what), what)


@dataclasses.dataclass(frozen=True)
class VerifierModel:
    """A verifier's model as the planner needs it: its backbone's config, its family (`TTCJAX` for a reward
    model trained here, which reads the policy's own tokens; else a public PRM family with its own format)
    and the parameters of its head."""

    name: str
    family: str
    config: ModelConfig
    head: str  # "value", "two_class", "token" (the backbone's lm_head rows: no parameters of its own) or "likelihood"

    @property
    def head_params(self) -> int:
        return HEADS[self.head].params(self.config.hidden_size)

    @property
    def num_params(self) -> int:
        return self.config.num_params() + self.head_params


def _ttcjax_verifier(name: str, directory: str) -> VerifierModel:
    meta_path = os.path.join(directory, PRM_CONFIG_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    head = meta.get("head", {}).get("kind")
    if head not in HEADS:
        raise ValueError(f"{meta_path}: head kind {head!r} is not one the planner knows.")
    return VerifierModel(name, TTCJAX, checkpoint_config(os.path.join(directory, BACKBONE_DIR), "verifier"), head)


def _public_verifier(name: str, directory: str, family: str) -> VerifierModel:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"verifier {name}: {directory} is no checkpoint directory.")
    head = FAMILY_HEADS[family]
    # a PRM whose head reads hidden states is loaded without its lm_head (ttcjax.verifiers.hub.load_hf_prm)
    return VerifierModel(name, family, ModelConfig.from_hf_json(directory, has_lm_head=head == "token"), head)


def verifier_model(name: str | None) -> VerifierModel | None:
    """The verifier a config names, from its configs alone; None for "none". The names are those of
    `ttcjax.verifiers.loading.verifier_by_name`: a shipped asset ("tiny", "prm:tiny", "orm:tiny"), a
    directory holding a ttcjax reward model, a Hugging Face PRM directory whose config.json architecture
    names its family, or "FAMILY:DIR" (e.g. "rlhflow:checkpoints/Llama3.1-8B-PRM-Deepseek-Data")."""
    if is_verifier_free(name):
        return None
    prefix, sep, rest = name.partition(":")
    if sep and prefix in FAMILIES:
        return _public_verifier(name, rest, prefix)
    if sep and prefix in ("prm", "orm"):
        return _ttcjax_verifier(name, _directory(prefix, rest, "verifier"))
    directory = _directory("prm", name, "verifier")
    if os.path.exists(os.path.join(directory, PRM_CONFIG_FILE)):
        return _ttcjax_verifier(name, directory)
    config_file = os.path.join(directory, HF_CONFIG_FILE)
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"verifier {name}: neither {PRM_CONFIG_FILE} (a ttcjax reward model) nor "
                                f"{HF_CONFIG_FILE} (a Hugging Face PRM) in {directory}.")
    with open(config_file) as f:
        arch = (json.load(f).get("architectures") or [None])[0]
    if arch not in ARCHITECTURE_FAMILIES:
        raise ValueError(f"verifier {name}: {config_file} names architecture {arch!r}, which says no PRM family; "
                         f"write FAMILY:DIR with FAMILY one of {sorted(FAMILIES)}.")
    return _public_verifier(name, directory, ARCHITECTURE_FAMILIES[arch])


# ---- bytes per device --------------------------------------------------------------------------------------


class _MeshSizes:
    """What `ShardingRules.spec` reads of a Mesh: the size of each axis. Plans need no devices."""

    def __init__(self, data: int, model: int):
        self.shape = {DATA: data, MODEL: model}


@functools.lru_cache(maxsize=32)
def _param_layout(config: ModelConfig) -> tuple[tuple[tuple[str | None, ...], tuple[int, ...], int], ...]:
    """(logical axes, shape, how many) of every parameter: the model's own structure, one layer of it built
    abstractly and counted num_layers times (the layers' parameters are alike)."""
    _, state = nnx.split(abstract_model(config.replace(num_layers=1, sliding_layers=None)))
    layout = []
    for tree_path, leaf in jax.tree_util.tree_leaves_with_path(state):
        path = param_path(tree_path)
        layout.append((param_axes(path), tuple(leaf.shape), config.num_layers if path[0] == "layers" else 1))
    return tuple(layout)


def param_bytes(config: ModelConfig, mesh: tuple[int, int], rules: ShardingRules = ShardingRules()) -> int:
    """Bytes of the model's parameters on one device of a (data, model) mesh, each split as `rules` split it."""
    sizes = _MeshSizes(*mesh)
    total = 0
    for axes, shape, count in _param_layout(config):
        spec = rules.spec(axes, shape, sizes)
        local = [dim // (sizes.shape[axis] if axis else 1) for dim, axis in zip(shape, spec)]
        total += count * math.prod(local)
    return total * np.dtype(config.jnp_param_dtype).itemsize


def _split(size: int, ways: int) -> int:
    """An axis of `size` on one device when split `ways` ways: ShardingRules keeps it whole unless it divides."""
    return size // ways if size % ways == 0 else size


def kv_bytes(config: ModelConfig, rows: int, slots: int, kv_ways: int = 1) -> int:
    """The KV cache of `rows` rows of `slots` slots on one device: 2 x layers x rows x kv_heads x head_dim x
    slots x the compute dtype's bytes (`KVCache.for_model`), kv heads split `kv_ways` ways where they divide."""
    return (2 * config.num_layers * rows * _split(config.num_kv_heads, kv_ways) * config.dim_per_head * slots
            * np.dtype(config.jnp_dtype).itemsize)


def _heads(config: ModelConfig, model: int) -> int:
    """Query heads of one device: split with the kv heads (attention groups them by kv head)."""
    return config.num_heads // model if config.num_kv_heads % model == 0 else config.num_heads


def _forward(config: ModelConfig, rows: int, tokens: int, slots: int, model: int, copies: int) -> int:
    """The working set of one layer running `tokens` new tokens per row against `slots` keys: float32 attention
    scores (`copies` of them) and the MLP's intermediate activations (rows already per device)."""
    attention = copies * rows * _heads(config, model) * tokens * slots * F32
    mlp = MLP_COPIES * rows * tokens * _split(config.intermediate_size, model) * F32
    return attention + mlp


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---- the run, as the planner sees it ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimates:
    """What the planner cannot know before a run, with defaults a reader can check.

    prompt_tokens       the longest prompt of a batch in the policy's tokens (chat template, system prompt and
                        question); prompts are padded to its power-of-two bucket
    verifier_len_ratio  the verifier's tokens per policy token: None means 1 for a ttcjax reward model (it reads
                        the policy's own tokens) and 1.5 for a public PRM (its own tokenizer, chat template and
                        step tags); it scales what the verifier reads of a prompt and of a whole solution (inside
                        search a public PRM's cache and step width are set by its scorer, not by this)
    usable_fraction     the share of each device's memory the plan may fill; the rest is left to XLA's own
                        buffers, fragmentation and what the plan does not count"""

    prompt_tokens: int = 512
    verifier_len_ratio: float | None = None
    usable_fraction: float = 0.9

    def __post_init__(self):
        if not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 1:
            raise ValueError(f"prompt_tokens={self.prompt_tokens!r} must be an integer >= 1.")
        if self.verifier_len_ratio is not None and not self.verifier_len_ratio > 0:
            raise ValueError(f"verifier_len_ratio={self.verifier_len_ratio!r} must be > 0.")
        if not 0 < self.usable_fraction <= 1:
            raise ValueError(f"usable_fraction={self.usable_fraction!r} must be in (0, 1].")

    def ratio(self, verifier: VerifierModel) -> float:
        if self.verifier_len_ratio is not None:
            return self.verifier_len_ratio
        return 1.0 if verifier.family == TTCJAX else 1.5


@dataclasses.dataclass(frozen=True)
class SampleStage:
    """A stage that samples whole solutions with `Engine.generate` (`ttcjax.search.sampling.sample_solutions`):
    `n` per question, up to `max_new_tokens` each, by the policy or the larger policy."""

    name: str
    n: int
    max_new_tokens: int
    larger: bool = False


@dataclasses.dataclass(frozen=True)
class Workload:
    """Everything about a run that decides its memory: the models, the strategies at their budgets (one
    compiled episode each), the search settings, rows per episode, and the stages besides search."""

    policy: ModelConfig
    verifier: VerifierModel | None
    strategies: tuple[Strategy, ...]
    search: SearchSettings
    rows_per_batch: int
    questions: int | None = None  # None: as many as the split holds
    samples: tuple[SampleStage, ...] = ()
    score_max_new_tokens: int | None = None  # the verifier scores whole samples of up to this many tokens
    larger_policy: ModelConfig | None = None
    estimates: Estimates = Estimates()
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # role -> the config's name for it
    # revision strategies run the revision model and its verifier, resident beside the policy and its verifier
    revision_policy: ModelConfig | None = None
    revision_verifier: VerifierModel | None = None

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(sorted({s.budget for s in self.strategies}))

    def up_to(self, budget: int) -> "Workload":
        """The workload without the strategies of budgets above `budget`."""
        return dataclasses.replace(self, strategies=tuple(s for s in self.strategies if s.budget <= budget))


def sweep_workload(config: SweepConfig, estimates: Estimates = Estimates()) -> Workload:
    """What `ttcjax sweep` runs: every (strategy, budget) cell, one episode per batch of questions."""
    strategies = {cell.strategy for cell in plan_cells(config.strategies, config.budgets)}
    revises = any(map(is_revision, config.strategies))
    names = {"policy": config.policy, "verifier": config.verifier}
    if revises:
        names.update(revision_policy=config.revision_policy, revision_verifier=config.revision_verifier)
    return Workload(policy=policy_config(config.policy), verifier=verifier_model(config.verifier),
                    strategies=tuple(sorted(strategies, key=lambda s: (s.n, s.kind, repr(s)))),
                    search=config.search, rows_per_batch=config.rows_per_batch, questions=config.questions,
                    estimates=estimates, names=names,
                    revision_policy=checkpoint_config(revision_policy_dir(config.revision_policy, "revision_policy"),
                                                  "revision_policy") if revises else None,
                    revision_verifier=verifier_model(revision_verifier_name(config.revision_verifier))
                    if revises else None)


@dataclasses.dataclass(frozen=True)
class StageMemory:
    """One stage's peak on one device: (what, bytes) terms, what the stage runs, and what its working set is."""

    name: str
    detail: str
    terms: tuple[tuple[str, int], ...]
    working_set: str

    @property
    def total(self) -> int:
        return sum(b for _, b in self.terms)

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.terms, key=lambda t: t[1])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "detail": self.detail, "working_set": self.working_set,
                "terms": dict(self.terms), "total_bytes": self.total}


WEIGHTS = ("policy weights", "verifier weights", "larger policy weights", "revision model weights",
           "revision verifier weights")


def _verifier_bytes(v: VerifierModel, mesh: tuple[int, int]) -> int:
    return param_bytes(v.config, mesh) + v.head_params * np.dtype(v.config.jnp_param_dtype).itemsize


def _weights(w: Workload, mesh: tuple[int, int], larger: bool = False) -> list[tuple[str, int]]:
    terms = [(WEIGHTS[0], param_bytes(w.policy, mesh))]
    if w.verifier is not None:
        terms.append((WEIGHTS[1], _verifier_bytes(w.verifier, mesh)))
    if larger and w.larger_policy is not None:
        terms.append((WEIGHTS[2], param_bytes(w.larger_policy, mesh)))
    if w.revision_policy is not None:
        terms.append((WEIGHTS[3], param_bytes(w.revision_policy, mesh)))
    if w.revision_verifier is not None:
        terms.append((WEIGHTS[4], _verifier_bytes(w.revision_verifier, mesh)))
    return terms


def _verifier_lengths(w: Workload, policy_tokens: int) -> int:
    return math.ceil(w.estimates.ratio(w.verifier) * policy_tokens)


def public_scorer_shape(max_len: int, max_step_tokens: int) -> tuple[int, int]:
    """(cache slots per row, ids fed per row and round) of a public PRM inside search: the defaults of
    `ttcjax.verifiers.public.RenderingStepScorer`, twice the policy's max_len plus 256 (room for a chat format's
    turns) and twice the step cap plus 64 (a step rendered in the verifier's tokens, and the format's closing)."""
    return 2 * max_len + 256, 2 * max_step_tokens + 64


def _prompt_bucket(w: Workload) -> int:
    """The padded width of a batch's prompts: the estimate's bucket, and no wider than search.max_len (search
    refuses longer prompts, so no run of this config reads one)."""
    return min(bucket(w.estimates.prompt_tokens), w.search.max_len)


def search_stage(w: Workload, strategy: Strategy, mesh: tuple[int, int], rows_per_batch: int) -> StageMemory:
    """The search episode of one strategy: a sweep batches max(1, rows_per_batch // `strategy.batch_rows`)
    questions (`ttcjax.eval.sweep.cell_batch`), padded to a multiple of the data axis, `strategy.rows` rows each
    (N; a revision strategy's chains, run by the revision model and its verifier with a cache of
    `search.chain_max_len` per chain)."""
    data, model = mesh
    revision = isinstance(strategy, Revisions)
    p, v, s = (w.revision_policy, w.revision_verifier, w.search) if revision else (w.policy, w.verifier, w.search)
    n = strategy.rows
    questions = max(1, rows_per_batch // strategy.batch_rows)
    if w.questions is not None:
        questions = min(questions, w.questions)
    q = _ceil_div(questions, data)  # questions per device
    rows = q * n
    slots = s.chain_max_len(p) if revision else s.max_len
    prompt = min(_prompt_bucket(w), slots)
    rounds = strategy.max_rounds(s.max_rounds, slots)
    terms = _weights(w, mesh)
    # every row's own slots counted whole (an upper bound: after a shared prompt a row has max_len less the batch's
    # prompt floor), and the prompts once per question (`KVCache.share`)
    terms.append(("policy KV cache", kv_bytes(p, rows, slots)))
    terms.append(("policy prompt KV cache, once per question", kv_bytes(p, q, prompt)))
    transient = [("the policy's decode step", SEARCH_LOGIT_COPIES * rows * p.vocab_size * F32
                  + kv_bytes(p, rows, slots) // (2 * p.num_layers)  # a layer's keys, written out of place
                  + rows * _heads(p, model) * slots * F32
                  + (TOP_P_LOGIT_COPIES * rows * p.vocab_size * F32 if s.top_p < 1 else 0))]
    start = [("the policy's prefill", _forward(p, q, prompt, prompt, model, CACHED_ATTENTION_COPIES))]
    if v is not None:
        if v.family == TTCJAX:  # it reads the policy's own tokens into a cache as long as the policy's
            v_slots, v_step = slots, s.max_step_tokens
            # a likelihood head also carries each row's last hidden state and least log-probability (`LikelihoodState`)
            carried = rows * (v.config.hidden_size + 1) * F32 if v.head == "likelihood" else 0
        else:  # RenderingStepScorer also carries its ids [R, slots] and the steps' policy ids and ends [R, max_len]
            v_slots, v_step = public_scorer_shape(slots, s.max_step_tokens)
            carried = rows * (v_slots + 2 * slots) * 4
        v_prompt = bucket(_verifier_lengths(w, prompt))  # search pads the verifier's prompts to their bucket
        cache = kv_bytes(v.config, rows, v_slots)
        terms.append(("verifier KV cache", cache + carried))
        if v.family == TTCJAX:  # its prompts once per question too (a public PRM's scorer copies them)
            terms.append(("verifier prompt KV cache, once per question", kv_bytes(v.config, q, v_prompt)))
        chunk = min(v_step, PRM_CHUNK)  # it reads a step PRM_CHUNK tokens at a time (`extend_steps`)
        transient.append((f"the verifier reading {chunk} tokens of a step against {v_slots} slots",
                          _forward(v.config, rows, chunk, v_slots, model, CACHED_ATTENTION_COPIES)))
        if v.head == "likelihood":  # and the next-token logits of the chunk's tokens, with their log-softmax
            transient.append(("the likelihood head's logits of a chunk", 2 * rows * chunk * v.config.vocab_size * F32))
        start.append((f"the verifier reading {v_prompt}-token prompts into {v_slots} slots",
                      _forward(v.config, q, v_prompt, v_slots, model, CACHED_ATTENTION_COPIES)))
    if strategy.lookahead:  # the rollout runs on a copy of the policy's cache
        terms.append(("lookahead rollout copy", kv_bytes(p, rows, slots)))
    if revision:  # every attempt's tokens, step scores and ends, and the window's context read between attempts
        terms.append(("the chains' attempts", rows * (strategy.sequential * (slots + 2 * rounds) + slots) * F32))
        chunk = min(CONTEXT_CHUNK, slots)  # between attempts, not beside a step: one more candidate for the peak
        start.append((f"the revision model reading {chunk} tokens of its context against {slots} slots",
                      _forward(p, rows, chunk, slots, model, CACHED_ATTENTION_COPIES)))
    terms.append(("loop state", rows * (slots + rounds + p.vocab_size) * F32))  # tokens, step scores, logits
    rounds_set = sum(b for _, b in transient)  # measured: the step's pieces add up in the loop's program
    start_set = max(b for _, b in start)
    if rounds_set >= start_set:
        working = " + ".join(what for what, _ in transient)
    else:
        working = max(start, key=lambda t: t[1])[0]
    terms.append(("working set", max(rounds_set, start_set)))
    # particle filtering resamples where beam search selects: the same gathers, so the same terms
    beams = strategy.groups != (0, 0) and not strategy.resamples
    label = f"{strategy.kind} n={strategy.n}" + (f" width {strategy.width}" if beams else "")
    if strategy.lookahead:
        label += f" k={strategy.lookahead}"
    if revision:
        label += f" sequential {strategy.sequential} (the revision model)"
    return StageMemory("search", f"{label}: {q} question(s) x {n} rows per device, {slots} slots per row",
                       tuple(terms), working)


def sample_stage(w: Workload, stage: SampleStage, mesh: tuple[int, int]) -> StageMemory:
    """`Engine.generate` over SAMPLE_ROWS // n prompts at a time, forked n ways, rows padded to the data axis;
    its cache holds the bucketed prompt plus max_new_tokens, rounded up to 64 slots."""
    data, model = mesh
    model_config = w.larger_policy if stage.larger else w.policy
    prompts = max(1, SAMPLE_ROWS // stage.n)
    if w.questions is not None:
        prompts = min(prompts, w.questions)
    rows = _ceil_div(prompts * stage.n, data)
    q = prompts // data if prompts % data == 0 else prompts  # prompts not split evenly stay whole
    prompt = _prompt_bucket(w)
    slots = _ceil_div(prompt + stage.max_new_tokens, 64) * 64
    c = model_config
    cache = kv_bytes(c, rows, slots, kv_ways=model)  # Engine.decode splits kv heads over the model axis
    decode = (DECODE_LOGIT_COPIES * rows * c.vocab_size * F32 + cache // (2 * c.num_layers)
              + rows * _heads(c, model) * slots * F32
              + (TOP_P_LOGIT_COPIES * rows * c.vocab_size * F32 if w.search.top_p < 1 and not stage.larger else 0))
    prefill = _forward(c, q, prompt, prompt, model, CACHED_ATTENTION_COPIES)
    which = "larger policy" if stage.larger else "policy"
    terms = _weights(w, mesh, larger=stage.larger)
    if c.dtype != c.param_dtype:  # the decode loop casts every weight to the compute dtype once, outside the loop
        terms.append((f"{which} weights, {c.dtype} copy", param_bytes(c, mesh) * np.dtype(c.jnp_dtype).itemsize
                      // np.dtype(c.jnp_param_dtype).itemsize))
    terms += [
        (f"{which} KV cache", cache),
        *([(f"{which} prompt KV cache, once per prompt", kv_bytes(c, q, prompt, kv_ways=model))]
          if stage.n > 1 else []),
        ("loop state", rows * (c.vocab_size * F32 + stage.max_new_tokens * 8)),  # logits, tokens, logprobs
        ("working set", max(decode, prefill))]
    return StageMemory(stage.name, f"{stage.n} sample(s) per question of up to {stage.max_new_tokens} tokens: "
                       f"{rows} rows per device, {slots} slots per row", tuple(terms),
                       f"the {which}'s decode step" if decode >= prefill else f"the {which}'s prefill")


def scoring_stage(w: Workload, mesh: tuple[int, int]) -> StageMemory:
    """The verifier's one pass over whole solutions (`score_inputs`): SCORE_ROWS packed rows per call (fewer
    for long solutions: at most SCORE_TOKENS tokens) split over
    the data axis, each as wide as the power-of-two bucket of the longest solution in the verifier's tokens."""
    data, model = mesh
    v = w.verifier
    longest = _verifier_lengths(w, _prompt_bucket(w) + w.score_max_new_tokens)
    width = bucket(max(SCORE_ROW_TOKENS, longest))
    rows = _ceil_div(max(1, min(SCORE_ROWS, SCORE_TOKENS // width)), data)
    working = _forward(v.config, rows, width, width, model, PACKED_ATTENTION_COPIES)
    if v.head == "likelihood":  # every position's next-token logits and their log-softmax
        working += 2 * rows * width * v.config.vocab_size * F32
    terms = _weights(w, mesh) + [("working set", working)]
    return StageMemory("scoring", f"{rows} packed rows of {width} tokens per device", tuple(terms),
                       f"the verifier's attention over {width}-token rows")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Every stage's peak on one device of a (data, model) mesh at a rows_per_batch, against the usable memory
    (None: unknown)."""

    mesh: tuple[int, int]
    rows_per_batch: int
    budgets: tuple[int, ...]
    stages: tuple[StageMemory, ...]
    usable: int | None

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def fits(self) -> bool | None:
        return None if self.usable is None else self.peak.total <= self.usable

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": list(self.mesh), "rows_per_batch": self.rows_per_batch, "budgets": list(self.budgets),
                "usable_bytes": self.usable, "fits": self.fits, "peak_stage": self.peak.name,
                "peak_bytes": self.peak.total, "stages": [s.to_dict() for s in self.stages]}


def memory_plan(w: Workload, mesh: tuple[int, int], rows_per_batch: int, usable: int | None) -> MemoryPlan:
    """Every stage of the workload on one device of `mesh`; search as its worst cell."""
    stages = [max((search_stage(w, s, mesh, rows_per_batch) for s in w.strategies), key=lambda st: st.total)]
    stages += [sample_stage(w, stage, mesh) for stage in w.samples if w.larger_policy is not None or not stage.larger]
    if w.verifier is not None and w.score_max_new_tokens is not None:
        stages.append(scoring_stage(w, mesh))
    return MemoryPlan(mesh, rows_per_batch, w.budgets, tuple(stages), usable)


def meshes(devices: int) -> list[tuple[int, int]]:
    """Every (data, model) mesh over all `devices`, the widest data axis first."""
    return [(devices // m, m) for m in range(1, devices + 1) if devices % m == 0]


def _best_rows(w: Workload, mesh: tuple[int, int], usable: int, below: int) -> MemoryPlan | None:
    """The plan at the largest power-of-two rows_per_batch under `below` that fits, or None."""
    rows = 1 << max(0, (below - 1).bit_length() - 1)
    while rows >= 1:
        candidate = memory_plan(w, mesh, rows, usable)
        if candidate.fits:
            return candidate
        rows //= 2
    return None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's memory plan as configured, and where that does not fit, the suggestion: a mesh of the devices
    at the configured rows_per_batch (the widest data axis that fits), else the largest rows_per_batch that
    fits on any mesh; failing both, the same with the largest budgets left out, as few as need be. None where
    nothing fits."""

    workload: Workload
    hardware: Hardware
    configured: MemoryPlan
    suggestion: MemoryPlan | None
    notes: tuple[str, ...] = ()
    smallest: MemoryPlan | None = None  # where nothing fits: the smallest budget at rows_per_batch 1, best mesh

    @property
    def fits(self) -> bool | None:
        return self.configured.fits

    def fix(self) -> str:
        """The config overrides that make the run fit, as key=value text; '' where it fits or nothing does."""
        s = self.suggestion
        if self.fits is not False or s is None:
            return ""
        changes = []
        if s.mesh != self.configured.mesh:
            changes.append(f"mesh={s.mesh[0]},{s.mesh[1]}")
        if s.rows_per_batch != self.configured.rows_per_batch:
            changes.append(f"rows_per_batch={s.rows_per_batch}")
        if s.budgets != self.configured.budgets:
            changes.append(f"budgets=[{','.join(map(str, s.budgets))}]")
        return " ".join(changes)

    def verdict(self) -> str:
        """One line: fits, does not fit (with the fix), or unknown."""
        c = self.configured
        peak = c.peak
        if c.fits is None:
            return f"unknown: the device memory is unknown; the peak is {gib(peak.total)} GiB per device ({peak.name})."
        if c.fits:
            return (f"fits: the peak is {gib(peak.total)} of {gib(c.usable)} GiB usable per device ({peak.name}: "
                    f"{peak.detail}).")
        what, size = peak.largest
        line = (f"does not fit: {peak.name} needs {gib(peak.total)} GiB per device, {gib(c.usable)} usable "
                f"(the largest part: {what}, {gib(size)} GiB)")
        if self.suggestion is not None:
            s = self.suggestion
            return line + f"; {self.fix()} fits (peak {gib(s.peak.total)} GiB, {s.peak.name})."
        line += f"; no mesh of {self.hardware.devices} device(s), rows_per_batch or budgets fit"
        if self.smallest is not None:
            m = self.smallest
            over = [st for st in m.stages if st.total > c.usable]
            line += (f": even at budgets=[{m.budgets[0]}] rows_per_batch=1 mesh={m.mesh[0]},{m.mesh[1]}, "
                     + ", ".join(f"{st.name} needs {gib(st.total)} GiB (working set: {st.working_set})"
                                 for st in over))
        return line + "; lower search.max_len, search.max_step_tokens or max_new_tokens, or use more devices."

    def describe(self, source: str = "") -> str:
        """The plan as a table a person reads: GiB per device, one column per stage, then the verdict."""
        w, c = self.workload, self.configured
        lines = [f"ttcjax plan{': ' + source if source else ''}"]
        lines.append(f"  policy    {w.names.get('policy', '')}: {_model_line(w.policy)}")
        if w.verifier is not None:
            v = w.verifier
            lines.append(f"  verifier  {v.name}: {v.family}, {_model_line(v.config, v.head_params)}"
                         f"; {w.estimates.ratio(v):g} verifier token(s) per policy token"
                         + (" (estimate)" if v.family != TTCJAX else ""))
        if w.larger_policy is not None:
            lines.append(f"  larger    {w.names.get('larger_policy', '')}: {_model_line(w.larger_policy)}")
        if w.revision_policy is not None:
            lines.append(f"  reviser   {w.names.get('revision_policy', '')}: {_model_line(w.revision_policy)}")
        if w.revision_verifier is not None:
            v = w.revision_verifier
            lines.append(f"  revision verifier {v.name}: {_model_line(v.config, v.head_params)}")
        usable = "" if c.usable is None else (f"; usable {w.estimates.usable_fraction:.0%}: {gib(c.usable)} GiB")
        lines.append(f"  hardware  {self.hardware.describe()}{usable}")
        lines.append(f"  run       mesh {c.mesh[0]} x {c.mesh[1]} (data x model), rows_per_batch "
                     f"{c.rows_per_batch}, prompts up to {w.estimates.prompt_tokens} tokens (estimate)")
        lines += ["", *_table(c), "", f"verdict: {self.verdict()}"]
        if self.suggestion is not None and self.fits is False:
            lines += ["", f"with {self.fix()}:", *_table(self.suggestion)]
        if self.notes:
            lines += ["", "notes:", *(f"  - {n}" for n in self.notes)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {"fits": self.fits, "fix": self.fix(), "verdict": self.verdict(),
                "hardware": dataclasses.asdict(self.hardware), "estimates": dataclasses.asdict(w.estimates),
                "policy": {"name": w.names.get("policy"), "params": w.policy.num_params()},
                "verifier": None if w.verifier is None else {"name": w.verifier.name, "family": w.verifier.family,
                                                             "params": w.verifier.num_params},
                "revision_policy": None if w.revision_policy is None else {
                    "name": w.names.get("revision_policy"), "params": w.revision_policy.num_params()},
                "revision_verifier": None if w.revision_verifier is None else {
                    "name": w.revision_verifier.name, "params": w.revision_verifier.num_params},
                "configured": self.configured.to_dict(),
                "suggestion": None if self.suggestion is None else self.suggestion.to_dict(),
                "notes": list(self.notes)}


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _model_line(config: ModelConfig, extra_params: int = 0) -> str:
    return (f"{config.architecture}, {_count(config.num_params() + extra_params)} parameters, "
            f"{config.num_layers} layers x {config.num_kv_heads} kv heads x {config.dim_per_head}, "
            f"weights {config.param_dtype}, KV cache {config.dtype}")


def _table(plan: MemoryPlan) -> list[str]:
    labels = list(dict.fromkeys(label for stage in plan.stages for label, _ in stage.terms))
    labels.sort(key=lambda label: 0 if label in WEIGHTS else 2 if label == "working set" else 1)  # stable
    head = f"{'GiB per device':<32}" + "".join(f"{s.name:>12}" for s in plan.stages)
    rows = [head]
    for label in labels:
        cells = []
        for stage in plan.stages:
            value = dict(stage.terms).get(label)
            cells.append(f"{'-' if value is None else gib(value):>12}")
        rows.append(f"{label:<32}" + "".join(cells))
    rows.append(f"{'total':<32}" + "".join(f"{gib(s.total):>12}" for s in plan.stages))
    if plan.usable is not None:
        rows.append(f"{'':<32}" + "".join(f"{'fits' if s.total <= plan.usable else 'too big':>12}"
                                          for s in plan.stages))
    rows += [f"  {s.name}: {s.detail}; working set: {s.working_set}" for s in plan.stages]
    return rows


def _notes(w: Workload) -> tuple[str, ...]:
    notes = []
    models = [w.policy] + ([w.verifier.config] if w.verifier is not None else [])
    if any(m.dtype == "float32" and m.param_dtype != "float32" for m in models):
        notes.append("the KV caches are float32, the models' compute dtype (checkpoints load with dtype float32 "
                     "whatever their weights' dtype); bfloat16 compute would halve them.")
    if w.verifier is not None and w.verifier.family != TTCJAX and w.estimates.verifier_len_ratio is None:
        notes.append("the public PRM's reading of a prompt and of a whole solution is counted at 1.5 of its tokens "
                     "per policy token (its own tokenizer, chat template and step tags): an estimate; set "
                     "--verifier-len-ratio. Its cache and step width inside search are its scorer's own.")
    return tuple(notes)


def plan(w: Workload, hardware: Hardware, mesh: tuple[int, int]) -> RunPlan:
    """The run's plan on `hardware` at `mesh` and the workload's rows_per_batch, with a suggestion where it
    does not fit. A mesh needing more devices than the hardware has does not fit."""
    usable = None if hardware.memory is None else int(hardware.memory * w.estimates.usable_fraction)
    configured = memory_plan(w, mesh, w.rows_per_batch, usable)
    notes = list(_notes(w))
    if mesh[0] * mesh[1] > hardware.devices:
        notes.insert(0, f"mesh {mesh[0]},{mesh[1]} needs {mesh[0] * mesh[1]} devices; the hardware has "
                        f"{hardware.devices}.")
        configured = dataclasses.replace(configured, usable=0 if usable is not None else None)
    suggestion = smallest = None
    if configured.fits is False:
        for budget in reversed(w.budgets):  # the configured budgets first, then fewer of them
            suggestion = _fitting(w.up_to(budget), hardware.devices, usable)
            if suggestion is not None:
                break
        else:
            smallest = min((memory_plan(w.up_to(w.budgets[0]), m, 1, usable) for m in meshes(hardware.devices)),
                           key=lambda p: p.peak.total)
    return RunPlan(w, hardware, configured, suggestion, tuple(notes), smallest)


def _fitting(w: Workload, devices: int, usable: int) -> MemoryPlan | None:
    """A mesh of the devices that fits at the workload's rows_per_batch, the widest data axis first (data
    parallelism costs no communication inside a step); else the largest rows_per_batch that fits on any mesh."""
    options = [memory_plan(w, m, w.rows_per_batch, usable) for m in meshes(devices)]
    fitting = next((o for o in options if o.fits), None)
    if fitting is not None:
        return fitting
    smaller = [p for m in meshes(devices) if (p := _best_rows(w, m, usable, w.rows_per_batch))]
    return max(smaller, key=lambda p: p.rows_per_batch, default=None)


def sweep_plan(config: SweepConfig, hardware: Hardware, estimates: Estimates = Estimates()) -> RunPlan:
    """The plan of `ttcjax sweep` with this config."""
    return plan(sweep_workload(config, estimates), hardware, mesh_shape(config.mesh, hardware.devices))

