"""tfds array_record round trip of the built-in arithmetic task, without TensorFlow."""

from __future__ import annotations

import importlib.util
import sys

import array_record  # noqa: E402,F401
import pytest
import tensorflow_datasets as tfds  # noqa: E402  (a core dependency: a missing install must fail, not skip)

from ttcjax.tasks import arithmetic  # noqa: E402
from ttcjax.tasks import tfds_builders as tb  # noqa: E402
from ttcjax.tasks.benchmarks import load_arithmetic  # noqa: E402

SIZES = {"train": 20, "validation": 5, "test": 5}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    cfg = tb.ArithmeticConfig(name="tiny", n_train=20, n_validation=5, n_test=5, seed=3)
    tb.build_arithmetic(data_dir, cfg)
    return data_dir, cfg


def test_round_trip_matches_generate(built):
    data_dir, cfg = built
    ids = {}
    for split, n in SIZES.items():
        src = tb.load_arithmetic_source(data_dir, split, cfg)
        assert len(src) == n
        probs = arithmetic.generate(cfg.task_config(), n, cfg.seed, split)
        ex = src[n - 1]  # random access
        assert ex["id"].decode() == probs[-1].id
        assert int(ex["difficulty"]) == probs[-1].difficulty
        recs = tb.records_from_source(src)
        assert recs == load_arithmetic(split, n, cfg.seed, cfg.task_config())
        assert [r.answer for r in recs] == [str(p.answer) for p in probs]
        assert [r.metadata["difficulty"] for r in recs] == [p.difficulty for p in probs]
        ids[split] = {r.id for r in recs}
        assert len(ids[split]) == n
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]


def test_files_are_array_record(built):
    data_dir, _ = built
    files = [p.name for p in data_dir.rglob("*") if p.is_file()]
    data = [f for f in files if f.startswith("ttcjax_arithmetic-")]
    assert data and all("array_record" in f for f in data), files
    for split in SIZES:
        assert any(f"-{split}.array_record" in f for f in data), files
    assert not any("tfrecord" in f for f in files)


def test_no_tensorflow(built):
    data_dir, cfg = built
    tb.records_from_source(tb.load_arithmetic_source(data_dir, "test", cfg))
    assert "tensorflow" not in sys.modules
    assert importlib.util.find_spec("tensorflow") is None


def test_missing_build_raises(tmp_path):
    cfg = tb.ArithmeticConfig(name="absent", n_train=2, n_validation=1, n_test=1)
    with pytest.raises(Exception):
        tb.load_arithmetic_source(tmp_path, "test", cfg)
    with pytest.raises(ValueError):
        tb.load_arithmetic_source(tmp_path, "dev", cfg)
