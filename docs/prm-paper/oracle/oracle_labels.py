"""A diagnostic, not the paper's recipe: the solutions of prm-paper-6000's labels with each step labelled by the
built-in task's exact step oracle (1 while every step so far is a correct reduction, else 0) instead of its
Monte-Carlo value. A PRM trained on them (configs/train/prm-oracle-labels.yaml) shows what the backbone can learn
about a step's correctness when the labels say it exactly: the ceiling that better Monte-Carlo labels could reach.

    python docs/prm-paper/oracle/oracle_labels.py runs/oracle-labels.jsonl
"""

import dataclasses
import re
import sys

from ttcjax.tasks import arithmetic
from ttcjax.training.labels import load_labels, save_labels
from ttcjax.training.reward_model import distinct_solutions

SOURCES = ("docs/prm-paper/labels.jsonl.gz", "docs/prm-paper/more/labels.jsonl.gz")


def main(out: str) -> None:
    seen, labelled = set(), []
    for path in SOURCES:  # a question in both files: the first's (as the training config reads them)
        here = load_labels(path)
        labelled += [x for x in here if x.problem_id not in seen]
        seen |= {x.problem_id for x in here}
    labelled = distinct_solutions(labelled)
    relabelled = []
    for x in labelled:
        problem = arithmetic.parse_problem(re.fullmatch(r"Q: (.*)=\n", x.question).group(1))
        exact = tuple(float(arithmetic.prefix_on_path(problem, list(x.steps[:k + 1]))) for k in range(len(x.steps)))
        relabelled.append(dataclasses.replace(x, step_labels=exact))
    save_labels(out, relabelled)
    steps = [y for x in relabelled for y in x.step_labels]
    print(f"{out}: {len(relabelled)} solutions, {len(steps)} steps, {sum(steps) / len(steps):.3f} on path")


if __name__ == "__main__":
    main(sys.argv[1])
