"""Hugging Face checkpoints (Llama, Qwen2, Mistral) in and out of ttcjax, through safetensors only.

The import is the table `TENSORS`: one entry per Hugging Face tensor name, the parameter it fills, its
Hugging Face shape computed from the config, and whether it is transposed. Every tensor is shape-checked
before it is transformed. Hugging Face's half-split RoPE layout is what `ttcjax.models.llama` uses, so
q_proj and k_proj need no permutation. Pickled checkpoints (`pytorch_model.bin`, `*.pt`, ...) are
refused without being opened: unpickling runs arbitrary code.

Process reward models (`ttcjax.verifiers.hub`) load their backbone here with `lm_head=False` and their head's
tensors (`skip_prefixes`) through `read_hf_tensors`, shape-checked the same way.

Shapes: V vocab, D embed, F mlp width, H query heads, K kv heads, Dh head dim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ttcjax.io import replace_dir, write_json
from ttcjax.models.config import ModelConfig
from ttcjax.models.llama import Transformer, abstract_model
from ttcjax.models.sharding import ShardingRules, param_axes, place

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_CONFIG_FILE = "config.json"
# a ttcjax checkpoint's files (ttcjax.checkpoints.native): its config, written last, and its orbax parameters
NATIVE_FILES = ("ttcjax_config.json", "params")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# Buffers some exporters save next to the weights; we recompute them, so their presence is harmless.
HARMLESS_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One Hugging Face tensor: `hf_name` and `target` hold `{i}` (layer index) for per-layer tensors.

    `transpose`: Hugging Face stores nn.Linear weights as [out, in]; ours are [in, ...out] split into
    heads where the layer needs them, so hf -> ours is `w.T.reshape(ours)` and ours -> hf its inverse.
    A parameter the model does not have (bias off, tied lm_head) simply has no tensor to load.
    """

    hf_name: str
    target: str
    hf_shape: Callable[[ModelConfig], tuple[int, ...]]
    transpose: bool = False


def _q(c: ModelConfig) -> int:
    return c.num_heads * c.dim_per_head


def _kv(c: ModelConfig) -> int:
    return c.num_kv_heads * c.dim_per_head


_LAYER = "model.layers.{i}."
TENSORS: tuple[TensorEntry, ...] = (
    TensorEntry("model.embed_tokens.weight", "embedding", lambda c: (c.vocab_size, c.hidden_size)),
    TensorEntry("lm_head.weight", "lm_head", lambda c: (c.vocab_size, c.hidden_size), transpose=True),
    TensorEntry("model.norm.weight", "final_norm.scale", lambda c: (c.hidden_size,)),
    TensorEntry(_LAYER + "input_layernorm.weight", "layers.{i}.attn_norm.scale", lambda c: (c.hidden_size,)),
    TensorEntry(_LAYER + "post_attention_layernorm.weight", "layers.{i}.mlp_norm.scale",
                lambda c: (c.hidden_size,)),
    TensorEntry(_LAYER + "self_attn.q_proj.weight", "layers.{i}.attn.wq", lambda c: (_q(c), c.hidden_size), True),
    TensorEntry(_LAYER + "self_attn.k_proj.weight", "layers.{i}.attn.wk", lambda c: (_kv(c), c.hidden_size), True),
    TensorEntry(_LAYER + "self_attn.v_proj.weight", "layers.{i}.attn.wv", lambda c: (_kv(c), c.hidden_size), True),
    TensorEntry(_LAYER + "self_attn.o_proj.weight", "layers.{i}.attn.wo", lambda c: (c.hidden_size, _q(c)), True),
    TensorEntry(_LAYER + "self_attn.q_proj.bias", "layers.{i}.attn.bq", lambda c: (_q(c),)),
    TensorEntry(_LAYER + "self_attn.k_proj.bias", "layers.{i}.attn.bk", lambda c: (_kv(c),)),
    TensorEntry(_LAYER + "self_attn.v_proj.bias", "layers.{i}.attn.bv", lambda c: (_kv(c),)),
    TensorEntry(_LAYER + "self_attn.o_proj.bias", "layers.{i}.attn.bo", lambda c: (c.hidden_size,)),
    TensorEntry(_LAYER + "mlp.gate_proj.weight", "layers.{i}.mlp.w_gate",
                lambda c: (c.intermediate_size, c.hidden_size), True),
    TensorEntry(_LAYER + "mlp.up_proj.weight", "layers.{i}.mlp.w_up",
                lambda c: (c.intermediate_size, c.hidden_size), True),
    TensorEntry(_LAYER + "mlp.down_proj.weight", "layers.{i}.mlp.w_down",
                lambda c: (c.hidden_size, c.intermediate_size), True),
    TensorEntry(_LAYER + "mlp.gate_proj.bias", "layers.{i}.mlp.b_gate", lambda c: (c.intermediate_size,)),
    TensorEntry(_LAYER + "mlp.up_proj.bias", "layers.{i}.mlp.b_up", lambda c: (c.intermediate_size,)),
    TensorEntry(_LAYER + "mlp.down_proj.bias", "layers.{i}.mlp.b_down", lambda c: (c.hidden_size,)),
)


def _param_path(target: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in target.split("."))


def _expected_tensors(config: ModelConfig, params: dict[tuple, Any]) -> dict[str, tuple[TensorEntry, tuple]]:
    """Hugging Face name -> (entry, our parameter path), for every parameter this model has."""
    out = {}
    for entry in TENSORS:
        layers = range(config.num_layers) if "{i}" in entry.hf_name else [None]
        for i in layers:
            path = _param_path(entry.target.format(i=i))
            if path in params:
                out[entry.hf_name.format(i=i)] = (entry, path)
    return out


def _to_ours(entry: TensorEntry, hf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (hf.T if entry.transpose else hf).reshape(shape)


def _to_hf(entry: TensorEntry, ours: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
    return ours.reshape(hf_shape[::-1]).T if entry.transpose else ours.reshape(hf_shape)


def model_from_params(config: ModelConfig, flat: dict[tuple, Any]) -> Transformer:
    """Build a Transformer from {parameter path: array}, cast to `config.param_dtype`.

    Every parameter of the model must be present with its exact shape (callers check, with better messages).
    """
    graphdef, state = nnx.split(abstract_model(config))
    pure = {path: jnp.asarray(flat[path], dtype=config.jnp_param_dtype)
            for path in traverse_util.flatten_dict(nnx.to_pure_dict(state))}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
    return nnx.merge(graphdef, state)


# ---- Import -----------------------------------------------------------------------------------------


def _weight_files(path: str) -> dict[str, str]:
    """Hugging Face tensor name -> safetensors file holding it. Refuses pickles without opening them."""
    index_path = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
        except json.JSONDecodeError as e:
            raise ValueError(f"{index_path}: not valid JSON ({e}); re-save the checkpoint with save_pretrained.") from e
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: no 'weight_map' object; re-save the checkpoint with save_pretrained.")
        for shard in sorted(set(weight_map.values())):
            # a shard is a file of this checkpoint: names that leave the directory are refused unopened (and
            # without saying whether such a file exists). The name is judged, not where a link in the directory
            # points: the Hugging Face cache's snapshot directories link every file to ../../blobs.
            if (not isinstance(shard, str) or not shard or os.path.isabs(shard) or os.path.splitdrive(shard)[0]
                    or os.path.normpath(shard).split(os.sep)[0] == os.pardir):
                raise ValueError(f"{index_path}: shard {shard!r} is not a file inside {path}; a checkpoint's index "
                                 "names its own shard files (model-00001-of-00002.safetensors).")
            if not os.path.exists(os.path.join(path, shard)):
                raise FileNotFoundError(
                    f"{index_path} references shard {shard!r}, which is missing from {path}; "
                    "download the missing shard or re-save the checkpoint."
                )
        return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
    # model.safetensors alone when present: repos such as Mistral's also ship consolidated.safetensors,
    # the same weights under other names
    single = os.path.join(path, SAFETENSORS_FILE)
    files = [single] if os.path.exists(single) else sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        pickles = sorted(os.path.basename(p) for pat in PICKLE_PATTERNS for p in glob.glob(os.path.join(path, pat)))
        if pickles:
            raise ValueError(
                f"{path}: found pickled weights {pickles} but no *.safetensors. ttcjax never unpickles "
                "(loading a pickle can run arbitrary code). Convert in a trusted environment with transformers: "
                f"AutoModelForCausalLM.from_pretrained({path!r}).save_pretrained(out_dir), which writes safetensors."
            )
        raise FileNotFoundError(
            f"{path}: no weights found (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} and *.safetensors)."
        )
    names: dict[str, str] = {}
    for file in files:
        with _safe_open(file) as f:
            names.update({name: file for name in f.keys()})
    return names


def _damaged(file: str, error: Exception) -> ValueError:
    return ValueError(f"{file}: not a readable safetensors file ({' '.join(str(error).split())}); it is damaged or "
                      "cut short: download or save it again.")


@contextlib.contextmanager
def _safe_open(file: str):
    """safe_open, with a damaged or truncated file reported as one ValueError naming it."""
    try:
        handle = safe_open(file, framework="flax")
    except (SafetensorError, OSError) as e:
        raise _damaged(file, e) from None
    with handle as f:
        yield f


def _on_host() -> contextlib.AbstractContextManager:
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])  # this process's: another's is not readable
    except RuntimeError:  # JAX_PLATFORMS without cpu: read onto the default device instead
        return contextlib.nullcontext()


def load_hf_model(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                  lm_head: bool = True, skip_prefixes: tuple[str, ...] = (), mesh: Mesh | None = None,
                  rules: ShardingRules = ShardingRules()) -> Transformer:
    """Load a Hugging Face Llama / Qwen2 / Mistral checkpoint directory (config.json + *.safetensors).

    `dtype` / `param_dtype` override the compute dtype and the stored parameter dtype (default: the
    checkpoint's `torch_dtype`). `lm_head=False` loads the backbone only (`config.has_lm_head=False`): a
    reward model's, whose checkpoint may hold no lm_head; an `lm_head.weight` there is ignored.
    Tensors whose names start with one of `skip_prefixes` (a reward head: "score.", "v_head.") are left to
    the caller, who reads them with `read_hf_tensors`. With `mesh`, each tensor is placed on it by `rules` as
    soon as it is read and checked (`ttcjax.models.sharding.place`): the host holds one tensor at a time, and
    each process of a mesh that spans several keeps only its own devices' slices of it. Raises
    FileNotFoundError / ValueError naming the file and tensor at fault.
    """
    path = _checkpoint_dir(path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    if not lm_head:
        overrides["has_lm_head"] = False
    config = ModelConfig.from_hf_json(path, **overrides)
    files = _weight_files(path)
    config_file = os.path.join(path, HF_CONFIG_FILE)

    def skipped(name: str) -> bool:
        return name.startswith(tuple(skip_prefixes)) or (not lm_head and name == "lm_head.weight")

    _, state = nnx.split(abstract_model(config))
    params = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> ShapeDtypeStruct
    expected = _expected_tensors(config, params)
    reward_head = sorted(n for n in files if n.startswith(_REWARD_HEAD_PREFIXES) and not skipped(n))
    prm_hint = (f" {reward_head[0]} is a process reward model's head: load this checkpoint with "
                "ttcjax.verifiers.hub.load_hf_prm." if reward_head else "")

    missing = [name for name in expected if name not in files]
    if missing:
        fix = (f" {config_file} unties the embeddings (tie_word_embeddings false): set \"tie_word_embeddings\": "
               "true there if the model shares them, or add lm_head.weight." if missing == ["lm_head.weight"] else
               f" Check that {config_file} (num_hidden_layers, attention_bias, mlp_bias, architecture) "
               "describes these weights.")
        raise ValueError(f"{path}: tensor(s) {missing[:8]} missing from the checkpoint.{prm_hint or fix}")
    tied_head = config.tie_word_embeddings and lm_head and "lm_head.weight" in files
    unexpected = [n for n in files if n not in expected and not n.endswith(HARMLESS_SUFFIXES)
                  and not (tied_head and n == "lm_head.weight") and not skipped(n)]
    if unexpected:
        raise ValueError(
            f"{path}: unexpected tensor(s) {unexpected[:8]} in {os.path.basename(files[unexpected[0]])}, "
            f"which {config_file} does not describe; fix num_hidden_layers / attention_bias / mlp_bias / "
            f"tie_word_embeddings in the config, or remove the tensors.{prm_hint}"
        )

    loaded = {}
    with _open_tensors(files) as read:
        for name, (entry, param) in expected.items():  # shapes first: a mismatch reads nothing
            got, want = read.shape(name), entry.hf_shape(config)
            if got != want:
                raise ValueError(
                    f"{files[name]}: tensor {name} has shape {list(got)}, expected {list(want)} from "
                    f"{config_file}; the config does not match the weights (check hidden_size, "
                    "num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size)."
                )
        for name, (entry, param) in expected.items():
            ours = _to_ours(entry, check_finite(read(name), name, files[name]), params[param].shape)
            if tied_head and param == ("embedding",):  # tying is checked, not assumed: a differing lm_head
                head = read("lm_head.weight")  # would be silently dropped
                if head.shape != ours.shape or not np.array_equal(head, ours):
                    raise ValueError(
                        f"{files['lm_head.weight']}: lm_head.weight differs from model.embed_tokens.weight but "
                        f"{config_file} sets tie_word_embeddings=true; set it to false to load the separate head."
                    )
            # one tensor on the host at a time: placed on the mesh, each process keeps its devices' slices
            loaded[param] = ours if mesh is None else place(ours.astype(config.jnp_param_dtype),
                                                            param_sharding(param, ours.shape, mesh, rules))
    return model_from_params(config, loaded)


def param_sharding(path: tuple, shape: tuple[int, ...], mesh: Mesh | None,
                   rules: ShardingRules = ShardingRules()) -> jax.sharding.Sharding:
    """Where a loader puts the parameter at `path`: its sharding on `mesh` by `rules`, or without a mesh this
    process's first device (every process of a multi-process run then holds its own copy)."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return rules.sharding(param_axes(path), shape, mesh)




def read_hf_tensors(path: str | os.PathLike, shapes: dict[str, tuple[int, ...]], *,
                    hint: str = "") -> dict[str, np.ndarray]:
    """Read the named tensors of a checkpoint directory as numpy arrays (in their stored dtype), each
    checked against its expected Hugging Face shape before anything is read: what `load_hf_model` leaves to
    the caller with `skip_prefixes`. ValueError naming the file, the tensor and the expected shape (and
    `hint`, the caller's advice) where one is missing or has another shape."""
    path = _checkpoint_dir(path)
    files = _weight_files(path)
    missing = [name for name in shapes if name not in files]
    if missing:
        raise ValueError(f"{path}: tensor(s) {missing} missing from the checkpoint, expected with shape(s) "
                         f"{[list(shapes[n]) for n in missing]}.{hint and ' ' + hint}")
    with _open_tensors({name: files[name] for name in shapes}) as read:
        for name, want in shapes.items():
            got = read.shape(name)
            if got != tuple(want):
                raise ValueError(f"{files[name]}: tensor {name} has shape {list(got)}, expected {list(want)} from "
                                 f"{os.path.join(path, 'config.json')}.{hint and ' ' + hint}")
        return {name: read(name) for name in shapes}


def check_finite(tensor, name: str, source: str):
    """`tensor` as it is; ValueError naming the tensor and its file where a weight is NaN or infinite (such a
    model would decode nothing but non-finite logits)."""
    xp = jnp if isinstance(tensor, jax.Array) else np  # a restored array is checked where it lies
    # (ml_dtypes' bfloat16 is no numpy floating subtype: test for what cannot be non-finite instead)
    if xp.issubdtype(tensor.dtype, xp.integer) or tensor.dtype == bool or bool(xp.all(xp.isfinite(tensor))):
        return tensor
    bad = int(tensor.size - int(xp.count_nonzero(xp.isfinite(tensor))))
    raise ValueError(f"{source}: tensor {name} holds {bad} non-finite value(s) (NaN or inf); the checkpoint is "
                     "damaged or diverged in training: use an earlier or a re-saved one.")


# Tensor-name prefixes of the process reward models' heads that ttcjax.verifiers.hub loads.
_REWARD_HEAD_PREFIXES = ("score.", "v_head.")


def _checkpoint_dir(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory; pass a directory holding config.json "
                                "and the *.safetensors weights.")
    return path


class _TensorReader:
    """`read(name)` -> numpy array and `read.shape(name)` over open safetensors handles."""

    def __init__(self, handles: dict[str, Any], files: dict[str, str]):
        self._handles, self._files = handles, files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._files[name]].get_slice(name).get_shape())

    def __call__(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._handles[self._files[name]].get_tensor(name))
        except SafetensorError as e:
            raise _damaged(self._files[name], e) from None


@contextlib.contextmanager
def _open_tensors(files: dict[str, str]):
    # The flax backend reads bfloat16, which numpy cannot; pinning it to the host keeps the
    # reshaping in numpy and the device holding one copy, made at the end.
    with contextlib.ExitStack() as stack, _on_host():
        handles = {f: stack.enter_context(_safe_open(f)) for f in sorted(set(files.values()))}
        yield _TensorReader(handles, files)


# ---- Export -----------------------------------------------------------------------------------------

_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json for `config`; ValueError where the architecture cannot express it."""
    arch = config.architecture

    def refuse(field: str, why: str):
        raise ValueError(f"cannot export {field} as {arch}: {why}; change `architecture` or the field.")

    if not config.has_lm_head:
        refuse("has_lm_head=False", "a causal language model needs its lm_head (this is a reward model's backbone)")

    out: dict[str, Any] = {
        "architectures": [arch], "model_type": _MODEL_TYPES[arch], "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.dim_per_head,
        "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "torch_dtype": config.param_dtype, "dtype": config.param_dtype,
    }
    if config.rope_scaling is not None:
        scaling = {k: v for k, v in dataclasses.asdict(config.rope_scaling).items() if v is not None}
        kind = scaling.pop("kind")
        keep = {"linear": ("factor",),
                "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
                "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                         "attention_factor", "truncate")}[kind]
        # both spellings of the type: transformers 4 reads "type" in old code paths, 5 reads "rope_type"
        out["rope_scaling"] = {"rope_type": kind, "type": kind, **{k: scaling[k] for k in keep if k in scaling}}
    windows = [config.layer_window(i) is not None for i in range(config.num_layers)]
    if arch == "LlamaForCausalLM":
        if config.qkv_bias != config.o_bias:
            refuse("qkv_bias != o_bias", "Llama's attention_bias covers q, k, v and o together")
        if any(windows):
            refuse("sliding_window", "Llama has no sliding-window attention")
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    else:
        if config.mlp_bias or config.o_bias:
            refuse("mlp_bias / o_bias", "its MLP and o_proj have no bias")
        if config.qkv_bias != (arch == "Qwen2ForCausalLM"):
            refuse("qkv_bias", "Qwen2 always has q/k/v biases and Mistral never")
    if arch == "MistralForCausalLM":
        if any(windows) and not all(windows):
            refuse("sliding_layers", "Mistral slides on every layer or none")
        out["sliding_window"] = config.sliding_window if any(windows) else None
    if arch == "Qwen2ForCausalLM":
        first = windows.index(True) if any(windows) else config.num_layers
        if windows != [i >= first for i in range(config.num_layers)]:
            refuse("sliding_layers", "Qwen2 slides on layers max_window_layers.. only")
        out.update(use_sliding_window=any(windows), sliding_window=config.sliding_window if any(windows) else None,
                   max_window_layers=first,
                   layer_types=["sliding_attention" if w else "full_attention" for w in windows])
    return out


def is_checkpoint_entry(name: str) -> bool:
    """Whether a directory entry is part of a model checkpoint of either format: Hugging Face's config.json and
    safetensors files (an index and its shards), ttcjax's `NATIVE_FILES`. Replacing a checkpoint replaces them
    all (a loader reading one left over would load the old model: ttcjax prefers ttcjax_config.json, transformers
    an index); anything else there, such as a tokenizer, is kept."""
    return name in (*NATIVE_FILES, HF_CONFIG_FILE, SAFETENSORS_INDEX) or name.endswith(".safetensors")


def checkpoint_entries(directory: str | os.PathLike) -> list[str]:
    """The entries of `directory` that are part of a model checkpoint (`is_checkpoint_entry`), sorted."""
    directory = os.fspath(directory)
    return sorted(filter(is_checkpoint_entry, os.listdir(directory))) if os.path.isdir(directory) else []


def refuse_to_replace(directory: str | os.PathLike, overwrite: bool) -> None:
    """A FileExistsError, before any work, where `directory` holds a checkpoint and `overwrite` is not set."""
    existing = checkpoint_entries(directory)
    if existing and not overwrite:
        raise FileExistsError(f"{os.fspath(directory)}: already holds a checkpoint ({', '.join(existing)}); pass "
                              "--overwrite (overwrite=True) to replace it, or choose another directory.")


def save_hf_model(model: Transformer, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write `config.json` and `model.safetensors` that transformers' `from_pretrained` loads as `model`.

    An existing checkpoint in `path` (of either format, `checkpoint_entries`) is replaced only with `overwrite`.
    The checkpoint is written whole beside `path` and swapped in (`ttcjax.io.replace_dir`), so a crash leaves the
    old checkpoint or the new one, never a mix; the old checkpoint's files go, anything else in `path` is kept.
    """
    path = os.fspath(path)
    refuse_to_replace(path, overwrite)
    config: ModelConfig = model.config
    hf_config = hf_config_dict(config)  # refuses what the architecture cannot express, before writing
    params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tensors = {}  # numpy (with ml_dtypes) writes bfloat16 too, and keeps the copies on the host
    for name, (entry, param) in _expected_tensors(config, params).items():
        array = np.asarray(jax.device_get(params[param]))
        tensors[name] = np.ascontiguousarray(_to_hf(entry, array, entry.hf_shape(config)))
    with replace_dir(path, keep=lambda name: not is_checkpoint_entry(name)) as new:
        # transformers refuses safetensors files whose metadata lacks a known "format"
        save_file(tensors, os.path.join(new, SAFETENSORS_FILE), metadata={"format": "pt"})
        write_json(os.path.join(new, HF_CONFIG_FILE), hf_config)
