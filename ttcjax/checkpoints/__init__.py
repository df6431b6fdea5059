"""Checkpoints and tokenizers: ttcjax's own (orbax), Hugging Face safetensors, the shipped assets.

Layer: above `models`; below `decoding` and everything that loads a model."""
