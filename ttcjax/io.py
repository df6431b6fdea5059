"""Writing files atomically: a reader sees the old file or the new one, never half of one; reading back what was
written, with damage named by file and line; and binding a run directory to its config and code.

A run directory is bound to its config and to ttcjax's version (`bind_run_dir`). A rerun under another config or
another ttcjax version stops before any work unless told what to do (--continue, logged; --fresh). Another git
commit of the same version goes on, with a warning printed and written to that invocation's run_log.jsonl entry
(`warning`): most commits between versions change no result, and refusing every resume after each commit would
stop long runs for nothing; a change that affects results raises the version (ttcjax/version.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import yaml

from ttcjax.version import __version__

TEMPORARY = ".tmp-"  # in the name of a file `atomic_path` is writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed. The name is
    unique to this call (not only to this process id, which another host of a shared file system may share)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}{TEMPORARY}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def _carry(source: str, target: str) -> None:
    """`source` (a file, a directory or a link) at `target` too, without changing `source`."""
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    elif os.path.isdir(source):
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True) -> Iterator[str]:
    """Yield a new, empty directory beside `path` (in the same parent) to write a whole directory into; on success
    it takes `path`'s place, on error it is removed and `path` is untouched.

    The swap: the entries of the old directory that the new one lacks and `keep(name)` accepts are carried over
    first (hard links, or copies; the old directory is not changed), the old directory is renamed aside, the new
    one renamed to `path`, and only then is the old one removed. A crash at any point leaves a complete directory:
    the old one at `path` (a half-written .NAME.tmp-PID-N beside it); between the two renames, the old one at
    .NAME.tmp-PID-N.old and the new one, complete, at .NAME.tmp-PID-N; or the new one at `path`."""
    path = os.path.realpath(os.fspath(path))  # a link to a directory: the directory it names is replaced
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    for attempt in itertools.count():
        new = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{attempt}")
        try:
            os.mkdir(new)
            break
        except FileExistsError:
            continue
    try:
        yield new
        if os.path.isdir(path):
            for entry in sorted(os.listdir(path)):
                if keep(entry) and not os.path.lexists(os.path.join(new, entry)):
                    _carry(os.path.join(path, entry), os.path.join(new, entry))
            aside = new + ".old"
            os.rename(path, aside)
            try:
                os.rename(new, path)
            except BaseException:
                os.rename(aside, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)  # the new directory is in place: a leftover is only space
        else:
            os.rename(new, path)
    finally:
        if os.path.isdir(new):
            shutil.rmtree(new)


def strict(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf: not JSON) as None, so what ttcjax writes is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """`value` as strict JSON text (non-finite numbers as null): what ttcjax prints or writes."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def json_line(record: Any) -> str:
    """One strict-JSON line (non-finite numbers as null)."""
    return json_text(record) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (non-finite numbers as null), indented, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(strict(data), f, indent=2, allow_nan=False)


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """A JSON file (ttcjax writes them atomically: whole or absent); a damaged one is one ValueError naming the file
    and `fix`."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except ValueError as e:  # a JSON or a UTF-8 decoding error
        raise ValueError(f"{os.fspath(path)}: damaged, not valid JSON ({e}); {fix}") from None


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), repair: bool = False,
               fix: str = "repair or remove that line") -> list[dict[str, Any]]:
    """The records (JSON objects holding every `required` key) of a JSONL file ttcjax appends to, in file order.

    Each line is written whole with its newline, so only a last line with no newline after it can be cut by an
    interruption: it is dropped (with `repair`, the file is cut there, so appending goes on after the last whole
    record). Any other line that is not such a record, before the last or last and ending in a newline (written
    whole: damage, not an interruption), is one ValueError naming the file, the line and `fix`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")  # the last item is what follows the last newline: nothing, or a cut line
    records, good = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            missing = [key for key in required if key not in record]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except ValueError as e:  # a JSON or a UTF-8 decoding error, or not a record
            if number == len(lines):  # no newline after it: cut by an interruption, so redone
                break
            raise ValueError(f"{path}:{number}: damaged ({e}); {fix}") from None
        records.append(record)
        good += len(line) + 1
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


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


BOUND_WHEN_SET = {"bound_when_set": True}  # the metadata of a config field that `bound_fields` leaves out at its default


def bound_fields(config, leave_out: tuple[str, ...] = ("out_dir", "mesh")) -> dict[str, Any]:
    """A config (a dataclass, or its JSON form) as what a run directory is bound to: without where it lives and
    how it is sharded (neither changes a result), so a directory can move or resume on other hardware."""
    if isinstance(config, Mapping):
        return {k: v for k, v in config.items() if k not in leave_out}
    # a field added after runs were made is bound only where it is set: at its default, a run directory made
    # before it existed is still the same run (dataclasses.field(metadata=BOUND_WHEN_SET))
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in leave_out
            and not (f.metadata.get("bound_when_set") and getattr(config, f.name) == f.default)}


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
    whether the package's files differ from it (`bind_run_dir` refuses another version and warns of another commit;
    uncommitted edits are recorded, not told apart)."""
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
    """The invocations a run directory has seen (oldest first), as `read_jsonl` reads them: a line cut by a kill
    is left out, a damaged one named by file and line."""
    return read_jsonl(os.path.join(os.fspath(out_dir), RUN_LOG_FILE),
                      fix="remove that line, or move the run directory away to start afresh.")


def _bound_config(path: str) -> dict[str, Any]:
    """The config a run directory is bound to (its run_config.json)."""
    config = read_json(path, "move the directory away or delete that file to start afresh.")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: damaged, not a JSON object; move the directory away or delete that file to start "
                         "afresh.")
    return config


def _changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The keys whose values differ between two configs, as key: [before, now]."""
    return {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}


def config_changes(out_dir: str | os.PathLike, config: dict[str, Any]) -> list[str] | None:
    """The keys whose values differ between the config `out_dir` is bound to and `config`, compared as
    `bind_run_dir` compares them; None where no run has bound the directory."""
    path = os.path.join(os.fspath(out_dir), RUN_CONFIG_FILE)
    if not os.path.exists(path):
        return None
    return sorted(_changed(_bound_config(path), json.loads(json_text(config))))


RUN_DIR_LOCK = ".run_dir.lock"  # held while run_config.json and run_log.jsonl are read and rewritten


def _lock(path: str) -> int | None:
    """An exclusive fcntl lock on the file `path` (made if absent): its descriptor, or None where the file system
    has no locks. The holder removes the file on release, so a waiter that then gets the lock of a removed file
    takes the new one instead."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


_THREADS_LOCK = threading.RLock()  # one thread of this process at a time in `_run_dir_lock`


@contextlib.contextmanager
def _run_dir_lock(out: str) -> Iterator[None]:
    """Hold `out`'s lock while its run_config.json and run_log.jsonl are read and rewritten: jobs that start on one
    run directory at once (a job array on a shared file system) bind it one after another, and none loses another's
    log entry. On a file system without locks, as before: each file is still replaced whole, never torn. fcntl
    locks belong to a process, not a thread, so threads of one process (an `invocation_clock` beside its run) take
    a process-wide lock first."""
    lock = os.path.join(out, RUN_DIR_LOCK)
    with _THREADS_LOCK:
        fd = _lock(lock)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            if fd is not None:
                os.close(fd)


def _files_in(out: str) -> list[str]:
    """The files a run directory holds, without the locks and the temporary files of writes under way."""
    return sorted(n for n in os.listdir(out) if n != RUN_DIR_LOCK and not n.startswith(HOLD_PREFIX)
                  and not (n.startswith(".") and TEMPORARY in n))


HOLD_PREFIX = ".held"  # .held[-ROLE].lock: locked by the invocations doing the run or that part of it, while they run
_HOLDS: dict[str, tuple[int, bool]] = {}  # this process's holds: the lock file's real path -> (descriptor, shared)
_SPLIT = re.compile(r"-\d+-of-")  # a role's place in its split: "job-1-of-4" and "job-3-of-4" split a run alike


def _hold(out: str, role: str, command: str) -> list[str]:
    """Hold `out` for `role` (the part of the run this invocation does: "" for all of it, or its job of an array and
    its process of several, `ttcjax.distributed.run_role`) until `release_run_dir` or the process ends, so that no
    two invocations write the same records: the whole run holds .held.lock alone; a part shares .held.lock with the
    other parts and holds .held-ROLE.lock alone, and stops if a part of another split of the run (another count of
    jobs or processes) is running. A second invocation that would overlap stops at once, naming the holder. A
    process may hold a directory again (a run resumed in the same process). Each lock file names its (last) holder;
    where the file system has no locks, nothing is held. Returns the keys of the holds this call took."""
    took: list[str] = []
    try:
        took.append(_take(os.path.join(out, f"{HOLD_PREFIX}.lock"), out, command, role, shared=bool(role)))
        if role:
            _check_split(out, role)
            took.append(_take(os.path.join(out, f"{HOLD_PREFIX}-{role}.lock"), out, command, role, shared=False))
    except BaseException:
        for key in took:
            if key:
                _let_go(key)
        raise
    return [key for key in took if key]


def _take(path: str, out: str, command: str, role: str, shared: bool) -> str | None:
    """flock `path` (shared or alone) for this process; its key, or None where this process holds it already or the
    file system has no locks."""
    key = os.path.realpath(path)
    if key in _HOLDS:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another invocation"
            time.sleep(0.05)
            moved = not _same_file(path, fd)  # its last holder was letting go of it (and removing it): try again
            os.close(fd)
            if moved:
                continue
            raise ValueError(f"{out} is in use: {holder} is running in it; wait for it to end (or stop it) and "
                             "rerun, or use another out_dir.") from None
        except OSError:  # no locks on this file system
            os.close(fd)
            return None
        if not _same_file(path, fd):  # its holder released it (and removed the file) after we opened it
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"`ttcjax {command}`{' (' + role + ')' if role else ''} (pid {os.getpid()} on "
                     f"{os.uname().nodename}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})".encode())
        _HOLDS[key] = (fd, shared)
        return key


def run_holder(out_dir: str | os.PathLike) -> str | None:
    """Who is running in `out_dir` now: the text each hold names (`_hold`: the whole run, or each job's and
    process's part), or None where no invocation holds it (or the file system has no locks). It probes each hold
    for an instant and writes nothing: an invocation starting in that instant would stop as if the directory were
    in use."""
    out = os.fspath(out_dir)
    try:
        names = sorted(n for n in os.listdir(out) if n.startswith(HOLD_PREFIX) and n.endswith(".lock"))
    except FileNotFoundError:
        return None
    holders = []
    for name in names:
        try:
            fd = os.open(os.path.join(out, name), os.O_RDWR)  # writable: where flock is emulated by POSIX locks
        except (FileNotFoundError, PermissionError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another invocation"
            if holder not in holders:
                holders.append(holder)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing releases a lock the probe took
    return "; ".join(holders) or None


def _same_file(path: str, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st, ft = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (ft.st_dev, ft.st_ino)


def _check_split(out: str, role: str) -> None:
    """Stop where a part of another split of the run in `out` holds it (jobs of 2 beside jobs of 4)."""
    mine = _SPLIT.sub("-of-", role)
    for name in sorted(os.listdir(out)):
        other = name[len(HOLD_PREFIX) + 1:-len(".lock")] if name.startswith(HOLD_PREFIX + "-") else None
        if not other or not name.endswith(".lock") or _SPLIT.sub("-of-", other) == mine:
            continue
        try:
            fd = os.open(os.path.join(out, name), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another invocation"
            raise ValueError(f"{out} is in use: {holder} is running another split of the run in it ({other}, where "
                             f"this is {role}); wait for it to end, or run the same split.") from None
        except OSError:
            pass
        finally:
            os.close(fd)


def _let_go(key: str, path: str | None = None) -> None:
    """Let go of the hold `key`, and remove its lock file (at `path`, where the directory has moved) unless another
    invocation shares it or the file is no longer this hold's."""
    fd, shared = _HOLDS.pop(key)
    path = path or key
    try:
        if shared:  # the last of the parts that share it removes it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(path, fd):
            os.remove(path)
    except OSError:  # another part still holds it, or it is gone
        pass
    finally:
        os.close(fd)


def release_run_dir(out_dir: str | os.PathLike) -> None:
    """Let go of this process's holds on `out_dir` (`bind_run_dir` took them; `invocation_clock` lets go of them
    when its block ends)."""
    inside = os.path.join(os.path.realpath(out_dir), "")
    for key in [k for k in _HOLDS if k.startswith(inside)]:
        _let_go(key)


def bind_run_dir(out_dir: str | os.PathLike, config: dict[str, Any], command: str, rerun: str = "resume",
                 write: bool = True, machine: Mapping[str, Any] | None = None, role: str = "") -> str | None:
    """Make `out_dir` belong to `config` (JSON-ready) and to the code that runs it: the first run writes the config to
    run_config.json, and every invocation is appended to run_log.jsonl (time, command, code version, what changed,
    the `machine` it runs on where given, an id that `finish_invocation` finds it by). A rerun with a different
    config or ttcjax version stops before any work, naming what differs, unless `rerun` says what to do on purpose:
    "fresh" moves the earlier run aside (to OUT_DIR.before-TIME: nothing is deleted) and starts anew; "continue"
    goes on in it with the new config, logging the keys that changed. A rerun from another git commit of the same
    version goes on, the commits named in a warning printed to stderr and kept in its run-log entry. Several
    invocations may bind one directory at once (the jobs of a job array): they do it one after another, under the
    directory's lock. `write=False` (every process of a run but the one that writes shared files) makes the
    directory and, for a plain resume, checks its config; it moves, writes and logs nothing. The invocation then
    holds the directory for its `role` (`_hold`) until `release_run_dir` (`invocation_clock` calls it when its
    block ends): a second invocation that would overlap it stops here while the first runs, and --fresh does not
    move a directory any invocation holds. Returns the invocation's id (None with `write=False`)."""
    if rerun not in RERUN_MODES:
        raise ValueError(f"rerun={rerun!r}: choose one of {', '.join(RERUN_MODES)}.")
    check_output_dir(out_dir)
    out = os.fspath(out_dir)
    path = os.path.join(out, RUN_CONFIG_FILE)
    config = json.loads(json_text(config))  # the form it takes on disk (tuples as lists, non-finite as null)
    flags = "pass --continue to go on in it on purpose, --fresh to move it aside and start anew, or use another out_dir"
    if not write:
        # the writing process moves or rebinds the directory; a plain resume is checked here too
        if rerun == "resume" and os.path.exists(path) and (differ := _changed(_bound_config(path), config)):
            raise ValueError(f"{out_dir} holds the `ttcjax {command}` run of another config (keys that differ: "
                             f"{sorted(differ)}); {flags}.")
        os.makedirs(out, exist_ok=True)
        _hold(out, role, command)
        return None
    if rerun == "fresh" and os.path.isdir(out) and _files_in(out):
        release_run_dir(out)  # an earlier invocation of this process let go of it
        held = _hold(out, "", command)  # no run, nor any part of one, goes on in it: it is not moved from under them
        aside = f"{os.path.normpath(out)}.before-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        while os.path.exists(aside):
            aside += "x"
        try:
            os.rename(out, aside)
        finally:
            moved = os.path.exists(aside)
            for key in held:
                _let_go(key, os.path.join(aside, os.path.basename(key)) if moved else None)
        print(f"ttcjax {command}: --fresh: the earlier run in {out} is now {aside}", file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    took = _hold(out, role, command)
    try:
        return _bind(out, out_dir, path, config, command, rerun, flags, machine)
    except BaseException:
        for key in took:  # refused: nothing of this invocation stays behind
            _let_go(key)
        raise


def _bind(out: str, out_dir, path: str, config: dict[str, Any], command: str, rerun: str, flags: str,
          machine: Mapping[str, Any] | None) -> str:
    """`bind_run_dir`'s check and record, under the directory's lock."""
    with _run_dir_lock(out):
        code, changed, warning = code_version(), {}, None
        present = _files_in(out)  # once: where locks do nothing, another job may be binding it meanwhile
        log = read_run_log(out)
        if RUN_CONFIG_FILE in present:
            changed = _changed(_bound_config(path), config)
            made_by = log[-1].get("code", {}) if log else {}
            other_version = bool(made_by) and made_by.get("version") != code.get("version")
            if (changed or other_version) and rerun != "continue":
                what = [f"keys that differ: {sorted(changed)}"] if changed else []
                if other_version:
                    what.append(f"made by {_code_name(made_by)}, this is {_code_name(code)}")
                raise ValueError(f"{out_dir} holds the `ttcjax {command}` run of another "
                                 f"{'config' if changed else 'code version'} ({'; '.join(what)}); {flags}.")
            if made_by and not other_version and made_by.get("commit") != code.get("commit"):
                warning = (f"{out_dir} was last run by {_code_name(made_by)}, this is {_code_name(code)}: the same "
                           "version at another commit goes on in it; its records may mix the two commits' results")
                print(f"ttcjax {command}: warning: {warning}", file=sys.stderr)
            if changed:
                write_json(path, config)
        else:
            if present and rerun != "continue":
                raise ValueError(f"{out_dir} holds files but no {RUN_CONFIG_FILE} (not a ttcjax run, or one made "
                                 "before runs were bound to their config), so its results cannot be told apart from "
                                 f"this config's; {flags}.")
            if present:
                changed = {"adopted": [None, present]}  # continued on purpose: what was there
            write_json(path, config)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command, "rerun": rerun,
                 "code": code, "invocation": secrets.token_hex(8)}
        if changed:
            entry["changed"] = changed  # key: [before, now], continued on purpose
        if warning:
            entry["warning"] = warning
        if machine:
            entry["machine"] = dict(machine)
        write_jsonl(os.path.join(out, RUN_LOG_FILE), log + [entry])
    return entry["invocation"]


def _set_in_entry(out: str, invocation: str | None, field: str, value: Any) -> tuple[list[dict[str, Any]], bool]:
    """Set `field` in the latest run-log entry of `invocation` (by default the log's last entry), under the run
    directory's lock; return the log as it now stands and whether it had such an entry."""
    with _run_dir_lock(out):
        log = read_run_log(out)
        mine = [e for e in log if e.get("invocation") == invocation] if invocation else log[-1:]
        if mine:
            mine[-1][field] = value
            write_jsonl(os.path.join(out, RUN_LOG_FILE), log)
        return log, bool(mine)


def finish_invocation(out_dir: str | os.PathLike, seconds: float, invocation: str | None = None) -> dict[str, Any]:
    """Record that the invocation `invocation` (the id `bind_run_dir` returned; by default the run log's last entry)
    finished after `seconds`, and return the totals over every invocation: how many, how many were interrupted
    (killed, failed, or still running), the seconds they all spent (an interrupted one counts the time its
    `invocation_clock` last recorded; one without a clock counts none) and the machines they ran on."""
    log, _ = _set_in_entry(os.fspath(out_dir), invocation, "seconds", seconds)
    return run_totals(log)


def run_totals(log: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The totals over a run log's invocations (`read_run_log`), as `finish_invocation` returns them."""
    finished = [e for e in log if _number(e.get("seconds"))]
    interrupted = [e.get("running_seconds") for e in log if not _number(e.get("seconds"))]
    totals = {"invocations": len(log), "interrupted_invocations": len(log) - len(finished),
              "seconds": sum(e["seconds"] for e in finished) + sum(s for s in interrupted if _number(s))}
    machines = list({json_text(e["machine"]): e["machine"] for e in log if isinstance(e.get("machine"), dict)}.values())
    if machines:
        totals["machines"] = machines
    return totals


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@contextlib.contextmanager
def invocation_clock(out_dir: str | os.PathLike, invocation: str | None, every: float = 60.0) -> Iterator[None]:
    """While the block runs, record in `invocation`'s run-log entry every `every` seconds how long it has been
    running (`running_seconds`), so that a run killed before `finish_invocation` still counts the time it spent, to
    within `every`, in the totals of the run that resumes it. Nothing is recorded where `invocation` is None (a
    process that writes no shared files). When the block ends, however it ends, the invocation lets go of the
    directory (`release_run_dir`): a run stopped by an exception in a notebook does not keep it held."""
    if invocation is None:
        try:
            yield
        finally:
            release_run_dir(out_dir)
        return
    out, started, stop = os.fspath(out_dir), time.perf_counter(), threading.Event()

    def record() -> None:
        while not stop.wait(every):
            try:
                if not _set_in_entry(out, invocation, "running_seconds", round(time.perf_counter() - started, 1))[1]:
                    return
            except (OSError, ValueError):  # the directory moved or the log was damaged: the run's own work goes on
                return

    clock = threading.Thread(target=record, name=f"ttcjax-clock-{invocation}", daemon=True)
    clock.start()
    try:
        yield
    finally:
        stop.set()
        clock.join()
        release_run_dir(out_dir)


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
