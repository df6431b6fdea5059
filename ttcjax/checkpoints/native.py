"""ttcjax's own checkpoints: `ttcjax_config.json` plus the parameters as an orbax PyTree.

Layout of a checkpoint directory:
    ttcjax_config.json   ModelConfig.to_dict(); its presence marks a ttcjax checkpoint.
    params/              orbax StandardCheckpointer output: a nested dict of arrays,
                         {"layers": {"0": {"attn": {"wq": [D, H, Dh]}}}}.
`save_model` writes both into a new directory beside the target and swaps it in whole (`ttcjax.io.replace_dir`),
so a crash leaves the old checkpoint or the new one.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import Mesh

from ttcjax.checkpoints.gguf import gguf_config, is_gguf_file, load_gguf_model
from ttcjax.checkpoints.hf import (HF_CONFIG_FILE, NATIVE_FILES, check_finite, is_checkpoint_entry, load_hf_model,
                                   model_from_params, param_sharding, refuse_to_replace)
from ttcjax.io import read_json, replace_dir, write_json
from ttcjax.models.config import ModelConfig
from ttcjax.models.llama import Transformer, abstract_model
from ttcjax.models.sharding import ShardingRules

CONFIG_FILE, PARAMS_DIR = NATIVE_FILES  # "ttcjax_config.json", "params"


def _str_path(path: tuple) -> tuple[str, ...]:
    # nnx numbers list entries (layers) with ints; orbax keys its tree by strings.
    return tuple(str(part) for part in path)


def _params_tree(model: Transformer) -> dict:
    """The model's parameters as a plain nested dict of arrays with string keys: host (numpy) arrays on several
    processes, where orbax saves no array that one process holds alone."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    on_host = np.asarray if jax.process_count() > 1 else (lambda value: value)
    return traverse_util.unflatten_dict({_str_path(path): on_host(value) for path, value in flat.items()})


def _this_process_alone() -> ocp.options.MultiprocessingOptions:
    """orbax's options for a save that this process makes alone (orbax otherwise waits for every process)."""
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                              active_processes={jax.process_index()})


def save_model(model: Transformer, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write `model` (config and parameters) to `directory`, which `load_model` reads back exactly.

    Refuses a directory that holds a checkpoint (of either format: `ttcjax.checkpoints.hf.checkpoint_entries`)
    unless `overwrite`. The checkpoint is written whole beside `directory` and swapped in (`ttcjax.io.replace_dir`),
    so a crash at any point leaves the old checkpoint or the new one, never a mix or neither; the old checkpoint's
    files go, anything else in `directory` (a tokenizer) is kept. On several processes one process saves, alone:
    the parameters must be whole on it (`ttcjax.distributed.gathered`).
    """
    directory = os.path.abspath(os.fspath(directory))
    refuse_to_replace(directory, overwrite)
    with replace_dir(directory, keep=lambda name: not is_checkpoint_entry(name)) as new:
        with ocp.StandardCheckpointer(multiprocessing_options=_this_process_alone()) as checkpointer:
            checkpointer.save(os.path.join(new, PARAMS_DIR), _params_tree(model))
        write_json(os.path.join(new, CONFIG_FILE), model.config.to_dict())


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
        saved = read_json(native, "save the checkpoint again.")
        if not isinstance(saved, dict):
            raise ValueError(f"{native}: not a JSON object; save the checkpoint again.")
        return ModelConfig.from_dict({**saved, **overrides}, source=native)
    if os.path.exists(os.path.join(path, HF_CONFIG_FILE)):
        return ModelConfig.from_hf_json(path, **overrides)
    raise FileNotFoundError(f"{what} {path}: neither {CONFIG_FILE} nor {HF_CONFIG_FILE} there; point it at the "
                            "checkpoint directory.")


def load_any(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
             mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()) -> Transformer:
    """Load a ttcjax checkpoint (`ttcjax_config.json`) or a Hugging Face one (`config.json`) from directory `path`,
    or a llama-architecture GGUF file (`ttcjax.checkpoints.gguf`). With `mesh`, the parameters are placed on it
    by `rules` as they are read: each process of a mesh that spans several reads only its devices' slices of a
    ttcjax checkpoint, and keeps only its devices' slices of each Hugging Face or GGUF tensor it reads."""
    path = os.fspath(path)
    if os.path.isfile(path) and (path.endswith(".gguf") or is_gguf_file(path)):
        return load_gguf_model(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules)
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

