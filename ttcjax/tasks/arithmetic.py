"""Built-in multi-step arithmetic task: problems, reference solutions and an exact step oracle.

Text format (every character is printable ASCII, so :class:`ttcjax.checkpoints.tokenizer.CharTokenizer`
encodes it without ``<unk>``)::

    Q: 7*3-4+8=          <- format_prompt (ends with STEP_DELIMITER)
    7*3=21               <- one line per step: exactly one operation "a<op>b=result"
    21-4=17
    17+8=25
    The answer is 25     <- answer line; format_solution ends here (no trailing newline)
                         <- format_example appends EXAMPLE_END ("\\n\\n")

or, with ``format_solution(..., restate=True)``, every step but the last also restates the expression
it leaves (``7*3=21; 21-4+8`` / ``21-4=17; 17+8`` / ``17+8=25``). The oracle accepts both forms; a
restated expression must be exactly what the step leaves.

Evaluation uses standard precedence (``*`` before ``+``/``-``, then left to right). The reference
solution always reduces the leftmost multiplication first, then the additive chain left to right;
:func:`sample_steps` draws any other valid order (training data with many solution paths).

Valid reductions (what the oracle accepts): a step is a valid next reduction iff it evaluates a
node of the current expression's parse tree (standard precedence, left associativity) whose two
children are both plain numbers. So in ``2*3+4*5`` both ``2*3`` and ``4*5`` are accepted, in
``1+2+3*4`` both ``1+2`` and ``3*4``, but in ``3+4*2`` only ``4*2`` and in ``2*3*4`` only ``2*3``.
Every accepted path produces the same multiset of intermediate values as the reference path
(partial products and prefix sums of the terms), so the value bounds checked on the reference
path hold on every accepted path: with the default bounds [0, 99] no value is ever negative or
longer than two digits, and a character model never needs a minus sign for a number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from ttcjax.io import write_jsonl

__all__ = ["STEP_DELIMITER", "EXAMPLE_END", "ANSWER_PREFIX", "RESTATE_SEPARATOR", "SPLITS", "Problem", "TaskConfig",
           "StepVerdict", "parse_problem", "split_of", "generate", "format_prompt",
           "sample_steps", "format_solution", "format_example", "split_steps", "check_step", "prefix_on_path",
           "extract_answer", "is_correct_answer", "to_jsonl", "from_jsonl"]

STEP_DELIMITER = "\n"  # separates the prompt and every step line
EXAMPLE_END = "\n\n"  # ends a full training example (a blank line)
ANSWER_PREFIX = "The answer is "
SPLITS = ("train", "validation", "test")
OPERATORS = "+-*"

_STEP_RE = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)(?:;(\d+(?:[+\-*]\d+)*))?")  # spaces removed
RESTATE_SEPARATOR = "; "  # "8*4=32; 32*5+3": the step, then the expression it leaves
_ANSWER_LINE_RE = re.compile(r"theansweris(-?\d+)\.?", re.IGNORECASE)  # spaces removed
_ANSWER_RE = re.compile(r"the\s+answer\s+is\s*(-?\d+)(?!\d)", re.IGNORECASE)
_EXPR_RE = re.compile(r"\d+(?:[+\-*]\d+)*")
_QUESTION_RE = re.compile(r"\s*Q:\s*(\S+?)\s*=\s*")

Step = tuple[int, str, int, int]  # (a, op, b, result)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _expression(nums: list[int] | tuple[int, ...], ops: list[str] | tuple[str, ...]) -> str:
    return "".join(f"{o}{n}" for o, n in zip(("",) + tuple(ops), nums))


def _reducible(ops: tuple[str, ...] | list[str], i: int) -> bool:
    """Whether operation ``i`` (between operand i and i+1) has two plain numbers as children."""
    if ops[i] == "*":
        return i == 0 or ops[i - 1] != "*"
    return i == 0 and (len(ops) == 1 or ops[1] != "*")


def _solution_steps(nums: tuple[int, ...], ops: tuple[str, ...],
                     rng: np.random.Generator | None = None) -> list[Step]:
    """The reference path, or with ``rng`` a path that takes a uniformly drawn valid reduction at each step."""
    nums_l, ops_l, steps = list(nums), list(ops), []
    while ops_l:
        if rng is None:
            i = ops_l.index("*") if "*" in ops_l else 0
        else:
            valid = [j for j in range(len(ops_l)) if _reducible(ops_l, j)]
            i = valid[int(rng.integers(len(valid)))]
        r = _apply(nums_l[i], ops_l[i], nums_l[i + 1])
        steps.append((nums_l[i], ops_l[i], nums_l[i + 1], r))
        nums_l[i:i + 2], ops_l[i:i + 1] = [r], []
    return steps


@dataclasses.dataclass(frozen=True)
class Problem:
    """One arithmetic problem. ``id`` is stable (sha256 of the expression); ``difficulty`` is the
    number of operations; ``split`` is where it was generated ("" if built by hand)."""

    id: str
    operands: tuple[int, ...]
    operators: tuple[str, ...]
    answer: int
    difficulty: int
    split: str = ""

    def __post_init__(self) -> None:
        if len(self.operators) != len(self.operands) - 1 or self.difficulty != len(self.operators):
            raise ValueError(f"inconsistent problem {self!r}")
        value = self.steps[-1][3] if self.steps else self.operands[0]
        if value != self.answer:
            raise ValueError(f"answer {self.answer} is wrong for {self.expression}")

    @property
    def expression(self) -> str:
        """Canonical string, e.g. ``"7*3-4+8"`` (no spaces)."""
        return _expression(self.operands, self.operators)

    @property
    def steps(self) -> list[Step]:
        """Reference solution: leftmost ``*`` first, then left to right; one (a, op, b, result)
        per operation."""
        return _solution_steps(self.operands, self.operators)


def _expr_id(expression: str) -> str:
    return hashlib.sha256(expression.encode()).hexdigest()[:16]


def parse_problem(expression: str, split: str = "") -> Problem:
    """Problem for e.g. ``"3+4*2"`` (spaces ignored; non-negative integer literals only)."""
    expr = "".join(expression.split())
    if not _EXPR_RE.fullmatch(expr):
        raise ValueError(f"not an arithmetic expression over {OPERATORS!r}: {expression!r}")
    nums = tuple(int(t) for t in re.findall(r"\d+", expr))
    ops = tuple(re.findall(r"[+\-*]", expr))
    steps = _solution_steps(nums, ops)
    answer = steps[-1][3] if steps else nums[0]
    return Problem(_expr_id(_expression(nums, ops)), nums, ops, answer, len(ops), split)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Problem distribution. Ranges are inclusive. Problems whose operands or reference-path
    intermediate values leave ``value_range`` are resampled (see the module docstring for why this
    bounds every accepted path). ``split_fractions`` are train/validation/test shares of the
    expression space, assigned by hash of the expression (changing them reassigns problems)."""

    difficulties: tuple[int, ...] = (2, 3, 4, 5)
    operand_range: tuple[int, int] = (1, 9)
    operators: str = OPERATORS
    value_range: tuple[int, int] = (0, 99)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        for f in ("difficulties", "operand_range", "value_range", "split_fractions"):
            object.__setattr__(self, f, tuple(getattr(self, f)))  # lists from YAML -> hashable
        if not self.difficulties or min(self.difficulties) < 1:
            raise ValueError(f"difficulties must be >= 1 operations, got {self.difficulties}")
        if not self.operators or set(self.operators) - set(OPERATORS):
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS!r}")
        lo, hi = self.operand_range
        if not 0 <= lo <= hi:
            raise ValueError(f"operand_range must satisfy 0 <= lo <= hi, got {self.operand_range}")
        if self.value_range[0] > self.value_range[1]:
            raise ValueError(f"empty value_range {self.value_range}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-9:
            raise ValueError(f"split_fractions must be 3 non-negative shares summing to 1: {fr}")


def split_of(expression: str, config: TaskConfig = TaskConfig()) -> str:
    """The one split an expression belongs to (stable hash bucket; independent of any seed)."""
    h = hashlib.sha256(("split:" + expression).encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    train, val, _ = config.split_fractions
    return SPLITS[0] if u < train else SPLITS[1] if u < train + val else SPLITS[2]


def _accept(nums: tuple[int, ...], ops: tuple[str, ...], config: TaskConfig, split: str) -> bool:
    lo, hi = config.value_range
    if not all(lo <= n <= hi for n in nums):
        return False
    if not all(lo <= s[3] <= hi for s in _solution_steps(nums, ops)):
        return False
    return split_of(_expression(nums, ops), config) == split


_ENUMERATE_LIMIT = 50_000


@lru_cache(maxsize=64)
def _pool(config: TaskConfig, k: int, split: str) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    digits = range(config.operand_range[0], config.operand_range[1] + 1)
    return [(nums, ops) for nums in itertools.product(digits, repeat=k + 1)
            for ops in itertools.product(config.operators, repeat=k)
            if _accept(nums, ops, config, split)]


def generate(config: TaskConfig, n: int, seed: int, split: str = "train") -> list[Problem]:
    """``n`` distinct problems of ``split``, deterministic in (config, n, seed, split).

    Counts per difficulty are equal (the remainder goes to the first difficulties). Splits never
    share an expression (see :func:`split_of`). Small expression spaces are enumerated, so asking
    for more problems than exist raises ValueError instead of looping forever.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ds = config.difficulties
    counts = [n // len(ds) + (j < n % len(ds)) for j in range(len(ds))]
    lo, hi = config.operand_range
    out: list[Problem] = []
    for j, (k, count) in enumerate(zip(ds, counts)):
        rng = np.random.default_rng([seed, SPLITS.index(split), k, j])
        space = (hi - lo + 1) ** (k + 1) * len(config.operators) ** k
        if space <= _ENUMERATE_LIMIT:
            pool = _pool(config, k, split)
            if count > len(pool):
                raise ValueError(f"only {len(pool)} distinct {k}-operation problems exist in "
                                 f"split {split!r} for {config}; asked for {count}")
            chosen = [pool[i] for i in rng.permutation(len(pool))[:count]]
        else:
            seen: set[tuple] = set()
            chosen, tries, max_tries = [], 0, 1000 * count + 100_000
            while len(chosen) < count:
                tries += 1
                if tries > max_tries:
                    raise ValueError(f"could not find {count} distinct {k}-operation problems "
                                     f"for split {split!r} in {max_tries} draws; widen {config}")
                nums = tuple(int(x) for x in rng.integers(lo, hi + 1, size=k + 1))
                ops = tuple(config.operators[i] for i in rng.integers(0, len(config.operators), k))
                if (nums, ops) not in seen and _accept(nums, ops, config, split):
                    seen.add((nums, ops))
                    chosen.append((nums, ops))
        out += [parse_problem(_expression(nums, ops), split)
                for nums, ops in chosen]
    order = np.random.default_rng([seed, SPLITS.index(split), 10**6]).permutation(len(out))
    return [out[i] for i in order]


def format_prompt(problem: Problem) -> str:
    """``"Q: 7*3-4+8=\\n"``: the question line, ending with STEP_DELIMITER."""
    return f"Q: {problem.expression}={STEP_DELIMITER}"


def sample_steps(problem: Problem, rng: np.random.Generator) -> list[Step]:
    """A valid solution path drawn step by step: each step is a uniform choice among the valid next
    reductions (so ``1+2+3*4`` is solved ``1+2`` first or ``3*4`` first, equally often). Every path
    reaches the answer and passes :func:`check_step`; only the order differs from ``problem.steps``."""
    return _solution_steps(problem.operands, problem.operators, rng)


def format_solution(problem: Problem, steps: list[Step] | None = None, restate: bool = False) -> str:
    """Step lines (``steps``, by default the reference path), then ``"The answer is N"``, joined by
    STEP_DELIMITER (no trailing delimiter).

    With ``restate`` every step line but the last also writes the expression the step leaves, after
    RESTATE_SEPARATOR (``8*4=32; 32*5+3``), so a model reads the work left from the line above instead
    of tracking it back through the question and every earlier step."""
    steps = problem.steps if steps is None else steps
    lines, nums, ops = [], list(problem.operands), list(problem.operators)
    for a, op, b, r in steps:
        line = f"{a}{op}{b}={r}"
        if restate:
            ok, why = _judge(problem, nums, ops, line)  # applies the step to (nums, ops)
            if not ok:
                raise ValueError(f"step {line!r} of {problem.expression} is not a valid next reduction: {why}")
            if ops:
                line += RESTATE_SEPARATOR + _expression(nums, ops)
        lines.append(line)
    return STEP_DELIMITER.join(lines + [f"{ANSWER_PREFIX}{problem.answer}"])


def format_example(problem: Problem) -> str:
    """A full training example: prompt + solution + EXAMPLE_END."""
    return format_prompt(problem) + format_solution(problem) + EXAMPLE_END


def split_steps(text: str) -> list[str]:
    """A completion's step lines: split on STEP_DELIMITER, blank lines dropped."""
    return [ln for ln in text.split(STEP_DELIMITER) if ln.strip()]


@dataclasses.dataclass(frozen=True)
class StepVerdict:
    """``correct``: this line alone is right given the expression reduced by the correct earlier
    steps. ``on_path``: every step so far, this one included, is correct."""

    correct: bool
    on_path: bool
    reason: str = ""


def _judge(problem: Problem, nums: list[int], ops: list[str], line: str) -> tuple[bool, str]:
    """Judge one line against the current expression; apply it to (nums, ops) if correct."""
    s = "".join(line.split())
    if m := _ANSWER_LINE_RE.fullmatch(s):
        # Valid reductions preserve the value, so the current expression's value is the answer;
        # an answer line need not wait for every reduction to be written out.
        ok = int(m.group(1)) == problem.answer
        return ok, "answer" if ok else "wrong answer"
    m = _STEP_RE.fullmatch(s)
    if not m:
        return False, "malformed"
    a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    sites = [i for i in range(len(ops)) if (nums[i], ops[i], nums[i + 1]) == (a, op, b)]
    if not sites:
        return False, "operands not adjacent in current expression"
    valid = [i for i in sites if _reducible(ops, i)]
    if not valid:
        return False, "violates precedence"
    if _apply(a, op, b) != r:
        return False, "arithmetic error"
    after = [(nums[:i] + [r] + nums[i + 2:], ops[:i] + ops[i + 1:]) for i in valid]
    if m.group(5) is not None:  # a restated expression must be what this step leaves
        after = [(n, o) for n, o in after if _expression(n, o) == m.group(5)]
        if not after:
            return False, "wrong restatement"
    nums[:], ops[:] = after[0]
    return True, "ok"


def check_step(problem: Problem, previous_steps: list[str], step: str) -> StepVerdict:
    """Exact oracle for one step line (diagnostics / PRM judging only; search never uses it).

    The current expression is the problem reduced by the *correct* previous steps; incorrect
    previous steps leave it unchanged (so a right step after a wrong one is correct but not on
    path). A step is correct iff it is ``a<op>b=r`` (whitespace ignored) for a valid next
    reduction (see module docstring) with the right r; an answer line ``The answer is N`` is
    correct iff N is the answer. Anything else (blank lines included) is incorrect.
    """
    nums, ops, on_path = list(problem.operands), list(problem.operators), True
    for prev in previous_steps:
        on_path &= _judge(problem, nums, ops, prev)[0]
    ok, why = _judge(problem, nums, ops, step)
    return StepVerdict(ok, on_path and ok, why)


def prefix_on_path(problem: Problem, steps: list[str]) -> bool:
    """Whether every step line is correct (the empty prefix is on path)."""
    nums, ops = list(problem.operands), list(problem.operators)
    return all([_judge(problem, nums, ops, s)[0] for s in steps])


def extract_answer(text: str) -> int | None:
    """N from the first ``The answer is N`` in ``text`` (case and spacing lenient), else None."""
    m = _ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def is_correct_answer(problem: Problem, text: str) -> bool:
    """Whether :func:`extract_answer` finds the problem's answer in ``text``."""
    return extract_answer(text) == problem.answer


def to_jsonl(problems: list[Problem], path: str | Path) -> Path:
    """Write one JSON record per line {id, question, answer, solution, difficulty, split},
    atomically (temporary file then os.replace). Returns the path."""
    path = Path(path)
    write_jsonl(path, ({"id": p.id, "question": format_prompt(p).rstrip(STEP_DELIMITER), "answer": p.answer,
                        "solution": format_solution(p), "difficulty": p.difficulty, "split": p.split}
                       for p in problems))
    return path


def from_jsonl(path: str | Path) -> list[Problem]:
    """Inverse of :func:`to_jsonl` (blank lines skipped). The problem is rebuilt from the
    question and checked against id/answer/difficulty; any problem raises ValueError naming
    the file and line."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                m = _QUESTION_RE.fullmatch(rec["question"])
                if not m:
                    raise ValueError(f"question {rec['question']!r} is not 'Q: <expression>='")
                p = parse_problem(m.group(1), str(rec.get("split", "")))
                for key in ("id", "answer", "difficulty"):
                    if rec[key] != getattr(p, key):
                        raise ValueError(f"{key} {rec[key]!r} does not match the question "
                                         f"(expected {getattr(p, key)!r})")
            except (ValueError, KeyError, TypeError) as e:
                kind = "missing field " if isinstance(e, KeyError) else ""
                raise ValueError(f"{path}:{lineno}: malformed arithmetic record: {kind}{e}") from e
            out.append(p)
    return out
