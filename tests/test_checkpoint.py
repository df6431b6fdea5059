"""ttcjax's own orbax checkpoints and `load_any`. Models are random and tiny; nothing is downloaded."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from ttcjax.checkpoints import native
from ttcjax.checkpoints.hf import abstract_model, model_from_params, save_hf_model
from ttcjax.checkpoints.native import CONFIG_FILE, PARAMS_DIR, load_any, load_model, save_model
from ttcjax.models import ModelConfig, RopeScaling

# Every optional field set, so the config round trip covers RopeScaling and the sliding_layers tuple.
CONFIG = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=256, qkv_bias=True, sliding_window=8, sliding_layers=(False, True),
                     rope_scaling=RopeScaling("yarn", 4.0, 64), architecture="Qwen2ForCausalLM", eos_token_id=3)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 128, size=(2, 40)))


def _random_model(config: ModelConfig, seed: int = 0):
    """Random everywhere, biases included (init_model leaves them at zero). Drawn with numpy: compiling
    a random kernel per parameter shape, as init_model does eagerly, costs seconds on a small CPU."""
    rng = np.random.default_rng(seed)
    shapes = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract_model(config))))
    return model_from_params(config, {path: 0.1 * rng.standard_normal(s.shape) for path, s in shapes.items()})


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def model():
    return _random_model(CONFIG)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ttcjax_ckpt")
    save_model(model, path)
    return path


def test_round_trip_is_exact(model, saved):
    assert sorted(os.listdir(saved)) == [PARAMS_DIR, CONFIG_FILE]
    assert not [f for f in os.listdir(saved) if ".tmp" in f]
    loaded = load_model(saved)
    assert loaded.config == model.config
    for a, b in zip(_params(loaded), _params(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(loaded(TOKENS)[0]), np.asarray(model(TOKENS)[0]))


def test_bfloat16_params_and_dtype_override(tmp_path):
    model = _random_model(CONFIG.replace(param_dtype="bfloat16"), seed=1)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.embedding[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded(TOKENS)[0]), np.asarray(model(TOKENS)[0]))
    assert load_model(tmp_path, dtype="bfloat16").config.dtype == "bfloat16"


def test_save_refuses_to_overwrite_unless_asked(model, tmp_path):
    save_model(model, tmp_path)
    other = _random_model(CONFIG, seed=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(other, tmp_path)
    save_model(other, tmp_path, overwrite=True)
    np.testing.assert_array_equal(_params(load_model(tmp_path))[0], _params(other)[0])


def _files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def test_an_overwrite_that_fails_midway_leaves_the_old_checkpoint_whole(model, tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    save_model(model, path)
    (path / "tokenizer.json").write_text("{}")  # beside the checkpoint, not part of it
    before = _files(tmp_path)
    other = _random_model(CONFIG, seed=2)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(native, "write_json", disk_full)  # the parameters are written, the config is not
    with pytest.raises(OSError, match="disk full"):
        save_model(other, path, overwrite=True)
    monkeypatch.undo()
    assert _files(tmp_path) == before  # the old checkpoint, whole, and nothing half-written beside it
    save_model(other, path, overwrite=True)
    np.testing.assert_array_equal(_params(load_model(path))[0], _params(other)[0])
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and (path / "tokenizer.json").read_text() == "{}"


def test_a_reward_model_overwrite_that_fails_midway_leaves_the_old_one_whole(tmp_path, monkeypatch):
    from toys import y_fraction_prm

    from ttcjax.verifiers import reward_model
    from ttcjax.verifiers.reward_model import load_prm, save_prm

    path = str(tmp_path / "prm")
    save_prm(y_fraction_prm(), path)
    before = _files(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(reward_model, "save_file", disk_full)  # the backbone is written, the head is not
    with pytest.raises(OSError, match="disk full"):
        save_prm(y_fraction_prm(strength=5.0), path, kind="orm", overwrite=True)
    monkeypatch.undo()
    assert _files(tmp_path) == before
    assert load_prm(path)[1]["kind"] == "prm"
    save_prm(y_fraction_prm(strength=5.0), path, kind="orm", overwrite=True)
    assert load_prm(path)[1]["kind"] == "orm" and os.listdir(tmp_path) == ["prm"]


def test_load_any_dispatches_on_both_kinds(model, saved, tmp_path):
    ours = load_any(saved)
    np.testing.assert_array_equal(np.asarray(ours(TOKENS)[0]), np.asarray(model(TOKENS)[0]))

    llama = _random_model(ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                                      num_heads=4, num_kv_heads=2, mlp_bias=True), seed=3)
    save_hf_model(llama, tmp_path)
    assert os.path.exists(tmp_path / "config.json") and not os.path.exists(tmp_path / CONFIG_FILE)
    hf = load_any(tmp_path)
    np.testing.assert_array_equal(np.asarray(hf(TOKENS)[0]), np.asarray(llama(TOKENS)[0]))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"empty.*{CONFIG_FILE}.*config.json"):
        load_any(empty)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        load_any(tmp_path / "no-such-dir")


def _copy_with_config(saved, tmp_path, **changes):
    """The saved checkpoint's parameters (by symlink) under an edited config."""
    path = tmp_path / "edited"
    path.mkdir()
    os.symlink(saved / PARAMS_DIR, path / PARAMS_DIR)
    config = json.loads((saved / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps({**config, **changes}))
    return path


def test_config_that_does_not_match_the_params(saved, tmp_path):
    wider = _copy_with_config(saved, tmp_path, intermediate_size=96)
    with pytest.raises(ValueError) as err:
        load_model(wider)
    for part in ("layers.0.mlp.w_down", "[64, 32]", "[96, 32]", CONFIG_FILE, "does not match"):
        assert part in str(err.value)

    (wider / CONFIG_FILE).write_text(json.dumps({**json.loads((saved / CONFIG_FILE).read_text()),
                                                  "num_layers": 3, "sliding_layers": [False, True, True]}))
    with pytest.raises(ValueError, match=r"layers\.2\.\S+ .* not in the checkpoint"):
        load_model(wider)


def test_missing_directory_and_config(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir.*no such checkpoint directory"):
        load_model(tmp_path / "no-such-dir")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILE}.*save_model"):
        load_model(no_config)
    bad = _copy_with_config(saved, tmp_path, hidden_sizes=32)
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}.*unknown model config field.*hidden_sizes"):
        load_model(bad)
