"""Writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml


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


def strict(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf: not JSON) as None, so what ttcjax writes is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def json_line(record: Any) -> str:
    """One strict-JSON line (non-finite numbers as null)."""
    return json.dumps(strict(record), allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (non-finite numbers as null), indented, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(strict(data), f, indent=2, allow_nan=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write one strict-JSON object per line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json_line(record))


def check_options(allowed, data: Mapping[str, Any], source: str, required: tuple[str, ...] = ()) -> None:
    """Refuse keys of a config mapping that are not `allowed` (the fields of a dataclass, or names in order) and
    missing `required` ones: one ValueError naming `source`, the key and the allowed keys."""
    names = [f.name for f in dataclasses.fields(allowed)] if dataclasses.is_dataclass(allowed) else list(allowed)
    for key in data:
        if key not in names:
            raise ValueError(f"{source}: unknown option {key!r}; allowed: {', '.join(names)}")
    for key in required:
        if key not in data:
            raise ValueError(f"{source}: {key} is required.")


def check_output_dir(path: str | os.PathLike, field: str = "out_dir") -> None:
    """Refuse, before any work, a directory that cannot be made or written: a file in its place, or a parent
    that cannot be written. One ValueError naming `field`, the path and the fix."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{field} {path}: is a file, not a directory; name a directory (new or existing).")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{field} {path}: not writable; choose a directory you can write to.")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the nearest existing ancestor is where the directory will be made
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{field} {path}: cannot be made ({parent} is not a writable directory); choose a "
                         "writable place.")


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse, before any work, an output file that could not be written when the work is done: a directory in
    its place, or a missing or unwritable directory to hold it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory; name a file such as out.jsonl.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write in {directory}; choose a writable place before anything "
                         "is computed.")


RUN_CONFIG_FILE = "run_config.json"


def bound_fields(config, leave_out: tuple[str, ...] = ("out_dir", "mesh")) -> dict[str, Any]:
    """A config (a dataclass, or its JSON form) as what a run directory is bound to: without where it lives and
    how it is sharded (neither changes a result), so a directory can move or resume on other hardware."""
    items = config.items() if isinstance(config, Mapping) else ((f.name, getattr(config, f.name))
                                                                 for f in dataclasses.fields(config))
    return {k: v for k, v in items if k not in leave_out}


def bind_run_dir(out_dir: str | os.PathLike, config: dict[str, Any], command: str, write: bool = True) -> None:
    """Make `out_dir` belong to `config` (JSON-ready): the first run writes it to run_config.json; a rerun
    with a different config stops before any work, naming the keys that differ. `write=False` (every process of
    a run but the one that writes shared files) checks and makes the directory, and writes nothing."""
    check_output_dir(out_dir)
    path = os.path.join(os.fspath(out_dir), RUN_CONFIG_FILE)
    config = json.loads(json.dumps(config))  # the form it takes on disk (tuples as lists)
    if os.path.exists(path):
        with open(path) as f:
            try:
                before = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: damaged ({e}); move the directory away or delete that file to start "
                                 "afresh.") from None
        differ = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
        if differ:
            raise ValueError(f"{out_dir} holds the `ttcjax {command}` run of another config (keys that differ: "
                             f"{differ}); use another out_dir, or delete it to start afresh.")
        return
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    if write:
        write_json(path, config)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what is wrong and where (line, column)."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or ' '.join(str(error).split())}{where}"


def read_yaml(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML mapping from a file, with `key=value` overrides applied (values in YAML; dotted keys reach into
    mappings: `search.max_len=192`, `task.path=data/gsm8k`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: config file not found.")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; pass a YAML config file such as configs/sweep-tiny.yaml.")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({yaml_problem(e)}); fix the file there.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of option: value.")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: write key=value, e.g. questions=32 or search.max_len=192.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({yaml_problem(e)}); quote it, e.g. "
                             "'key=\"text\"'.") from None
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty mapping written as `key:`
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a mapping in {path}.")
        node[parts[-1]] = value
    return data
