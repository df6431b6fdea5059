"""Local loaders for public math benchmarks, all returning :class:`ProblemRecord` lists.

Promises:

* Nothing here downloads anything. A missing file or directory raises ``FileNotFoundError``
  whose message says which file to fetch from the dataset's public source and where to put it.
* A malformed record raises ``ValueError`` naming the file, the line (JSONL; row for parquet)
  and the missing key or the parse problem.
* Record ids are stable across runs: MATH directory tree -> path relative to the MATH root
  (``test/algebra/1.json``); MATH-500 -> ``unique_id``; GSM8K -> ``gsm8k/<split>/<line index>``
  (0-based, blank lines not counted); MATH JSONL -> ``unique_id`` if present, else
  ``math/<split>/<index>``; arithmetic -> :attr:`ttcjax.tasks.arithmetic.Problem.id`.
* Order is deterministic: file order for JSONL/parquet; for the MATH tree, subjects sorted by
  name, then problems by their numeric file name.
* Parquet files (``*.parquet``) are read only when ``pyarrow`` is importable; otherwise an
  ``ImportError`` says to ``pip install pyarrow``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttcjax.tasks import arithmetic
from ttcjax.tasks.base import ProblemRecord
from ttcjax.tasks.grading import extract_answer

__all__ = ["ProblemRecord", "DATASETS", "load_math", "load_math500", "load_gsm8k",
           "load_arithmetic", "arithmetic_record", "missing_data_error", "NEVER_DOWNLOADS"]

DATASETS = ("math", "math500", "gsm8k", "arithmetic")
NEVER_DOWNLOADS = "ttcjax never downloads anything"
_HINTS = {
    "math": "download the Hendrycks MATH dataset (directory MATH/{train,test}/<subject>/<n>.json, "
            "or a JSONL export with keys problem/level/type/solution) from its public repository",
    "math500": "download test.jsonl of MATH-500 (HuggingFaceH4/MATH-500) from its public repository",
    "gsm8k": "download <split>.jsonl of GSM8K (openai/grade-school-math, grade_school_math/data/) "
             "from its public repository",
}
_CALC_RE = re.compile(r"<<[^<>]*>>")
_LEVEL_RE = re.compile(r"Level\s+(\d+)")


def missing_data_error(name: str, path: Path | None, what: str) -> FileNotFoundError:
    where = f"{what} not found at {path}" if path is not None else f"no path given for {name!r}"
    return FileNotFoundError(f"{where}: {_HINTS[name]} and pass --data-dir / path=...; {NEVER_DOWNLOADS}.")


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line/row number, decoded object) for each non-blank JSONL line or parquet row."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow "
                              "(or convert the file to JSONL)") from e
        yield from enumerate(pq.read_table(path).to_pylist(), 1)
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e


def _get(rec: Any, key: str, where: str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if key not in rec:
        raise ValueError(f"{where}: missing key {key!r} (keys: {sorted(rec)})")
    return rec[key]


def _level(raw: Any) -> int | str | None:
    """``"Level 3"`` or ``3`` -> 3; anything else (e.g. ``"Level ?"``) kept as given."""
    if isinstance(raw, int):
        return raw
    m = _LEVEL_RE.fullmatch(str(raw).strip()) if raw is not None else None
    return int(m.group(1)) if m else raw


def _math_record(rec: Any, rid: str, where: str, split: str, source: str) -> ProblemRecord:
    question, solution = _get(rec, "problem", where), _get(rec, "solution", where)
    answer = rec.get("answer") if isinstance(rec.get("answer"), str) else extract_answer(solution)
    if answer is None:
        raise ValueError(f"{where}: no 'answer' key and no \\boxed{{}} answer in the solution")
    meta = {"level": _level(rec.get("level")), "subject": rec.get("type", rec.get("subject")),
            "source": source, "split": split}
    return ProblemRecord(rid, question, str(answer), solution, meta)


def _file_key(p: Path) -> tuple:
    return (int(p.stem), "") if p.stem.isdigit() else (float("inf"), p.stem)


def load_math(path: str | Path, split: str = "test") -> list[ProblemRecord]:
    """Hendrycks MATH from a directory tree or a JSONL/parquet file.

    ``path`` may be the MATH root (holding ``<split>/<subject>/<n>.json``), the split directory
    itself, or a file with one ``{problem, level, type, solution}`` object per line. The answer
    is the file's ``answer`` key if present, else the last ``\\boxed{}`` of the solution.
    """
    path = Path(path)
    if not path.exists():
        raise missing_data_error("math", path, "MATH data")
    if path.is_file():
        out = []
        for i, (lineno, rec) in enumerate(_rows(path)):
            where = f"{path}:{lineno}"
            _get(rec, "problem", where)
            rid = str(rec.get("unique_id") or f"math/{split}/{i}")
            out.append(_math_record(rec, rid, where, split, "math"))
        return out
    root, split_dir = (path, path / split) if (path / split).is_dir() else (path.parent, path)
    if not split_dir.is_dir() or not any(split_dir.glob("*/*.json")):
        raise missing_data_error("math", split_dir, f"MATH split {split!r} (<subject>/<n>.json files)")
    out = []
    for subject_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        for f in sorted(subject_dir.glob("*.json"), key=_file_key):
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: invalid JSON: {e}") from e
            out.append(_math_record(rec, f.relative_to(root).as_posix(), str(f), split, "math"))
    return out


def _resolve_file(name: str, path: str | Path, split: str) -> Path:
    """``path`` itself if a file, else ``<path>/<split>.jsonl`` (or ``.parquet``)."""
    path = Path(path)
    if path.is_dir():
        for ext in (".jsonl", ".parquet"):
            if (path / f"{split}{ext}").is_file():
                return path / f"{split}{ext}"
        raise missing_data_error(name, path / f"{split}.jsonl", f"{split}.jsonl")
    if not path.is_file():
        raise missing_data_error(name, path, "file")
    return path


def load_math500(path: str | Path) -> list[ProblemRecord]:
    """MATH-500: JSONL with keys problem, solution, answer, subject, level, unique_id.
    ``path`` is the file or a directory holding ``test.jsonl``."""
    f = _resolve_file("math500", path, "test")
    out = []
    for lineno, rec in _rows(f):
        where = f"{f}:{lineno}"
        for key in ("answer", "unique_id"):
            _get(rec, key, where)
        out.append(_math_record(rec, str(rec["unique_id"]), where, "test", "math500"))
    return out


def load_gsm8k(path: str | Path, split: str = "test") -> list[ProblemRecord]:
    """GSM8K: JSONL with keys question, answer (``... #### <number>``). Reference answer = the
    number with commas removed; solution = the text before ``####`` with ``<<...>>``
    calculator annotations stripped. ``path`` is the file or a directory holding
    ``<split>.jsonl``."""
    f = _resolve_file("gsm8k", path, split)
    out = []
    for i, (lineno, rec) in enumerate(_rows(f)):
        where = f"{f}:{lineno}"
        question, text = _get(rec, "question", where), _get(rec, "answer", where)
        if "####" not in text:
            raise ValueError(f"{where}: answer has no '#### <number>' final answer")
        body, final = text.rsplit("####", 1)
        answer = final.strip().replace(",", "")
        if not answer:
            raise ValueError(f"{where}: empty final answer after '####'")
        meta = {"source": "gsm8k", "split": split}
        out.append(ProblemRecord(f"gsm8k/{split}/{i}", question, answer,
                                 _CALC_RE.sub("", body).strip(), meta))
    return out


def arithmetic_record(p: arithmetic.Problem) -> ProblemRecord:
    meta = {"difficulty": p.difficulty, "split": p.split, "expression": p.expression,
            "source": "arithmetic"}
    return ProblemRecord(p.id, arithmetic.format_prompt(p), str(p.answer),
                         arithmetic.format_solution(p), meta)


def load_arithmetic(split: str, n: int, seed: int,
                    config: arithmetic.TaskConfig | None = None) -> list[ProblemRecord]:
    """The built-in task as records: same problems/order as :func:`arithmetic.generate`;
    question = :func:`arithmetic.format_prompt` (ends with a newline), answer = ``str(answer)``,
    solution = :func:`arithmetic.format_solution`."""
    problems = arithmetic.generate(config or arithmetic.TaskConfig(), n, seed, split)
    return [arithmetic_record(p) for p in problems]


