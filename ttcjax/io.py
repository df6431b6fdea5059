"""Writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def check_options(cls, data: dict, source: str, required: tuple[str, ...] = ()) -> None:
    """Refuse keys that are not fields of the dataclass `cls`, and missing `required` ones, naming `source`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; allowed: {sorted(names)}.")
    for key in required:
        if key not in data:
            raise ValueError(f"{source}: {key} is required.")
