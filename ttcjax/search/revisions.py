"""Revisions (the paper's section 6): a model fine-tuned to revise its own earlier attempts, in chains.

The context a revision model reads before an attempt is the question's prompt, then each of the most recent
`window` (4, as the paper trains and samples) earlier attempts of its chain, each followed by the
`separator` text:

    [prompt] [attempt 1] [separator] [attempt 2] [separator] ... [attempt k]

An attempt in context is exactly the tokens the model generated for it, without a final EOS. The data
builder (`ttcjax.training.revisions`) writes its training examples with `revision_context`, and the compiled
chain episode (`ttcjax.search.chains`) builds the same context on the device, so training and inference read
the same thing.
"""

from __future__ import annotations

from typing import Sequence

REVISION_WINDOW = 4  # earlier attempts a revision model reads (the paper trains with <= 4 and truncates to 4)
REVISION_SEPARATOR = "\n"  # text after each earlier attempt (the built-in task's attempts end in "\n": a blank line)


def without_eos(attempt: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """An attempt's tokens as they stand in a later attempt's context: a final EOS dropped."""
    attempt = list(attempt)
    return attempt[:-1] if attempt and attempt[-1] in set(eos_ids) else attempt


def revision_context(prompt: Sequence[int], attempts: Sequence[Sequence[int]], separator: Sequence[int], *,
                     eos_ids: Sequence[int] = (), window: int = REVISION_WINDOW) -> list[int]:
    """The ids a revision model reads before its next attempt: `prompt`, then the last `window` of `attempts`
    (each without a final EOS) each followed by `separator`."""
    if window < 1:
        raise ValueError(f"revision window={window}: a revision model reads at least one earlier attempt.")
    out = list(prompt)
    for attempt in attempts[max(0, len(attempts) - window):]:
        out += without_eos(attempt, eos_ids) + list(separator)
    return out
