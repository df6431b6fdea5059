"""Evaluation: the paper's experiment, sweeps, the compute-optimal scheduler, verifier evaluation.

Layer: the top library layer; only `cli` sits above it."""
