"""A run directory belongs to one config and one code version; a rerun that differs stops before any work unless
told on purpose (continue, logged; fresh, the earlier run moved aside), and every invocation is logged."""

import json
import os
import time

import pytest

from ttcjax import io
from ttcjax.io import (RUN_LOG_FILE, bind_run_dir, code_version, finish_invocation, invocation_clock, read_run_log,
                       release_run_dir)


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def test_the_first_run_records_its_config_and_code_and_every_invocation_is_logged(tmp_path):
    out = tmp_path / "run"
    bind_run_dir(out, {"lr": 0.1, "steps": [1, 2]}, "sweep")
    bind_run_dir(out, {"lr": 0.1, "steps": (1, 2)}, "sweep")  # the same config (tuples are lists on disk)
    assert json.loads((out / "run_config.json").read_text()) == {"lr": 0.1, "steps": [1, 2]}
    log = read_run_log(out)
    assert [e["command"] for e in log] == ["sweep", "sweep"] and all(e["code"] == code_version() for e in log)
    assert code_version()["version"] == io.__version__
    assert code_version()["commit"] is None or len(code_version()["commit"]) == 40  # a git checkout: its commit


def test_another_config_or_code_version_stops_naming_what_differs_and_touches_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    bind_run_dir(out, {"lr": 0.1, "seed": 0}, "train policy")
    before = _files(out)
    with pytest.raises(ValueError, match=r"another config \(keys that differ: \['lr'\]\); pass --continue .*--fresh"):
        bind_run_dir(out, {"lr": 0.2, "seed": 0}, "train policy")
    assert _files(out) == before
    other = {"version": "9.9.9", "commit": "f" * 40, "edited": False}
    monkeypatch.setattr(io, "code_version", lambda: other)
    with pytest.raises(ValueError, match=r"another code version \(made by ttcjax .* this is ttcjax 9\.9\.9 at "
                                         r"ffffffffffff\)"):
        bind_run_dir(out, {"lr": 0.1, "seed": 0}, "train policy")
    assert _files(out) == before
    # on purpose: continue in it with the new code and config; the change is logged, key by key
    bind_run_dir(out, {"lr": 0.2, "seed": 0}, "train policy", rerun="continue")
    assert json.loads((out / "run_config.json").read_text()) == {"lr": 0.2, "seed": 0}
    last = read_run_log(out)[-1]
    assert last["rerun"] == "continue" and last["changed"] == {"lr": [0.1, 0.2]} and last["code"] == other
    bind_run_dir(out, {"lr": 0.2, "seed": 0}, "train policy")  # now the same run: resumes without a flag
    with pytest.raises(ValueError, match="rerun='again'"):
        bind_run_dir(out, {"lr": 0.2, "seed": 0}, "train policy", rerun="again")


def test_fresh_moves_the_earlier_run_aside_whole(tmp_path):
    out = tmp_path / "run"
    invocation = bind_run_dir(out, {"questions": 6}, "experiment")
    (out / "results.jsonl").write_text('{"id": 1}\n')
    finish_invocation(out, 1.0, invocation)  # the earlier run ended
    release_run_dir(out)
    before = _files(out)
    bind_run_dir(out, {"questions": 4}, "experiment", rerun="fresh")
    (aside,) = [p for p in os.listdir(tmp_path) if p.startswith("run.before-")]
    assert _files(tmp_path / aside) == before
    assert sorted(os.listdir(out)) == [".held.lock", "run_config.json", RUN_LOG_FILE]  # held while it runs
    assert json.loads((out / "run_config.json").read_text()) == {"questions": 4}
    bind_run_dir(tmp_path / "new", {"questions": 4}, "experiment", rerun="fresh")  # nothing to move: a new run
    assert [p for p in os.listdir(tmp_path) if p.startswith("new.before-")] == []


def test_a_damaged_log_is_named_by_line_and_a_cut_last_line_is_dropped(tmp_path):
    out = tmp_path / "run"
    bind_run_dir(out, {"a": 1}, "sweep")
    log = out / RUN_LOG_FILE
    good = log.read_text()
    log.write_text(good + good[:20])  # a kill mid-append
    bind_run_dir(out, {"a": 1}, "sweep")
    assert [json.loads(ln)["command"] for ln in log.read_text().splitlines()] == ["sweep", "sweep"]
    log.write_text(good[:20] + "\n" + good)
    with pytest.raises(ValueError, match=rf"{RUN_LOG_FILE}:1: damaged"):
        bind_run_dir(out, {"a": 1}, "sweep")
    assert log.read_text() == good[:20] + "\n" + good


def test_the_totals_count_every_invocation_the_interrupted_ones_too(tmp_path):
    out = tmp_path / "run"
    bind_run_dir(out, {"a": 1}, "sweep")
    assert finish_invocation(out, 3.0) == {"invocations": 1, "interrupted_invocations": 0, "seconds": 3.0}
    bind_run_dir(out, {"a": 1}, "sweep")  # killed: never finished
    bind_run_dir(out, {"a": 1}, "sweep")
    assert finish_invocation(out, 4.5) == {"invocations": 3, "interrupted_invocations": 1, "seconds": 7.5}
    assert [e.get("seconds") for e in read_run_log(out)] == [3.0, None, 4.5]


def test_a_killed_invocation_counts_the_time_its_clock_recorded_and_the_machines_are_named(tmp_path):
    out = tmp_path / "run"
    here = {"platform": "cpu", "devices": "1 x cpu", "processes": 1, "cpu": "a CPU", "cpu_cores": 2}
    killed = bind_run_dir(out, {"a": 1}, "sweep", machine=here)
    with invocation_clock(out, killed, every=0.05):
        time.sleep(0.4)
    ran = read_run_log(out)[-1]["running_seconds"]
    assert 0.2 <= ran <= 0.45 and "seconds" not in read_run_log(out)[-1]
    time.sleep(0.2)  # stopped with the block: nothing more is recorded
    assert read_run_log(out)[-1]["running_seconds"] == ran
    other = {**here, "devices": "8 x TPU v5 lite"}
    bind_run_dir(out, {"a": 1}, "sweep", machine=other)
    totals = finish_invocation(out, 2.0)
    assert totals == {"invocations": 2, "interrupted_invocations": 1, "seconds": 2.0 + ran,
                      "machines": [here, other]}
    with invocation_clock(out, None, every=0.01):  # a process that writes nothing shared
        time.sleep(0.05)
    assert [set(e) - {"time", "command", "rerun", "code", "invocation"} for e in read_run_log(out)] == [
        {"machine", "running_seconds"}, {"machine", "seconds"}]


def test_the_clock_thread_never_undoes_what_the_run_records_in_the_log(tmp_path):
    """The clock rewrites the run log from a thread of the run's own process, where fcntl locks do not exclude:
    without a lock between threads its stale copy would erase the `seconds` the run just recorded."""
    out = tmp_path / "run"
    invocation = bind_run_dir(out, {"a": 1}, "sweep")
    with invocation_clock(out, invocation, every=0.0002):
        for i in range(300):
            finish_invocation(out, float(i), invocation)
            assert read_run_log(out)[-1].get("seconds") == float(i), i
    assert read_run_log(out)[-1]["running_seconds"] > 0


def test_a_directory_with_files_but_no_config_is_adopted_only_on_purpose(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.jsonl").write_text('{"id": 1}\n')
    before = _files(out)
    with pytest.raises(ValueError, match=r"holds files but no run_config.json.*--continue"):
        bind_run_dir(out, {"temperature": 0.3}, "sweep")
    assert _files(out) == before
    bind_run_dir(out, {"temperature": 0.3}, "sweep", rerun="continue")
    assert read_run_log(out)[-1]["changed"] == {"adopted": [None, ["results.jsonl"]]}
    empty = tmp_path / "empty"
    empty.mkdir()
    bind_run_dir(empty, {"temperature": 0.3}, "sweep")  # an empty directory is a new run


# Several jobs of a job array bind one fresh run directory at the same moment, `ROUNDS` times over (a fresh
# directory each round), and each then records that it finished; with "nolocks", on a file system without locks.
JOBS, ROUNDS = 6, 12
BIND_AT_ONCE = """
import fcntl, os, sys, time
from ttcjax.io import bind_run_dir, finish_invocation, release_run_dir
root, job, locks = sys.argv[1], sys.argv[2], sys.argv[3]
if locks == "nolocks":
    def refuse(*args):
        raise OSError(37, "No locks available")
    fcntl.lockf = refuse
while not os.path.exists(os.path.join(root, "go")):
    time.sleep(0.001)
for n in range({rounds}):
    while not os.path.exists(os.path.join(root, f"go-{{n}}")):
        time.sleep(0.0005)
    out = os.path.join(root, f"run-{{n}}")
    invocation = bind_run_dir(out, {{"questions": 8, "seed": 0}}, "sweep", role=f"job-{{job}}-of-{jobs}")
    finish_invocation(out, float(job), invocation)
    release_run_dir(out)
    open(os.path.join(root, f"done-{{n}}-{{job}}"), "w").close()
"""


@pytest.mark.parametrize("locks", ["locks", "nolocks"])
def test_jobs_that_bind_one_directory_at_once_all_bind_it_and_every_entry_is_logged_whole(tmp_path, locks):
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(io.__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    jobs = [subprocess.Popen([sys.executable, "-c", BIND_AT_ONCE.format(rounds=ROUNDS, jobs=JOBS), str(tmp_path), str(job),
                              locks], env=env, stderr=subprocess.PIPE, text=True) for job in range(JOBS)]
    try:
        time.sleep(1.0)  # every job started and waiting
        (tmp_path / "go").touch()
        for n in range(ROUNDS):
            (tmp_path / f"go-{n}").touch()
            deadline = time.monotonic() + 60
            while (len([p for p in os.listdir(tmp_path) if p.startswith(f"done-{n}-")]) < JOBS
                   and all(j.poll() in (None, 0) for j in jobs) and time.monotonic() < deadline):
                time.sleep(0.005)
        errors = [j.communicate(timeout=60)[1] for j in jobs]
    finally:
        for j in jobs:
            if j.poll() is None:
                j.kill()
    assert [j.returncode for j in jobs] == [0] * JOBS, [e[-1500:] for e in errors if e]
    for n in range(ROUNDS):
        out = tmp_path / f"run-{n}"
        assert sorted(os.listdir(out)) == ["run_config.json", RUN_LOG_FILE]  # no lock or temporary file left
        assert json.loads((out / "run_config.json").read_text()) == {"questions": 8, "seed": 0}
        log = read_run_log(out)  # whole lines only
        assert all("changed" not in e for e in log)  # nobody adopted another job's files as a foreign run
        if locks == "nolocks":  # every file whole, but a job that binds in the same instant may lose an entry
            assert 1 <= len(log) <= JOBS and all(e.get("seconds") in (None, *map(float, range(JOBS))) for e in log)
            continue
        assert len(log) == JOBS and len({e["invocation"] for e in log}) == JOBS  # nobody's entry lost
        assert sorted(e["seconds"] for e in log) == [float(j) for j in range(JOBS)]  # each finished its own
HOLD = """
import os, sys, time
from ttcjax.io import bind_run_dir, finish_invocation, invocation_clock
out, role = sys.argv[1], sys.argv[2]
invocation = bind_run_dir(out, {"questions": 8}, "sweep", role=role)
with invocation_clock(out, invocation):
    print("bound", flush=True)
    while not os.path.exists(out + ".stop"):
        time.sleep(0.01)
    finish_invocation(out, 1.0, invocation)
"""


def _holder(out, role=""):
    """A child process that binds `out` for `role` and holds it until OUT.stop appears."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(io.__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out), role], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "bound"
    return child


def _in_use(out, child, role=""):
    part = rf" \({role}\)" if role else ""
    return rf"{out} is in use: `ttcjax sweep`{part} \(pid {child.pid} on .*, since .*\)"


def test_a_second_invocation_of_the_same_part_of_a_run_stops_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    child = _holder(out)
    try:
        before = _files(out)
        for rerun in ("resume", "fresh"):  # neither works in it nor moves it away from under it
            with pytest.raises(ValueError, match=_in_use(out, child) + " is running in it; wait for it to end"):
                bind_run_dir(out, {"questions": 8}, "sweep", rerun=rerun)
        # nor does a part of a split of the run (a job of an array, a process of several): the whole run does it all
        with pytest.raises(ValueError, match=_in_use(out, child)):
            bind_run_dir(out, {"questions": 8}, "sweep", role="job-1-of-2")
        assert _files(out) == before and not [p for p in os.listdir(tmp_path) if ".before-" in p]
        (tmp_path / "run.stop").touch()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    assert not [p for p in os.listdir(out) if p.startswith(".held")]  # released, and the lock files removed
    mine = bind_run_dir(out, {"questions": 8}, "sweep")  # free again
    bind_run_dir(out, {"questions": 8}, "sweep")  # this process may hold it again (a resume in the same process)
    finish_invocation(out, 3.0, mine)
    release_run_dir(out)
    (tmp_path / "run.stop").unlink()
    child = _holder(out)
    child.kill()  # a killed holder's hold ends with it
    child.wait(timeout=60)
    held = bind_run_dir(out, {"questions": 8}, "sweep")
    with pytest.raises(RuntimeError):  # a run stopped by an exception (a notebook's interrupted cell) lets go too
        with invocation_clock(out, held):
            raise RuntimeError("interrupted")
    assert not (out / ".held.lock").exists()
    assert [e.get("seconds") for e in read_run_log(out)] == [1.0, 3.0, None, None, None]


def test_parts_of_one_split_of_a_run_share_it_and_nothing_else_does(tmp_path):
    out = tmp_path / "run"
    child = _holder(out, "job-0-of-2")
    try:
        for rerun in ("resume", "fresh"):  # the whole run is refused, and --fresh does not move it from under the job
            with pytest.raises(ValueError, match=_in_use(out, child, "job-0-of-2")):
                bind_run_dir(out, {"questions": 8}, "sweep", rerun=rerun)
        assert not [p for p in os.listdir(tmp_path) if ".before-" in p]
        with pytest.raises(ValueError, match=_in_use(out, child, "job-0-of-2")):  # the same job again
            bind_run_dir(out, {"questions": 8}, "sweep", role="job-0-of-2")
        with pytest.raises(ValueError, match=_in_use(out, child, "job-0-of-2") + " is running another split of the "
                                             r"run in it \(job-0-of-2, where this is job-0-of-4\)"):
            bind_run_dir(out, {"questions": 8}, "sweep", role="job-0-of-4")
        with invocation_clock(out, bind_run_dir(out, {"questions": 8}, "sweep", role="job-1-of-2")):
            assert (out / ".held-job-1-of-2.lock").exists()  # the other job of the split goes on beside it
        assert not (out / ".held-job-1-of-2.lock").exists() and (out / ".held.lock").exists()  # still shared
        (tmp_path / "run.stop").touch()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    assert not [p for p in os.listdir(out) if p.startswith(".held")]  # the last part removed the shared lock
    with invocation_clock(out, bind_run_dir(out, {"questions": 8}, "sweep")):  # the whole run, now the split is done
        pass


def test_letting_go_leaves_a_lock_file_that_is_not_its_own(tmp_path):
    out = tmp_path / "run"
    bind_run_dir(out, {"questions": 8}, "sweep")
    os.rename(out, tmp_path / "run.old")  # moved by hand while held, and a new run started in its place
    child = _holder(out)
    try:
        release_run_dir(out)  # this process holds nothing there: the child's lock file stays
        assert (out / ".held.lock").exists()
        with pytest.raises(ValueError, match=_in_use(out, child)):
            bind_run_dir(out, {"questions": 8}, "sweep")
    finally:
        child.kill()


def test_another_commit_of_the_same_version_goes_on_with_a_warning_printed_and_logged(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    made = {"version": io.__version__, "commit": "a" * 40, "edited": False}
    monkeypatch.setattr(io, "code_version", lambda: made)
    bind_run_dir(out, {"lr": 0.1}, "sweep")
    capsys.readouterr()
    later = {**made, "commit": "b" * 40}
    monkeypatch.setattr(io, "code_version", lambda: later)
    bind_run_dir(out, {"lr": 0.1}, "sweep")  # a plain resume, no flag needed
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning" in err and "aaaaaaaaaaaa" in err and "bbbbbbbbbbbb" in err
    last = read_run_log(out)[-1]
    assert last["code"] == later and "aaaaaaaaaaaa" in last["warning"] and last["rerun"] == "resume"
    bind_run_dir(out, {"lr": 0.1}, "sweep")  # the same commit again: nothing to warn of
    assert capsys.readouterr().err == "" and "warning" not in read_run_log(out)[-1]
    monkeypatch.setattr(io, "code_version", lambda: {**later, "version": "9.9.9"})
    with pytest.raises(ValueError, match=r"another code version .*this is ttcjax 9\.9\.9.*--continue"):
        bind_run_dir(out, {"lr": 0.1}, "sweep")  # another version still needs --continue (or --fresh)


def test_a_jsonl_file_drops_only_a_last_line_cut_without_its_newline(tmp_path):
    from ttcjax.eval.shards import read_lines
    from ttcjax.training.loop import read_metrics

    path = tmp_path / "results.jsonl"
    whole = '{"id": "a", "step": 1}\n{"id": "b", "step": 2}\n'
    path.write_text(whole + '{"id": "c", "st')  # killed mid-append
    assert [r["id"] for r in read_lines(str(path), repair=True)] == ["a", "b"] and path.read_text() == whole
    assert [r["step"] for r in read_metrics(str(path), upto_step=1)] == [1]
    # a last line that ends in its newline was written whole: damaged, not cut, and named with its file
    for damaged, line in ((whole + '{"id": "c", "st\n', 3), (whole[:23] + '{"id":\n' + whole[23:], 2),
                          (whole + '["c"]\n', 3)):
        path.write_text(damaged)
        for read in (lambda: read_lines(str(path), repair=True), lambda: read_metrics(str(path), upto_step=9)):
            with pytest.raises(ValueError, match=rf"results\.jsonl:{line}: damaged"):
                read()
        assert path.read_text() == damaged  # nothing cut
    path.write_text('{"id": "a", "pass_rate": 0.5}\n{"id": "b"}\n')  # a record that lacks what its reader needs
    with pytest.raises(ValueError, match=r"results\.jsonl:2: damaged \(no pass_rate\)"):
        read_lines(str(path), fields=("pass_rate",))


def test_a_replaced_directory_is_whole_old_or_whole_new_whatever_fails(tmp_path, monkeypatch):
    from ttcjax.io import replace_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    (target / "tokenizer.json").write_text("kept")
    before = _files(tmp_path)
    with pytest.raises(RuntimeError), replace_dir(target, keep=lambda name: name != "weights") as new:
        with open(os.path.join(new, "weights"), "w") as f:
            f.write("half")
        raise RuntimeError("killed while writing")
    assert _files(tmp_path) == before  # the old directory untouched, the half-written one gone
    real_rename = os.rename

    def rename_in_fails(source, target_name):
        if ".tmp-" in os.fspath(source) and not os.fspath(source).endswith(".old"):
            raise OSError("the rename that puts the new directory in place fails")
        real_rename(source, target_name)

    monkeypatch.setattr(os, "rename", rename_in_fails)
    with pytest.raises(OSError), replace_dir(target, keep=lambda name: name != "weights") as new:
        with open(os.path.join(new, "weights"), "w") as f:
            f.write("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert _files(tmp_path) == before  # moved back in place
    with replace_dir(target, keep=lambda name: name != "weights") as new, open(os.path.join(new, "weights"), "w") as f:
        f.write("new")
    assert _files(tmp_path) == {"model/weights": b"new", "model/tokenizer.json": b"kept"}  # nothing else left
