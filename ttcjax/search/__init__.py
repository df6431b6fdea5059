"""Test-time search: strategies, the compiled episode, answer selection.

Layer: above `verifiers`; below `training` and `eval`."""
