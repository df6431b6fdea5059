"""Per-question records (JSONL), written in batches, resumable, and split across processes and jobs.

A stage's questions go in batches fixed by the question list alone: batch b holds questions [b*k, (b+1)*k) for
the stage's batch size k. A batch's results depend on its questions and the run's seed only, never on the
process that runs it, the other batches, or an earlier interruption, so any split gives the records one
uninterrupted process would write.

With P processes (`ttcjax.distributed`), process p runs batches p, p + P, p + 2P, ... on its own devices and
appends each batch's records to its own shard, `<name>.shard-<p>-of-<P>.jsonl` beside `<name>.jsonl`, as soon as
the batch is done. A rerun skips every question already written in the file or in any shard (from any process
or job count), and redoes a batch only for the questions missing from it. Then one process `merge`s: every
question exactly once across the file and its shards (else a ValueError naming what is missing or twice), written
in question order to `<name>.jsonl` (the file one process writes), the shards removed. The run directory must lie
on a file system every process sees.

With J independent jobs (a job array: no coordinator between them, each possibly several processes itself), job
K runs batches K, K + J, K + 2J, ... of every stage, split again among its own P processes (process p takes
K + pJ, K + (p + P)J, ...), and writes `<name>.job-<K>-of-<J>.jsonl` (one process) or
`<name>.job-<K>-of-<J>.shard-<p>-of-<P>.jsonl`: names no other job or process writes. A job never merges: a later
run without a job merges every shard, naming the jobs whose share is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Callable, Iterable, Sequence

from ttcjax.distributed import process_count, process_index
from ttcjax.io import json_line, read_jsonl, write_jsonl
from ttcjax.tasks.base import ProblemRecord

SHARD = ".shard-{process}-of-{processes}"
JOB = ".job-{index}-of-{count}"


@dataclasses.dataclass(frozen=True)
class Job:
    """Job `index` of `count` independent jobs over one run directory (a job array), counted from 0."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, flag: str = "--job") -> "Job":
        """A job written K/J (`--job 2/8`), checked: one ValueError naming the flag, the value and the fix."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"{flag} {text!r}: write K/J, job K of J counted from 0, e.g. {flag} 0/4 (in a SLURM "
                             f"array of 4 jobs, --array=0-3: {flag} $SLURM_ARRAY_TASK_ID/4).")
        index, count = map(int, match.groups())
        if count < 1:
            raise ValueError(f"{flag} {text}: J, the number of jobs, must be at least 1.")
        if index >= count:
            raise ValueError(f"{flag} {text}: K must lie in 0 .. {count - 1} (jobs are counted from 0); "
                             f"e.g. {flag} {count - 1}/{count}.")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_job_rerun(job: Job | None, rerun: str) -> None:
    """A job of an array cannot start afresh on its own: --fresh would move the other jobs' work aside."""
    if job is not None and rerun == "fresh":
        raise ValueError(f"--fresh with --job {job}: each job would move the others' work aside; move the run "
                         "directory away yourself (or name another out_dir), then start the jobs without --fresh.")


def job_done(command: str, job: Job, out_dir: str, waiting: str) -> str:
    """The line a job of an array ends with: what it wrote, what waits for every job's shards, what to run next."""
    return (f"ttcjax {command}: job {job} has written its share of every stage in {out_dir} "
            f"(*{JOB.format(index=job.index, count=job.count)}*.jsonl); {waiting} waits for the shards of all "
            f"{job.count} jobs: once every job is done, run the same command without --job to merge them (a job that "
            "failed: run it again with the same --job; it resumes).")


def shard_path(path: str, process: int, processes: int, job: Job | None = None) -> str:
    """Where process `process` of `processes` (of `job`, where it is one of a job array) writes its records of the
    stage whose merged file is `path`: `<name>[.job-K-of-J][.shard-p-of-P].jsonl`, the process part left out for
    a job of one process."""
    root, ext = os.path.splitext(path)
    if job is not None:
        root += JOB.format(index=job.index, count=job.count)
    if job is None or processes > 1:
        root += SHARD.format(process=process, processes=processes)
    return root + ext


def _shards(path: str) -> list[tuple[str, Job | None]]:
    """Every shard of `path` on disk (any process or job count) with the job that wrote it, sorted by name."""
    directory, name = os.path.split(path)
    root, ext = os.path.splitext(name)
    pattern = re.compile(re.escape(root) + r"(?:\.job-(\d+)-of-(\d+))?(?:\.shard-(\d+)-of-(\d+))?" + re.escape(ext))
    try:
        names = sorted(os.listdir(directory or "."))
    except FileNotFoundError:
        return []
    out = []
    for found in names:
        match = pattern.fullmatch(found)
        if not match or not any(match.groups()):
            continue
        job = Job(int(match[1]), int(match[2])) if match[1] is not None else None
        if job is None or 0 <= job.index < job.count:  # a name no job writes (job-3-of-2) is no shard
            out.append((os.path.join(directory, found), job))
    return out


def shard_paths(path: str) -> list[str]:
    """Every shard of `path` on disk (from any process or job count), sorted."""
    return [shard for shard, _ in _shards(path)]


def job_counts(paths: Iterable[str]) -> tuple[int, ...]:
    """The job counts J of the job arrays whose shards of these stages are on disk (none: no job wrote them, or
    their shards are merged)."""
    return tuple(sorted({job.count for path in paths for _, job in _shards(path) if job is not None}))


def read_lines(path: str, repair: bool = False, fields: Sequence[str] = ()) -> list[dict]:
    """The complete records of a JSONL file (each with an "id" and every one of `fields`), in file order
    (`ttcjax.io.read_jsonl`): a last line cut by an interruption is dropped (and with `repair`, the file cut there,
    so appending goes on after the last whole record); any other damaged line is an error naming the file and the
    line."""
    return read_jsonl(path, ("id", *fields), repair,
                      fix="move the file away to redo its questions, or repair the line.")


def my_batches(count: int, per_batch: int, job: Job | None = None) -> range:
    """The batch indices this process runs of `count` questions in batches of `per_batch`: of a plain run, batches
    p, p + P, ...; of a job K of J, batches K + pJ, K + (p + P)J, ... (process p of P)."""
    first, step = (job.index, job.count) if job is not None else (0, 1)
    return range(first + step * process_index(), -(-count // per_batch), step * process_count())


def my_questions(count: int, per_batch: int, job: Job | None = None) -> int:
    """How many of `count` questions this process's batches hold."""
    return sum(len(range(b * per_batch, min(count, (b + 1) * per_batch))) for b in my_batches(count, per_batch, job))


def run_batches(path: str, problems: Sequence[ProblemRecord], per_batch: int,
                work: Callable[[int, Sequence[ProblemRecord]], list[dict]], bar=None, job: Job | None = None) -> None:
    """Run `work(start, batch)` (one record per question of `batch`, which starts at question `start`) for this
    process's batches (of `job`'s share, where it is one job of an array) that miss a record, appending the missing
    records to this process's file (`path` itself for one process of a plain run, else its shard) after each batch.
    `bar` counts this process's questions."""
    own = path if job is None and process_count() == 1 else shard_path(path, process_index(), process_count(), job)
    os.makedirs(os.path.dirname(os.path.abspath(own)), exist_ok=True)
    done = {r["id"] for r in read_lines(own, repair=True)}
    for other in [path] + shard_paths(path):  # others' files are read, never cut: they may be being written
        if other != own:
            done.update(r["id"] for r in read_lines(other))
    with contextlib.ExitStack() as stack:
        out = None  # opened at the first record to write: a process or job with nothing to do leaves no shard
        for b in my_batches(len(problems), per_batch, job):
            batch = problems[b * per_batch:(b + 1) * per_batch]
            missing = [p for p in batch if p.id not in done]
            if bar is not None:
                bar.update(len(batch) - len(missing))
            if not missing:
                continue
            records = work(b * per_batch, batch)
            out = out or stack.enter_context(open(own, "a"))
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


def missing_shares(path: str, problems: Sequence[ProblemRecord], missing: Sequence[str], per_batch: int,
                   counts: Iterable[int]) -> list[tuple[Job, str]]:
    """For questions `missing` from the stage `path`, the jobs whose share they are (for each job count J in
    `counts`), each with 'job K/J misses m of its n questions (its shards on disk, or none)'."""
    index = {p.id: i for i, p in enumerate(problems)}
    batches = -(-len(problems) // per_batch)
    shards = _shards(path)
    out = []
    for count in counts:
        owed: dict[int, int] = {}
        for qid in missing:
            owner = index[qid] // per_batch % count
            owed[owner] = owed.get(owner, 0) + 1
        for k in sorted(owed):
            job = Job(k, count)
            share = sum(min(per_batch, len(problems) - b * per_batch) for b in range(k, batches, count))
            files = [os.path.basename(shard) for shard, j in shards if j == job]
            root, ext = os.path.splitext(os.path.basename(shard_path(path, 0, 1, job)))
            where = ", ".join(files) if files else f"no {root}*{ext} on disk"
            out.append((job, f"job {job} misses {owed[k]} of its {share} questions ({where})"))
    return out


def merge(path: str, problems: Sequence[ProblemRecord], per_batch: int | None = None,
          counts: Iterable[int] = (), fields: Sequence[str] = ()) -> list[dict]:
    """The records of every question, in question order, from `path` and its shards (of processes and of jobs),
    checked: each holding `fields` (`read_lines`), each question exactly once (a record both in `path` and in a
    shard, left by an interrupted merge, counts once where the two agree). `path` is rewritten in question order
    where it was not already, then the shards are removed. Where questions are missing and jobs wrote the stage (in
    batches of `per_batch`; job counts from the shards on disk, and `counts` for a stage no job wrote yet), the error
    names the jobs to rerun."""
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
        head = f"{path}: {len(missing)} of {len(problems)} questions have no record (first: {missing[:5]})"
        counts = sorted(set(counts) | set(job_counts([path])))
        if per_batch is not None and counts:
            shares = missing_shares(path, problems, missing, per_batch, counts)
            rerun = ", ".join(f"--job {job}" for job, _ in shares)
            raise ValueError(f"{head}; {'; '.join(text for _, text in shares)}: a job stopped before its share was "
                             f"done or has not run; run the same command with {rerun} (each resumes where it "
                             "stopped), then this command again.")
        raise ValueError(f"{head}; a process stopped before its share was done: rerun the same command to finish "
                         "them.")
    records = [merged[p.id] for p in problems]
    if shards or [r["id"] for r in main] != [p.id for p in problems]:
        write_jsonl(path, records)
    for source in shards:
        os.remove(source)
    return records
