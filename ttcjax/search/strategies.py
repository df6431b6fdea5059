"""Search strategies: frozen dataclasses that own their behaviour, and the one YAML/JSON form they share.

A strategy answers for itself everything the compiled episode and the reports need:

    n            rows (beams) per question
    budget       generations it costs, the x axis of every accuracy-versus-budget curve
    groups       (rows per selection group, rows kept per group); (0, 0): no selection between rounds
    width        rows each kept row fills after selection
    resamples    whether selection draws each row of a group at random in proportion to the verifier's
                 weights (particle filtering) rather than keeping the group's best rows
    lookahead    greedy rollout steps whose end scores a step (0: the step's own score)
    selection    the answer-selection rule over the final rows (`ttcjax.search.selection.SELECTION_RULES`)

A **spec** is a strategy without its budget, as written in YAML or JSON: `{kind: beam, width: 4}`, where
`width: sqrt` means the square root of the budget, as in the paper. `StrategySpec.at(budget)` gives the
strategy at a budget (None where it does not fit it). Sweeps, experiments, schedulers, reports and
`ttcjax run` all read and write this one form. A new strategy is one class here: its fields, `kind`,
`groups`, and `for_budget`; add it to `STRATEGIES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

from ttcjax.search.selection import SELECTION_RULES, VERIFIER_FREE_RULES


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """The fields every strategy has: N rows per question and the rule that picks the answer."""

    kind: ClassVar[str] = ""
    budget_rule: ClassVar[str] = "any budget"  # the budgets `for_budget` fits, in words (for the warnings)
    n: int
    selection: str = dataclasses.field(default="weighted", kw_only=True)

    def __post_init__(self):
        _check(isinstance(self.n, int) and self.n >= 1, f"{self.label}: n must be an integer >= 1.")
        _check(self.selection in SELECTION_RULES,
               f"{self.label}: selection={self.selection!r} is not one of {sorted(SELECTION_RULES)}.")

    @property
    def label(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    @property
    def budget(self) -> int:
        return self.n

    @property
    def rows(self) -> int:
        """Rows of a search batch per question (beams, samples; a revision strategy's chains)."""
        return self.n

    @property
    def batch_rows(self) -> int:
        """The rows a question counts for against a sweep's `rows_per_batch` (`ttcjax.eval.sweep.cell_batch`)."""
        return self.rows

    @property
    def groups(self) -> tuple[int, int]:
        return 0, 0

    @property
    def width(self) -> int:
        return 1

    @property
    def lookahead(self) -> int:
        return 0

    @property
    def resamples(self) -> bool:
        return False

    def max_rounds(self, settings_max_rounds: int, max_len: int) -> int:
        """Rounds the episode may run. Strategies that select between rounds stop after the settings'
        max_rounds; best-of-N selects nothing, so only the cache (max_len) limits its samples."""
        return settings_max_rounds if self.groups != (0, 0) else max(1, max_len // 2)

    @property
    def needs_verifier(self) -> bool:
        """Whether the strategy reads verifier scores (to select rows between rounds, or to pick the answer)."""
        return self.groups != (0, 0) or self.selection not in VERIFIER_FREE_RULES

    def to_dict(self) -> dict[str, Any]:
        """The strategy at its budget: {"kind": ..., "n": ..., other fields}."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def spec(self) -> "StrategySpec":
        """This strategy without its budget."""
        options = {k: v for k, v in dataclasses.asdict(self).items() if k != "n"}
        return StrategySpec.from_dict({"kind": self.kind, **options})

    @classmethod
    def for_budget(cls, budget: int, **options) -> "Strategy | None":
        """The strategy that spends `budget` generations, or None where none fits the budget."""
        return cls(budget, **options)


@dataclasses.dataclass(frozen=True)
class BestOfN(Strategy):
    """N independent samples; the answer by `selection` over their verifier scores (or votes)."""

    kind: ClassVar[str] = "best_of_n"


@dataclasses.dataclass(frozen=True)
class _Tree(Strategy):
    """A strategy that keeps the best rows each round and expands each kept row into `width` rows."""

    budget_rule: ClassVar[str] = "a budget its width divides (at least the width)"

    width: int = 4

    def __post_init__(self):
        super().__post_init__()
        w = self.width
        _check(isinstance(w, int) and w >= 1, f"{self.label}: width must be an integer >= 1.")
        _check(self.n >= w, f"{self.label}: the budget n is below the beam width; use n >= width.")
        _check(self.n % w == 0, f"{self.label}: n must be divisible by width (n/width beams are kept and each "
                                "expanded width times).")

    @classmethod
    def for_budget(cls, budget: int, width: int | str = 4, **options) -> "Strategy | None":
        width = _width(width, budget, cls.kind)
        rows = cls.rows_for_budget(budget, width, **options)
        if rows < width or rows % width:
            return None
        return cls(rows, width, **options)

    @classmethod
    def rows_for_budget(cls, budget: int, width: int, **options) -> int:
        return budget


def _width(width: int | str, budget: int, kind: str) -> int:
    if width == "sqrt":
        return max(1, int(round(math.sqrt(budget))))
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"strategy {kind}: width must be an integer >= 1 or 'sqrt', got {width!r}.")
    return width


@dataclasses.dataclass(frozen=True)
class Beam(_Tree):
    """PRM-guided step-level beam search: N beams; each round keep the top N/width, expand each by width."""

    kind: ClassVar[str] = "beam"

    @property
    def groups(self) -> tuple[int, int]:
        return self.n, self.n // self.width


@dataclasses.dataclass(frozen=True)
class Lookahead(_Tree):
    """Beam search whose step score is the verifier's at the end of a greedy rollout of up to k more steps.
    Budget counted as N * (k + 1), as in the paper."""

    kind: ClassVar[str] = "lookahead"
    budget_rule: ClassVar[str] = "a budget that width * (k + 1) divides"
    k: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check(isinstance(self.k, int) and self.k >= 0, f"{self.label}: k must be an integer >= 0.")

    @property
    def budget(self) -> int:
        return self.n * (self.k + 1)

    @property
    def groups(self) -> tuple[int, int]:
        return self.n, self.n // self.width

    @property
    def lookahead(self) -> int:
        return self.k

    @classmethod
    def rows_for_budget(cls, budget: int, width: int, k: int = 1, **options) -> int:
        _check(isinstance(k, int) and k >= 0, f"lookahead: k must be an integer >= 0; got {k!r}.")
        return budget // (k + 1) // width * width  # the budget counts each rollout step: N * (k + 1)


@dataclasses.dataclass(frozen=True)
class DVTS(_Tree):
    """Diverse verifier tree search: N/width independent subtrees of width rows, each keeping its best row
    and expanding it by width every round."""

    kind: ClassVar[str] = "dvts"

    @property
    def groups(self) -> tuple[int, int]:
        return self.width, 1


@dataclasses.dataclass(frozen=True)
class Revisions(Strategy):
    """A revision model's chains (the paper's section 6): N generations as N/sequential parallel chains of
    `sequential` attempts, each attempt reading the chain's last `window` attempts before it. The answer by
    `selection`: `hierarchical` (weighted best-of-N within each chain, then across the chains' winners, the
    paper's verifier selection), or a flat rule over every attempt of every chain (`majority`, as the paper
    votes; `weighted`; `vanilla`). Budget: N generations."""

    kind: ClassVar[str] = "revisions"
    budget_rule: ClassVar[str] = "a budget its sequential attempts divide"
    sequential: int = 4
    window: int = 4
    selection: str = dataclasses.field(default="hierarchical", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        s = self.sequential
        _check(isinstance(s, int) and not isinstance(s, bool) and s >= 1,
               f"{self.label}: sequential (attempts per chain) must be an integer >= 1.")
        _check(self.n % s == 0, f"{self.label}: sequential={s} must divide n={self.n} (n/sequential parallel "
                                "chains of sequential attempts each).")
        _check(isinstance(self.window, int) and not isinstance(self.window, bool) and self.window >= 1,
               f"{self.label}: window (earlier attempts a revision reads) must be an integer >= 1.")

    @property
    def chains(self) -> int:
        return self.n // self.sequential

    @property
    def rows(self) -> int:
        return self.chains

    @property
    def batch_rows(self) -> int:
        """Its n generations, not its chains: an episode runs its attempts one after another, so it takes several
        times best-of-N's decode steps, and a step's cost grows with the rows whose caches it reads; chain episodes
        1/sequential as wide as best-of-N's run faster (Revisions(64, 4) on 64 questions: 2127 decode steps on 256
        rows in 86.8 s against 587 on 1024 rows in 131.7 s, `bench/revisions_tail.py`; Revisions(64, 16): 173 s in
        64 rows against 202 s in 256)."""
        return self.n

    def max_rounds(self, settings_max_rounds: int, max_len: int) -> int:
        """Rounds (steps) of each attempt: the settings' max_rounds."""
        return settings_max_rounds

    @classmethod
    def for_budget(cls, budget: int, sequential: int | str = 4, **options) -> "Strategy | None":
        """`sequential` attempts per chain (`all`: one chain of `budget` attempts), or None where it does not
        divide the budget."""
        if sequential == "all":
            sequential = budget
        if not isinstance(sequential, int) or isinstance(sequential, bool) or sequential < 1:
            raise ValueError(f"strategy revisions: sequential must be an integer >= 1 or 'all', got {sequential!r}.")
        if budget % sequential:
            return None
        return cls(budget, sequential, **options)


@dataclasses.dataclass(frozen=True)
class ParticleFiltering(Strategy):
    """Particle filtering (Puri et al. 2025, "A probabilistic inference approach to inference-time scaling of
    LLMs using particle-based Monte Carlo methods"): N particles per question, each extended by one step a
    round. After every round but the last, while the question has an open particle, each of its N rows draws its
    particle anew from all N with replacement (multinomial resampling), particle i with probability
    softmax(logit(r) / weight_temperature)_i, r the verifier's score of particle i's last step (the PRM's
    reading of its whole prefix). That is the paper's code (probabilistic-inference-scaling's `particle_gibbs`,
    its_hub's `ParticleFiltering`): log weight = the inverse sigmoid of the PRM score (clipped, as its_hub clips
    it, to [1e-7, 1 - 1e-7]), resampling by its softmax at a temperature (`softmax_temp`, 1 by default; the
    authors' sweeps run 0.1 to 2). At weight_temperature 1 a particle weighs its score's odds r / (1 - r); higher
    temperatures flatten the weights toward plain sampling, lower ones sharpen them toward keeping the best. A
    particle without a scored step weighs nothing.

    Finished particles are not extended. With `resample_finished` (the paper's `resample_inactive`, its
    default and its runs) they take part in the resampling with their last step's weight: drawn, their copies
    are finished too; not drawn, they are gone. Without it they keep their place, and only the open particles
    draw, from the open particles. Where beam search keeps only the best-scored rows, and so follows the PRM's
    mistakes, resampling keeps lower-scored particles in proportion to their weight. The answer by `selection`
    over the final particles (each copy a candidate). Budget: N generations."""

    kind: ClassVar[str] = "particle_filtering"
    weight_temperature: float = 1.0
    resample_finished: bool = True

    def __post_init__(self):
        super().__post_init__()
        t = self.weight_temperature
        _check(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
               f"{self.label}: weight_temperature must be a finite number > 0 (1: a particle weighs its verifier "
               "score's odds, as in Puri et al.).")
        _check(isinstance(self.resample_finished, bool),
               f"{self.label}: resample_finished must be true (finished particles take part in the resampling) or "
               "false (they keep their place).")

    @property
    def groups(self) -> tuple[int, int]:
        return self.n, self.n  # all N particles of a question drawn anew from all N

    @property
    def resamples(self) -> bool:
        return True


STRATEGIES: dict[str, type[Strategy]] = {cls.kind: cls for cls in (BestOfN, Beam, Lookahead, DVTS, Revisions,
                                                                      ParticleFiltering)}


def strategy_from_dict(data: Mapping[str, Any], source: str = "strategy") -> Strategy:
    """A strategy at its budget from {"kind": ..., "n": ..., ...} (`Strategy.to_dict`)."""
    spec = StrategySpec.from_dict({k: v for k, v in data.items() if k != "n"}, source)
    if not isinstance(data.get("n"), int):
        raise ValueError(f"{source}: a strategy at its budget needs an integer n; got {data.get('n')!r}.")
    cls = STRATEGIES[spec.kind]
    return cls(data["n"], **dict(spec.options))


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A strategy without its budget: `kind` and its options, as written in YAML ({kind: beam, width: 4})."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "StrategySpec", source: str = "strategy") -> "StrategySpec":
        """Validated: the kind exists, every option is one of its fields, and the spec fits some budget."""
        if isinstance(data, StrategySpec):
            return data
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ValueError(f"{source}: a strategy is a mapping with a 'kind' (one of {sorted(STRATEGIES)}); "
                             f"got {data!r}.")
        kind = data["kind"]
        if kind not in STRATEGIES:
            raise ValueError(f"{source}: unknown strategy kind {kind!r}; use one of {sorted(STRATEGIES)}.")
        allowed = [f.name for f in dataclasses.fields(STRATEGIES[kind]) if f.name != "n"]
        unknown = sorted(set(data) - {"kind"} - set(allowed))
        if unknown:
            raise ValueError(f"{source}: {kind} has no option(s) {unknown}; its options are {allowed}.")
        spec = cls(kind, tuple(sorted((k, v) for k, v in data.items() if k != "kind")))
        try:
            spec.example()  # checks the options' values
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
        return spec

    def example(self) -> Strategy:
        """The strategy at the smallest number of rows its options allow (width "sqrt" as width 1, sequential
        "all" as 1): what the
        options mean, independent of any budget."""
        options = dict(self.options)
        if options.get("width") == "sqrt":
            options["width"] = 1
        if options.get("sequential") == "all":
            options["sequential"] = 1
        width = options.get("width", options.get("sequential", 1))
        rows = width if isinstance(width, int) and not isinstance(width, bool) and width >= 1 else 1
        return STRATEGIES[self.kind](rows, **options)

    @property
    def needs_verifier(self) -> bool:
        return self.example().needs_verifier

    def effective(self) -> dict[str, Any]:
        """The YAML form with every default filled in: two specs that run the same strategy have the same one
        ({kind: best_of_n} and {kind: best_of_n, selection: weighted})."""
        example = self.example()
        fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(example) if f.name != "n"}
        return {"kind": self.kind, **fields, **dict(self.options)}

    @property
    def name(self) -> str:
        """A stable file-name-safe name: the kind, then each option as -keyvalue, sorted by key."""
        return self.kind + "".join(f"-{k}{v}" for k, v in self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.options)}

    def at(self, budget: int) -> Strategy | None:
        """The strategy spending `budget` generations; None where it does not fit (e.g. a beam wider than
        the budget, or a width that does not divide it)."""
        return STRATEGIES[self.kind].for_budget(budget, **dict(self.options))
