"""Writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from ttcjax.version import __version__


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


def check_output_file(path: str | os.PathLike, flag: str = "--output", overwrite: bool = False) -> None:
    """Refuse, before any work, an output file that could not be written when the work is done (a directory in
    its place, a missing or unwritable directory to hold it) or that would replace an existing file without
    `overwrite`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory; name a file such as out.jsonl.")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{flag} {path}: the file exists; pass --overwrite to replace it (once the new one is "
                         "complete), or name another file.")
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


def check_inputs_exist(config, fields: Sequence[str], command: str) -> None:
    """The checkpoints and files a training config names (`fields` that are set), checked to exist before its run
    directory is made: one line naming the field and the path."""
    for field in fields:
        value = getattr(config, field, None)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"ttcjax {command}: {field}={value!r} must be a path (a checkpoint directory or file"
                             + (", or 'char'" if field == "tokenizer" else "") + ").")
        if value is not None and value != "char" and not os.path.exists(os.fspath(value)):
            raise ValueError(f"ttcjax {command}: {field}={value!r}: no such checkpoint directory or file; check the "
                             "path (nothing was written).")


RUN_LOG_FILE = "run_log.jsonl"
#: What a rerun into a directory made by another config or other code does: stop (resume only the same run),
#: move the earlier run aside and start anew (fresh), or go on in it on purpose (continue, the change logged).
RERUN_MODES = ("resume", "fresh", "continue")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code a run's results come from: ttcjax's version and, when it runs from a git checkout, the commit and
    whether the package's files differ from it (only version and commit are compared: edits are not told apart)."""
    package = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", package, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    edited = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".")) if commit else None
    return {"version": __version__, "commit": commit, "edited": edited}


def _code_name(code: Mapping[str, Any]) -> str:
    return f"ttcjax {code.get('version')}" + (f" at {str(code['commit'])[:12]}" if code.get("commit") else "")


def read_run_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The invocations a run directory has seen (oldest first). A line cut by a kill is left out; a damaged line
    before the last is reported by file and line."""
    path = os.path.join(os.fspath(out_dir), RUN_LOG_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if number == len(lines):  # the last line, cut by a kill mid-append (no newline after it)
                continue
            raise ValueError(f"{path}:{number}: damaged ({e}); remove that line, or move the run directory "
                             "away to start afresh.") from None
        entries.append(entry)
    return entries


def _bound_config(path: str) -> dict[str, Any]:
    """The config a run directory is bound to (its run_config.json)."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: damaged ({e}); move the directory away or delete that file to start "
                             "afresh.") from None


def _changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The keys whose values differ between two configs, as key: [before, now]."""
    return {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}


def bind_run_dir(out_dir: str | os.PathLike, config: dict[str, Any], command: str, rerun: str = "resume",
                 write: bool = True) -> None:
    """Make `out_dir` belong to `config` (JSON-ready) and to the code that runs it: the first run writes the config
    to run_config.json, and every invocation is appended to run_log.jsonl (time, command, code version, what
    changed). A rerun with a different config or code version stops before any work, naming what differs, unless
    `rerun` says what to do on purpose: "fresh" moves the earlier run aside (to OUT_DIR.before-TIME: nothing is
    deleted) and starts anew; "continue" goes on in it with the new config, logging the keys that changed.
    `write=False` (every process of a run but the one that writes shared files) makes the directory and, for a
    plain resume, checks it; it moves, writes and logs nothing."""
    if rerun not in RERUN_MODES:
        raise ValueError(f"rerun={rerun!r}: choose one of {', '.join(RERUN_MODES)}.")
    check_output_dir(out_dir)
    out = os.fspath(out_dir)
    path = os.path.join(out, RUN_CONFIG_FILE)
    config = json.loads(json.dumps(config))  # the form it takes on disk (tuples as lists)
    flags = "pass --continue to go on in it on purpose, --fresh to move it aside and start anew, or use another out_dir"
    if not write:
        # the writing process moves or rebinds the directory; a plain resume is checked here too
        if rerun == "resume" and os.path.exists(path) and (differ := _changed(_bound_config(path), config)):
            raise ValueError(f"{out_dir} holds the `ttcjax {command}` run of another config (keys that differ: "
                             f"{sorted(differ)}); {flags}.")
        os.makedirs(out, exist_ok=True)
        return
    if rerun == "fresh" and os.path.isdir(out) and os.listdir(out):
        aside = f"{os.path.normpath(out)}.before-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        while os.path.exists(aside):
            aside += "x"
        os.rename(out, aside)
        print(f"ttcjax {command}: --fresh: the earlier run in {out} is now {aside}", file=sys.stderr)
    code, changed = code_version(), {}
    log = read_run_log(out) if os.path.isdir(out) else []
    if os.path.exists(path):
        changed = _changed(_bound_config(path), config)
        made_by = log[-1].get("code", {}) if log else {}
        other_code = bool(made_by) and any(made_by.get(k) != code.get(k) for k in ("version", "commit"))
        if (changed or other_code) and rerun != "continue":
            what = [f"keys that differ: {sorted(changed)}"] if changed else []
            if other_code:
                what.append(f"made by {_code_name(made_by)}, this is {_code_name(code)}")
            raise ValueError(f"{out_dir} holds the `ttcjax {command}` run of another "
                             f"{'config' if changed else 'code version'} ({'; '.join(what)}); {flags}.")
        if changed:
            write_json(path, config)
    else:
        if os.path.isdir(out) and os.listdir(out) and rerun != "continue":
            raise ValueError(f"{out_dir} holds files but no {RUN_CONFIG_FILE} (not a ttcjax run, or one made before "
                             "runs were bound to their config), so its results cannot be told apart from this "
                             f"config's; {flags}.")
        if os.path.isdir(out) and os.listdir(out):
            changed = {"adopted": [None, sorted(os.listdir(out))]}  # continued on purpose: what was there
        os.makedirs(out, exist_ok=True)
        write_json(path, config)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command, "rerun": rerun,
             "code": code}
    if changed:
        entry["changed"] = changed  # key: [before, now], continued on purpose
    write_jsonl(os.path.join(out, RUN_LOG_FILE), log + [entry])


def finish_invocation(out_dir: str | os.PathLike, seconds: float) -> dict[str, Any]:
    """Record that this invocation (the run log's last entry) finished after `seconds`, and return the totals over
    every invocation: how many, how many were interrupted (no time recorded: killed or failed), the seconds of the
    finished ones."""
    out = os.fspath(out_dir)
    log = read_run_log(out)
    if log:
        log[-1]["seconds"] = seconds
        write_jsonl(os.path.join(out, RUN_LOG_FILE), log)
    timed = [e["seconds"] for e in log if isinstance(e.get("seconds"), (int, float))]
    return {"invocations": len(log), "interrupted_invocations": len(log) - len(timed), "seconds": sum(timed)}


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
