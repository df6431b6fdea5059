"""`SearchSettings`: everything a search needs besides its strategy, saved with every run, report and
scheduler so that `ttcjax run` applies exactly what was chosen."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ttcjax.decoding.engine import Sampling
from ttcjax.io import check_options
from ttcjax.search.revisions import REVISION_SEPARATOR


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """delimiter        the text that ends a reasoning step, matched on the generated text whatever its
                     tokenization; None: the task's step delimiter (`for_task`)
    max_step_tokens  tokens one step may take; a longer step is cut there, scored, and continued next round
    max_rounds       rounds (steps) of selection for strategies that select between rounds; best-of-N
                     samples run until they end or fill the cache
    max_len          the KV cache per row: prompt plus solution
    answer_marks     texts that mark a step holding the final answer ("\\boxed{", "answer is"): the solution
                     ends after that step; None: the task's (`Task.answer_marks`); []: only EOS, an empty step
                     or the length limit end a solution
    A config's search settings that it leaves out come from its task (`Task.search_defaults`: the built-in
    task's small sizes are the defaults here; natural-language tasks take 256-token steps, 40 rounds, 2048)
    temperature, top_k, top_p   how each step is sampled
    revision_separator   (revision strategies) the text after each earlier attempt in a revision model's context:
                     the one it was trained with (`ttcjax.search.revisions`)
    revision_max_len     (revision strategies) the KV cache per chain: the prompt, the window's earlier attempts
                     and the attempt being written; None: the revision model's whole context
                     (max_position_embeddings). A context that does not fit is cut, and search warns"""

    delimiter: str | None = None
    max_step_tokens: int = 24
    max_rounds: int = 12
    max_len: int = 160
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    answer_marks: tuple[str, ...] | None = None
    revision_separator: str = REVISION_SEPARATOR
    revision_max_len: int | None = None

    def __post_init__(self):
        if self.answer_marks is not None:
            if isinstance(self.answer_marks, str) or not all(isinstance(m, str) and m for m in self.answer_marks):
                raise ValueError(f"search settings: answer_marks={self.answer_marks!r} must be a list of non-empty "
                                 "texts (or null: the task's).")
            object.__setattr__(self, "answer_marks", tuple(self.answer_marks))
        for name in ("max_step_tokens", "max_rounds", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"search settings: {name}={value!r} must be an integer >= 1.")
        if self.revision_max_len is not None and (not isinstance(self.revision_max_len, int)
                                                  or isinstance(self.revision_max_len, bool)
                                                  or self.revision_max_len <= self.max_step_tokens):
            raise ValueError(f"search settings: revision_max_len={self.revision_max_len!r} must be an integer above "
                             f"max_step_tokens={self.max_step_tokens} (or null: the revision model's whole context).")
        if self.delimiter is not None and (not isinstance(self.delimiter, str) or not self.delimiter):
            raise ValueError(f"search settings: delimiter={self.delimiter!r} must be a non-empty string (or null: "
                             "the task's step delimiter).")
        if self.max_step_tokens >= self.max_len:
            raise ValueError(f"search settings: max_step_tokens={self.max_step_tokens} must be below "
                             f"max_len={self.max_len}.")
        self.sampling  # checks temperature, top_k and top_p

    def chain_max_len(self, config) -> int:
        """The KV cache per revision chain of the revision model of `config` (its ModelConfig): revision_max_len,
        or the model's whole context."""
        return self.revision_max_len or config.max_position_embeddings

    def for_task(self, task) -> "SearchSettings":
        """These settings with the task's step delimiter and answer marks where none are set."""
        return dataclasses.replace(
            self, delimiter=task.step_delimiter if self.delimiter is None else self.delimiter,
            answer_marks=tuple(task.answer_marks) if self.answer_marks is None else self.answer_marks)

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["answer_marks"] = None if self.answer_marks is None else list(self.answer_marks)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "search") -> "SearchSettings":
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a mapping of search settings (max_step_tokens, max_rounds, ...); "
                             f"got {data!r}.")
        data = dict(data or {})
        check_options(cls, data, source)
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
