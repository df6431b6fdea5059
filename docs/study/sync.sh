#!/usr/bin/env bash
# Carry a study's run directory between machines through git, while it is under way:
#   bash docs/study/sync.sh save [NAME]      # runs/NAME -> docs/study/saved/NAME (every file gzipped; it may run on),
#                                            # with STATUS.md, where the run stands (`ttcjax experiment --status`)
#   bash docs/study/sync.sh restore [NAME]   # docs/study/saved/NAME -> runs/NAME, then rerun its command to resume
# NAME is the study's config, configs/experiments/NAME.yaml (default: study); its out_dir is runs/NAME.
# The run directory's records are plain JSONL; `ttcjax experiment` resumes from whatever complete records it finds
# (a record cut short by a stop is dropped and redone), so a saved copy resumes exactly where the run stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${2:-study}
config=configs/experiments/$name.yaml run=runs/$name saved=docs/study/saved/$name
if [ ! -f "$config" ]; then echo "sync.sh: $config: no such study config" >&2; exit 2; fi
if ! grep -qx "out_dir: $run" "$config"; then echo "sync.sh: $config does not write to $run" >&2; exit 2; fi
case "${1:-}" in
  save)
    if pgrep -f "ttcjax experiment --config $config" >/dev/null; then
      echo "sync.sh: the study is running: a record it is writing may be saved half written (resuming drops it)" >&2
    fi
    rm -rf "$saved" && mkdir -p "$saved"
    (cd "$run" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \) -print0) |
      while IFS= read -r -d '' f; do
        mkdir -p "$saved/$(dirname "$f")" && gzip -9nc "$run/$f" > "$saved/$f.gz"
      done
    ttcjax=$(command -v ttcjax || echo .venv/bin/ttcjax)
    if "$ttcjax" experiment --config "$config" --status > "$saved/.STATUS.md" 2> "$saved/.status.err"; then
      mv "$saved/.STATUS.md" "$saved/STATUS.md"
    else
      echo "sync.sh: no $saved/STATUS.md: \`ttcjax experiment --status\` failed:" >&2 && cat "$saved/.status.err" >&2
      rm -f "$saved/.STATUS.md"
    fi
    rm -f "$saved/.status.err"
    du -sh "$saved" ;;
  restore)
    if [ -e "$run" ]; then echo "sync.sh: $run exists; move it aside first" >&2; exit 1; fi
    (cd "$saved" && find . -type f -name '*.gz' -print0) |
      while IFS= read -r -d '' f; do
        mkdir -p "$run/$(dirname "$f")" && gunzip -c "$saved/$f" > "$run/${f%.gz}"
      done
    echo "restored $run; resume with: ttcjax experiment --config $config" ;;
  *) echo "usage: bash docs/study/sync.sh save|restore [NAME]" >&2; exit 2 ;;
esac
