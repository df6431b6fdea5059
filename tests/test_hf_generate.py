"""Greedy generation equals transformers' `generate(do_sample=False)` token for token."""

import numpy as np
import pytest
import torch
import transformers

from ttcjax.checkpoints.hf import load_hf_model
from ttcjax.decoding.engine import GREEDY, Engine, StopConditions

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.1, rms_norm_eps=1e-5)
PROMPTS = [list(np.random.default_rng(i).integers(3, 256, size=n)) for i, n in enumerate((7, 19, 33))]


@pytest.mark.parametrize("family", ["LlamaConfig", "Qwen2Config", "MistralConfig"])
def test_greedy_matches_transformers_generate(tmp_path, family):
    config = getattr(transformers, family)(**TINY, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    hf.eval().save_pretrained(tmp_path)

    engine = Engine(load_hf_model(tmp_path))
    ours = engine.generate([list(map(int, p)) for p in PROMPTS], max_new_tokens=48, sampling=GREEDY)
    for prompt, completion in zip(PROMPTS, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=48, min_new_tokens=48, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        assert len(set(expected)) > 3, "a degenerate continuation would make the comparison weak"
        assert completion.tokens == expected


def test_stop_sequence_matches_transformers_stop_strings_by_ids(tmp_path):
    """Stopping on a token sequence ends exactly where transformers' generation reaches it."""
    config = transformers.LlamaConfig(**TINY, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    hf.eval().save_pretrained(tmp_path)
    engine = Engine(load_hf_model(tmp_path))
    prompt = list(map(int, PROMPTS[1]))
    with torch.no_grad():
        full = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=40, min_new_tokens=40,
                           pad_token_id=0)[0, len(prompt):].tolist()
    stop = tuple(full[20:22])
    first = next(i for i in range(39) if tuple(full[i : i + 2]) == stop)
    (ours,) = engine.generate([prompt], max_new_tokens=40, stop=StopConditions(stop_sequences=(stop,)))
    assert ours.tokens == full[: first + 2] and ours.finish_reason == "stop_sequence"
