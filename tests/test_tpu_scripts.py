"""tpu/tpu.sh against a stub `gcloud` that records its argv: the exact commands of the TPU VM workflow (create,
wait, setup, push, run, fetch, ssh, status, delete), remote paths left for the workers' shell, the wheel built from this
checkout, dry runs that only print, and one-line errors."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tpu" / "tpu.sh"
WHERE = ["--zone=us-west4-a"]
VENV = "~/ttcjax-venv"


def _install_stub(bin_dir, name, body):
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}")
    path.chmod(0o755)


class Tpu:
    """Runs tpu/tpu.sh with a stub gcloud first on PATH; `calls()` are the argv lists it received."""

    def __init__(self, tmp_path):
        self.cwd = tmp_path
        self.log = tmp_path / "gcloud.log"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        # appends its argv, one JSON list per line; prints $GCLOUD_STUB_STDOUT (what `describe` would answer)
        _install_stub(bin_dir, "gcloud", f"open({str(self.log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                                         "sys.stdout.write(os.environ.get('GCLOUD_STUB_STDOUT', ''))\n")
        self.home = tmp_path / "workstation-home"
        self.home.mkdir()
        self.env = {key: value for key, value in os.environ.items() if key not in ("PROJECT", "DRY_RUN", "PYTHON")}
        self.env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TPU_NAME="my-v5e", ZONE="us-west4-a",
                        HOME=str(self.home), TPU_POLL_S="0")

    def __call__(self, *args, check=True, **env):
        result = subprocess.run(["bash", str(SCRIPT), *args], env={**self.env, **env}, cwd=self.cwd,
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def calls(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def tpu(tmp_path):
    return Tpu(tmp_path)


def _ssh_all(command):
    return ["compute", "tpus", "tpu-vm", "ssh", "my-v5e", *WHERE, "--worker=all", f"--command={command}"]


def _remote_argv(command, tmp_path):
    """The argv that `ttcjax` receives when the workers' shell runs `command` with its home at remote-home."""
    remote_home = tmp_path / "remote-home"
    (remote_home / "ttcjax-venv" / "bin").mkdir(parents=True)
    _install_stub(remote_home / "ttcjax-venv" / "bin", "ttcjax", "print(json.dumps(sys.argv[1:]))\n")
    result = subprocess.run(["bash", "-c", command], env={"HOME": str(remote_home), "PATH": os.environ["PATH"]},
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout), str(remote_home)


def test_create_a_tpu_vm_or_a_queued_resource(tpu):
    tpu("create", "v5litepod-16")
    tpu("--name", "big", "--project", "my-proj", "create", "v4-32", "--queued", "--spot", "--version", "v2-alpha-tpuv4")
    tpu("create", "v6e-8", "--zone", "europe-west4-a", "--spot")  # global options may follow the command
    assert tpu.calls() == [
        ["compute", "tpus", "tpu-vm", "create", "my-v5e", *WHERE, "--accelerator-type=v5litepod-16",
         "--version=v2-alpha-tpuv5-lite"],
        ["compute", "tpus", "queued-resources", "create", "big", "--zone=us-west4-a", "--project=my-proj",
         "--node-id=big", "--accelerator-type=v4-32", "--runtime-version=v2-alpha-tpuv4", "--spot"],
        ["compute", "tpus", "tpu-vm", "create", "my-v5e", "--zone=europe-west4-a", "--accelerator-type=v6e-8",
         "--version=v2-alpha-tpuv6e", "--spot"],
    ]


def test_wait_polls_the_queued_resource_until_active(tpu):
    tpu("wait", GCLOUD_STUB_STDOUT="ACTIVE\n")
    failed = tpu("wait", check=False, GCLOUD_STUB_STDOUT="FAILED\n")
    assert failed.returncode == 2 and failed.stderr == "tpu.sh: queued resource my-v5e is FAILED\n"
    describe = ["compute", "tpus", "queued-resources", "describe", "my-v5e", *WHERE, "--format=value(state.state)"]
    assert tpu.calls() == [describe, describe]


def test_run_on_all_workers_leaves_remote_paths_to_the_workers_shell(tpu, tmp_path):
    args = ["experiment", "--config", "configs/experiments/gsm8k.yaml", "--out-dir", "~/runs/gsm8k",
            "task.path=~/data/gsm8k", "--mesh", "4,4", "search.delimiter=it's $HOME; `x`"]
    result = tpu("run", *args)
    command = (f"{VENV}/bin/ttcjax experiment --config configs/experiments/gsm8k.yaml --out-dir ~/runs/gsm8k "
               "task.path=\"$HOME\"/data/gsm8k --mesh 4,4 'search.delimiter=it'\\''s $HOME; `x`'")
    assert tpu.calls() == [_ssh_all(command)]
    assert result.stderr == ""
    # what ttcjax then reads on a worker: ~ is the worker's home; everything else arrives as typed here
    argv, remote_home = _remote_argv(command, tmp_path)
    assert argv == ["experiment", "--config", "configs/experiments/gsm8k.yaml", "--out-dir",
                    f"{remote_home}/runs/gsm8k", f"task.path={remote_home}/data/gsm8k", "--mesh", "4,4",
                    "search.delimiter=it's $HOME; `x`"]


def test_run_notes_a_path_the_local_shell_already_expanded(tpu):
    result = tpu("run", "generate", "--model", f"{tpu.home}/ckpt", "--prompt", "Q: 3+4=")
    assert result.stderr == (f"tpu.sh: note: {tpu.home}/ckpt is under this workstation's home; for the workers' "
                             "home write '~/ckpt' in quotes\n")
    assert tpu.calls() == [_ssh_all(f"{VENV}/bin/ttcjax generate --model {tpu.home}/ckpt --prompt 'Q: 3+4='")]


def _install_command(spec):
    check = ("import jax; jax.distributed.initialize(); print(f'worker {jax.process_index()}: "
             "{jax.local_device_count()} of {jax.device_count()} devices, {jax.devices()[0].device_kind}')")
    return (f"set -e; python3 -m venv {VENV} || {{ sudo apt-get update -qq && sudo apt-get install -y -qq "
            f"python3-venv && python3 -m venv {VENV}; }}; {VENV}/bin/pip install --quiet --upgrade pip; "
            f"{VENV}/bin/pip uninstall --quiet --yes ttcjax; {VENV}/bin/pip install --quiet {shlex.quote(spec)}; "
            f"{VENV}/bin/python -c \"{check}\"")


def test_setup_from_a_wheel_copies_it_to_every_worker_and_installs_it_with_jax_tpu(tpu, tmp_path):
    wheel = tmp_path / "ttcjax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    tpu("setup", str(wheel))
    install = _install_command("./ttcjax-0.1.0-py3-none-any.whl[tpu]")
    assert tpu.calls() == [
        ["compute", "tpus", "tpu-vm", "scp", str(wheel), "my-v5e:", *WHERE, "--worker=all"],
        _ssh_all(install),
    ]
    subprocess.run(["bash", "-n", "-c", install], check=True)  # the workers' shell can parse it


def test_setup_from_a_git_url_installs_it_on_every_worker(tpu):
    tpu("setup", "git+https://github.com/me/ttcjax.git@v0.1.0")
    tpu("setup", "https://github.com/me/ttcjax.git")  # pip needs the git+ prefix: added
    assert tpu.calls() == [_ssh_all(_install_command("ttcjax[tpu] @ git+https://github.com/me/ttcjax.git@v0.1.0")),
                           _ssh_all(_install_command("ttcjax[tpu] @ git+https://github.com/me/ttcjax.git"))]


def test_setup_builds_a_wheel_of_a_checkout_and_ships_it(tpu, tmp_path):
    """A real build (pip wheel, with the test environment's setuptools so that it needs no network) of this
    checkout's code and pyproject.toml, copied without the shipped models to keep it quick; the dry run below shows
    that setup without a source builds this checkout itself."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "ttcjax", checkout / "ttcjax", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copytree(ROOT / "ttcjax" / "assets" / "experiments", checkout / "ttcjax" / "assets" / "experiments")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    stale = checkout / "build" / "lib" / "ttcjax" / "deleted_module.py"  # staged by an earlier build
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    tpu("setup", str(checkout), PYTHON=sys.executable, PIP_NO_BUILD_ISOLATION="0")
    wheel = checkout / "dist" / "ttcjax-0.1.0-py3-none-any.whl"
    assert tpu.calls() == [
        ["compute", "tpus", "tpu-vm", "scp", str(wheel), "my-v5e:", *WHERE, "--worker=all"],
        _ssh_all(_install_command("./ttcjax-0.1.0-py3-none-any.whl[tpu]")),
    ]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read("ttcjax-0.1.0.dist-info/entry_points.txt").decode()
    assert {"ttcjax/cli.py", "ttcjax/models/sharding.py", "ttcjax/assets/experiments/demo.yaml"} <= names
    assert "ttcjax = ttcjax.cli:main" in entry_points
    assert "ttcjax/deleted_module.py" not in names


def test_push_copies_a_local_path_to_every_worker(tpu, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    tpu("push", str(configs))
    tpu("push", str(configs), "~/work")  # into ~/work/configs: the directory is made first, or scp would rename
    assert tpu.calls() == [
        ["compute", "tpus", "tpu-vm", "scp", str(configs), "my-v5e:", *WHERE, "--worker=all", "--recurse"],
        _ssh_all("mkdir -p ~/work"),
        ["compute", "tpus", "tpu-vm", "scp", str(configs), "my-v5e:work", *WHERE, "--worker=all", "--recurse"],
    ]


def test_fetch_copies_a_run_directory_from_worker_0(tpu, tmp_path):
    local = tmp_path / "results"
    tpu("fetch", "~/runs/gsm8k", str(local))
    tpu("fetch", "/mnt/disk/runs/demo")
    assert local.is_dir()
    assert tpu.calls() == [
        # scp reads a relative remote path from the worker's home
        ["compute", "tpus", "tpu-vm", "scp", "my-v5e:runs/gsm8k", str(local), *WHERE, "--worker=0", "--recurse"],
        ["compute", "tpus", "tpu-vm", "scp", "my-v5e:/mnt/disk/runs/demo", ".", *WHERE, "--worker=0", "--recurse"],
    ]


def test_ssh_status_and_delete(tpu):
    tpu("ssh")
    tpu("ssh", "--worker", "all", "ls", "~/runs")
    tpu("status", "--queued")
    tpu("delete")
    tpu("delete", "--queued")
    assert tpu.calls() == [
        ["compute", "tpus", "tpu-vm", "ssh", "my-v5e", *WHERE, "--worker=0"],
        ["compute", "tpus", "tpu-vm", "ssh", "my-v5e", *WHERE, "--worker=all", "--command=ls ~/runs"],
        ["compute", "tpus", "queued-resources", "describe", "my-v5e", *WHERE],
        ["compute", "tpus", "tpu-vm", "delete", "my-v5e", *WHERE, "--quiet"],
        ["compute", "tpus", "queued-resources", "delete", "my-v5e", *WHERE, "--force", "--quiet"],
    ]


@pytest.mark.parametrize("dry", [{"DRY_RUN": "1"}, {"flag": "--dry-run"}], ids=["DRY_RUN=1", "--dry-run"])
def test_dry_run_prints_each_command_and_runs_none(tpu, tmp_path, dry):
    wheel = tmp_path / "ttcjax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    flag = [dry["flag"]] if "flag" in dry else []
    env = {"DRY_RUN": dry["DRY_RUN"]} if "DRY_RUN" in dry else {}
    local = tmp_path / "results"
    printed = [tpu(*flag, *args, **env).stdout for args in (
        ["create", "v5litepod-16", "--queued"], ["setup"], ["setup", str(wheel)],
        ["run", "generate", "--model", "~/ckpt", "--prompt", "it's"], ["fetch", "~/runs/x", str(local)], ["delete"])]
    assert tpu.calls() == [] and not local.exists()
    lines = [shlex.split(line) for out in printed for line in out.splitlines()]
    wheel_built = str(ROOT / "dist" / "ttcjax-0.1.0-py3-none-any.whl")
    install = _install_command("./ttcjax-0.1.0-py3-none-any.whl[tpu]")
    assert lines == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "my-v5e", *WHERE, "--node-id=my-v5e",
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite"],
        ["rm", "-rf", str(ROOT / "build" / "lib")],
        ["python3", "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(ROOT / "dist"), str(ROOT)],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", wheel_built, "my-v5e:", *WHERE, "--worker=all"],
        ["gcloud", *_ssh_all(install)],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(wheel), "my-v5e:", *WHERE, "--worker=all"],
        ["gcloud", *_ssh_all(install)],
        ["gcloud", *_ssh_all(f"{VENV}/bin/ttcjax generate --model ~/ckpt --prompt 'it'\\''s'")],
        ["mkdir", "-p", str(local)],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "my-v5e:runs/x", str(local), *WHERE, "--worker=0",
         "--recurse"],
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-v5e", *WHERE, "--quiet"],
    ]


@pytest.mark.parametrize("args, env, message", [
    (["delete"], {"TPU_NAME": ""}, "no TPU name: set TPU_NAME or pass --name NAME"),
    (["run", "demo"], {"ZONE": ""}, "no zone: set ZONE or pass --zone ZONE (e.g. us-west4-a)"),
    (["create"], {}, "create needs an accelerator type: tpu.sh create v5litepod-16"),
    (["create", "v9-8"], {}, "no default runtime for v9-8: pass --version (see gcloud compute tpus tpu-vm versions "
                             "list --zone=us-west4-a)"),
    (["run"], {}, "run needs a ttcjax command: tpu.sh run experiment --config FILE --out-dir '~/runs/x'"),
    (["fetch"], {}, "fetch needs REMOTE_DIR [LOCAL_DIR]: tpu.sh fetch '~/runs/x' runs"),
    (["setup", "ttcjax"], {}, "setup takes a checkout directory, a .whl file or a git URL (git+https://...), "
                              "got ttcjax"),
    (["setup", "missing.whl"], {}, "no wheel at missing.whl"),
    (["--zone"], {}, "--zone needs a value"),
    (["push", "configs"], {}, "no configs here to push"),
    (["launch"], {}, "unknown command launch: create, wait, setup, push, run, fetch, ssh, status or delete "
                     "(tpu.sh --help)"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_mistakes_stop_with_one_line_and_call_nothing(tpu, args, env, message):
    result = tpu(*args, check=False, **env)
    assert (result.returncode, result.stderr, tpu.calls()) == (2, f"tpu.sh: {message}\n", [])
