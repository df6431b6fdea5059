import json
import pickle

import pytest

from ttcjax.tasks import arithmetic, benchmarks as datasets
from ttcjax.tasks.benchmarks import ProblemRecord
from ttcjax.tasks.datasets import load_dataset


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MATH_ROWS = [
    {"problem": "What is $1/2$?", "level": "Level 2", "type": "Prealgebra",
     "solution": "It is $\\boxed{3}$ no wait, $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x+1=3$.", "level": "Level 1", "type": "Algebra",
     "solution": "So $x=\\boxed{2}$."},
]


@pytest.fixture
def math_tree(tmp_path):
    root = tmp_path / "MATH"
    for rel, rec in [("test/algebra/10.json", MATH_ROWS[1]), ("test/algebra/2.json", MATH_ROWS[1]),
                     ("test/prealgebra/1.json", MATH_ROWS[0]),
                     ("train/algebra/1.json", MATH_ROWS[1])]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(rec))
    return root


def test_math_tree(math_tree):
    recs = load_dataset("math", math_tree)
    assert [r.id for r in recs] == ["test/algebra/2.json", "test/algebra/10.json",
                                    "test/prealgebra/1.json"]
    r = recs[2]
    assert r.question == "What is $1/2$?"
    assert r.answer == "\\frac{1}{2}"
    assert r.solution == MATH_ROWS[0]["solution"]
    assert dict(r.metadata) == {"level": 2, "subject": "Prealgebra", "source": "math",
                                "split": "test"}
    assert [r.id for r in load_dataset("math", math_tree, split="train")] == ["train/algebra/1.json"]
    # pointing at the split directory gives the same ids
    assert [r.id for r in datasets.load_math(math_tree / "test")] == [r.id for r in recs]
    assert len(load_dataset("math", math_tree, limit=1)) == 1


def test_math_jsonl(tmp_path):
    f = _jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    recs = load_dataset("math", f)
    assert [r.id for r in recs] == ["math/test/0", "math/test/1"]
    assert [r.answer for r in recs] == ["\\frac{1}{2}", "2"]
    assert recs[1].metadata["level"] == 1 and recs[1].metadata["subject"] == "Algebra"


def test_math_malformed_tree(math_tree):
    (math_tree / "test/algebra/3.json").write_text(json.dumps({"problem": "p"}))
    with pytest.raises(ValueError, match=r"3\.json.*missing key 'solution'"):
        load_dataset("math", math_tree)


def test_math500(tmp_path):
    rows = [{"problem": "P1", "solution": "S $\\boxed{5}$", "answer": "5", "subject": "Algebra",
             "level": 3, "unique_id": "test/algebra/7.json"},
            {"problem": "P2", "solution": "S2", "answer": "\\frac{1}{2}", "subject": "Geometry",
             "level": 5, "unique_id": "test/geometry/9.json"}]
    _jsonl(tmp_path / "test.jsonl", rows)
    recs = load_dataset("math500", tmp_path)  # directory holding test.jsonl
    assert [r.id for r in recs] == ["test/algebra/7.json", "test/geometry/9.json"]
    assert recs[1].answer == "\\frac{1}{2}" and recs[1].solution == "S2"
    assert recs[1].metadata["level"] == 5 and recs[1].metadata["subject"] == "Geometry"
    assert load_dataset("math500", tmp_path / "test.jsonl", limit=1) == recs[:1]


GSM_ROWS = [
    {"question": "Natalia sold 48 clips?",
     "answer": "She sold 48/2 = <<48/2=24>>24 in May.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "Big?", "answer": "It is 1000+234 = <<1000+234=1234>>1,234.\n#### 1,234"},
]


def test_gsm8k(tmp_path):
    f = _jsonl(tmp_path / "test.jsonl", GSM_ROWS)
    recs = load_dataset("gsm8k", f)
    assert [r.id for r in recs] == ["gsm8k/test/0", "gsm8k/test/1"]
    assert [r.answer for r in recs] == ["72", "1234"]
    assert recs[0].solution == "She sold 48/2 = 24 in May.\nTotal 48+24 = 72."
    assert "<<" not in recs[1].solution and "####" not in recs[1].solution
    assert recs[0].question == "Natalia sold 48 clips?"
    assert dict(recs[0].metadata) == {"source": "gsm8k", "split": "test"}
    assert load_dataset("gsm8k", tmp_path, limit=1) == recs[:1]
    assert load_dataset("gsm8k", f, limit=0) == []


def test_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(GSM_ROWS[0]) + "\n\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: missing key 'answer'"):
        load_dataset("gsm8k", f)
    f.write_text(json.dumps(GSM_ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:2: invalid JSON"):
        load_dataset("gsm8k", f)
    _jsonl(f, [{"problem": "p", "solution": "s", "answer": "1", "level": 1}])
    with pytest.raises(ValueError, match=r"test\.jsonl:1: missing key 'unique_id'"):
        load_dataset("math500", f)


@pytest.mark.parametrize("name", ["math", "math500", "gsm8k"])
def test_missing_path_says_where(tmp_path, name):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "path=" in msg and "never downloads" in msg
    with pytest.raises(FileNotFoundError, match="public repository"):
        load_dataset(name)


def test_missing_split_file_in_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl"):
        load_dataset("gsm8k", tmp_path)


def test_unknown_name():
    with pytest.raises(ValueError, match="math, math500, gsm8k, arithmetic"):
        load_dataset("mmlu")


def test_arithmetic_matches_task(tmp_path):
    cfg = arithmetic.TaskConfig(difficulties=(2, 3))
    recs = datasets.load_arithmetic("test", 6, seed=3, config=cfg)
    probs = arithmetic.generate(cfg, 6, 3, "test")
    assert [r.id for r in recs] == [p.id for p in probs]
    for r, p in zip(recs, probs):
        assert r.question == arithmetic.format_prompt(p)
        assert r.answer == str(p.answer)
        assert r.solution == arithmetic.format_solution(p)
        assert r.metadata["difficulty"] == p.difficulty and r.metadata["split"] == "test"
    default = load_dataset("arithmetic", limit=4)
    assert [r.id for r in default] == [p.id for p in
                                      arithmetic.generate(arithmetic.TaskConfig(), 4, 0, "test")]
    f = arithmetic.to_jsonl(probs, tmp_path / "a.jsonl")
    assert load_dataset("arithmetic", f) == recs
    with pytest.raises(FileNotFoundError):
        load_dataset("arithmetic", tmp_path / "nope.jsonl")


def test_record_hashable_readonly_picklable():
    r = ProblemRecord("a", "q", "1", "", {"level": 1})
    assert hash(r) == hash(ProblemRecord("a", "q", "1", "", {"level": 2}))
    with pytest.raises(TypeError):
        r.metadata["level"] = 3  # type: ignore[index]
    r2 = pickle.loads(pickle.dumps(r))
    assert r2 == r and dict(r2.metadata) == {"level": 1}


def test_parquet_reads_gsm8k_and_says_how_to_get_pyarrow(tmp_path, monkeypatch):
    import builtins

    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "test.parquet"
    pq.write_table(pa.table({"question": ["How many?"], "answer": ["Half of 48 is <<48/2=24>>24.\n#### 1,234"]}), f)
    (record,) = load_dataset("gsm8k", f)
    assert record.question == "How many?" and record.answer == "1234" and "<<" not in record.solution

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_dataset("gsm8k", f)