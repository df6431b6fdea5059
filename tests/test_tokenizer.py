"""Tokenizer backends: fixtures are trained on the spot in tmp_path, nothing is downloaded."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from ttcjax.checkpoints.tokenizer import (CHAR_TOKENIZER_FILE, CharTokenizer, HFTokenizer, SentencePieceTokenizer,
                                          Tokenizer, check_tokenizer_fits, load_tokenizer)

WORDS = ("the answer is step one two three problem solve add total so we get then check final "
         "number sum of and Question Answer Let us compute").split()
TEXTS = [
    "the answer is 42",
    "Step 1: add 3 and 4.\nStep 2: so we get 7\n\nThe answer is 7",
    "  leading spaces and   runs of spaces ",
    "digits 0123456789 and 3.14159",
    "tabs\tand\nnewlines\n\n\nend",
]


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randint(0, 999))
                 for _ in range(rng.randint(3, 12))]
        lines.append(" ".join(words) + rng.choice([".", "\n", "\n\n", ": ", "?"]))
    return lines + TEXTS


def _train_bpe(out_dir: Path, add_prefix_space: bool = False) -> Path:
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    # A post-processor that would add <s> ... </s>: encode must not apply it.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir / "tokenizer.json"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    _train_bpe(d)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
        "pad_token": "<pad>",
    }))
    return d


@pytest.fixture(scope="module")
def sp_file(tmp_path_factory) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, vocab_size=100, model_type="bpe",
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        user_defined_symbols=["\n", "\t"], minloglevel=2)
    f = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    f.write_bytes(buf.getvalue())
    return f


# --- Hugging Face tokenizer.json ----------------------------------------------------------------


def test_hf_round_trip_and_specials(bpe_dir):
    tok = HFTokenizer(bpe_dir)
    assert isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    assert tok.eos_ids == (2,)
    assert tok.token_to_id("<s>") == 1 and tok.id_to_token(2) == "</s>"
    assert tok.token_to_id("definitely-not-a-token") is None
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids and tok.bos_id not in ids and tok.eos_id not in ids  # post-processor not applied
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids, dtype=np.int32)) == text
        assert tok.encode(text, add_bos=True) == [tok.bos_id, *ids]
    assert tok.decode([1, *tok.encode("hi"), 2], skip_special=False) == "<s>hi</s>"
    assert tok.decode([1, *tok.encode("hi"), 2]) == "hi"
    assert tok.encode_batch(TEXTS, add_bos=True) == [tok.encode(t, add_bos=True) for t in TEXTS]
    batch = [tok.encode(t) for t in TEXTS]
    assert tok.decode_batch(batch) == TEXTS
    assert tok.vocab_size == 400


def test_hf_matches_transformers(bpe_dir):
    from transformers import PreTrainedTokenizerFast

    ours = HFTokenizer(bpe_dir / "tokenizer.json")
    ref = PreTrainedTokenizerFast(tokenizer_file=str(bpe_dir / "tokenizer.json"))
    for text in TEXTS + ["Question: what is 12 + 30?\nAnswer:"]:
        ids = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_hf_stop_sequence_in_context(tmp_path):
    # With add_prefix_space a standalone "\n" becomes " \n"; inside generated text it is just "\n".
    tok = HFTokenizer(_train_bpe(tmp_path, add_prefix_space=True))
    assert tok.decode(tok.encode("\n")) == " \n"
    for stop in ["\n", "\n\n", "Answer:", "</s", "42"]:
        ids = tok.encode_stop_sequence(stop)
        assert ids and tok.decode(ids) == stop
    # GPT-2-style splitting: "\n\n" before a word is two tokens, at the very end one merged token.
    nl, nlnl = tok.token_to_id("Ċ"), tok.token_to_id("ĊĊ")
    assert nlnl is not None and tok.encode("7\n\n")[-1] == nlnl
    assert tok.encode_stop_sequence("\n\n") == [nl, nl]
    gen, stop = tok.encode("so we get 7\n\nThe answer"), tok.encode_stop_sequence("\n\n")
    assert any(gen[i:i + len(stop)] == stop for i in range(len(gen)))
    with pytest.raises(ValueError):
        tok.encode_stop_sequence("")


def test_hf_eos_from_generation_config_and_pad_fallback(tmp_path):
    _train_bpe(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": None}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2, "vocab_size": 512}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_id == 1 and tok.eos_id == 0 and tok.eos_ids == (0, 2)
    assert tok.pad_id == tok.eos_id  # no pad token anywhere: falls back to eos

    bare = tmp_path / "bare"
    _train_bpe(bare)
    tok = HFTokenizer(bare / "tokenizer.json")
    assert tok.bos_id is None and tok.eos_id is None and tok.eos_ids == () and tok.pad_id == 0
    with pytest.raises(ValueError, match="BOS"):
        tok.encode("x", add_bos=True)


def test_hf_config_naming_unknown_token_errors(tmp_path):
    _train_bpe(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match=r"<\|im_end\|>"):
        HFTokenizer(tmp_path)


def test_hf_corrupt_file_errors(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match=str(bad)):
        load_tokenizer(tmp_path)
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match=str(bad)):
        HFTokenizer(bad)
    _train_bpe(tmp_path / "ok")
    (tmp_path / "ok" / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        HFTokenizer(tmp_path / "ok")


# --- SentencePiece --------------------------------------------------------------------------------


def test_sentencepiece_round_trip_and_specials(sp_file):
    tok = SentencePieceTokenizer(sp_file)
    assert tok.vocab_size == 100
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.pad_id == tok.eos_id  # trained without a pad piece
    assert tok.token_to_id("<s>") == 1 and tok.id_to_token(2) == "</s>"
    assert tok.token_to_id("no-such-piece") is None
    for text in ["the answer is 42", "Step 1: add 3 and 4.\nso we get 7\n\nthe answer", "a\tb"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode(text, add_bos=True) == [1, *ids]
        assert tok.decode([1, *ids, 2], skip_special=False) == f"<s>{text}</s>"
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    nl = tok.encode_stop_sequence("\n")
    assert nl == [tok.token_to_id("\n")] and tok.decode(nl) == "\n"
    with pytest.raises(IndexError):
        tok.id_to_token(100)


def test_sentencepiece_bad_model_errors(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match=str(bad)):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        SentencePieceTokenizer(tmp_path / "missing.model")


# --- CharTokenizer -------------------------------------------------------------------------------


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer()
    assert tok.vocab_size == 4 + len(tok.alphabet) == 4 + 97
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.eos_ids) == (0, 1, 2, (2,))
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("ab", add_bos=True) == [1, tok.token_to_id("a"), tok.token_to_id("b")]
    assert tok.encode("aé") == [tok.token_to_id("a"), 3]
    assert tok.decode(tok.encode("aé")) == "a<unk>"
    assert tok.decode([1, *tok.encode("hi"), 2, 0]) == "hi"
    assert tok.decode([1, *tok.encode("hi"), 2], skip_special=False) == "<bos>hi<eos>"
    assert tok.encode_stop_sequence("\n\n") == [tok.token_to_id("\n")] * 2
    assert tok.id_to_token(4) == tok.alphabet[0] and tok.token_to_id("<unk>") == 3
    with pytest.raises(IndexError):
        tok.id_to_token(tok.vocab_size)
    with pytest.raises(ValueError):
        CharTokenizer("abca")

    small = CharTokenizer("xyz\n")
    f = small.save(tmp_path)
    assert f == tmp_path / CHAR_TOKENIZER_FILE
    assert json.loads(f.read_text()) == {"type": "char", "alphabet": "xyz\n"}
    back = CharTokenizer.load(f)
    assert back.alphabet == "xyz\n" and back.vocab_size == 8
    assert back.encode("zyx\nq") == small.encode("zyx\nq") == [6, 5, 4, 7, 3]


# --- load_tokenizer / check_tokenizer_fits ------------------------------------------------------


def test_load_tokenizer_autodetects(bpe_dir, sp_file, tmp_path):
    assert isinstance(load_tokenizer(bpe_dir), HFTokenizer)
    assert isinstance(load_tokenizer(bpe_dir / "tokenizer.json"), HFTokenizer)
    assert isinstance(load_tokenizer(sp_file.parent), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(str(sp_file)), SentencePieceTokenizer)
    char = load_tokenizer("char")
    assert isinstance(char, CharTokenizer) and char.alphabet == CharTokenizer.DEFAULT_ALPHABET
    CharTokenizer("abc").save(tmp_path)
    assert load_tokenizer(tmp_path).vocab_size == 7
    assert load_tokenizer(tmp_path / CHAR_TOKENIZER_FILE).vocab_size == 7


def test_load_tokenizer_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)) as e:
        load_tokenizer(empty)
    assert "tokenizer.json" in str(e.value) and "tokenizer.model" in str(e.value)
    odd = tmp_path / "vocab.txt"
    odd.write_text("a\nb\n")
    with pytest.raises(ValueError, match=str(odd)):
        load_tokenizer(odd)


def test_check_tokenizer_fits():
    tok = CharTokenizer()  # vocab_size 101
    check_tokenizer_fits(tok, 101)
    check_tokenizer_fits(tok, 128)  # padded embedding tables are fine
    with pytest.raises(ValueError) as e:
        check_tokenizer_fits(tok, 100, source="checkpoint")
    assert "101" in str(e.value) and "100" in str(e.value) and "checkpoint" in str(e.value)
