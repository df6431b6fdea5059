"""`ttcjax sweep` split across 2 processes x 4 CPU devices (jax.distributed on localhost) against 1 process, on this
machine: what the distributed path (coordinator start, per-process model loading and compilation, shards, the
barrier and the merge) costs or saves.

Every run is a fresh `python -m ttcjax.cli sweep` (its wall time from start to the last process's exit: model
loading and compilation included, as a user sees it) on the shipped tiny policy and PRM, in a fresh run
directory, one after the other: 1 process x 8 devices, 1 process x 4 devices, 2 processes x 4 devices, repeated
`--repeats` times (interleaved; best and median kept). Each run's per-question records are checked to equal the
first's (all but `seconds`), so every row of the table computed the same thing. `search s` is the sum over
batches of their search time (the records' `seconds`), per process: the work without loading and compilation.

    python bench/multiprocess.py            # writes bench/results/multiprocess.json and its docs/benchmarks.md section
    python bench/multiprocess.py --quick --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402
from decode import cpu_model, git_revision, loadavg, update_doc, write_atomic  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "multiprocess.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Sweeps on several processes"
RUNS = (("1 process x 8 devices", 1, 8), ("1 process x 4 devices", 1, 4), ("2 processes x 4 devices", 2, 4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def sweep(config_path: str, out_dir: str, processes: int, devices: int) -> float:
    """Wall seconds of one `ttcjax sweep` on `processes` processes of `devices` CPU devices each."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "ttcjax.cli", "sweep", "--config", config_path, "--out-dir", out_dir,
               "--no-progress"]
    if processes > 1:
        port = free_port()
        commands = [command + ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                               "--process-id", str(i)] for i in range(processes)]
    else:
        commands = [command]
    started = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - started
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"sweep on {processes} process(es) failed ({p.returncode}):\n{err[-3000:]}")
    return seconds


def records(out_dir: str) -> dict[str, list[dict]]:
    results = os.path.join(out_dir, "results")
    out = {}
    for name in sorted(os.listdir(results)):
        with open(os.path.join(results, name)) as f:
            out[name] = [json.loads(line) for line in f if line.strip()]
    return out


def search_seconds(recs: dict[str, list[dict]], processes: int) -> float:
    """Search time per process: every batch's time (a record's `seconds` is its batch's time over its questions)
    summed, over the processes (round-robin over batches of equal size gives each about a P-th)."""
    return sum(r["seconds"] for rows in recs.values() for r in rows) / processes


def without_times(recs):
    return {k: [{f: v for f, v in r.items() if f != "seconds"} for r in rows] for k, rows in recs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 questions, 1 repeat")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md as it is")
    parser.add_argument("--doc-only", action="store_true", help="rewrite the docs section from the results file")
    args = parser.parse_args()
    if args.doc_only:
        with open(RESULTS) as f:
            update_doc(DOC, markdown(json.load(f)), title=SECTION)
        return
    if args.quick:
        args.questions, args.repeats = 8, 1
    config = {"policy": "tiny", "verifier": "tiny", "task": {"name": "arithmetic", "difficulties": [2, 3, 4, 5]},
              "questions": args.questions, "budgets": [4, 16],
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 4}],
              "search": {"max_rounds": 12, "max_step_tokens": 24, "max_len": 160}, "rows_per_batch": 64,
              "mesh": "auto", "out_dir": "unused"}
    load_before = loadavg()
    times: dict[str, list[float]] = {name: [] for name, _, _ in RUNS}
    searched: dict[str, list[float]] = {name: [] for name, _, _ in RUNS}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "sweep.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        for repeat in range(args.repeats):
            for name, processes, devices in RUNS:
                out_dir = os.path.join(tmp, f"{processes}x{devices}-{repeat}")
                times[name].append(sweep(config_path, out_dir, processes, devices))
                recs = records(out_dir)
                searched[name].append(search_seconds(recs, processes))
                if reference is None:
                    reference = without_times(recs)
                elif without_times(recs) != reference:
                    raise SystemExit(f"{name}: the records differ from the first run's")
                print(f"{name}: {times[name][-1]:.1f} s wall, {searched[name][-1]:.1f} s search", file=sys.stderr)
    rows = [{"run": name, "processes": processes, "devices_per_process": devices,
             "wall_seconds_best": round(min(times[name]), 2),
             "wall_seconds_median": round(statistics.median(times[name]), 2),
             "search_seconds_best": round(min(searched[name]), 2)} for name, processes, devices in RUNS]
    report = {"command": "python bench/multiprocess.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": [load_before, loadavg()],
              **git_revision(), "config": {k: v for k, v in config.items() if k != "out_dir"},
              "repeats": args.repeats, "records_equal": True, "rows": rows,
              "two_over_one_8": round(rows[2]["wall_seconds_best"] / rows[0]["wall_seconds_best"], 3),
              "two_over_one_4": round(rows[2]["wall_seconds_best"] / rows[1]["wall_seconds_best"], 3)}
    write_atomic(RESULTS, json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    if not args.no_doc:
        update_doc(DOC, markdown(report), title=SECTION)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [SECTION, "",
             f"`{report['command'].strip()}` on a {report['cpus']}-core {report['cpu']} (load average "
             f"{report['load_average'][0]} -> {report['load_average'][1]}, shared with other jobs), commit "
             f"{report['commit']}{' (ttcjax/ modified)' if report['ttcjax_modified'] else ''}: `ttcjax sweep` with the "
             f"shipped tiny policy and PRM, {c['questions']} built-in test questions, best-of-N and beam (width 4) at "
             f"budgets {c['budgets']}, rows_per_batch {c['rows_per_batch']}, mesh auto. Each run is a fresh command "
             "(wall time to the last process's exit: loading and compilation included); best and median of "
             f"{report['repeats']} interleaved repeats. Every run wrote the same records (all but `seconds`).", "",
             "| run | wall s (best) | wall s (median) | search s per process |", "|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['run']} | {r['wall_seconds_best']:.1f} | {r['wall_seconds_median']:.1f} | "
                     f"{r['search_seconds_best']:.1f} |")
    one, two = report["rows"][1], report["rows"][2]
    lines += ["", f"**2 processes x 4 devices / 1 process x 8 devices = {report['two_over_one_8']:.2f}** "
              f"(against 1 process x 4 devices: {report['two_over_one_4']:.2f}). On {report['cpus']} cores shared "
              "with other jobs the two processes compete for the same cores: each searched half the questions in "
              f"{two['search_seconds_best']:.0f} s against {one['search_seconds_best']:.0f} s for one process with all "
              "of them, so here the split costs time; what it adds besides (a second interpreter, model load and "
              "compilation per process, the coordinator, shards, the barrier and the merge) is the gap between the "
              "wall and search columns. This machine cannot show the speedup of a second host, where each process "
              "brings its own cores or accelerators; the records are the same either way."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
