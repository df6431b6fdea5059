"""ttcjax's own checkpoints: `ttcjax_config.json` plus the parameters as an orbax PyTree.

Layout of a checkpoint directory:
    ttcjax_config.json   ModelConfig.to_dict(), written last and atomically: its presence marks a
                         complete checkpoint.
    params/              orbax StandardCheckpointer output (itself written to a temporary directory and
                         renamed): a nested dict of arrays, {"layers": {"0": {"attn": {"wq": [D, H, Dh]}}}}.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import Mesh

from ttcjax.checkpoints.gguf import gguf_config, is_gguf_file, load_gguf_model
from ttcjax.checkpoints.hf import check_finite, load_hf_model, model_from_params, param_sharding
from ttcjax.io import write_json
from ttcjax.models.config import ModelConfig
from ttcjax.models.llama import Transformer, abstract_model
from ttcjax.models.sharding import ShardingRules

CONFIG_FILE = "ttcjax_config.json"
PARAMS_DIR = "params"
HF_CONFIG_FILE = "config.json"


def _str_path(path: tuple) -> tuple[str, ...]:
    # nnx numbers list entries (layers) with ints; orbax keys its tree by strings.
    return tuple(str(part) for part in path)


def _params_tree(model: Transformer) -> dict:
    """The model's parameters as a plain nested dict of arrays with string keys."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return traverse_util.unflatten_dict({_str_path(path): value for path, value in flat.items()})


def save_model(model: Transformer, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write `model` (config and parameters) to `directory`, which `load_model` reads back exactly.

    Refuses to replace an existing checkpoint unless `overwrite`.
    """
    directory = os.path.abspath(os.fspath(directory))
    config_path, params_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, PARAMS_DIR)
    if not overwrite and (os.path.exists(config_path) or os.path.exists(params_path)):
        raise FileExistsError(f"{directory}: already holds a ttcjax checkpoint; pass overwrite=True "
                              "or choose a new directory.")
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(config_path):  # while params are rewritten, the directory must not look complete
        os.remove(config_path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_path, _params_tree(model), force=overwrite)
    write_json(config_path, model.config.to_dict())


def _check_saved_shapes(params_path: str, config_path: str, expected: dict[tuple[str, ...], tuple[int, ...]],
                        saved: dict[tuple[str, ...], tuple[int, ...]]) -> None:
    """Every parameter the config implies must be saved with its shape, and nothing else."""
    def name(path):
        return ".".join(path)

    for path, shape in expected.items():
        if path not in saved:
            raise ValueError(f"{params_path}: parameter {name(path)} {list(shape)} (from {config_path}) is "
                             "not in the checkpoint; the config does not describe these parameters.")
        if tuple(saved[path]) != tuple(shape):
            raise ValueError(
                f"{params_path}: parameter {name(path)} is saved with shape {list(saved[path])}, but "
                f"{config_path} implies {list(shape)}; the config does not match the parameters "
                "(re-save the model, or restore the config that was saved with it)."
            )
    extra = sorted(name(p) for p in saved if p not in expected)
    if extra:
        raise ValueError(f"{params_path}: parameters {extra[:8]} are not in the model {config_path} describes; "
                         "the config does not match the parameters.")


def load_model(directory: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
               mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()) -> Transformer:
    """Read a checkpoint written by `save_model`. `dtype` / `param_dtype` override the saved config's.

    With `mesh`, each parameter is restored straight into its sharding there (`rules`): on a mesh that spans
    several processes, each reads only the slices its own devices hold. Without one, onto this process's first
    device."""
    directory = os.path.abspath(os.fspath(directory))
    config_path, params_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such checkpoint directory.")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: missing; write checkpoints with "
                                "ttcjax.checkpoints.native.save_model (a Hugging Face directory with config.json "
                                "loads with ttcjax.checkpoints.hf.load_hf_model).")
    if not os.path.isdir(params_path):
        raise FileNotFoundError(f"{params_path}: missing; the checkpoint is incomplete, save it again.")
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e}).") from e
    config = ModelConfig.from_dict(raw, source=config_path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    config = config.replace(**overrides)

    _, state = nnx.split(abstract_model(config))
    model_params = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> ShapeDtypeStruct
    abstract = {_str_path(path): value for path, value in model_params.items()}
    with ocp.StandardCheckpointer() as checkpointer:
        saved = traverse_util.flatten_dict(checkpointer.metadata(params_path).item_metadata.tree)
        _check_saved_shapes(params_path, config_path, {p: a.shape for p, a in abstract.items()},
                            {p: m.shape for p, m in saved.items()})
        # restoring into the abstract tree casts each array to config.param_dtype where it is placed
        target = {p: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=param_sharding(p, a.shape, mesh, rules))
                  for p, a in abstract.items()}
        restored = checkpointer.restore(params_path, traverse_util.unflatten_dict(target))
    restored = traverse_util.flatten_dict(restored)
    return model_from_params(config, {path: check_finite(restored[_str_path(path)], _str_path(path), params_path)
                                      for path in model_params})


def checkpoint_config(path: str | os.PathLike, what: str = "checkpoint", **overrides) -> ModelConfig:
    """The config a checkpoint loads with, read without its weights: ttcjax's own (ttcjax_config.json), Hugging
    Face's (config.json) or a GGUF file's metadata."""
    path = os.fspath(path)
    if os.path.isfile(path) and (path.endswith(".gguf") or is_gguf_file(path)):
        return gguf_config(path, **overrides)
    native = os.path.join(path, CONFIG_FILE)
    if os.path.exists(native):
        with open(native) as f:
            return ModelConfig.from_dict({**json.load(f), **overrides}, source=native)
    if os.path.exists(os.path.join(path, HF_CONFIG_FILE)):
        return ModelConfig.from_hf_json(path, **overrides)
    raise FileNotFoundError(f"{what} {path}: neither {CONFIG_FILE} nor {HF_CONFIG_FILE} there; point it at the "
                            "checkpoint directory.")


def load_any(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
             mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()) -> Transformer:
    """Load a ttcjax checkpoint (`ttcjax_config.json`) or a Hugging Face one (`config.json`) from directory `path`,
    or a llama-architecture GGUF file (`ttcjax.checkpoints.gguf`). With `mesh`, the parameters are placed on it
    by `rules` as they are read (each process of a mesh that spans several reads only its devices' slices of a
    ttcjax or Hugging Face checkpoint)."""
    path = os.fspath(path)
    if os.path.isfile(path) and (path.endswith(".gguf") or is_gguf_file(path)):
        return load_gguf_model(path, dtype=dtype, param_dtype=param_dtype)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory or .gguf file.")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        return load_model(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules)
    if os.path.exists(os.path.join(path, HF_CONFIG_FILE)):
        return load_hf_model(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules)
    raise FileNotFoundError(
        f"{path}: not a checkpoint directory; looked for {CONFIG_FILE} (ttcjax.checkpoints.native.save_model) and "
        f"{HF_CONFIG_FILE} (Hugging Face save_pretrained)."
    )

