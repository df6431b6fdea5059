"""Bad input is refused before any work, with one line that names the field or file and the fix, and no file is
lost or half-written (the start of issue 16's catalogue)."""

import json
import os

import pytest
import yaml

from ttcjax.checkpoints.native import save_model
from ttcjax.cli import main
from ttcjax.models import ModelConfig, init_model

TINY = ModelConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)


@pytest.fixture
def ckpt(tmp_path):
    save_model(init_model(TINY), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_convert_never_overwrites_a_checkpoint_without_the_flag(ckpt, tmp_path, capsys):
    assert main(["convert", str(ckpt), str(tmp_path / "hf"), "--to", "hf"]) == 0
    before = {p: (tmp_path / "hf" / p).read_bytes() for p in os.listdir(tmp_path / "hf")}
    capsys.readouterr()
    assert main(["convert", str(ckpt), str(tmp_path / "hf"), "--to", "hf"]) == 2
    one_error_line(capsys, "already holds a checkpoint", "--overwrite")
    assert {p: (tmp_path / "hf" / p).read_bytes() for p in os.listdir(tmp_path / "hf")} == before
    assert main(["convert", str(ckpt), str(tmp_path / "hf"), "--to", "hf", "--overwrite"]) == 0


def test_convert_replaces_a_checkpoint_of_the_other_format_only_on_purpose_and_whole(ckpt, tmp_path, capsys):
    import numpy as np

    from ttcjax.checkpoints.hf import save_hf_model
    from ttcjax.checkpoints.native import load_any

    other = init_model(TINY, seed=1)
    save_hf_model(other, tmp_path / "other")
    (ckpt / "tokenizer.json").write_text("{}")  # beside the checkpoint, kept
    before = {p: (ckpt / p).read_bytes() for p in ("ttcjax_config.json", "tokenizer.json")}
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "other"), str(ckpt), "--to", "hf"]) == 2
    one_error_line(capsys, "already holds a checkpoint", "ttcjax_config.json", "params", "--overwrite")
    assert {p: (ckpt / p).read_bytes() for p in before} == before
    assert main(["convert", str(tmp_path / "other"), str(ckpt), "--to", "hf", "--overwrite"]) == 0
    # the ttcjax checkpoint is gone with the swap (a loader would prefer it), the tokenizer is kept
    assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "tokenizer.json"]
    np.testing.assert_array_equal(np.asarray(load_any(ckpt).embedding[...]), np.asarray(other.embedding[...]))


def test_json_printed_to_stdout_is_strict_even_where_a_number_is_not_finite(tmp_path, capsys, monkeypatch):
    from ttcjax import cli

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    nan = float("nan")
    monkeypatch.setattr(cli, "train_policy", lambda config, **kwargs: {
        "step": 3, "finished": False, "wall_seconds_this_run": 1.0, "last_train_metrics": {"loss": nan},
        "validation": {"loss": float("inf")}})
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "run"), "model_config": TINY.to_dict()}))
    assert main(["train", "policy", "--config", str(config)]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert printed["last_train_metrics"] == {"loss": None} and printed["validation"] == {"loss": None}
    report = {"accuracy": nan, "seconds": 2.0, "compute_optimal": {"oracle": {
        "cv_accuracy": {"4": nan}, "best_of_n_weighted": {"4": 0.5}, "efficiency": float("-inf")}}}
    monkeypatch.setattr(cli, "run_experiment", lambda config, **kwargs: report)
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--skip-plan"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert printed["accuracy"] is None and printed["compute_optimal_cv"] == {"4": None}
    assert printed["efficiency"] is None


@pytest.mark.parametrize("flags, words", [
    (["--n", "0"], ["n=0", ">= 1"]),
    (["--max-new-tokens", "-1"], ["max_new_tokens=-1"]),
    (["--batch-size", "0"], ["batch_size=0"]),
    (["--temperature", "nan"], ["finite"]),
])
def test_generate_refuses_counts_before_touching_the_output(ckpt, tmp_path, capsys, flags, words):
    out = tmp_path / "out.jsonl"
    out.write_text('{"kept": true}\n')
    assert main(["generate", "--model", str(ckpt), "--tokenizer", "char", "--prompt", "x", "--output", str(out),
                 *flags]) == 2
    one_error_line(capsys, *words)
    assert out.read_text() == '{"kept": true}\n'  # the user's file is untouched


def test_generate_to_an_unwritable_place_fails_before_any_work(ckpt, tmp_path, capsys):
    for output, words in ((tmp_path / "missing" / "out.jsonl", ["cannot write in"]), (tmp_path, ["is a directory"])):
        assert main(["generate", "--model", str(ckpt), "--tokenizer", "char", "--prompt", "x",
                     "--output", str(output)]) == 2
        one_error_line(capsys, *words)
    assert not (tmp_path / "missing").exists()


def test_training_steps_zero_is_refused_not_ignored(tmp_path, capsys):
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "run"), "model_config": TINY.to_dict(),
                                      "num_train": 10}))
    assert main(["train", "policy", "--config", str(config), "--steps", "0"]) == 2
    one_error_line(capsys, "steps=0")
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_eval_refuses_negative_samples(ckpt, capsys):
    assert main(["eval", "policy", "--model", str(ckpt), "--tokenizer", "char", "--per-difficulty", "1",
                 "--samples", "-3"]) == 2
    one_error_line(capsys, "samples=-3")


def test_a_scheduler_file_of_another_kind_names_the_file(tmp_path, capsys):
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"signal": "verifier", "edges": [], "choices": {}}))
    assert main(["run", "--scheduler", str(path), "--question", "2+3"]) == 2
    one_error_line(capsys, str(path), "rerun the experiment")


def _with_nan(model):
    model.lm_head[...] = model.lm_head[...].at[0, 0].set(float("nan"))
    return model


def test_non_finite_weights_are_named_at_load(tmp_path, capsys):
    from ttcjax.checkpoints.hf import save_hf_model

    model = _with_nan(init_model(TINY))
    save_model(model, tmp_path / "native")
    save_hf_model(model, tmp_path / "hf")
    for path, words in ((tmp_path / "native", ["lm_head", "1 non-finite"]),
                        (tmp_path / "hf", ["lm_head.weight", "model.safetensors", "non-finite"])):
        assert main(["generate", "--model", str(path), "--tokenizer", "char", "--prompt", "x"]) == 2
        one_error_line(capsys, *words)


def test_non_finite_logits_end_a_row_with_their_own_reason():
    import jax

    from ttcjax.checkpoints.tokenizer import CharTokenizer
    from ttcjax.decoding.engine import Engine, Sampling

    tok = CharTokenizer()
    model = init_model(TINY)
    model.lm_head[...] = model.lm_head[...].at[:, 5].set(float("nan"))  # every row's logits hold a NaN
    (completion,) = Engine(model, pad_id=tok.pad_id).generate([tok.encode("Q: 1+2=", add_bos=True)],
                                                              jax.random.key(0), max_new_tokens=4,
                                                              sampling=Sampling(temperature=1.0))
    assert completion.finish_reason == "nonfinite_logits" and len(completion.tokens) == 0
    healthy = Engine(init_model(TINY), pad_id=tok.pad_id).generate([tok.encode("Q: 1+2=", add_bos=True)],
                                                                   jax.random.key(0), max_new_tokens=4)
    assert healthy[0].finish_reason == "length" and len(healthy[0].tokens) == 4


def test_what_ttcjax_writes_is_strict_json(tmp_path):
    from ttcjax.io import json_line, write_json, write_jsonl

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    record = {"loss": float("nan"), "auc": float("inf"), "nested": [1.0, float("-inf")], "ok": 0.5}
    write_json(tmp_path / "a.json", record)
    write_jsonl(tmp_path / "b.jsonl", [record])
    for text in ((tmp_path / "a.json").read_text(), (tmp_path / "b.jsonl").read_text(), json_line(record)):
        assert json.loads(text, parse_constant=refuse) == {"loss": None, "auc": None, "nested": [1.0, None],
                                                           "ok": 0.5}


def test_ttcjax_warnings_print_as_one_line_of_the_command(tmp_path):
    """A warning ttcjax raises (non-finite logits, an overflowing context) prints as `ttcjax COMMAND: warning: ...`,
    not with the file:line and source line Python adds; another package's as Python prints it."""
    import subprocess
    import sys

    script = ("import sys, warnings\n"
              "from ttcjax import cli\n"
              "def plan(args):\n"
              "    warnings.warn_explicit('ours', UserWarning, cli.__file__, 1)\n"
              "    warnings.warn_explicit('theirs', UserWarning, '/elsewhere/lib.py', 7)\n"
              "    return 0\n"
              "cli.cmd_plan = plan\n"
              "sys.exit(cli.main(['plan', '--config', 'x.yaml']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[:2] == ["ttcjax plan: warning: ours", "/elsewhere/lib.py:7: UserWarning: theirs"]
