"""Answer extraction and equivalence grading for math solutions.

Promises:

* ``extract_answer`` never raises; it returns the stripped raw answer string or ``None``.
* ``answers_equal`` / ``grade`` never raise and never hang: each symbolic comparison runs in a
  persistent worker *process* (``spawn`` context, so it is safe beside JAX's threads) and the
  parent waits at most ``timeout_s`` seconds for the result.  A worker that overruns is killed
  and a fresh one is started on the next call.  The limit therefore holds in any thread, unlike
  math-verify's own ``signal.alarm`` timeouts, which only work in the main thread.
* Worker start-up (importing sympy / math-verify, ~1-2 s) is not charged to ``timeout_s``.
* Trivially equal answers (equal after :func:`normalize_answer`) never touch the worker.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Reason = Literal["exact", "verified", "not_equal", "no_answer", "timeout", "error"]
CompareFn = Callable[[str, str], bool]

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# possessive whitespace (never given back): each regex is linear in the text, spaces runs included
_ANSWER_IS_RE = re.compile(r"the\s++(?:final\s++)?answer\s++is\s*+:?\s*+(.+)", re.IGNORECASE)
# "Answer: 42", "Final Answer: 42", "**Answer:** 42", "**Final Answer**: 42"
_ANSWER_COLON_RE = re.compile(r"\banswer\s*+(?:(?:\*\*|__)\s*+)?[:\uff1a]\s*+(.+)", re.IGNORECASE)
# a number followed by prose: "42 dollars", "3/4 of the cake", "1,000 apples"
_NUMBER_THEN_WORDS_RE = re.compile(r"(-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?)\s+[A-Za-z][A-Za-z\s,'-]*")
_GSM8K_RE = re.compile(r"####\s*(.+)")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+$")
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one solution.  ``correct`` is True iff reason is exact/verified."""

    correct: bool
    predicted: str | None
    reason: Reason


def _last_braced(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, else None. Linear in the
    text: every brace is matched in one pass, then the last box whose brace closes wins."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]  # just after each box's opening brace
    if not starts:
        return None
    closing: dict[int, int] = {}  # an opening brace's index -> its closing brace's
    open_braces: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            open_braces.append(i)
        elif ch == "}" and open_braces:
            closing[open_braces.pop()] = i
    for start in reversed(starts):  # an unbalanced box: try an earlier one
        if start - 1 in closing:
            return text[start:closing[start - 1]]
    return None


def _clean(ans: str) -> str | None:
    ans = ans.strip().strip("*_`").strip().strip("$").strip()
    ans = ans.rstrip(".").strip().strip("*_`").strip().strip("$").strip()
    if m := _NUMBER_THEN_WORDS_RE.fullmatch(ans):
        ans = m.group(1)
    return ans or None


def extract_answer(text: str) -> str | None:
    """Extract the final answer from a solution, trying in priority order:

    1. the content of the last balanced ``\\boxed{...}`` or ``\\fbox{...}``;
    2. the text after the last "The (final) answer is" or "(Final) Answer:" (markdown bold allowed), whichever
       comes later, up to the end of that line;
    3. the text after the last GSM8K marker ``#### `` up to the end of that line.

    The answer is cleaned of surrounding ``$``, markdown emphasis and a trailing period; a number followed by
    prose ("42 dollars", "3/4 of the cake") keeps the number. Returns the answer, or ``None`` when nothing is
    found or the answer is empty. Time is linear in the text.
    """
    if not isinstance(text, str) or not text:
        return None
    boxed = _last_braced(text)
    if boxed is not None:
        return _clean(boxed)
    stated = [m for regex in (_ANSWER_IS_RE, _ANSWER_COLON_RE) for m in [_last_match(regex, text)] if m]
    if stated:
        return _clean(max(stated, key=lambda m: m.start()).group(1))
    last = _last_match(_GSM8K_RE, text)
    return _clean(last.group(1)) if last else None


def _last_match(regex: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in regex.finditer(text):  # noqa: B007 (the last one is wanted)
        pass
    return last


def normalize_answer(ans: str) -> str:
    """Cheap canonical form used by the fast path: drop whitespace, ``$``, a trailing period,
    thousands separators in integers, and map ``\\dfrac``/``\\tfrac`` to ``\\frac``."""
    s = re.sub(r"\s+", "", ans).replace("$", "").rstrip(".")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s


def math_verify_equal(predicted: str, reference: str) -> bool:
    """Symbolic equivalence via math-verify (runs in the worker; math-verify's own signal
    timeouts are disabled because the parent enforces the limit)."""
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=None)  # type: ignore[arg-type]
    pred = parse(f"${predicted}$", parsing_timeout=None)  # type: ignore[arg-type]
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


#: Comparison run inside the worker.  Must be a picklable top-level function; tests may swap it.
COMPARE_FN: CompareFn = math_verify_equal


def _worker_main(conn) -> None:  # pragma: no cover - runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (warm the import before announcing readiness)

    conn.send(("ready", None))
    while True:
        try:
            fn, pred, ref = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", bool(fn(pred, ref))))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", repr(e)))


class _Worker:
    """A single persistent comparison process that is killed and restarted on overrun."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: mp.process.BaseProcess | None = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(_STARTUP_TIMEOUT_S):
            proc.kill()
            raise RuntimeError("grading worker failed to start")
        parent.recv()
        self._proc, self._conn = proc, parent

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def compare(self, fn: CompareFn, pred: str, ref: str, timeout_s: float) -> Reason:
        """Run ``fn(pred, ref)`` in the worker; never waits more than ``timeout_s`` for it."""
        with self._lock:
            try:
                if self._proc is None or not self._proc.is_alive():
                    self.stop()
                    self._start()
                assert self._conn is not None
                self._conn.send((fn, pred, ref))
                if not self._conn.poll(timeout_s):
                    self.stop()
                    return "timeout"
                status, value = self._conn.recv()
            except Exception:  # noqa: BLE001  (broken pipe, dead worker, pickling, ...)
                self.stop()
                return "error"
            if status != "ok":
                return "error"
            return "verified" if value else "not_equal"


_WORKER = _Worker()
atexit.register(_WORKER.stop)


def compare_answers(predicted: str | None, reference: str, timeout_s: float = 5.0) -> GradeResult:
    """Compare an extracted answer with the reference; see module docstring for promises."""
    if predicted is None or not isinstance(predicted, str) or not predicted.strip():
        return GradeResult(False, None, "no_answer")
    ref = reference if isinstance(reference, str) else str(reference)
    if normalize_answer(predicted) == normalize_answer(ref):
        return GradeResult(True, predicted, "exact")
    reason = _WORKER.compare(COMPARE_FN, predicted.strip("$ "), ref.strip("$ "), timeout_s)
    return GradeResult(reason == "verified", predicted, reason)


def answers_equal(predicted: str, reference: str, timeout_s: float = 5.0) -> bool:
    """True iff ``predicted`` and ``reference`` are equal (exact or math-verify equivalent)
    within ``timeout_s`` seconds; timeouts, errors and empty answers give False."""
    return compare_answers(predicted, reference, timeout_s).correct


def grade(solution_text: str, reference: str, timeout_s: float = 5.0) -> GradeResult:
    """Extract the answer from ``solution_text`` and compare it with ``reference``.  Never raises."""
    try:
        predicted = extract_answer(solution_text)
    except Exception:  # noqa: BLE001
        predicted = None
    return compare_answers(predicted, reference, timeout_s)


def split_steps(text: str, delimiter: str = "\n\n") -> list[str]:
    """Split a solution into reasoning steps on ``delimiter``; steps are stripped and empty ones
    dropped (the built-in arithmetic task uses ``"\\n"``)."""
    if not delimiter:
        raise ValueError("delimiter must be non-empty")
    return [s.strip() for s in text.split(delimiter) if s.strip()]
