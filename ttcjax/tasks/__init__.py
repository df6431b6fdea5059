"""Tasks and data: the built-in arithmetic task (with its exact step oracle), benchmark loaders (MATH,
MATH-500, GSM8K), grading, tensorflow-datasets builders.

Layer: above `decoding`; below `verifiers`."""
