"""`ttcjax generate`, `ttcjax eval prm` and `ttcjax run` on 2 processes x 4 CPU devices (localhost, jax.distributed)
write what one process on 8 devices writes, and only process 0 writes any file.

`eval prm` samples with the policy (as `eval policy` does) and scores with our reward model, both loaded onto the
global mesh; `eval policy` and `eval revision` run the same loaders and decoding (and would double the test's time).
"""

import json
import os

from multihost import PROCESSES, finish, launch_commands, written

from ttcjax.cli import main
from ttcjax.eval.scheduler import BudgetScheduler
from ttcjax.search.settings import SearchSettings
from ttcjax.tasks.registry import task_from_dict

# the shipped tiny models; small sizes
TASK = "{name: arithmetic, difficulties: [2, 3]}"


def commands(out) -> dict[str, list[str]]:
    """Each command's arguments, its output file in `out`."""
    return {
        "generate.jsonl": ["generate", "--model", "tiny", "--prompt", "Q: 3+4*2=\n", "--prompt", "Q: 9-2=\n", "--n",
                           "4", "--max-new-tokens", "24", "--mesh", "auto"],
        "prm.json": ["eval", "prm", "--model", "tiny", "--policy", "tiny", "--task", TASK, "--per-difficulty", "2",
                     "--samples", "2", "--max-new-tokens", "40"],
        "answers.jsonl": ["run", "--scheduler", str(out.parent / "scheduler.json"), "--budget", "4", "--question",
                          "Q: 3+4*2=\n", "--question", "Q: 8-5+1=\n", "--mesh", "auto"],
    }


def without_times(text: str):
    """A command's output with the wall-clock times left out."""
    def drop(record):
        return {k: v for k, v in record.items() if k not in ("wall_seconds", "seconds")}
    if text.lstrip().startswith("{\n"):
        return drop(json.loads(text))
    return [drop(json.loads(line)) for line in text.splitlines()]


def test_generate_eval_and_run_on_two_processes_write_what_one_process_writes(tmp_path):
    task = {"name": "arithmetic", "difficulties": [2, 3]}
    scheduler = BudgetScheduler(  # 2 probe samples bin a question by their agreement, then best-of-2 by majority
        signal="agreement", edges=(0.5,), choices={f"{lv}/2": {"kind": "best_of_n", "selection": "majority"}
                                                   for lv in (1, 2)},
        probe_samples=2, search=SearchSettings(max_len=96).for_task(task_from_dict(task)), policy="tiny",
        verifier="none", task=task, max_new_tokens=40)
    (tmp_path / "scheduler.json").write_text(json.dumps(scheduler.to_json()))
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        out.mkdir()
    for name, argv in commands(one).items():  # one process, 8 devices
        assert main([*argv, "--output", str(one / name)]) == 0, name

    audit = tmp_path / "audit"
    audit.mkdir()
    printing = ["generate", "--model", "tiny", "--prompt", "Q: 9-2=\n", "--max-new-tokens", "8", "--n", "1"]  # to stdout
    procs = launch_commands([[*argv, "--output", two / name] for name, argv in commands(two).items()] + [printing],
                            tmp_path / "jax-cache", audit)
    ended = finish(procs)
    assert [status for status, _, _ in ended] == [0] * PROCESSES, [err[-3000:] for _, _, err in ended]
    for name in commands(one):
        assert without_times((two / name).read_text()) == without_times((one / name).read_text()), name
    assert sorted(os.listdir(two)) == sorted(commands(one))
    # process 0 wrote each file; process 1 wrote nothing there (nor printed the results)
    outputs = {os.path.realpath(two / name) for name in commands(two)}
    assert outputs <= written(audit, 0)
    assert not {path for path in written(audit, 1) if path.startswith(os.path.realpath(two))}
    printed = [[line for line in out.splitlines() if line.startswith("{")] for _, out, _ in ended]
    assert len(printed[0]) == 1 + 2 + 1 and printed[1] == []  # eval's result, run's answers, the completion: once
    assert json.loads(printed[0][-1])["prompt_index"] == 0
    # what the collectives' library (Gloo) prints as its groups connect goes to stderr, not among the results
    assert not any("Gloo" in out for _, out, _ in ended)
