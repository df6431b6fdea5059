"""Training: the loop (AdamW, warmup + cosine, orbax, resume), policy SFT, reward-model training on
Monte-Carlo labels.

Layer: above `search`; below `eval`."""
