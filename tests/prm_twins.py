"""Tiny random twins of the public PRM families, built with transformers: the same module structure and tensor
names, saved as safetensors, with a tokenizer trained on the spot holding the family's special tokens and chat
template. Nothing is downloaded. Each fixture gives (directory, the PyTorch modules, transformers' tokenizer)."""

from __future__ import annotations

import json
import string

import pytest
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, processors, trainers

ATOL = 1e-4
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.15, tie_word_embeddings=False)

QUESTION = "Janet has 12 apples and eats 3. How many apples are left?"
SOLUTIONS = [
    ["Step 1: Janet has 12 apples.", "Step 2: She eats 3, so 12 - 3 = 9.", "Step 3: The answer is: 9"],
    ["Step 1: 12 + 3 = 15.", "Step 2: The answer is: 15"],
    ["  Step 1: So we get 12 - 3 = 9 apples left.  ", "Step 2: Check: 9 + 3 = 12.", "Step 3: 9 * 1 = 9.",
     "Step 4: The answer is: 9"],
]
WORDS = " ".join([QUESTION, *(s for sol in SOLUTIONS for s in sol), "What is 7 + 5? The answer is: 12 - 0"])

CHATML = ("{%- if messages[0]['role'] != 'system' %}"
          "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
          "{%- for message in messages %}"
          "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{{- bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
          " + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


# ---- tiny twins ------------------------------------------------------------------------------------------


def _train_tokenizer(specials: list[str], *, sentencepiece_like: bool = False) -> RustTokenizer:
    """A BPE over WORDS: byte-level (Llama 3 / Qwen style), or Metaspace with newlines kept apart and BOS
    added by the post-processor (the Llama-2 / Mistral SentencePiece style of Math-Shepherd)."""
    tok = RustTokenizer(models.BPE(unk_token="<unk>" if sentencepiece_like else None))
    if sentencepiece_like:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                     pre_tokenizers.Metaspace(prepend_scheme="first")])
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = list(string.printable) + ["▁", "к", "и"]
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    corpus = [WORDS, "+ - ки\n", " ки\n\n", "\n\n+\n-"] * 10
    tok.train_from_iterator(corpus, trainer)
    if sentencepiece_like:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def _save_tokenizer(tok: RustTokenizer, path, chat_template: str | None = None, in_config: bool = False, **specials):
    """Save as transformers does (tokenizer.json, tokenizer_config.json and chat_template.jinja); with
    `in_config` the template goes into tokenizer_config.json, as older checkpoints have it. Returns
    transformers' tokenizer read back from the files."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    if in_config and chat_template is not None:
        (path / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": chat_template}))
    return transformers.PreTrainedTokenizerFast.from_pretrained(path)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random biases and norm weights too (transformers inits them to 0 / 1, which would hide a dropped one)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
    return module.eval()


def _save_weights(path, tensors: dict[str, torch.Tensor], config, architecture: str):
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    config.save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "architectures": [architecture]}))


@pytest.fixture(scope="session")
def math_shepherd(tmp_path_factory):
    path = tmp_path_factory.mktemp("math_shepherd")
    hf_tok = _save_tokenizer(_train_tokenizer(["<unk>", "<s>", "</s>"], sentencepiece_like=True), path,
                             bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**SMALL, vocab_size=len(hf_tok),
                                                                       bos_token_id=1, eos_token_id=2))
    _randomize(model, 0).save_pretrained(path)
    return path, model, hf_tok


@pytest.fixture(scope="session")
def rlhflow(tmp_path_factory):
    path = tmp_path_factory.mktemp("rlhflow")
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    hf_tok = _save_tokenizer(_train_tokenizer(specials), path, LLAMA3, in_config=True,
                             bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(**SMALL, vocab_size=len(hf_tok), rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})
    _randomize(transformers.LlamaForCausalLM(config), 1).save_pretrained(path)
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, hf_tok


@pytest.fixture(scope="session")
def qwen_prm(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen_prm")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
    hf_tok = _save_tokenizer(_train_tokenizer(specials), path, CHATML, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>")
    torch.manual_seed(2)
    config = transformers.Qwen2Config(**SMALL, vocab_size=len(hf_tok))
    backbone = _randomize(transformers.Qwen2Model(config), 2)
    h = config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2)).eval()
    with torch.no_grad():
        head[2].weight.mul_(8.0)  # spread the probabilities out
    tensors = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    tensors |= {f"score.{k}": v for k, v in head.state_dict().items()}
    _save_weights(path, tensors, config, "Qwen2ForProcessRewardModel")
    return path, (backbone, head), hf_tok


@pytest.fixture(scope="session")
def skywork(tmp_path_factory):
    path = tmp_path_factory.mktemp("skywork")
    hf_tok = _save_tokenizer(_train_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]), path,
                             bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(3)
    config = transformers.Qwen2Config(**SMALL, vocab_size=len(hf_tok))
    model = _randomize(transformers.Qwen2ForCausalLM(config), 3)
    v_head = torch.nn.Linear(config.hidden_size, 1).eval()
    with torch.no_grad():
        v_head.weight.mul_(8.0)
    tensors = dict(model.state_dict())  # lm_head.weight included: the loader ignores it, as vLLM does
    tensors |= {"v_head.summary.weight": v_head.weight, "v_head.summary.bias": v_head.bias}
    _save_weights(path, tensors, config, "Qwen2ForPrmModel")
    return path, (model, v_head), hf_tok
