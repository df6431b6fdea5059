"""The decoding core: prefill, fork, gather and the compiled decode loop (`engine.Engine`).

Layer: above `models` and `checkpoints`; below `tasks`, `verifiers` and `search`."""
