"""Jitted, batched decoding with a KV cache that search can fork and gather.

`Engine.prefill` runs each prompt once; `Engine.decode` runs one compiled `lax.while_loop` that samples
until every row has stopped (EOS, a stop sequence, `max_new_tokens`, or a full cache). The returned
`DecodeState` is consistent: its cache holds every token generated so far and its logits predict the
next one, so a later `decode` continues where this one stopped (search generates one reasoning step,
scores, gathers the kept rows, and continues).

Attention only reads the filled part of the cache: the loop runs in segments, each with a static
attention width (a multiple of `attn_chunk`), and a segment ends when a row's next slot passes its width.
The segments are not a CPU tuning and run on every backend: a decode step is memory-bound on TPUs and GPUs
too, so reading the filled slots only cuts its traffic there as well, for at most 8 copies of the loop body
(`segment_widths`; on CPUs only the narrow ones, as a narrower read copies its slice of the cache first). What
is chosen by backend is the attention inside a step (`Transformer.platform`: the key layout and its kernels;
`Engine(platform=...)`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ttcjax.distributed import to_host
from ttcjax.models.cache import KVCache, transposes_keys
from ttcjax.models.llama import Transformer, set_platform
from ttcjax.models.program import Program
from ttcjax.models.sharding import ShardingRules, batch_sharding, cache_shardings, place, shard_model

# Why a row stopped.
RUNNING, FINISHED_EOS, FINISHED_STOP, FINISHED_LENGTH, FINISHED_CACHE_FULL, FINISHED_NONFINITE = 0, 1, 2, 3, 4, 5
FINISH_REASONS = {0: "running", 1: "eos", 2: "stop_sequence", 3: "length", 4: "cache_full",
                  5: "nonfinite_logits"}  # a NaN or inf among the next-token logits: nothing can be sampled


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy; top_k 0 and top_p 1 switch those off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not all(math.isfinite(x) for x in (self.temperature, self.top_p)):
            raise ValueError(f"temperature={self.temperature} and top_p={self.top_p} must be finite numbers.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy).")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 switches it off).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 switches it off).")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class StopText:
    """Stop strings matched on the generated text, whatever its tokenization: "\n\n" stops a row whether it
    came as one token, as two, merged with what precedes it (".\n\n", " \n\n") or split across tokens.

    One Knuth-Morris-Pratt automaton per string over characters, precomputed per token: from state j (the
    longest prefix of the string that the text so far ends with), token t moves to next_state[s, t, j] and
    completes a match inside its text where hit[s, t, j]. Built by `stop_text` once per tokenizer and strings.

    A static argument of the compiled loop, so it is hashed and compared by content (the strings and a digest of
    the tables): a tokenizer loaded again, or another model's tokenizer with the same vocabulary, reuses the
    programs compiled for the first (a notebook or `ttcjax run` after `ttcjax experiment` in one process)."""

    strings: tuple[str, ...]
    next_state: np.ndarray  # [S, V, M] int32, M = the longest string's length
    hit: np.ndarray  # [S, V, M] bool
    text_length: np.ndarray  # [V] int32: characters of each token's text
    blank: np.ndarray  # [V] bool: the token's text is whitespace (or nothing)
    digest: bytes = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        tables = hashlib.sha256()
        for table in (self.next_state, self.hit, self.text_length, self.blank):
            tables.update(repr((table.dtype.str, table.shape)).encode())
            tables.update(np.ascontiguousarray(table).tobytes())
        object.__setattr__(self, "digest", tables.digest())

    def __eq__(self, other) -> bool:
        return isinstance(other, StopText) and (self.strings, self.digest) == (other.strings, other.digest)

    def __hash__(self) -> int:
        return hash((self.strings, self.digest))


def token_texts(tokenizer) -> list[str]:
    """Each token's text as it reads inside generated text (after another token: a SentencePiece "▁x" is
    " x" there, though alone it decodes to "x"); special tokens read as nothing."""
    cached = getattr(tokenizer, "_token_texts", None)
    if cached is not None:
        return cached
    vocab = tokenizer.vocab_size
    anchor = next((i for i in range(vocab) if tokenizer.decode([i]).strip().isalnum()), None)
    if anchor is None:
        texts = [tokenizer.decode([t]) for t in range(vocab)]
    else:
        head = len(tokenizer.decode([anchor]))
        texts = [text[head:] for text in tokenizer.decode_batch([[anchor, t] for t in range(vocab)])]
    tokenizer._token_texts = texts
    return texts


def _kmp(pattern: str) -> list[int]:
    fail = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k]
        k += pattern[i] == pattern[k]
        fail[i + 1] = k
    return fail


def stop_text(tokenizer, strings: Sequence[str]) -> StopText:
    """The automata of `strings` over `tokenizer`'s tokens (cached on the tokenizer)."""
    strings = tuple(strings)
    if not strings or any(not isinstance(x, str) or not x for x in strings):
        raise ValueError(f"stop strings {list(strings)!r} must be non-empty texts.")
    cache = tokenizer.__dict__.setdefault("_stop_texts", {})
    if strings in cache:
        return cache[strings]
    texts = token_texts(tokenizer)
    vocab, longest = len(texts), max(map(len, strings))
    next_state = np.zeros((len(strings), vocab, longest), np.int32)
    hit = np.zeros((len(strings), vocab, longest), bool)
    for s, pattern in enumerate(strings):
        fail, m, chars = _kmp(pattern), len(pattern), set(pattern)
        for t, text in enumerate(texts):
            if not chars.intersection(text):
                continue  # any other character breaks every partial match: state 0, no hit
            for j in range(m):
                k, matched = j, False
                for c in text:
                    while k and c != pattern[k]:
                        k = fail[k]
                    k += c == pattern[k]
                    if k == m:
                        matched, k = True, fail[m]
                next_state[s, t, j], hit[s, t, j] = k, matched
    lengths = np.array([len(text) for text in texts], np.int32)
    blank = np.array([not text.strip() for text in texts])
    cache[strings] = StopText(strings, next_state, hit, lengths, blank)
    return cache[strings]


def contains_text(text: StopText, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Whether each row's first lengths[r] tokens (tokens [R, T]) hold one of `text`'s strings -> [R] bool."""
    strings = jnp.arange(len(text.strings))[None, :]
    next_state, hit = jnp.asarray(text.next_state), jnp.asarray(text.hit)

    def read(carry, column):
        state, found = carry
        token, real = column
        found |= real & jnp.any(hit[strings, token[:, None], state], axis=1)
        return (jnp.where(real[:, None], next_state[strings, token[:, None], state], state), found), None

    rows, width = tokens.shape
    start = (jnp.zeros((rows, len(text.strings)), jnp.int32), jnp.zeros(rows, bool))
    real = jnp.arange(width)[None, :] < lengths[:, None]
    (_, found), _ = jax.lax.scan(read, start, (tokens.T, real.T))
    return found


@dataclasses.dataclass(frozen=True)
class StopConditions:
    """Per-row stopping: any of `eos_ids`, the last generated tokens equal to a stop sequence (ids), or the
    generated text containing one of `text`'s stop strings (`stop_text`: whatever the tokenization)."""

    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    text: StopText | None = None

    def __post_init__(self):
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("stop_sequences contains an empty sequence; every stop sequence needs >= 1 token.")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """Everything a decode loop carries. Rows are sequences."""

    cache: KVCache
    logits: jax.Array  # [B, V] float32: next-token logits of each row
    done: jax.Array  # [B] bool

    @property
    def batch(self) -> int:
        return self.logits.shape[0]

    def fork(self, n: int) -> "DecodeState":
        """Each row becomes n consecutive rows (one prompt, n samples), its cache copied. [B] -> [B*n]."""
        return DecodeState(cache=self.cache.fork(n), logits=jnp.repeat(self.logits, n, axis=0),
                           done=jnp.repeat(self.done, n))

    def share(self, n: int, max_len: int, floor: int) -> "DecodeState":
        """Each row (a prefilled prompt) becomes n consecutive rows that read the prompt's cache in place
        (`KVCache.share`: rows of at most `max_len` tokens; `floor` at most every prompt's length). [B] -> [B*n]."""
        return DecodeState(cache=self.cache.share(n, max_len, floor), logits=jnp.repeat(self.logits, n, axis=0),
                           done=jnp.repeat(self.done, n))

    def gather(self, rows: jax.Array, questions: jax.Array | None = None) -> "DecodeState":
        """Keep rows `rows` [R] (beam selection; `questions` as `KVCache.gather`). [B] -> [R]."""
        rows = jnp.asarray(rows, jnp.int32)
        return DecodeState(cache=self.cache.gather(rows, questions), logits=jnp.take(self.logits, rows, axis=0),
                           done=jnp.take(self.done, rows, axis=0))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
    """What one `decode` call produced. Row b generated `lengths[b]` tokens: tokens[b, :lengths[b]]."""

    tokens: jax.Array  # [B, max_new_tokens] int32, pad_id after the end
    logprobs: jax.Array  # [B, max_new_tokens] float32: log p(token) under the model (temperature 1)
    lengths: jax.Array  # [B] int32
    finish_reason: jax.Array  # [B] int32, see FINISH_REASONS

    @property
    def num_generated(self) -> jax.Array:
        """Total tokens generated in this call (what a token budget counts)."""
        return jnp.sum(self.lengths)


# ---- sampling --------------------------------------------------------------------------------------


def sample_tokens(logits: jax.Array, key: jax.Array, sampling: Sampling, row_ids: jax.Array | None = None
                  ) -> jax.Array:
    """Sample one token per row from logits [B, V] -> [B] int32.

    With `row_ids` [B], row b draws from `fold_in(key, row_ids[b])`: its token then depends on its id, not on
    its position in the batch or on the batch's other rows (search compacts and reorders rows)."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1:
        # keep the smallest set of most likely tokens whose probability reaches top_p
        sorted_logits = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = jnp.sum(before < sampling.top_p, axis=-1, keepdims=True)  # >= 1
        threshold = jnp.take_along_axis(sorted_logits, keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    if row_ids is None:
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(row_ids)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


# ---- the compiled programs ---------------------------------------------------------------------------


def _prefill(graphdef, params, tokens, lengths, *, max_len: int) -> DecodeState:
    """tokens [B, P] right-padded, lengths [B] >= 1 -> a state whose cache holds each prompt."""
    model = nnx.merge(graphdef, params)
    cache = model.new_cache(tokens.shape[0], max_len)
    logits, cache, _ = model(tokens, cache=cache, attn_len=tokens.shape[1],
                             logits_at=jnp.maximum(lengths - 1, 0))
    cache = dataclasses.replace(cache, lengths=lengths.astype(jnp.int32))
    return DecodeState(cache=cache, logits=logits, done=jnp.zeros(tokens.shape[0], bool))


def segment_widths(max_len: int, attn_chunk: int, platform: str = "cpu") -> tuple[int, ...]:
    """Static attention widths of the decode loop's segments: attn_chunk, 2*attn_chunk, ..., max_len.

    On CPUs (keys stored slots last, `transposes_keys`) only the widths up to a third of max_len, then max_len:
    there XLA copies a narrower read's slice of the cache before the step's attention kernel reads it, so a width
    costs about 3.3x per slot what reading all max_len slots costs, and only a width under about a third of the
    cache pays for its copy (jax 0.10.2 on a 2-core Xeon, the shipped 0.76M-parameter revision model, 512 rows,
    472 own slots: 15 ms a step at width 64, 20 at 128, 34 at 256, 61 at 448, 26 reading all 472)."""
    chunk = max(attn_chunk, -(-max_len // 8))  # at most 8 segments, so compile time stays bounded
    widths = range(chunk, max_len, chunk)
    if transposes_keys(platform):
        widths = [w for w in widths if 3 * w <= max_len]
    return tuple(widths) + (max_len,)


def _decode(graphdef, params, state: DecodeState, key, *, max_new_tokens: int, sampling: Sampling,
            stop: StopConditions, pad_id: int, attn_chunk: int, cache_sharding=None, row_ids=None):
    model = nnx.merge(graphdef, params)
    batch = state.batch
    max_len = state.cache.max_len
    rows = jnp.arange(batch)
    eos = jnp.asarray(stop.eos_ids or (-1,), jnp.int32)
    stop_len = max((len(s) for s in stop.stop_sequences), default=0)

    def stop_hit(tokens, count):
        """Does row b's output tokens[b, :count[b]] end with a stop sequence? -> [B] bool."""
        hit = jnp.zeros(batch, bool)
        for seq in stop.stop_sequences:
            n = len(seq)
            idx = count[:, None] - n + jnp.arange(n)  # [B, n]
            tail = jnp.take_along_axis(tokens, jnp.clip(idx, 0, max_new_tokens - 1), axis=1)
            hit |= (count >= n) & jnp.all(tail == jnp.asarray(seq, jnp.int32), axis=1)
        return hit

    def constrain(cache):
        if cache_sharding is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, cache_sharding)

    def text_hit(token, text_state):
        """Advance each row's stop-string automata by its token: (hit [B], new state [B, S])."""
        if stop.text is None:
            return jnp.zeros(batch, bool), text_state
        strings = jnp.arange(len(stop.text.strings))[None, :]
        nxt = jnp.asarray(stop.text.next_state)[strings, token[:, None], text_state]  # [B, S]
        hit = jnp.asarray(stop.text.hit)[strings, token[:, None], text_state]
        return jnp.any(hit, axis=1), nxt

    def step(carry, width):
        st, out, step_i, text_state = carry
        cache = st.cache
        full = cache.lengths >= max_len
        reason = jnp.where(~st.done & full, FINISHED_CACHE_FULL, out.finish_reason)
        nonfinite = ~st.done & ~full & ~jnp.all(jnp.isfinite(st.logits), axis=-1)
        reason = jnp.where(nonfinite, FINISHED_NONFINITE, reason)
        active = ~st.done & ~full & ~nonfinite
        token = sample_tokens(st.logits, jax.random.fold_in(key, step_i), sampling, row_ids)
        token = jnp.where(active, token, pad_id)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(st.logits), token[:, None], axis=1)[:, 0]
        col = jnp.where(active, out.lengths, max_new_tokens)  # out of range: dropped
        tokens = out.tokens.at[rows, col].set(token, mode="drop")
        logprobs = out.logprobs.at[rows, col].set(logprob, mode="drop")
        count = out.lengths + active

        is_eos = jnp.any(token[:, None] == eos[None, :], axis=1)
        is_stop = stop_hit(tokens, count) if stop_len else jnp.zeros(batch, bool)
        text_stop, moved = text_hit(token, text_state)
        is_stop |= text_stop
        text_state = jnp.where(active[:, None], moved, text_state)
        at_limit = count >= max_new_tokens
        reason = jnp.where(active & at_limit, FINISHED_LENGTH, reason)
        reason = jnp.where(active & is_stop, FINISHED_STOP, reason)
        reason = jnp.where(active & is_eos, FINISHED_EOS, reason)
        done = st.done | full | nonfinite | (active & (is_eos | is_stop | at_limit))

        # Feed the token to the model even for rows that just stopped: their cache then holds it and
        # their logits predict what follows, so a later decode can continue them.
        logits, new_cache, _ = model(token[:, None], cache=cache, attn_len=width)
        new_cache = dataclasses.replace(new_cache, lengths=cache.lengths + active)
        logits = jnp.where(active[:, None], logits[:, 0], st.logits)
        st = DecodeState(cache=constrain(new_cache), logits=logits, done=done)
        out = Generation(tokens=tokens, logprobs=logprobs, lengths=count, finish_reason=reason)
        return st, out, step_i + 1, text_state

    out = Generation(
        tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        lengths=jnp.zeros(batch, jnp.int32),
        finish_reason=jnp.zeros(batch, jnp.int32),
    )
    n_strings = 0 if stop.text is None else len(stop.text.strings)
    carry = (state, out, jnp.int32(0), jnp.zeros((batch, n_strings), jnp.int32))
    for width in segment_widths(state.cache.slots, attn_chunk, model.platform):  # over each row's own slots
        def cond(carry, width=width):
            st, out, _, _ = carry
            running = ~st.done & (out.lengths < max_new_tokens) & (st.cache.lengths < max_len)
            # every running row's next slot must lie inside this segment's attention width
            fits = jnp.all(~running | (st.cache.filled < width))
            return jnp.any(running) & fits
        carry = jax.lax.while_loop(cond, functools.partial(step, width=width), carry)

    st, out, _, _ = carry
    # rows still running here ran out of cache in the last segment
    reason = jnp.where(~st.done & (st.cache.lengths >= max_len), FINISHED_CACHE_FULL, out.finish_reason)
    st = dataclasses.replace(st, done=st.done | (st.cache.lengths >= max_len))
    return dataclasses.replace(out, finish_reason=reason), st


# Module-level, so that engines over models of the same structure share compiled programs.
_prefill_jit = jax.jit(_prefill, static_argnums=0, static_argnames=("max_len",))
_decode_jit = jax.jit(
    _decode, static_argnums=0,
    static_argnames=("max_new_tokens", "sampling", "stop", "pad_id", "attn_chunk", "cache_sharding"),
    donate_argnames=("state",),
)


# ---- the engine ----------------------------------------------------------------------------------


def prompt_floor(lengths) -> int:
    """The largest power of two at most every prompt's length: the own slots a shared prefix leaves each row are
    `max_len` less this (`KVCache.share`), so that few cache shapes are ever compiled."""
    return 1 << (max(1, int(np.min(lengths))).bit_length() - 1)


def bucket(n: int, minimum: int = 16) -> int:
    """Round a prompt length up to a power of two (>= minimum), so few shapes are ever compiled."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclasses.dataclass
class Completion:
    """Host-side result of `Engine.generate` for one row."""

    prompt_index: int
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str


class Engine:
    """Holds a model's parameters (optionally sharded over a mesh) and its compiled decode programs.

    `platform`: the JAX platform the programs are lowered for (`set_platform`; default: the model's, JAX's
    default backend). Name 'tpu' or 'cuda' to export them for an accelerator from a CPU host
    (`prefill_program(...).export(("tpu",))`); the accelerator path runs on CPUs too, as the tests check.

    `shared_prefix` (default): n samples of a prompt (`generate`, and search, which reads it here) keep the
    prompt's KV cache once and each row only its own tokens (`KVCache.share`); False copies the prompt's cache
    into every row (`fork`). The results are the same (the tests check it), the shared layout reads and holds
    the prompt once per question."""

    def __init__(self, model: Transformer, *, mesh: Mesh | None = None, rules: ShardingRules = ShardingRules(),
                 pad_id: int = 0, attn_chunk: int = 128, platform: str | None = None, shared_prefix: bool = True):
        self.config = model.config
        self.mesh, self.rules = mesh, rules
        if platform is not None:
            set_platform(model, platform)
        self.platform = model.platform
        if mesh is not None:
            shard_model(model, mesh, rules)
        self.graphdef, self.params = nnx.split(model)
        self.pad_id = pad_id
        self.attn_chunk = attn_chunk
        self.shared_prefix = shared_prefix
        self._prefill = _prefill_jit
        self._decode = _decode_jit

    # -- placement

    @property
    def data_size(self) -> int:
        return 1 if self.mesh is None or self.rules.batch is None else self.mesh.shape[self.rules.batch]

    def place_rows(self, x):
        """`x` (rows first) on the device(s): split over the mesh's data axis where it divides the rows."""
        if self.mesh is None:
            return jnp.asarray(x)
        return place(x, batch_sharding(self.mesh, self.rules, np.shape(x)))  # every process passes the same rows

    def _cache_sharding(self, state: DecodeState):
        if self.mesh is None:
            return None
        return cache_shardings(state.cache, self.mesh, self.rules)

    # -- the three operations search uses

    def prefill(self, tokens: np.ndarray, lengths: np.ndarray, max_len: int) -> DecodeState:
        """tokens [B, P] (right-padded), lengths [B] -> DecodeState with a cache of `max_len` slots.

        Rows are split over the mesh's data axis when it divides B, else replicated (correct, slower).
        """
        tokens, lengths = np.asarray(tokens, np.int32), np.asarray(lengths, np.int32)
        if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
            raise ValueError(f"prefill wants tokens [B, P] and lengths [B]; got {tokens.shape} and {lengths.shape}.")
        longest = int(lengths.max(initial=0))
        if longest > max_len:
            raise ValueError(
                f"a prompt of {longest} tokens does not fit a KV cache of max_len={max_len}; "
                "raise max_len or shorten the prompt."
            )
        if longest > tokens.shape[1] or lengths.min(initial=1) < 1:
            raise ValueError(f"prompt lengths must be in [1, {tokens.shape[1]}]; got {lengths.tolist()}.")
        self._check_ids(tokens)
        return self.prefill_program(self.place_rows(tokens), self.place_rows(lengths), max_len)()

    def prefill_program(self, tokens, lengths, max_len: int) -> Program:
        """The compiled prefill that `prefill` runs, on placed tokens [B, P] and lengths [B] (or their
        jax.ShapeDtypeStructs): call it, or `.export(platforms)` it."""
        return Program(self._prefill, (self.graphdef, self.params, tokens, lengths), dict(max_len=max_len))

    def decode(self, state: DecodeState, key: jax.Array, *, max_new_tokens: int,
               sampling: Sampling = GREEDY, stop: StopConditions = StopConditions()) -> tuple[Generation, DecodeState]:
        """Generate until every row stops. `state` is donated: use the returned one.

        Rows already done in `state` generate nothing; to continue them, clear `done` first
        (`dataclasses.replace(state, done=jnp.zeros_like(state.done))`).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
        return self.decode_program(state, key, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop)()

    def decode_program(self, state: DecodeState, key: jax.Array, *, max_new_tokens: int,
                       sampling: Sampling = GREEDY, stop: StopConditions = StopConditions()) -> Program:
        """The compiled decode loop that `decode` runs (`state` donated): call it, or `.export(platforms)` it."""
        return Program(self._decode, (self.graphdef, self.params, state, key),
                       dict(max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, pad_id=self.pad_id,
                            attn_chunk=self.attn_chunk, cache_sharding=self._cache_sharding(state)))

    def _check_ids(self, tokens: np.ndarray):
        vocab = self.config.vocab_size
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            bad = int(tokens.max()) if tokens.max() >= vocab else int(tokens.min())
            raise ValueError(
                f"token id {bad} is outside the model's vocabulary [0, {vocab}); "
                "the tokenizer does not match the model."
            )

    # -- convenience: prompts in, completions out

    def generate(self, prompts: Sequence[Sequence[int]], key: jax.Array | None = None, *, max_new_tokens: int,
                 sampling: Sampling = GREEDY, stop: StopConditions = StopConditions(), n: int = 1,
                 max_len: int | None = None) -> list[Completion]:
        """Sample `n` completions for each prompt (prefilled once, then forked). Row order: prompt-major."""
        if not prompts:
            return []
        rows = len(prompts) * n
        # extra prompts (copies of the first, already done) so that the rows split evenly over the data axis
        step = self.data_size // math.gcd(self.data_size, n)
        prompts = list(prompts) + [prompts[0]] * (-len(prompts) % step)
        lengths = np.array([len(p) for p in prompts], np.int32)
        if lengths.min() < 1:
            raise ValueError("every prompt needs at least one token (add a BOS token to empty prompts).")
        width = bucket(int(lengths.max()))
        if max_len is None:
            # from the bucketed width, so that prompts of one bucket share compiled programs
            max_len = -(-(width + max_new_tokens) // 64) * 64
        tokens = np.full((len(prompts), width), self.pad_id, np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        if width > max_len:
            tokens, width = tokens[:, :max_len], max_len
        if n > 1 and self.shared_prefix and int(lengths.max()) < max_len:
            state = self.prefill(tokens, lengths, width).share(n, max_len, prompt_floor(lengths))
        else:
            state = self.prefill(tokens, lengths, max_len)
            if n > 1:
                state = state.fork(n)
        if len(prompts) * n > rows:
            state = dataclasses.replace(state, done=jnp.arange(len(prompts) * n) >= rows)
        key = jax.random.key(0) if key is None else key
        gen, _ = self.decode(state, key, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop)
        gen = to_host(gen)  # every row, also those other processes' devices hold
        out = []
        for row in range(rows):
            length = int(gen.lengths[row])
            out.append(Completion(
                prompt_index=row // n,
                tokens=gen.tokens[row, :length].tolist(),
                logprobs=gen.logprobs[row, :length].tolist(),
                finish_reason=FINISH_REASONS[int(gen.finish_reason[row])],
            ))
        return out
