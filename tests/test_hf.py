"""Hugging Face import/export against transformers (PyTorch, CPU) on tiny random checkpoints built here.

Nothing is downloaded. Prompts are 600 tokens (RoPE scaling and sliding-window bugs hide in short ones);
parity is per layer and on the final logits, in float32.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import pickle
import shutil

import jax  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx, traverse_util  # noqa: E402
from prm_twins import _randomize  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ttcjax.checkpoints.hf import abstract_model, load_hf_model, model_from_params, save_hf_model  # noqa: E402
from ttcjax.models import ModelConfig, RopeScaling  # noqa: E402

ATOL = 1e-4
PROMPT_LEN = 600
TOKENS = np.random.default_rng(0).integers(0, 256, size=(2, PROMPT_LEN))  # [B, T]

CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.08, rms_norm_eps=1e-5,
            rope_theta=10000.0)


def _tiny_hf_model(family: str, seed: int = 0, **overrides):
    """A random transformers model whose biases and norm weights are random too (HF inits them to 0 / 1,
    which would let a dropped bias or norm pass)."""
    config = getattr(transformers, CONFIG_CLASSES[family])(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                          dtype=torch.float32)
    return _randomize(model, seed)


def _hf_forward(model, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers' forward in float64: the reference is the exact result of the same weights, so our float32
    error is what is measured, not a sum with torch's float32 error (which varies with torch's thread count)."""
    with torch.no_grad():
        out = copy.deepcopy(model).double()(torch.as_tensor(tokens), output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def _our_forward(model, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    logits, _, hidden = model(jax.numpy.asarray(tokens), return_hidden=True)
    return np.asarray(logits), [np.asarray(h) for h in hidden]


def _assert_parity(ours, hf_model, tokens=TOKENS, atol=ATOL, label="") -> float:
    """Hidden state entering each layer, the final normed state and the logits agree within atol."""
    our_logits, our_hidden = _our_forward(ours, tokens)
    hf_logits, hf_hidden = _hf_forward(hf_model, tokens)
    assert len(our_hidden) == len(hf_hidden)
    for layer, (a, b) in enumerate(zip(our_hidden, hf_hidden)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"{label} hidden state {layer}")
    np.testing.assert_allclose(our_logits, hf_logits, atol=atol, rtol=0, err_msg=f"{label} logits")
    diff = float(np.max(np.abs(our_logits - hf_logits)))
    print(f"\n[parity] {label}: max |logits diff| = {diff:.2e}, logits scale {np.abs(hf_logits).max():.2f}")
    return diff


@pytest.fixture(scope="module")
def llama_bias_sharded(tmp_path_factory):
    """Llama with attention and MLP biases, 3 layers, saved in 100KB shards."""
    model = _tiny_hf_model("llama", num_hidden_layers=3, attention_bias=True, mlp_bias=True)
    path = tmp_path_factory.mktemp("llama_bias")
    model.save_pretrained(path, max_shard_size="100KB")
    return model, path


@pytest.fixture(scope="module")
def llama_tied(tmp_path_factory):
    model = _tiny_hf_model("llama", seed=1, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("llama_tied")
    model.save_pretrained(path)
    return model, path


# ---- Import parity ----------------------------------------------------------------------------------


def test_llama_with_biases_from_shards(llama_bias_sharded):
    hf_model, path = llama_bias_sharded
    shards = glob.glob(os.path.join(path, "model-*-of-*.safetensors"))
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json")) and len(shards) > 1
    ours = load_hf_model(path)
    assert ours.config.qkv_bias and ours.config.o_bias and ours.config.mlp_bias
    _assert_parity(ours, hf_model, label="llama attention_bias+mlp_bias (sharded)")


def test_llama_tied_embeddings(llama_tied):
    hf_model, path = llama_tied
    ours = load_hf_model(path)
    assert ours.config.tie_word_embeddings and not hasattr(ours, "lm_head")
    _assert_parity(ours, hf_model, label="llama tied")


def test_qwen2_qkv_bias(tmp_path):
    hf_model = _tiny_hf_model("qwen2", seed=2, num_hidden_layers=3)
    hf_model.save_pretrained(tmp_path)
    ours = load_hf_model(tmp_path)
    assert ours.config.qkv_bias and not ours.config.o_bias
    _assert_parity(ours, hf_model, label="qwen2")


def test_mistral_sliding_window(tmp_path):
    hf_model = _tiny_hf_model("mistral", seed=3, sliding_window=96)
    hf_model.save_pretrained(tmp_path)
    ours = load_hf_model(tmp_path)
    assert ours.config.layer_window(0) == 96
    _assert_parity(ours, hf_model, label="mistral sliding_window=96")
    # the window must matter on this prompt, else the test above could not fail
    _edit_config(tmp_path, sliding_window=None)
    full_attention = load_hf_model(tmp_path)
    assert full_attention.config.sliding_window is None
    assert np.max(np.abs(_our_forward(full_attention, TOKENS)[0] - _hf_forward(hf_model, TOKENS)[0])) > 1e-3


ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "linear": {"rope_type": "linear", "factor": 2.0},
}


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_llama_rope_scaling(tmp_path, kind):
    hf_model = _tiny_hf_model("llama", seed=4, rope_scaling=dict(ROPE_SCALINGS[kind]), rope_theta=5000.0)
    hf_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # transformers 5 writes rope_parameters (with rope_theta inside); 4.x wrote rope_scaling + rope_theta
    assert (saved.get("rope_parameters") or saved.get("rope_scaling"))["rope_type"] == kind
    ours = load_hf_model(tmp_path)
    assert ours.config.rope_scaling.kind == kind and ours.config.rope_theta == 5000.0
    _assert_parity(ours, hf_model, label=f"llama rope {kind}")


def test_bfloat16_checkpoint(tmp_path):
    _tiny_hf_model("llama", seed=5).to(torch.bfloat16).save_pretrained(tmp_path)
    # The reference: the same bf16 weights cast to float32, run in float32. (Reloaded rather than
    # `.float()`: `.to(bfloat16)` also rounds the RoPE inv_freq buffer, which a reload recomputes.)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
    ours = load_hf_model(tmp_path)
    assert ours.config.param_dtype == "bfloat16" and ours.embedding[...].dtype == jax.numpy.bfloat16
    _assert_parity(ours, reference, label="llama bf16 weights, f32 compute")
    as_f32 = load_hf_model(tmp_path, param_dtype="float32")
    assert as_f32.embedding[...].dtype == jax.numpy.float32
    _assert_parity(as_f32, reference, label="llama bf16 checkpoint as f32 params")
    save_hf_model(ours, tmp_path / "export")  # bf16 goes out as bf16, bit for bit
    assert json.loads((tmp_path / "export" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = load_hf_model(tmp_path / "export")
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(ours))):
        assert a.dtype == jax.numpy.bfloat16 and np.array_equal(np.asarray(a), np.asarray(b))


# ---- Export -----------------------------------------------------------------------------------------


def _random_model(config: ModelConfig, seed: int):
    """Our model with every parameter random (biases and norm scales included), std 0.08; norm scales
    near 1, as in trained models. Drawn with numpy: init_model compiles a kernel per parameter shape."""
    rng = np.random.default_rng(seed)
    shapes = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract_model(config))))
    return model_from_params(config, {path: (path[-1] == "scale") + 0.08 * rng.standard_normal(s.shape)
                                      for path, s in shapes.items()})


EXPORT_CONFIGS = {
    "llama": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=1024, qkv_bias=True, o_bias=True, mlp_bias=True,
                         rope_scaling=RopeScaling("llama3", 8.0, 128), rope_theta=5000.0, bos_token_id=1,
                         eos_token_id=2),
    "qwen2": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=1024, qkv_bias=True, tie_word_embeddings=True,
                         rope_scaling=RopeScaling("yarn", 4.0, 128), architecture="Qwen2ForCausalLM"),
    "mistral": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2, max_position_embeddings=1024, sliding_window=96,
                           architecture="MistralForCausalLM"),
}


@pytest.mark.parametrize("family", list(EXPORT_CONFIGS))
def test_save_hf_model_loads_in_transformers(tmp_path, family):
    ours = _random_model(EXPORT_CONFIGS[family], seed=6)
    save_hf_model(ours, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
    _assert_parity(ours, hf_model, label=f"save_hf_model {family} -> transformers")
    again = load_hf_model(tmp_path)
    assert again.config == ours.config.replace(head_dim=ours.config.dim_per_head)
    for a, b in zip(jax.tree.leaves(nnx.state(again, nnx.Param)), jax.tree.leaves(nnx.state(ours, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_save_hf_model_refuses_what_the_architecture_cannot_express(tmp_path):
    qwen_with_o_bias = EXPORT_CONFIGS["qwen2"].replace(o_bias=True)
    with pytest.raises(ValueError, match="o_bias"):
        save_hf_model(_random_model(qwen_with_o_bias, seed=0), tmp_path)
    assert not os.listdir(tmp_path)  # refused before anything was written


# ---- Errors -----------------------------------------------------------------------------------------


@pytest.fixture
def llama_copy(llama_tied, tmp_path):
    """A writable copy of an unsharded checkpoint (tied embeddings, 2 layers)."""
    path = tmp_path / "ckpt"
    shutil.copytree(llama_tied[1], path)
    return path


def _edit_tensors(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_directory_config_and_weights(tmp_path, llama_copy):
    with pytest.raises(FileNotFoundError, match="no-such-dir.*no such checkpoint directory"):
        load_hf_model(tmp_path / "no-such-dir")
    os.remove(llama_copy / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(llama_copy)
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps({**TINY, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(FileNotFoundError, match=r"only_config.*no weights.*model\.safetensors"):
        load_hf_model(only_config)


def test_index_referencing_missing_shard(llama_bias_sharded, tmp_path):
    path = tmp_path / "sharded"
    shutil.copytree(llama_bias_sharded[1], path)
    shard = sorted(glob.glob(str(path / "model-*-of-*.safetensors")))[-1]
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=rf"index\.json.*{os.path.basename(shard)}.*missing"):
        load_hf_model(path)


def test_wrong_shape_names_tensor_file_and_shapes(llama_copy):
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(llama_copy, lambda t: t.update({name: t[name][:16].clone()}))
    with pytest.raises(ValueError) as err:
        load_hf_model(llama_copy)
    message = str(err.value)
    for part in (name, "model.safetensors", "[16, 64]", "[32, 64]", "config.json", "num_key_value_heads"):
        assert part in message


def test_missing_and_unexpected_tensors(llama_copy):
    inv_freq = "model.layers.0.self_attn.rotary_emb.inv_freq"  # harmless: recomputed, never loaded
    _edit_tensors(llama_copy, lambda t: t.update({inv_freq: torch.ones(8)}))
    load_hf_model(llama_copy)

    extra = "model.layers.0.self_attn.q_norm.weight"
    _edit_tensors(llama_copy, lambda t: t.update({extra: torch.ones(16)}))
    with pytest.raises(ValueError, match=rf"unexpected.*{extra}.*model\.safetensors.*config\.json"):
        load_hf_model(llama_copy)

    gone = "model.layers.1.mlp.up_proj.weight"
    _edit_tensors(llama_copy, lambda t: (t.pop(extra), t.pop(gone)))
    with pytest.raises(ValueError, match=rf"{gone}.*missing.*num_hidden_layers"):
        load_hf_model(llama_copy)


def test_tied_embeddings_are_checked(llama_copy, llama_bias_sharded, tmp_path):
    # tied and lm_head present and equal: fine
    _edit_tensors(llama_copy, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    load_hf_model(llama_copy)
    # tied but lm_head differs: refuse rather than drop it
    _edit_tensors(llama_copy, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1.0}))
    with pytest.raises(ValueError, match="lm_head.weight differs.*tie_word_embeddings"):
        load_hf_model(llama_copy)
    # untied and no lm_head: name the config and the fix
    _edit_tensors(llama_copy, lambda t: t.pop("lm_head.weight"))
    _edit_config(llama_copy, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"lm_head\.weight.*missing.*config\.json.*\"tie_word_embeddings\": true"):
        load_hf_model(llama_copy)


def test_unknown_architecture(llama_copy):
    _edit_config(llama_copy, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match="config.json.*unsupported architecture 'GPT2LMHeadModel'"):
        load_hf_model(llama_copy)


class _Payload:
    """Unpickling this creates the marker file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "consolidated.pth", "model.pt", "last.ckpt"])
def test_pickled_checkpoint_is_refused_without_unpickling(llama_copy, tmp_path, filename):
    marker = tmp_path / "pwned"
    (llama_copy / filename).write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(str(marker))}))
    load_hf_model(llama_copy)  # next to safetensors, a pickle is ignored, never opened
    os.remove(llama_copy / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_hf_model(llama_copy)
    message = str(err.value)
    for part in (filename, "never unpickles", "trusted environment", "save_pretrained", "safetensors"):
        assert part in message
    assert not marker.exists()
    pickle.loads((llama_copy / filename).read_bytes())  # the payload is live: unpickling does create it
    assert marker.exists()


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/tmp/outside.safetensors",
                                    "sub/../../outside.safetensors"])
def test_index_shards_outside_the_checkpoint_are_refused_unopened(llama_bias_sharded, tmp_path, escape):
    """A shard name that leaves the directory is refused, whether or not such a file exists (real weights
    outside the checkpoint would otherwise load silently)."""
    path = tmp_path / "ckpt" / "sharded"
    shutil.copytree(llama_bias_sharded[1], path)
    first = sorted(glob.glob(str(path / "model-*-of-*.safetensors")))[0]
    shutil.copy(first, tmp_path / "ckpt" / "outside.safetensors")  # valid weights just outside
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = escape
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="is not a file inside"):
        load_hf_model(path)


def test_hugging_face_cache_snapshot_with_linked_shards_loads(llama_bias_sharded, tmp_path):
    """The Hugging Face cache's layout: a snapshot directory whose every file, shards included, is a relative link
    to ../../blobs. The index's names stay inside the snapshot, so it loads (judging where the links point would
    refuse every cached sharded checkpoint)."""
    hf_model, source = llama_bias_sharded
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(source))):
        shutil.copy(source / name, repo / "blobs" / f"blob{i}")
        os.symlink(os.path.join("..", "..", "blobs", f"blob{i}"), snapshot / name)
    assert len(glob.glob(str(snapshot / "model-*-of-*.safetensors"))) > 1
    _assert_parity(load_hf_model(str(snapshot)), hf_model, label="llama from a cache snapshot of links")
