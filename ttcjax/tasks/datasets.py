"""One entry point for every built-in and benchmark data set: `load_dataset(name, path)`."""

from __future__ import annotations

from pathlib import Path

from ttcjax.tasks import arithmetic
from ttcjax.tasks.base import ProblemRecord
from ttcjax.tasks.benchmarks import (DATASETS, NEVER_DOWNLOADS, arithmetic_record, load_arithmetic, load_gsm8k,
                                     load_math, load_math500, missing_data_error)
from ttcjax.tasks.tfds_builders import load_real

__all__ = ["DATASETS", "load_dataset"]


def load_dataset(name: str, path: str | Path | None = None, split: str = "test",
                 limit: int | None = None) -> list[ProblemRecord]:
    """Load ``name`` (one of :data:`DATASETS`) from a local ``path``; first ``limit`` records.

    For "arithmetic", ``path`` is optional: a :func:`arithmetic.to_jsonl` file if given, else
    ``limit`` (default 100) problems generated with seed 0.

    For "math", "math500" and "gsm8k", ``path`` may also be a tensorflow-datasets ``data_dir``
    built by :func:`ttcjax.tasks.tfds_builders.build_real` (recognised by its ``ttcjax_<name>``
    subdirectory); the records are then read from that array_record build and equal those of
    the loader over the original files.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if key == "arithmetic":
        if path is None:
            return load_arithmetic(split, 100 if limit is None else limit, 0)
        if not Path(path).is_file():
            raise FileNotFoundError(f"arithmetic file not found at {path}: write one with "
                                    "ttcjax.tasks.arithmetic.to_jsonl or omit path; " + NEVER_DOWNLOADS)
        records = [arithmetic_record(p) for p in arithmetic.from_jsonl(path)]
    elif path is None:
        raise missing_data_error(key, None, "")
    elif (Path(path) / f"ttcjax_{key}").is_dir():  # a tfds build
        records = load_real(key, path, "test" if key == "math500" else split)
    elif key == "math":
        records = load_math(path, split)
    elif key == "math500":
        records = load_math500(path)
    else:
        records = load_gsm8k(path, split)
    return records if limit is None else records[:limit]
