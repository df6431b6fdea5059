"""Model configuration: one frozen dataclass for every Llama-family architecture we run."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

import jax.numpy as jnp

# Hugging Face architecture name -> the flags that differ between the families we load.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"qkv_bias": True},
}
# Reward-model architectures whose backbone is one of the above under the same tensor names; their heads
# are loaded by `ttcjax.verifiers.hub`. Qwen2ForProcessRewardModel: Qwen2.5-Math-PRM (remote code);
# Qwen2ForPrmModel: Skywork-o1-Open-PRM (Skywork's vLLM plugin name).
ARCHITECTURE_ALIASES: dict[str, str] = {
    "Qwen2ForProcessRewardModel": "Qwen2ForCausalLM",
    "Qwen2ForPrmModel": "Qwen2ForCausalLM",
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling as Hugging Face's `rope_scaling` / `rope_parameters` describes it.

    kind: "linear" (positions divided by `factor`), "llama3" (Llama 3.1 wavelength-dependent scaling)
    or "yarn" (Qwen2.5 long-context configs).
    """

    kind: str
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: cos/sin multiplier, default 0.1*ln(factor)+1
    truncate: bool = True  # yarn


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder-only transformer (Llama, Mistral, Qwen2).

    Hashable, so it can be a static argument of jitted functions.
    """

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # defaults to hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    # False for a reward model's backbone: no vocabulary projection at all (no lm_head parameter, and the
    # tied embedding is not used as one either); calling it for logits is an error.
    has_lm_head: bool = True
    qkv_bias: bool = False  # Qwen2; Llama's `attention_bias` sets this and `o_bias`
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    # Per layer: True where the layer uses the sliding window (Mistral: all; Qwen2: its own rule).
    sliding_layers: tuple[bool, ...] | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    architecture: str = "LlamaForCausalLM"

    SIZES: ClassVar[tuple[str, ...]] = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                                        "num_kv_heads", "max_position_embeddings")  # integers >= 1
    SWITCHES: ClassVar[tuple[str, ...]] = ("tie_word_embeddings", "has_lm_head", "qkv_bias", "o_bias",
                                           "mlp_bias")  # true or false

    def __post_init__(self):
        for name in self.SIZES + (("head_dim",) if self.head_dim is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1.")
        if self.hidden_size % self.num_heads and self.head_dim is None:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "set head_dim explicitly."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}."
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}: use one of {sorted(_DTYPES)}.")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ValueError(
                f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers."
            )
        for name in self.SWITCHES:  # a YAML string such as "false" would read as true
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false (unquoted in YAML).")
        if self.sliding_layers is not None and not all(isinstance(x, bool) for x in self.sliding_layers):
            raise ValueError(f"sliding_layers={list(self.sliding_layers)!r} must be a list of true or false, one per "
                             "layer.")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling.truncate, bool):
            raise ValueError(f"rope_scaling.truncate={self.rope_scaling.truncate!r} must be true or false.")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    def check_fits(self, field: str, tokens: int, model: str, source: str, prompt: int = 0) -> None:
        """`tokens` (what `field` of `source` asks for), after a `prompt` of that many tokens, within this model's
        positions (max_position_embeddings); else one ValueError naming the field, the model and the fix. Past its
        positions a model's rotary embeddings go where it was never trained: the results would be silently wrong."""
        positions = self.max_position_embeddings
        if prompt + tokens <= positions:
            return
        after = f" and the longest prompt ({prompt} tokens)" if prompt else ""
        raise ValueError(f"{source}: {field}={tokens}{after} exceed{'' if prompt else 's'} the {positions} positions "
                         f"of {model} (max_position_embeddings); lower {field} to at most {max(positions - prompt, 0)}.")

    def layer_window(self, layer: int) -> int | None:
        """The sliding-window width of `layer`, or None for full causal attention."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or self.sliding_layers[layer]:
            return self.sliding_window
        return None

    def num_params(self, include_embeddings: bool = True) -> int:
        d, h, k, hd, f = (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.dim_per_head,
            self.intermediate_size,
        )
        attn = d * h * hd * 2 + d * k * hd * 2
        if self.qkv_bias:
            attn += (h + 2 * k) * hd
        if self.o_bias:
            attn += d
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        total = self.num_layers * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings or not self.has_lm_head else 2)
        return total

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face config.json ---------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """Translate a Hugging Face `config.json` dict. `source` names the file in error messages."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(hf.get("model_type", ""))
        arch = ARCHITECTURE_ALIASES.get(arch, arch)
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported architecture {arch or hf.get('model_type')!r}. ttcjax loads "
                f"{', '.join([*ARCHITECTURES, *ARCHITECTURE_ALIASES])}; convert the model or add its tensor "
                "table to ttcjax.checkpoints.hf."
            )
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing required field(s) {missing}.")
        num_layers = hf["num_hidden_layers"]
        rope = hf.get("rope_parameters") or {}
        rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        kwargs: dict[str, Any] = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=num_layers,
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=_parse_rope_scaling(scaling, source, hf.get("max_position_embeddings")),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            architecture=arch,
        )
        kwargs.update(ARCHITECTURES[arch])
        if arch == "LlamaForCausalLM":  # Qwen2 and Mistral ignore these keys
            if hf.get("attention_bias"):  # bias on q, k, v and o
                kwargs.update(qkv_bias=True, o_bias=True)
            kwargs["mlp_bias"] = bool(hf.get("mlp_bias", False))
        kwargs.update(_parse_sliding_window(hf, arch, num_layers))
        dtype = hf.get("torch_dtype") or hf.get("dtype")
        if dtype in _DTYPES:
            kwargs["param_dtype"] = dtype
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike, **overrides) -> "ModelConfig":
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no config.json. Point ttcjax at a Hugging Face checkpoint directory "
                "(config.json plus *.safetensors)."
            )
        try:
            with open(path) as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from e
        return cls.from_hf_dict(hf, source=path, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.sliding_layers is not None:
            out["sliding_layers"] = list(self.sliding_layers)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config field(s) {unknown}; known: {sorted(known)}.")
        d = dict(d)
        try:
            if d.get("rope_scaling") is not None and not isinstance(d["rope_scaling"], RopeScaling):
                d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
            if d.get("sliding_layers") is not None:
                if not isinstance(d["sliding_layers"], (list, tuple)):
                    raise ValueError(f"sliding_layers={d['sliding_layers']!r} must be a list of true or false, one "
                                     "per layer.")
                d["sliding_layers"] = tuple(d["sliding_layers"])  # its entries are checked to be true or false
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _first(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _parse_rope_scaling(scaling: dict[str, Any] | None, source: str,
                        max_positions: int | None = None) -> RopeScaling | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return RopeScaling("linear", factor=factor)
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            factor=factor,
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        )
    if kind == "yarn":
        if scaling.get("mscale") or scaling.get("mscale_all_dim"):
            raise ValueError(f"{source}: yarn rope_scaling with mscale/mscale_all_dim is not supported.")
        omp = scaling.get("original_max_position_embeddings")
        if scaling.get("factor") is None and omp and max_positions:
            factor = max_positions / omp  # as transformers does when the factor is left out
        return RopeScaling(
            "yarn",
            factor=factor,
            original_max_position_embeddings=None if omp is None else int(omp),
            beta_fast=float(scaling.get("beta_fast") or 32.0),
            beta_slow=float(scaling.get("beta_slow") or 1.0),
            attention_factor=scaling.get("attention_factor"),
            truncate=bool(scaling.get("truncate", True)),
        )
    raise ValueError(
        f"{source}: rope_scaling type {kind!r} is not supported (supported: linear, llama3, yarn). "
        "Dynamic NTK scaling changes frequencies with the sequence length, which a fixed KV cache cannot honour."
    )


def _parse_sliding_window(hf: dict[str, Any], arch: str, num_layers: int) -> dict[str, Any]:
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if arch == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
        return {"sliding_window": None, "sliding_layers": None}
    if not window:
        return {"sliding_window": None, "sliding_layers": None}
    if layer_types:
        layers = tuple(t == "sliding_attention" for t in layer_types)
    elif arch == "Qwen2ForCausalLM":
        max_window_layers = hf.get("max_window_layers", num_layers)
        layers = tuple(i >= max_window_layers for i in range(num_layers))
    else:
        layers = None
    return {"sliding_window": int(window), "sliding_layers": layers}
