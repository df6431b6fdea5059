"""notebooks/quickstart.ipynb runs top to bottom in a fresh Jupyter kernel at its SMALL size: the install cell
finds this checkout, the experiment writes its report into a temporary directory, the report's plots are shown,
search runs with the PRM through the Python API, and the saved scheduler answers a new question. A failing cell
fails the test (nbclient raises CellExecutionError with the cell's traceback)."""

import ast
import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ttcjax.search.strategies import StrategySpec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def tagged(nb, tag):
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def text(cell, output_type=None):
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs
                   if output_type in (None, o.output_type))


def result(cell):
    """The value of the cell's last expression (its execute_result), read back from its repr."""
    (out,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    return ast.literal_eval(out.data["text/plain"])


def test_the_quickstart_notebook_runs_at_its_small_size(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells), "commit the notebook with its outputs cleared"
    out_dir = tmp_path / "run"
    # papermill's convention: the overrides go in a cell right after the one tagged "parameters"
    injected = nbformat.v4.new_code_cell(f"SMALL = True\nOUT_DIR = {str(out_dir)!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(nb.cells.index(tagged(nb, "parameters")) + 1, injected)
    # the kernel runs this interpreter ("python" in the kernelspec) on this checkout, with one CPU device as a
    # user's would (not the 8 simulated devices of tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=env)

    assert f"ttcjax from {ROOT / 'ttcjax'};" in text(tagged(nb, "install"))  # this checkout, not a clone
    assert f"ttcjax demo --out-dir {out_dir}" in text(tagged(nb, "experiment"))
    report = json.loads((out_dir / "report.json").read_text())
    assert report["questions"] == 4
    # every plot the summary links is displayed, in place
    linked = (out_dir / "summary.md").read_text().count(".png)")
    images = [o for o in tagged(nb, "report").outputs if "image/png" in o.get("data", {})]
    assert linked >= 3 and len(images) == linked
    accuracy = result(tagged(nb, "search"))
    assert set(accuracy) == {"best-of-N, weighted", "best-of-N, majority", "beam search"}
    assert all(0 <= a <= 1 for a in accuracy.values()) and max(accuracy.values()) > 0
    assert "Beam(n=4, selection='weighted', width=2)" in text(tagged(nb, "search"), "stream")
    # the scheduler ran the strategy it chose for the question's bin at the 4 generations left after 1 probe
    scheduler = json.loads((out_dir / "scheduler.json").read_text())
    (record,) = result(tagged(nb, "scheduler"))
    chosen = StrategySpec.from_dict(scheduler["choices"][f"{record['level']}/4"])
    assert record["strategy"] == chosen.at(4).to_dict()
    assert record["question"].strip() == "Q: 7*3-4+8=" and isinstance(record["correct"], bool)
    assert len(text(tagged(nb, "decoding"), "stream").splitlines()) == 4
