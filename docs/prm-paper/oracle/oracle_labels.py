"""A diagnostic, not the paper's recipe: the solutions of prm-paper-6000's labels with each step labelled by the
built-in task's exact step oracle (1 while every step so far is a correct reduction, else 0) instead of its
Monte-Carlo value. A PRM trained on them (configs/train/prm-oracle-labels.yaml) shows what the backbone can learn
about a step's correctness when the labels say it exactly: the ceiling that better Monte-Carlo labels could reach.

    python docs/prm-paper/oracle/oracle_labels.py runs/oracle-labels.jsonl
"""

import dataclasses
import sys

from ttcjax.io import read_yaml
from ttcjax.tasks.base import ProblemRecord
from ttcjax.training.labels import save_labels
from ttcjax.training.reward_model import PRMTrainConfig, distinct_solutions, reused_labels

SOURCE = "configs/train/prm-paper-6000.yaml"  # its labels files, read as its training reads them


def main(out: str) -> None:
    config = PRMTrainConfig.from_dict(read_yaml(SOURCE), SOURCE)
    task = config.make_task()
    relabelled = []
    for x in distinct_solutions(reused_labels(config)[0]):
        problem = ProblemRecord(id=x.problem_id, question=x.question, answer="")
        exact = tuple(float(task.step_oracle(problem, list(x.steps[:k + 1]))) for k in range(len(x.steps)))
        relabelled.append(dataclasses.replace(x, step_labels=exact))
    save_labels(out, relabelled)
    steps = [y for x in relabelled for y in x.step_labels]
    print(f"{out}: {len(relabelled)} solutions, {len(steps)} steps, {sum(steps) / len(steps):.3f} on path")


if __name__ == "__main__":
    main(sys.argv[1])
