"""GGUF files (llama.cpp's format) into ttcjax: a llama-architecture model, dequantized, and its tokenizer.

A GGUF file holds the model's configuration and its tokenizer as metadata (`llama.*` and `tokenizer.*` keys)
and its tensors, most of them quantized in blocks (Q4_1, Q8_0, ...). `load_gguf_model` reads the metadata
into a `ModelConfig` and dequantizes every tensor to float32 with the `gguf` package (llama.cpp's own
Python reader), through the table `TENSORS`: one entry per GGUF tensor name, naming the Hugging Face tensor
whose entry in `ttcjax.checkpoints.hf.TENSORS` says where it goes (shape, transpose). GGUF keeps tensors
in Hugging Face's [out, in] layout, except one thing: llama.cpp's converter reorders the rows of attn_q and
attn_k within each head to suit its interleaved RoPE (pairs (0, 1), (2, 3), ...), where ours rotates half
against half as Hugging Face does. `_undo_rope_interleave` puts them back, as transformers' GGUF loader does.

`gguf_tokenizer` builds a Hugging Face `tokenizers` tokenizer from the vocabulary, merges and token types
of a 'gpt2' (byte-level BPE) or 'llama' (SentencePiece BPE) vocabulary, with the pre-tokenizer that
llama.cpp applies for the file's `tokenizer.ggml.pre`; `save_gguf_tokenizer` writes it as tokenizer.json,
tokenizer_config.json (special tokens, chat template) and generation_config.json (end-of-generation ids), which
`ttcjax.checkpoints.tokenizer` reads.

The `gguf` package is an optional dependency (`pip install 'ttcjax[gguf]'`), imported when a file is read.

Shapes: V vocab, D embed, F mlp width, H query heads, K kv heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from ttcjax.checkpoints.hf import TENSORS as HF_TENSORS, check_finite, model_from_params, param_sharding
from ttcjax.io import atomic_path, write_json
from ttcjax.models.config import ModelConfig, RopeScaling
from ttcjax.models.llama import Transformer, abstract_model
from ttcjax.models.sharding import ShardingRules, place

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "llama"  # llama.cpp's name for Llama, Mistral, SmolLM, ... (everything ttcjax's Llama runs)
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
INSTALL_HINT = "pip install 'ttcjax[gguf]' (or pip install gguf)"


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"reading .gguf files needs llama.cpp's gguf package: {INSTALL_HINT}.") from e
    return gguf


# ---- The file ----------------------------------------------------------------------------------------


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file that starts with the GGUF magic bytes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _open(path: str | os.PathLike):
    """A `gguf.GGUFReader` over `path` (memory-mapped: tensors are read when dequantized)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file.")
    if not is_gguf_file(path):
        raise ValueError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF'); pass a .gguf file "
                         "written by llama.cpp's converter.")
    stat = os.stat(path)
    return _reader(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int, size: int):
    # Parsing the metadata takes seconds (a vocabulary is ~100k strings) and loading a policy reads the file twice,
    # model and tokenizer; keyed by modification time and size, so a rewritten file is parsed afresh.
    gguf = _import_gguf()
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as e:
        raise ValueError(f"{path}: unreadable GGUF file ({e}): damaged (download it again), or written with a tensor "
                         "type newer than this gguf package knows (upgrade gguf).") from e


def _metadata(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _architecture(reader, path: str) -> str:
    arch = _metadata(reader, "general.architecture")
    if arch != ARCHITECTURE:
        raise ValueError(f"{path}: architecture {arch!r}; ttcjax reads {ARCHITECTURE!r}-architecture GGUF files "
                         "only (Llama, Mistral, SmolLM, ...): load this model from its Hugging Face checkpoint.")
    return arch


# ---- Configuration -----------------------------------------------------------------------------------

_REQUIRED_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
                  "attention.head_count")


def _config(reader, path: str, **overrides) -> ModelConfig:
    arch = _architecture(reader, path)
    missing = [f"{arch}.{k}" for k in _REQUIRED_KEYS if f"{arch}.{k}" not in reader.fields]
    if missing:
        raise ValueError(f"{path}: metadata {missing} missing; the file is incomplete, convert it again.")

    def value(key: str, default: Any = None) -> Any:
        got = _metadata(reader, f"{arch}.{key}", default)
        if isinstance(got, list):  # per-layer values (OpenELM-style): not a Llama
            raise ValueError(f"{path}: {arch}.{key} varies per layer ({got[:4]}...); ttcjax's Llama needs one value.")
        return got

    hidden, heads = int(value("embedding_length")), int(value("attention.head_count"))
    head_dim = int(value("attention.key_length", hidden // heads))
    if int(value("attention.value_length", head_dim)) != head_dim:
        raise ValueError(f"{path}: attention.key_length and attention.value_length differ; ttcjax's Llama uses one "
                         "head dimension.")
    if int(value("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{path}: {arch}.rope.dimension_count {value('rope.dimension_count')} rotates part of each "
                         f"{head_dim}-wide head; ttcjax's Llama rotates whole heads.")
    tensors = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{path}: holds rope_freqs.weight (Llama 3.1-style RoPE scaling baked into per-frequency "
                         "factors, without the parameters ttcjax's rope_scaling needs); load the model from its "
                         "Hugging Face checkpoint.")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab_size = value("vocab_size", len(tokens.data) if tokens is not None else
                       int(embedding.shape[-1]) if embedding is not None else None)
    if vocab_size is None:
        raise ValueError(f"{path}: no {arch}.vocab_size, tokenizer.ggml.tokens or token_embd.weight to size the "
                         "vocabulary by.")

    def token_id(name: str) -> int | None:
        got = _metadata(reader, f"tokenizer.ggml.{name}_token_id")
        return None if got is None else int(got)

    kwargs: dict[str, Any] = dict(
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(value("feed_forward_length")),
        num_layers=int(value("block_count")),
        num_heads=heads,
        num_kv_heads=int(value("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(value("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(value("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(value, path, arch),
        max_position_embeddings=int(value("context_length")),
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_gate.bias" in tensors,
        bos_token_id=token_id("bos"),
        eos_token_id=token_id("eos"),
        pad_token_id=token_id("padding"),
        architecture="LlamaForCausalLM",
        param_dtype="float32",  # dequantized values are float32; param_dtype="bfloat16" halves the memory
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _rope_scaling(value: Callable[..., Any], path: str, arch: str) -> RopeScaling | None:
    kind = value("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return RopeScaling("linear", factor=float(value("rope.scaling.factor", 1.0)))
    raise ValueError(f"{path}: {arch}.rope.scaling.type {kind!r} is not supported from GGUF (supported: none, "
                     "linear); load the model from its Hugging Face checkpoint.")


def gguf_config(path: str | os.PathLike, **overrides) -> ModelConfig:
    """The `ModelConfig` a llama-architecture GGUF file describes (keyword `overrides` replace fields)."""
    path = os.fspath(path)
    return _config(_open(path), path, **overrides)


# ---- Weights -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One GGUF tensor: `gguf_name` and `hf_name` hold `{i}` (layer index) for per-layer tensors.

    `hf_name` names the entry of `ttcjax.checkpoints.hf.TENSORS` that places it: dequantized GGUF tensors
    have Hugging Face's shapes ([out, in] for a matrix). `rope_heads`: the heads whose rows llama.cpp
    interleaved for its RoPE (attn_q: H, attn_k: K, weight and bias alike), None for the other tensors.
    """

    gguf_name: str
    hf_name: str
    rope_heads: Callable[[ModelConfig], int] | None = None


def _heads(c: ModelConfig) -> int:
    return c.num_heads


def _kv_heads(c: ModelConfig) -> int:
    return c.num_kv_heads


_BLK, _LAYER = "blk.{i}.", "model.layers.{i}."
TENSORS: tuple[GGUFTensor, ...] = (
    GGUFTensor("token_embd.weight", "model.embed_tokens.weight"),
    GGUFTensor("output.weight", "lm_head.weight"),
    GGUFTensor("output_norm.weight", "model.norm.weight"),
    GGUFTensor(_BLK + "attn_norm.weight", _LAYER + "input_layernorm.weight"),
    GGUFTensor(_BLK + "ffn_norm.weight", _LAYER + "post_attention_layernorm.weight"),
    GGUFTensor(_BLK + "attn_q.weight", _LAYER + "self_attn.q_proj.weight", _heads),
    GGUFTensor(_BLK + "attn_k.weight", _LAYER + "self_attn.k_proj.weight", _kv_heads),
    GGUFTensor(_BLK + "attn_v.weight", _LAYER + "self_attn.v_proj.weight"),
    GGUFTensor(_BLK + "attn_output.weight", _LAYER + "self_attn.o_proj.weight"),
    GGUFTensor(_BLK + "attn_q.bias", _LAYER + "self_attn.q_proj.bias", _heads),
    GGUFTensor(_BLK + "attn_k.bias", _LAYER + "self_attn.k_proj.bias", _kv_heads),
    GGUFTensor(_BLK + "attn_v.bias", _LAYER + "self_attn.v_proj.bias"),
    GGUFTensor(_BLK + "attn_output.bias", _LAYER + "self_attn.o_proj.bias"),
    GGUFTensor(_BLK + "ffn_gate.weight", _LAYER + "mlp.gate_proj.weight"),
    GGUFTensor(_BLK + "ffn_up.weight", _LAYER + "mlp.up_proj.weight"),
    GGUFTensor(_BLK + "ffn_down.weight", _LAYER + "mlp.down_proj.weight"),
    GGUFTensor(_BLK + "ffn_gate.bias", _LAYER + "mlp.gate_proj.bias"),
    GGUFTensor(_BLK + "ffn_up.bias", _LAYER + "mlp.up_proj.bias"),
    GGUFTensor(_BLK + "ffn_down.bias", _LAYER + "mlp.down_proj.bias"),
)
_HF_ENTRIES = {entry.hf_name: entry for entry in HF_TENSORS}


def _undo_rope_interleave(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter stores each head's rows [first half | second half] as interleaved pairs
    (x0, x_half, x1, x_half+1, ...); this is its inverse, on the leading axis of a [H*Dh, ...] weight or bias."""
    pairs = rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:])  # [H, Dh/2, 2, ...]
    return pairs.swapaxes(1, 2).reshape(rows.shape)


def _expected_tensors(config: ModelConfig, params: dict[tuple, Any]) -> dict[str, tuple[GGUFTensor, tuple]]:
    """GGUF name -> (entry, our parameter path), for every parameter this model has."""
    out = {}
    for entry in TENSORS:
        hf = _HF_ENTRIES[entry.hf_name]
        for i in range(config.num_layers) if "{i}" in entry.gguf_name else [None]:
            path = tuple(int(p) if p.isdigit() else p for p in hf.target.format(i=i).split("."))
            if path in params:
                out[entry.gguf_name.format(i=i)] = (entry, path)
    return out


def _dequantize(gguf, tensor, path: str, rows: slice | None = None) -> np.ndarray:
    data = tensor.data if rows is None else tensor.data[rows]
    try:
        return gguf.quants.dequantize(data, tensor.tensor_type)
    except NotImplementedError as e:
        raise ValueError(f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the gguf "
                         "package cannot dequantize; use a file quantized as F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
                         "Q5_0, Q5_1, a K-quant (Q2_K..Q6_K) or an IQ type, or upgrade gguf.") from e


def load_gguf_model(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                    mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()) -> Transformer:
    """Load a llama-architecture GGUF file as a Transformer, every tensor dequantized (then cast to
    `param_dtype`, float32 unless given; `dtype` is the compute dtype).

    With `mesh`, each tensor is placed on it by `rules` as soon as it is dequantized and checked, as
    `ttcjax.checkpoints.hf.load_hf_model` does (`ttcjax.models.sharding.place`): the host holds one dequantized
    tensor at a time, and each process of a mesh that spans several keeps only its own devices' slices of it.

    Raises FileNotFoundError / ValueError naming the file and what is wrong: not a GGUF file, another
    architecture, missing or unexpected tensors, a shape the metadata does not imply, a quantization type
    the gguf package cannot dequantize (checked on every tensor before any is dequantized in full), or
    non-finite weights.
    """
    path = os.fspath(path)
    reader = _open(path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    config = _config(reader, path, **overrides)
    gguf = _import_gguf()
    _, state = nnx.split(abstract_model(config))
    params = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> ShapeDtypeStruct
    expected = _expected_tensors(config, params)
    tensors = {t.name: t for t in reader.tensors}

    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"{path}: tensor(s) {missing[:8]} missing; the file's {ARCHITECTURE}.block_count and tensors "
                         "disagree, convert it again.")
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise ValueError(f"{path}: tensor(s) {unexpected[:8]} that ttcjax's Llama has no place for; this is not a "
                         "plain Llama model.")
    for name, (entry, _) in expected.items():  # shapes and types first: a mismatch dequantizes nothing
        tensor = tensors[name]
        got = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
        want = _HF_ENTRIES[entry.hf_name].hf_shape(config)
        if got != want:
            raise ValueError(f"{path}: tensor {name} has shape {list(got)}, expected {list(want)} from the file's "
                             f"{ARCHITECTURE}.* metadata; the metadata does not describe these weights.")
        _dequantize(gguf, tensor, path, rows=slice(0, 1))

    loaded = {}
    for name, (entry, param) in expected.items():
        hf = _HF_ENTRIES[entry.hf_name]
        weights = _dequantize(gguf, tensors[name], path).astype(np.float32, copy=False).reshape(hf.hf_shape(config))
        if entry.rope_heads is not None:
            weights = _undo_rope_interleave(weights, entry.rope_heads(config))
        weights = check_finite(weights, name, path)
        ours = (weights.T if hf.transpose else weights).reshape(params[param].shape)
        # one tensor on the host at a time: placed on the mesh, each process keeps its devices' slices
        loaded[param] = ours if mesh is None else place(ours.astype(config.jnp_param_dtype),
                                                        param_sharding(param, ours.shape, mesh, rules))
    return model_from_params(config, loaded)


# ---- Tokenizer ---------------------------------------------------------------------------------------

TOKENIZER_MODELS = ("gpt2", "llama")
# llama.cpp's token types (llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> how llama.cpp splits text before byte-level BPE (llama-vocab.cpp): the regexes, applied
# one after another. "digits" isolates every digit first, then splits as GPT-2 does (the original SmolLM2
# tokenizer.json: Digits(individual_digits) then ByteLevel).
_PRE_TOKENIZER_FAMILIES = {
    "gpt2": (_GPT2_SPLIT,),
    "digits": (r"\p{N}", _GPT2_SPLIT),
    "llama3": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
}
PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt-2", "mpt", "olmo", "jais"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", "pixtral"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), "qwen2"),
}



def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: byte-level vocabularies spell every token in these 256 characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    others = (b for b in range(256) if b not in printable)
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by a vocabulary (files without tokenizer.ggml.merges): every split of a
    token into two tokens, best-scored result first (transformers' `generate_merges`)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:k], token[k:], score) for k in range(1, len(token))
                  if token[:k] in vocab and token[k:] in vocab]
        merges += sorted(splits, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _tokenizer(reader, path: str):
    """(tokenizers.Tokenizer, tokenizer_config dict, end-of-generation ids) from the file's tokenizer.* keys."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = _metadata(reader, "tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        raise ValueError(f"{path}: tokenizer model {kind!r} (tokenizer.ggml.model); ttcjax builds tokenizers for "
                         f"{' and '.join(repr(m) for m in TOKENIZER_MODELS)} GGUF vocabularies only: pass the "
                         "model's own tokenizer.json with --tokenizer.")
    tokens = _metadata(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens; the file carries no vocabulary, pass --tokenizer.")
    types = _metadata(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = _metadata(reader, "tokenizer.ggml.merges")
    pairs = [tuple(m.split(" ")) for m in merges] if merges else None
    if pairs is not None and any(len(p) != 2 for p in pairs):
        raise ValueError(f"{path}: tokenizer.ggml.merges holds an entry that is not two tokens separated by one "
                         "space; the file is damaged.")
    if kind == "gpt2":
        pre = _metadata(reader, "tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one ttcjax knows; known: "
                             f"{sorted(PRE_TOKENIZERS)}. Pass the model's own tokenizer.json with --tokenizer.")
        if pairs is None:
            raise ValueError(f"{path}: a 'gpt2' vocabulary without tokenizer.ggml.merges; the file is damaged.")
        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        # tokens outside the byte alphabet (some converters write added tokens as plain text) are respelled
        tokens = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
        tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs, dropout=None,
                                         continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated")
                  for r in _PRE_TOKENIZER_FAMILIES[PRE_TOKENIZERS[pre]]]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tokenizer.decoder = decoders.ByteLevel()
        # a control token spelled outside the byte alphabet is a mislabel: adding it would grow the vocabulary
        control = [t for t, kind_ in zip(tokens, types) if kind_ == _CONTROL and set(t) <= alphabet]
    else:
        scores = _metadata(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        prefix_space = bool(_metadata(reader, "tokenizer.ggml.add_space_prefix", True))
        unk = _metadata(reader, "tokenizer.ggml.unknown_token_id")
        tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                         pairs if pairs is not None else _merges_from_scores(tokens, scores),
                                         dropout=None, fuse_unk=True, byte_fallback=True,
                                         unk_token=None if unk is None else tokens[int(unk)]))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first" if prefix_space else "never", split=False)
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
             *([decoders.Strip(" ", 1, 0)] if prefix_space else [])])
        control = [t for t, kind_ in zip(tokens, types) if kind_ == _CONTROL]
    # llama.cpp matches control and user-defined tokens whole in the text; so do added tokens
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    vocab = tokenizer.get_vocab()
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind_ in zip(tokens, types) if kind_ == _USER_DEFINED and t in vocab])

    def token_id(name: str) -> int | None:
        i = _metadata(reader, f"tokenizer.ggml.{name}_token_id")
        return int(i) if i is not None and 0 <= int(i) < len(tokens) else None

    names = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}
    config: dict[str, Any] = {key: tokens[i] for key, name in names.items() if (i := token_id(name)) is not None}
    config["add_bos_token"] = bool(_metadata(reader, "tokenizer.ggml.add_bos_token", kind == "llama"))
    config["add_eos_token"] = bool(_metadata(reader, "tokenizer.ggml.add_eos_token", False))
    if (template := _metadata(reader, "tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    # end of turn / end of message: chat models stop on these as on EOS
    stops = [i for name in ("eos", "eot", "eom") if (i := token_id(name)) is not None]
    return tokenizer, config, list(dict.fromkeys(stops))


def gguf_tokenizer(path: str | os.PathLike):
    """(`tokenizers.Tokenizer`, tokenizer_config dict) of a GGUF file's vocabulary: special tokens, chat template,
    add_bos_token. The tokenizer adds no special tokens of its own (no post-processor)."""
    path = os.fspath(path)
    tokenizer, config, _ = _tokenizer(_open(path), path)
    return tokenizer, config


def save_gguf_tokenizer(path: str | os.PathLike, directory: str | os.PathLike) -> None:
    """Write the tokenizer of GGUF file `path` into `directory` as tokenizer.json, tokenizer_config.json and
    generation_config.json (every end-of-generation id), which `ttcjax.checkpoints.tokenizer.load_tokenizer`
    and transformers read. Each file is written atomically, tokenizer.json last: its presence marks the set
    complete."""
    path, directory = os.fspath(path), os.fspath(directory)
    tokenizer, config, stops = _tokenizer(_open(path), path)
    write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), config)
    write_json(os.path.join(directory, GENERATION_CONFIG_FILE), {"eos_token_id": stops})
    with atomic_path(os.path.join(directory, TOKENIZER_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(tokenizer.to_str())
