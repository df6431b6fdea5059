"""The models shipped inside the package (the embedded default), and how they get there.

    ttcjax/assets/policies/tiny     0.75M-parameter policy      configs/train/policy-tiny.yaml
    ttcjax/assets/policies/small    its 4x larger sibling       configs/train/policy-small.yaml
    ttcjax/assets/prms/tiny         PRM for the tiny policy     configs/train/prm-tiny.yaml
    ttcjax/assets/orms/tiny         ORM for the tiny policy     configs/train/orm-tiny.yaml
    ttcjax/assets/revisions/tiny    revision model (section 6)  configs/train/revision-tiny.yaml
    ttcjax/assets/orms/revision-tiny  its revision verifier     configs/train/orm-revision-tiny.yaml

Each directory holds the model, `train_summary.json` (the training command's own record: config, command,
wall time, metrics), `eval.json` (`ttcjax eval ...` on the test split) and TRAINING.md. They are copied
from a finished training run by

    python -m ttcjax.checkpoints.assets ship RUN_DIR KIND NAME --eval EVAL_JSON
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ttcjax.io import replace_dir

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # ttcjax/assets
KINDS = {"policy": "policies", "prm": "prms", "orm": "orms", "revision": "revisions"}


def asset_path(kind: str, name: str = "tiny") -> str:
    """The directory of a shipped model; FileNotFoundError (naming the training command) if absent."""
    if kind not in KINDS:
        raise ValueError(f"asset kind {kind!r} is not one of {sorted(KINDS)}.")
    path = ASSETS / KINDS[kind] / name
    if not path.is_dir():
        if os.sep in name or name.startswith("."):  # meant as a directory
            raise FileNotFoundError(f"{name}: no such checkpoint directory (nor a shipped {kind} of that name); "
                                    "check the path.")
        shipped = sorted(p.name for p in (ASSETS / KINDS[kind]).glob("*")) if (ASSETS / KINDS[kind]).is_dir() else []
        raise FileNotFoundError(f"no shipped {kind} named {name!r} (shipped: {shipped}); train one with "
                                f"`ttcjax train {kind} --config configs/train/{kind}-{name}.yaml`.")
    return str(path)


def model_dir(kind: str, name: str = "tiny") -> str:
    """The loadable model inside a shipped asset."""
    return os.path.join(asset_path(kind, name), "model")


def resolve(kind: str, name_or_dir: str) -> str:
    """A checkpoint directory or GGUF file as given, or the loadable model of the shipped asset of that name."""
    return name_or_dir if os.path.isdir(name_or_dir) or name_or_dir.endswith(".gguf") else model_dir(kind, name_or_dir)


def check_model_name(kind: str, name_or_dir: Any, field: str, source: str) -> None:
    """A model a config names (a shipped name, a checkpoint directory or a .gguf file) checked to exist, when the
    config is read: one ValueError naming `source`, the field and the fix."""
    if not isinstance(name_or_dir, str) or not name_or_dir:
        raise ValueError(f"{source}: {field}={name_or_dir!r} must be a shipped name or a checkpoint directory.")
    if os.path.isdir(name_or_dir) or os.path.isfile(name_or_dir) and name_or_dir.endswith(".gguf"):
        return
    try:
        resolve(kind, name_or_dir)
    except FileNotFoundError as e:
        raise ValueError(f"{source}: {field}={name_or_dir!r}: {e}") from None


def read_json(kind: str, name: str, file: str) -> dict:
    with open(os.path.join(asset_path(kind, name), file)) as f:
        return json.load(f)


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def ship(run_dir: str, kind: str, name: str, eval_json: str | None = None, labels: bool = False) -> Path:
    """Copy a finished run's model, summary and evaluation into the package, with a TRAINING.md: written whole
    beside the asset and swapped in (`ttcjax.io.replace_dir`), so an interrupted or failed ship leaves the asset
    that was there (or none, if none was). `labels`: also the run's labels.jsonl, gzip-compressed (a reward model's
    labels, which another training run can reuse: `labels: ttcjax/assets/prms/NAME/labels.jsonl.gz`)."""
    run = Path(run_dir)
    summary_path = run / "train_summary.json"
    if not summary_path.exists() or not (run / "model").is_dir():
        raise FileNotFoundError(f"{run}: not a finished training run (needs model/ and train_summary.json).")
    summary = json.loads(summary_path.read_text())
    if not summary.get("finished"):
        raise ValueError(f"{summary_path}: the run did not finish; resume it with the same command first.")
    dest = ASSETS / KINDS[kind] / name
    with replace_dir(dest, keep=lambda entry: False) as new:  # nothing of the old asset is kept
        new = Path(new)
        shutil.copytree(run / "model", new / "model")
        shutil.copy(summary_path, new / "train_summary.json")
        shutil.copy(run / "metrics.jsonl", new / "metrics.jsonl")
        if (run / "labels_cost.json").exists():
            shutil.copy(run / "labels_cost.json", new / "labels_cost.json")
        if labels:
            if not (run / "labels.jsonl").exists():
                raise FileNotFoundError(f"{run}: no labels.jsonl to ship (--labels is for a reward model's run).")
            with open(run / "labels.jsonl", "rb") as src, gzip.GzipFile(new / "labels.jsonl.gz", "wb", mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        evaluation = None
        if eval_json:
            shutil.copy(eval_json, new / "eval.json")
            evaluation = json.loads(Path(eval_json).read_text())
        size = _size_mb(new)
        if size > 20:
            raise ValueError(f"{run}: {size:.1f} MB to ship as {dest}; shipped models must stay under 20 MB.")
        lines = [f"# Shipped {kind}: {name}", "",
                 f"Produced by `{summary.get('command')}` "
                 f"(then `python -m ttcjax.checkpoints.assets ship {run_dir} {kind} {name}`).",
                 "",
                 f"- parameters: {summary['model']['params']:,}",
                 f"- steps: {summary['step']}" + (f" (early-stopped; best at {summary.get('best_step')})"
                                                 if summary.get("stopped_early") else ""),
                 f"- wall time of the training command: {summary['wall_seconds_this_run']:.0f} s"
                 + (f" (resumed from step {summary['resumed_from']})" if summary.get("resumed_from") else ""),
                 f"- machine: {summary.get('machine', 'see train_summary.json')}",
                 f"- size on disk: {size:.1f} MB", ""]
        if summary.get("last_train_metrics"):
            m = summary["last_train_metrics"]
            lines += [f"Last training metrics: step {m['step']}, loss {m['loss']:.4f}"
                      + (f", token accuracy {m['token_accuracy']:.3f}" if "token_accuracy" in m else ""), ""]
        if evaluation is not None:
            lines += ["## Evaluation (eval.json)", "", "```json", json.dumps(evaluation, indent=1)[:4000], "```", ""]
        (new / "TRAINING.md").write_text("\n".join(lines))
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttcjax.checkpoints.assets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ship", help="copy a finished training run into the package")
    s.add_argument("run_dir")
    s.add_argument("kind", choices=sorted(KINDS))
    s.add_argument("name")
    s.add_argument("--eval", dest="eval_json")
    s.add_argument("--labels", action="store_true", help="also ship the run's labels.jsonl (gzip-compressed)")
    args = parser.parse_args(argv)
    dest = ship(args.run_dir, args.kind, args.name, args.eval_json, labels=args.labels)
    print(f"shipped {args.run_dir} -> {dest} ({_size_mb(dest):.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
