"""The command line: generation from a saved checkpoint, config errors (the demo: test_experiment.py)."""

import json

import pytest
import yaml

from ttcjax.cli import main


def test_init_model_then_generate_from_the_checkpoint(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model_config": {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64,
                                                       "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}}))
    assert main(["init-model", "--config", str(config), "--out", str(tmp_path / "ckpt")]) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Q: 1+2=", "Q: 3*4=", "Q: 9-1="]) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(tmp_path / "ckpt"), "--tokenizer", "char", "--prompts-file", str(prompts),
            "--n", "3", "--max-new-tokens", "5", "--temperature", "0", "--output", str(out), "--mesh", "4,2"]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 9 and {r["prompt_index"] for r in records} == {0, 1, 2}
    # greedy: the three samples of a prompt are identical
    for i in range(3):
        assert len({r["completion"] for r in records if r["prompt_index"] == i}) == 1
    assert all(r["num_tokens"] <= 5 for r in records)


def test_config_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temprature: 0.5\n")
    assert main(["experiment", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "temprature" in err
    assert main(["generate", "--config", str(bad), "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "temprature" in err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--mesh"])


def test_generate_renders_prompts_in_the_checkpoints_chat_template(tmp_path, capsys):
    from prm_twins import CHATML, _save_tokenizer, _train_tokenizer

    from ttcjax.checkpoints.native import save_model
    from ttcjax.cli import _unescape
    from ttcjax.models import ModelConfig, init_model

    ckpt = tmp_path / "instruct"
    ckpt.mkdir()
    hf = _save_tokenizer(_train_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]), ckpt, CHATML,
                         eos_token="<|im_end|>")
    config = ModelConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1)
    save_model(init_model(config), ckpt / "model")
    base = ["generate", "--model", str(ckpt / "model"), "--tokenizer", str(ckpt), "--prompt", "What is 2+3?",
            "--n", "1", "--max-new-tokens", "2", "--temperature", "0", "--mesh", "none"]

    def first(*flags):
        out = tmp_path / "out.jsonl"
        assert main([*base, *flags, "--output", str(out), "--overwrite"]) == 0
        return json.loads(out.read_text().splitlines()[0])

    chat = first()
    # transformers' own rendering of the same conversation
    assert chat["input"] == hf.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                                   add_generation_prompt=True)
    assert chat["input"].endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in first("--system", "Be brief.")["input"]
    assert first("--chat-template", "off")["input"] == "What is 2+3?"
    assert _unescape(r"\n\n") == "\n\n" and _unescape(r"a\\n") == "a\\n"
    capsys.readouterr()
    assert main([*base[:-2], "--chat-template", "on", "--tokenizer", "char", "--max-new-tokens", "2"]) == 2
    assert "has no chat template" in capsys.readouterr().err
