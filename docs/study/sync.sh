#!/usr/bin/env bash
# Carry the study's run directory between machines through git, while it is under way:
#   bash docs/study/sync.sh save      # runs/study -> docs/study/run (every file gzipped; the study may run on)
#   bash docs/study/sync.sh restore   # docs/study/run -> runs/study, then rerun the study's command to resume
# The run directory's records are plain JSONL; `ttcjax experiment` resumes from whatever complete records it finds
# (a record cut short by a stop is dropped and redone), so a saved copy resumes exactly where the run stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=runs/study saved=docs/study/run
case "${1:-}" in
  save)
    if pgrep -f "ttcjax experiment --config configs/experiments/study.yaml" >/dev/null; then
      echo "sync.sh: the study is running: a record it is writing may be saved half written (resuming drops it)" >&2
    fi
    rm -rf "$saved" && mkdir -p "$saved"
    (cd "$run" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \) -print0) |
      while IFS= read -r -d '' f; do
        mkdir -p "$saved/$(dirname "$f")" && gzip -9nc "$run/$f" > "$saved/$f.gz"
      done
    du -sh "$saved" ;;
  restore)
    if [ -e "$run" ]; then echo "sync.sh: $run exists; move it aside first" >&2; exit 1; fi
    (cd "$saved" && find . -type f -name '*.gz' -print0) |
      while IFS= read -r -d '' f; do
        mkdir -p "$run/$(dirname "$f")" && gunzip -c "$saved/$f" > "$run/${f%.gz}"
      done
    echo "restored $run; resume with: ttcjax experiment --config configs/experiments/study.yaml" ;;
  *) echo "usage: bash docs/study/sync.sh save|restore" >&2; exit 2 ;;
esac
