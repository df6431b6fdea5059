"""tfds array_record builds of MATH, MATH-500 and GSM8K from a manual directory, without
TensorFlow: what is read back equals what the direct loaders of ttcjax.tasks.benchmarks return."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import tensorflow_datasets as tfds  # noqa: F401  (a core dependency: must not skip)

from ttcjax.tasks import benchmarks, tfds_builders as tb
from ttcjax.tasks.datasets import load_dataset

MATH_ROWS = [
    {"problem": "What is $1/2$?", "level": "Level 2", "type": "Prealgebra",
     "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x+1=3$.", "level": "Level 1", "type": "Algebra",
     "solution": "So $x=\\boxed{2}$."},
    {"problem": "Odd level", "level": "Level ?", "type": "Geometry",
     "solution": "Area $\\boxed{\\pi}$ — ünïcode."},
]
MATH500_ROWS = [
    {"problem": "P1", "solution": "S $\\boxed{5}$", "answer": "5", "subject": "Algebra",
     "level": 3, "unique_id": "test/algebra/7.json"},
    {"problem": "P2", "solution": "S2", "answer": "\\frac{1}{2}", "subject": "Geometry",
     "level": 5, "unique_id": "test/geometry/9.json"},
]
GSM_ROWS = [
    {"question": "Natalia sold 48 clips?",
     "answer": "She sold 48/2 = <<48/2=24>>24 in May.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "Big?", "answer": "It is 1000+234 = <<1000+234=1234>>1,234.\n#### 1,234"},
    {"question": "Three?", "answer": "1+2 = <<1+2=3>>3\n#### 3"},
]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _math_tree(manual):
    for rel, rec in [("test/algebra/10.json", MATH_ROWS[1]), ("test/algebra/2.json", MATH_ROWS[1]),
                     ("test/geometry/1.json", MATH_ROWS[2]),
                     ("test/prealgebra/1.json", MATH_ROWS[0]),
                     ("train/algebra/1.json", MATH_ROWS[1]),
                     ("train/prealgebra/3.json", MATH_ROWS[0])]:
        f = manual / "MATH" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(rec), encoding="utf-8")
    return manual / "MATH"


def _same(got, want):
    assert got == want  # id, question, answer, solution
    assert [dict(r.metadata) for r in got] == [dict(r.metadata) for r in want]


def _round_trip(name, manual, data_dir, direct):
    """Build, read each split back, compare to the direct loader; return the builder."""
    builder = tb.build_real(name, manual, data_dir)
    for split, want in direct.items():
        src = tb.load_real_source(name, data_dir, split)
        assert len(src) == len(want)
        assert src[len(want) - 1]["id"].decode() == want[-1].id  # random access
        _same(tb.records_from_source(src), want)
        _same(tb.load_real(name, data_dir, split), want)
    files = [p.name for p in (data_dir / builder.name).rglob("*") if p.is_file()]
    data = [f for f in files if f.startswith(builder.name + "-")]
    assert {f.split("-")[1].split(".")[0] for f in data} == set(direct), files
    assert all(".array_record" in f for f in data) and not any("tfrecord" in f for f in files)
    assert "tensorflow" not in sys.modules
    return builder


def test_no_tensorflow_installed():
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


def test_math_tree_round_trip(tmp_path):
    root = _math_tree(tmp_path / "manual")
    direct = {s: benchmarks.load_math(root, s) for s in ("train", "test")}
    assert [r.id for r in direct["test"]][:2] == ["test/algebra/2.json", "test/algebra/10.json"]
    assert direct["test"][2].metadata["level"] == "Level ?"
    _round_trip("math", tmp_path / "manual", tmp_path / "tfds", direct)
    # load_dataset reads a built tfds data_dir too
    _same(load_dataset("math", tmp_path / "tfds", split="test"), direct["test"])
    _same(load_dataset("MATH", tmp_path / "tfds", split="train", limit=1),
          direct["train"][:1])


def test_math_jsonl_round_trip(tmp_path):
    manual = tmp_path / "manual"
    _jsonl(manual / "train.jsonl", MATH_ROWS[:1])
    _jsonl(manual / "test.jsonl", MATH_ROWS)
    direct = {s: benchmarks.load_math(manual / f"{s}.jsonl", s) for s in ("train", "test")}
    assert [r.id for r in direct["test"]] == ["math/test/0", "math/test/1", "math/test/2"]
    _round_trip("math", manual, tmp_path / "tfds", direct)


def test_math500_round_trip(tmp_path):
    manual = tmp_path / "manual"
    _jsonl(manual / "test.jsonl", MATH500_ROWS)
    direct = {"test": benchmarks.load_math500(manual)}
    _round_trip("math500", manual, tmp_path / "tfds", direct)
    _same(load_dataset("math-500", tmp_path / "tfds"), direct["test"])
    with pytest.raises(ValueError, match="splits are"):
        tb.load_real_source("math500", tmp_path / "tfds", "train")


def test_gsm8k_jsonl_round_trip(tmp_path):
    manual = tmp_path / "manual"
    _jsonl(manual / "train.jsonl", GSM_ROWS[:2])
    _jsonl(manual / "test.jsonl", GSM_ROWS)
    direct = {s: benchmarks.load_gsm8k(manual, s) for s in ("train", "test")}
    builder = _round_trip("gsm8k", manual, tmp_path / "tfds", direct)
    assert builder.info.splits["test"].num_examples == 3
    _same(load_dataset("gsm8k", tmp_path / "tfds", split="test", limit=2),
          direct["test"][:2])
    # already built: no-op, the manual files are not needed again
    tb.build_real("gsm8k", tmp_path / "elsewhere", tmp_path / "tfds")


def test_gsm8k_hf_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    manual = tmp_path / "manual"
    (manual / "main").mkdir(parents=True)
    for split, rows in (("train", GSM_ROWS[:1]), ("test", GSM_ROWS)):
        pq.write_table(pa.table({"question": [r["question"] for r in rows],
                                 "answer": [r["answer"] for r in rows]}),
                       manual / "main" / f"{split}-00000-of-00001.parquet")
    direct = {s: benchmarks.load_gsm8k(manual / "main" / f"{s}-00000-of-00001.parquet", s)
              for s in ("train", "test")}
    assert [r.answer for r in direct["test"]] == ["72", "1234", "3"]
    _round_trip("gsm8k", manual, tmp_path / "tfds", direct)


@pytest.mark.parametrize("name, present, expected", [
    ("math", None, ["MATH/train/", "train.jsonl", "MATH/test/", "test.jsonl",
                    "github.com/hendrycks/math"]),
    ("math500", None, ["test.jsonl", "HuggingFaceH4/MATH-500"]),
    ("gsm8k", "test.jsonl", ["'train'", "train.jsonl", "main/train-00000-of-00001.parquet",
                             "openai/grade-school-math"]),
])
def test_missing_manual_file_says_what_and_where(tmp_path, name, present, expected):
    manual = tmp_path / "manual"
    manual.mkdir()
    if present:
        _jsonl(manual / present, GSM_ROWS)
    with pytest.raises(FileNotFoundError) as e:
        tb.build_real(name, manual, tmp_path / "tfds")
    msg = str(e.value)
    assert str(manual) in msg and "never downloads" in msg
    for s in expected:
        assert s in msg, (s, msg)
    if present:
        assert "'test'" not in msg  # only the missing split is named
    # a nonexistent manual directory says so
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tb.build_real(name, tmp_path / "nope", tmp_path / "tfds")
    assert not (tmp_path / "tfds" / tb.REAL_BUILDERS[name].name).exists() or not any(
        (tmp_path / "tfds" / tb.REAL_BUILDERS[name].name).rglob("*.array_record"))


def test_instructions_and_unbuilt_source(tmp_path):
    for key, cls in tb.REAL_BUILDERS.items():
        for entries in tb.MANUAL_FILES[key].values():
            assert all(e in cls.MANUAL_DOWNLOAD_INSTRUCTIONS for e in entries)
    with pytest.raises(Exception):
        tb.load_real_source("gsm8k", tmp_path, "test")  # never built: never downloads
    with pytest.raises(ValueError, match="unknown real dataset"):
        tb.build_real("mmlu", tmp_path, tmp_path)
