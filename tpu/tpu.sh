#!/usr/bin/env bash
# ttcjax on a Cloud TPU VM, driven from your workstation: create the VM, install ttcjax on every worker, run a
# command on all workers at once, fetch its results, delete the VM. A worked example: tpu/README.md.
#
#   tpu/tpu.sh [--name NAME] [--zone ZONE] [--project PROJECT] [--dry-run] COMMAND [ARGS...]
#
#   create TYPE [--version RUNTIME] [--spot] [--queued]
#                         a TPU VM of accelerator type TYPE (v5litepod-16, v4-32, v6e-8, ...); --queued asks
#                         through a queued resource (then `wait`), --spot for spot capacity; RUNTIME defaults by
#                         TPU generation
#   wait                  until the queued resource is ACTIVE (polls every $TPU_POLL_S seconds, default 30)
#   setup [DIR | WHEEL | GIT_URL]
#                         installs jax[tpu] and ttcjax into ~/ttcjax-venv on every worker; default: a wheel built
#                         from this checkout (uncommitted changes included), copied to every worker
#   push LOCAL_PATH [REMOTE_DIR]
#                         copies a file or directory (a config, a data set) to every worker, into REMOTE_DIR
#                         (default: the workers' home)
#   run ARGS...           `ttcjax ARGS` on every worker at once, as multi-host JAX needs; a path on the workers
#                         is written '~/ckpt', in quotes, so that the workers' shell expands it
#   fetch REMOTE_DIR [LOCAL_DIR]
#                         copies REMOTE_DIR from worker 0 into LOCAL_DIR (default .)
#   ssh [--worker N|all] [COMMAND...]
#                         a shell on worker N (default 0), or COMMAND there
#   status [--queued]     describes the VM (or its queued resource)
#   delete [--queued]     deletes the VM (or its queued resource and the VM in it) without asking
#
# NAME, ZONE and PROJECT default to $TPU_NAME, $ZONE and $PROJECT (no PROJECT: gcloud's configured project).
# They may also follow the command, except after `run`, whose arguments all go to ttcjax.
# --dry-run or DRY_RUN=1 prints every command, shell-quoted, instead of running it.

# A quoted ~ or $HOME here is meant for the workers' shell, not this one:
# shellcheck disable=SC2088,SC2016
set -euo pipefail

REMOTE_VENV='~/ttcjax-venv'  # written unquoted into remote commands: the workers' shell expands the ~
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
case ${DRY_RUN:-0} in 0 | false | no) DRY_RUN=0 ;; *) DRY_RUN=1 ;; esac

die() {
  echo "tpu.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# One word for a POSIX shell: as it is where that is safe, else in single quotes.
SAFE_WORD='^[A-Za-z0-9_@%+=:,./-]+$'
OPTION_NAME='^-{0,2}[A-Za-z0-9_.-]+$'
LONG_FLAG='^--[A-Za-z0-9-]+='
quote() {
  if [[ $1 =~ $SAFE_WORD ]]; then
    printf '%s' "$1"
    return
  fi
  local rest=$1 out="'"
  while [[ $rest == *"'"* ]]; do
    out+="${rest%%"'"*}'\\''"
    rest=${rest#*"'"}
  done
  printf '%s' "$out$rest'"
}

# One argument for the workers' shell: quoted, except that a leading ~/ (or the ~ of KEY=~/..., --flag=~/...)
# stays for the workers' shell to expand to their home.
remote_word() {
  local arg=$1
  if [[ $arg == '~' || $arg == '~/'* ]]; then
    printf '%s' "${arg:0:2}"
    [[ ${#arg} -le 2 ]] || quote "${arg:2}"
  elif [[ $arg == *'=~/'* && ${arg%%=\~/*} =~ $OPTION_NAME ]]; then
    printf '%s"$HOME"/' "$(quote "${arg%%=\~/*}=")"
    [[ $arg == *'=~/' ]] || quote "${arg#*=\~/}"
  else
    quote "$arg"
  fi
}

# The local shell expands an unquoted ~/ before this script sees it; say so when a path looks like that.
warn_local_home() {
  local arg=$1
  if [[ -n ${HOME:-} && ($arg == "$HOME"/* || $arg == *="$HOME"/*) ]]; then
    echo "tpu.sh: note: $arg is under this workstation's home;" \
      "for the workers' home write '~/${arg#*"$HOME"/}' in quotes" >&2
  fi
}

# Runs a command, or with --dry-run prints it as one shell-quoted line (--flag='value' where value needs quotes).
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    local words=() word
    for word in "$@"; do
      if [[ $word =~ $LONG_FLAG ]]; then
        words+=("${BASH_REMATCH[0]}$(quote "${word#"${BASH_REMATCH[0]}"}")")
      else
        words+=("$(quote "$word")")
      fi
    done
    echo "${words[*]}"
  else
    "$@"
  fi
}

# gcloud compute tpus GROUP VERB POSITIONALS... --zone=ZONE [--project=PROJECT] FLAGS...
tpus() {
  local argv=(gcloud compute tpus "$1" "$2")
  shift 2
  while (($#)) && [[ $1 != -* ]]; do
    argv+=("$1")
    shift
  done
  argv+=(--zone="$ZONE")
  [[ -z $PROJECT ]] || argv+=(--project="$PROJECT")
  run_cmd "${argv[@]}" "$@"
}

require_target() {
  [[ -n $NAME ]] || die "no TPU name: set TPU_NAME or pass --name NAME"
  [[ -n $ZONE ]] || die "no zone: set ZONE or pass --zone ZONE (e.g. us-west4-a)"
}

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
}

# Parses one global option at $1; sets TAKEN to the words it used (0: not a global option).
global_option() {
  TAKEN=0
  case $1 in
    --name | --zone | --project)
      need_value "$@"
      case $1 in --name) NAME=$2 ;; --zone) ZONE=$2 ;; --project) PROJECT=$2 ;; esac
      TAKEN=2
      ;;
    --name=* | --zone=* | --project=*)
      need_value "${1%%=*}" "${1#*=}"
      case $1 in --name=*) NAME=${1#*=} ;; --zone=*) ZONE=${1#*=} ;; --project=*) PROJECT=${1#*=} ;; esac
      TAKEN=1
      ;;
    --dry-run) DRY_RUN=1 TAKEN=1 ;;
  esac
}

# The TPU software version for an accelerator type (Cloud TPU's documented runtime per generation).
default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

cmd_create() {
  local type='' version='' spot=() queued=0
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      --version | --runtime-version) need_value "$@"; version=$2; shift 2 ;;
      --spot) spot=(--spot); shift ;;
      --queued) queued=1; shift ;;
      -*) die "create: unknown option $1" ;;
      *) [[ -z $type ]] || die "create takes one accelerator type, got $type and $1"; type=$1; shift ;;
    esac
  done
  [[ -n $type ]] || die "create needs an accelerator type: tpu.sh create v5litepod-16"
  require_target
  [[ -n $version ]] || version=$(default_runtime "$type") ||
    die "no default runtime for $type: pass --version (see gcloud compute tpus tpu-vm versions list --zone=$ZONE)"
  if ((queued)); then
    tpus queued-resources create "$NAME" --node-id="$NAME" --accelerator-type="$type" \
      --runtime-version="$version" ${spot[@]+"${spot[@]}"}
  else
    tpus tpu-vm create "$NAME" --accelerator-type="$type" --version="$version" ${spot[@]+"${spot[@]}"}
  fi
}

cmd_wait() {
  while (($#)); do
    global_option "$@"
    ((TAKEN)) || die "wait: unknown argument $1"
    shift "$TAKEN"
  done
  require_target
  local state
  while true; do
    state=$(tpus queued-resources describe "$NAME" --format='value(state.state)')
    if [[ $DRY_RUN == 1 ]]; then echo "$state"; return; fi
    case $state in
      ACTIVE) echo "tpu.sh: $NAME is ACTIVE" >&2; return ;;
      FAILED | SUSPENDING | SUSPENDED | DELETING) die "queued resource $NAME is $state" ;;
    esac
    echo "tpu.sh: $NAME is ${state:-not reported}; checking again in ${TPU_POLL_S:-30} s" >&2
    sleep "${TPU_POLL_S:-30}"
  done
}

# The version in a pyproject.toml's [project] table (the wheel's file name needs it).
project_version() {
  local version
  version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$1/pyproject.toml" | head -n 1)
  [[ -n $version ]] || die "no version = \"...\" in $1/pyproject.toml"
  echo "$version"
}

cmd_setup() {
  local source=''
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      -*) die "setup: unknown option $1" ;;
      *) [[ -z $source ]] || die "setup takes one source, got $source and $1"; source=$1; shift ;;
    esac
  done
  require_target
  [[ -n $source ]] || source=$REPO_ROOT
  local wheel='' spec
  if [[ -d $source ]]; then
    [[ -f $source/pyproject.toml ]] || die "$source has no pyproject.toml: not a ttcjax checkout"
    local src dist
    src=$(cd "$source" && pwd)
    dist=$src/dist
    wheel=$dist/ttcjax-$(project_version "$src")-py3-none-any.whl
    # setuptools ships whatever it finds in build/lib: clear it, so that a file deleted here is not shipped
    run_cmd rm -rf "$src/build/lib"
    run_cmd "${PYTHON:-python3}" -m pip wheel --no-deps --quiet --wheel-dir "$dist" "$src"
    [[ $DRY_RUN == 1 || -f $wheel ]] || die "pip wheel did not write $wheel"
  elif [[ $source == *.whl ]]; then
    wheel=$source
    [[ -f $wheel ]] || die "no wheel at $wheel"
  elif [[ $source == git+* || $source == *://* ]]; then
    [[ $source == git+* || $source != *.git && $source != *.git@* ]] || source=git+$source
    spec="ttcjax[tpu] @ $source"
  else
    die "setup takes a checkout directory, a .whl file or a git URL (git+https://...), got $source"
  fi
  if [[ -n $wheel ]]; then
    # copied into the workers' home, then installed with the tpu extra (jax[tpu], which brings libtpu)
    tpus tpu-vm scp "$wheel" "$NAME:" --worker=all
    spec="./$(basename "$wheel")[tpu]"
  fi
  local pip="$REMOTE_VENV/bin/pip" check
  check="import jax; jax.distributed.initialize(); print(f'worker {jax.process_index()}: \
{jax.local_device_count()} of {jax.device_count()} devices, {jax.devices()[0].device_kind}')"
  # the same version number must still replace an older install: uninstall ttcjax first (its dependencies stay)
  tpus tpu-vm ssh "$NAME" --worker=all --command="set -e; \
python3 -m venv $REMOTE_VENV || \
{ sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv $REMOTE_VENV; }; \
$pip install --quiet --upgrade pip; $pip uninstall --quiet --yes ttcjax; $pip install --quiet $(quote "$spec"); \
$REMOTE_VENV/bin/python -c \"$check\""
}

cmd_run() {
  (($#)) || die "run needs a ttcjax command: tpu.sh run experiment --config FILE --out-dir '~/runs/x'"
  require_target
  local words=() arg
  for arg in "$@"; do
    warn_local_home "$arg"
    words+=("$(remote_word "$arg")")
  done
  tpus tpu-vm ssh "$NAME" --worker=all --command="$REMOTE_VENV/bin/ttcjax ${words[*]}"
}

cmd_fetch() {
  local paths=()
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      -*) die "fetch: unknown option $1" ;;
      *) paths+=("$1"); shift ;;
    esac
  done
  ((${#paths[@]} >= 1 && ${#paths[@]} <= 2)) || die "fetch needs REMOTE_DIR [LOCAL_DIR]: tpu.sh fetch '~/runs/x' runs"
  require_target
  local remote=${paths[0]} local_dir=${paths[1]:-.}
  warn_local_home "$remote"
  # scp reads a relative remote path from the worker's home: ~/runs/x is runs/x there
  case $remote in
    '~' | '~/') remote=. ;;
    '~/'*) remote=${remote#\~/} ;;
  esac
  run_cmd mkdir -p "$local_dir"
  tpus tpu-vm scp "$NAME:$remote" "$local_dir" --worker=0 --recurse
}

cmd_push() {
  local paths=()
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      -*) die "push: unknown option $1" ;;
      *) paths+=("$1"); shift ;;
    esac
  done
  ((${#paths[@]} >= 1 && ${#paths[@]} <= 2)) || die "push needs LOCAL_PATH [REMOTE_DIR]: tpu.sh push configs"
  require_target
  local local_path=${paths[0]} remote=${paths[1]:-'~'}
  [[ -e $local_path ]] || die "no $local_path here to push"
  warn_local_home "$remote"
  if [[ $remote != '~' && $remote != '~/' ]]; then
    # scp copies into a directory only where it exists (else it would take that name): make it on every worker
    tpus tpu-vm ssh "$NAME" --worker=all --command="mkdir -p $(remote_word "$remote")"
  fi
  case $remote in
    '~' | '~/') remote='' ;;
    '~/'*) remote=${remote#\~/} ;;
  esac
  tpus tpu-vm scp "$local_path" "$NAME:$remote" --worker=all --recurse
}

cmd_ssh() {
  local worker=0
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      --worker) need_value "$@"; worker=$2; shift 2 ;;
      --worker=*) worker=${1#*=}; shift ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  require_target
  if (($#)); then
    tpus tpu-vm ssh "$NAME" --worker="$worker" --command="$*"
  else
    tpus tpu-vm ssh "$NAME" --worker="$worker"
  fi
}

# status and delete: the VM itself, or with --queued the queued resource that holds it
cmd_node() {
  local verb=$1 queued=0
  shift
  while (($#)); do
    global_option "$@"
    if ((TAKEN)); then shift "$TAKEN"; continue; fi
    case $1 in
      --queued) queued=1; shift ;;
      *) die "$verb: unknown argument $1" ;;
    esac
  done
  require_target
  if [[ $verb == status ]]; then
    if ((queued)); then tpus queued-resources describe "$NAME"; else tpus tpu-vm describe "$NAME"; fi
  elif ((queued)); then
    tpus queued-resources delete "$NAME" --force --quiet  # --force: the VM in it goes too
  else
    tpus tpu-vm delete "$NAME" --quiet
  fi
}

while (($#)); do
  global_option "$@"
  if ((TAKEN)); then shift "$TAKEN"; continue; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (tpu.sh --help)" ;;
    *) break ;;
  esac
done
(($#)) || { usage >&2; exit 2; }
command=$1
shift
case $command in
  create) cmd_create "$@" ;;
  wait) cmd_wait "$@" ;;
  setup) cmd_setup "$@" ;;
  run) cmd_run "$@" ;;
  push) cmd_push "$@" ;;
  fetch) cmd_fetch "$@" ;;
  ssh) cmd_ssh "$@" ;;
  status | delete) cmd_node "$command" "$@" ;;
  *) die "unknown command $command: create, wait, setup, push, run, fetch, ssh, status or delete (tpu.sh --help)" ;;
esac
