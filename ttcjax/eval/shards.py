"""Per-question records (JSONL), written in batches, resumable, and split across processes.

A stage's questions go in batches fixed by the question list alone: batch b holds questions [b*k, (b+1)*k) for
the stage's batch size k. A batch's results depend on its questions and the run's seed only, never on the
process that runs it, the other batches, or an earlier interruption, so any split gives the records one
uninterrupted process would write.

With P processes (`ttcjax.distributed`), process p runs batches p, p + P, p + 2P, ... on its own devices and
appends each batch's records to its own shard, `<name>.shard-<p>-of-<P>.jsonl` beside `<name>.jsonl`, as soon as
the batch is done. A rerun skips every question already written in the file or in any shard (from any process
count), and redoes a batch only for the questions missing from it. Then one process `merge`s: every question
exactly once across the file and its shards (else a ValueError naming what is missing or twice), written in
question order to `<name>.jsonl` (the file one process writes), the shards removed. The run directory must lie
on a file system every process sees.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Sequence

from ttcjax.distributed import process_count, process_index
from ttcjax.io import json_line, read_jsonl, write_jsonl
from ttcjax.tasks.base import ProblemRecord

SHARD = ".shard-{process}-of-{processes}"


def shard_path(path: str, process: int, processes: int) -> str:
    """Where process `process` of `processes` writes its records of the stage whose merged file is `path`."""
    root, ext = os.path.splitext(path)
    return root + SHARD.format(process=process, processes=processes) + ext


def shard_paths(path: str) -> list[str]:
    """Every shard of `path` on disk (from any process count), sorted."""
    root, ext = os.path.splitext(path)
    return sorted(glob.glob(glob.escape(root) + SHARD.format(process="*", processes="*") + ext))


def read_lines(path: str, repair: bool = False, fields: Sequence[str] = ()) -> list[dict]:
    """The complete records of a JSONL file (each with an "id" and every one of `fields`), in file order
    (`ttcjax.io.read_jsonl`): a last line cut by an interruption is dropped (and with `repair`, the file cut there,
    so appending goes on after the last whole record); any other damaged line is an error naming the file and the
    line."""
    return read_jsonl(path, ("id", *fields), repair,
                      fix="move the file away to redo its questions, or repair the line.")


def my_batches(count: int, per_batch: int) -> range:
    """The batch indices this process runs of `count` questions in batches of `per_batch`."""
    return range(process_index(), -(-count // per_batch), process_count())


def my_questions(count: int, per_batch: int) -> int:
    """How many of `count` questions this process's batches hold."""
    return sum(len(range(b * per_batch, min(count, (b + 1) * per_batch))) for b in my_batches(count, per_batch))


def run_batches(path: str, problems: Sequence[ProblemRecord], per_batch: int,
                work: Callable[[int, Sequence[ProblemRecord]], list[dict]], bar=None) -> None:
    """Run `work(start, batch)` (one record per question of `batch`, which starts at question `start`) for this
    process's batches that miss a record, appending the missing records to this process's file (`path` itself
    with one process, else its shard) after each batch. `bar` counts this process's questions."""
    processes = process_count()
    own = path if processes == 1 else shard_path(path, process_index(), processes)
    os.makedirs(os.path.dirname(os.path.abspath(own)), exist_ok=True)
    done = {r["id"] for r in read_lines(own, repair=True)}
    for other in [path] + shard_paths(path):  # others' files are read, never cut: they may be being written
        if other != own:
            done.update(r["id"] for r in read_lines(other))
    with open(own, "a") as out:
        for b in my_batches(len(problems), per_batch):
            batch = problems[b * per_batch:(b + 1) * per_batch]
            missing = [p for p in batch if p.id not in done]
            if bar is not None:
                bar.update(len(batch) - len(missing))
            if not missing:
                continue
            records = work(b * per_batch, batch)
            for p, record in zip(batch, records):
                if p.id not in done:
                    out.write(json_line(record))
                    done.add(p.id)
            out.flush()
            os.fsync(out.fileno())
            if bar is not None:
                bar.update(len(missing))


def without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def merge(path: str, problems: Sequence[ProblemRecord], fields: Sequence[str] = ()) -> list[dict]:
    """The records of every question, in question order, from `path` and its shards, checked: each holding
    `fields` (`read_lines`), each question exactly once (a record both in `path` and in a shard, left by an
    interrupted merge, counts once where the two agree). `path` is rewritten in question order where it was not
    already, then the shards are removed."""
    shards = shard_paths(path)
    order = {p.id: i for i, p in enumerate(problems)}
    merged: dict[str, dict] = {}
    where: dict[str, str] = {}
    main = read_lines(path, repair=True, fields=fields)
    for record in main:
        merged[record["id"]] = record
        where[record["id"]] = path
    for source in shards:
        seen_here: set[str] = set()
        for record in read_lines(source, fields=fields):
            qid = record["id"]
            if qid in seen_here or (qid in merged and where[qid] != path):
                raise ValueError(f"question {qid!r} is written twice ({where.get(qid, source)} and {source}); "
                                 "the shards do not split the questions: move the run directory away to start "
                                 "afresh.")
            if qid in merged and without_times(merged[qid]) != without_times(record):
                raise ValueError(f"question {qid!r} differs between {path} and {source}; move the run directory "
                                 "away to start afresh.")
            seen_here.add(qid)
            if qid not in merged:
                merged[qid], where[qid] = record, source
    stray = sorted(set(merged) - set(order))
    if stray:
        raise ValueError(f"{path}: records of questions {stray[:5]} that this run does not ask; the run directory "
                         "belongs to other questions (has the task's data changed?): move it away.")
    missing = [p.id for p in problems if p.id not in merged]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {len(problems)} questions have no record (first: {missing[:5]}); "
                         "a process stopped before its share was done: rerun the same command to finish them.")
    records = [merged[p.id] for p in problems]
    if shards or [r["id"] for r in main] != [p.id for p in problems]:
        write_jsonl(path, records)
    for source in shards:
        os.remove(source)
    return records
