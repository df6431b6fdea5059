"""One tokenizer interface over Hugging Face tokenizer.json, SentencePiece and a char tokenizer.

Everything in ttcjax that turns text into ids (prompts) or ids into text (generations) goes
through :class:`Tokenizer`, so backends are interchangeable. Nothing here ever downloads.

Conventions shared by every backend:

* ``encode`` never adds special tokens on its own; BOS is prepended only with ``add_bos=True``.
* ``pad_id`` is never None: the files' pad token if given, else ``eos_id``, else 0. Padding
  positions are masked by callers, so borrowing EOS (or id 0) for them is harmless.
* ``decode`` decodes every id it is given; trimming at EOS is the caller's job.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttcjax.checkpoints.chat_template import render_chat_template
from ttcjax.checkpoints.gguf import is_gguf_file, save_gguf_tokenizer

__all__ = ["Tokenizer", "HFTokenizer", "SentencePieceTokenizer", "CharTokenizer",
           "load_tokenizer", "load_gguf_tokenizer", "check_tokenizer_fits", "save_tokenizer_beside",
           "CHAR_TOKENIZER_FILE", "CHAT_TEMPLATE_FILE"]

CHAR_TOKENIZER_FILE = "ttcjax_tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The named special tokens a chat template sees as variables (transformers' special_tokens_map).
_TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Context put around a stop string so it tokenizes as it would mid-generation. One per character
# class: pre-tokenizers split between classes, while e.g. "xAnswer" would be one pre-token.
_STOP_ANCHORS = ("x", "0", ".")


def _char_class(c: str) -> str:
    return "L" if c.isalpha() else "N" if c.isdigit() else "S" if c.isspace() else "P"


def _anchors_for(c: str) -> list[str]:
    return [a for a in _STOP_ANCHORS if _char_class(a) != _char_class(c)]


def _as_id_list(ids: Sequence[int] | np.ndarray) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    return [int(i) for i in arr.tolist()]


class Tokenizer(ABC):
    """Backend-agnostic tokenizer. Subclasses implement the abstract methods and set
    ``_bos_id``, ``_eos_ids`` (first one is ``eos_id``) and ``_pad_id`` (may be None)."""

    _bos_id: int | None = None
    _eos_ids: tuple[int, ...] = ()
    _pad_id: int | None = None
    chat_template: str | None = None  # Jinja chat template (Hugging Face tokenizers that ship one)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The conversation rendered by the tokenizer's chat template (text; encode it without BOS)."""
        raise ValueError(f"{self!r} has no chat template; use the Hugging Face tokenizer.json of a "
                         "checkpoint whose tokenizer_config.json or chat_template.jinja defines one")

    @property
    def bos_token(self) -> str | None:
        """The BOS token as text (None without one)."""
        return None if self.bos_id is None else self.id_to_token(self.bos_id)

    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def _decode(self, ids: list[int], skip_special: bool) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id this tokenizer can emit (added tokens included)."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` as a vocabulary entry, or None if it is not one."""

    @abstractmethod
    def id_to_token(self, i: int) -> str:
        """The vocabulary entry for id ``i``; IndexError if out of range."""

    def _bos_prefix(self, add_bos: bool) -> list[int]:
        if not add_bos:
            return []
        if self.bos_id is None:
            raise ValueError(f"{self!r} has no BOS token; encode with add_bos=False")
        return [self.bos_id]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids for ``text`` with no special tokens, except BOS first when ``add_bos``."""
        return self._bos_prefix(add_bos) + self._encode(text)

    def encode_batch(self, texts: Iterable[str], add_bos: bool = False) -> list[list[int]]:
        """``[self.encode(t, add_bos) for t in texts]`` (backends may batch faster)."""
        return [self.encode(t, add_bos=add_bos) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
        """Text for all of ``ids`` (list or 1-D array); drops special tokens if ``skip_special``."""
        return self._decode(_as_id_list(ids), skip_special)

    def decode_batch(self, batch: Iterable[Sequence[int] | np.ndarray],
                     skip_special: bool = True) -> list[str]:
        """``[self.decode(ids, skip_special) for ids in batch]``; a 2-D array goes row by row."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def encode_stop_sequence(self, text: str) -> list[int]:
        """Ids of ``text`` as it appears in the middle of generated text.

        Standalone encoding can differ: a prefix-space convention (byte-level BPE with
        ``add_prefix_space``, SentencePiece's dummy "▁") turns a lone "\\n" into " \\n", and
        GPT-2-style splitting makes "\\n\\n" one token at the end of text but two before a word.
        So this encodes ``a + text + b`` for anchor characters a, b of another character class
        (so they start their own pre-tokens) and returns the ids that decode to exactly
        ``text``; if no anchors split cleanly it falls back to ``encode(text)``. One string can
        still have several tokenizations, so robust stopping should also compare decoded text.
        """
        if not text:
            raise ValueError("stop sequence must be a non-empty string")
        for a in _anchors_for(text[0]):
            for b in _anchors_for(text[-1]):
                ids = self._encode(a + text + b)
                prefixes = [self._decode(ids[:k], False) for k in range(len(ids) + 1)]
                if not prefixes[-1].endswith(text + b):
                    continue
                # The decoded anchor, with whatever prefix space the tokenizer put in front of it.
                head = prefixes[-1][: len(prefixes[-1]) - len(text + b)]
                if head in prefixes and head + text in prefixes:
                    return ids[prefixes.index(head):prefixes.index(head + text)]
        return self._encode(text)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_ids[0] if self._eos_ids else None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation (e.g. a chat model's end-of-turn and end-of-text)."""
        return self._eos_ids

    @property
    def pad_id(self) -> int:
        """Pad id from the files, else ``eos_id``, else 0 — never None."""
        if self._pad_id is not None:
            return self._pad_id
        return self.eos_id if self.eos_id is not None else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-copy it from the original "
                         "checkpoint") from e


def _token_str(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as "..." or {"content": "...", ...} (AddedToken).
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _id_list(value: Any) -> list[int]:
    # config.json's eos_token_id may be an int, a list of ints or null.
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _sp_id(i: int) -> int | None:
    return None if i < 0 else int(i)  # SentencePiece uses -1 for "absent"


def _read_chat_template(directory: Path, configured: Any) -> str | None:
    """``chat_template.jinja`` beside tokenizer.json, else tokenizer_config.json's ``chat_template``:
    a string, or a list of {"name", "template"} of which the one named "default" is used."""
    file = directory / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    if isinstance(configured, list):
        named = {t.get("name"): t.get("template") for t in configured if isinstance(t, dict)}
        configured = named.get("default")
    return configured if isinstance(configured, str) else None


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (file, or a checkpoint directory holding one).

    Special tokens come from the sibling ``tokenizer_config.json`` / ``special_tokens_map.json``;
    EOS ids also from ``generation_config.json`` then ``config.json`` ``eos_token_id`` (all of
    them in ``eos_ids``, generation config first). The post-processor's automatic special tokens
    are never added.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _RustTokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json at {file}; pass a Hugging Face tokenizer.json or a checkpoint "
                "directory that contains one")
        try:
            self._tok = _RustTokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises a bare Exception for parse errors
            raise ValueError(
                f"could not parse {file} as a Hugging Face tokenizer.json ({e}); the file is "
                "corrupt or another format — re-copy it from the original checkpoint") from e
        self.path = file
        vocab = self._tok.get_vocab(with_added_tokens=True)
        # Added tokens may sit above the base vocab with gaps, so take the max id, not the count.
        self._vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True),
                               max(vocab.values(), default=-1) + 1)

        d = file.parent
        cfg: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
            if (d / name).is_file() and isinstance(data := _read_json(d / name), dict):
                cfg.update({k: v for k, v in data.items() if v is not None})
        model_cfgs = [c for n in ("generation_config.json", "config.json") if (d / n).is_file()
                      and isinstance(c := _read_json(d / n), dict)]

        def special(key: str) -> int | None:
            tok = _token_str(cfg.get(key))
            if tok is None:
                for c in model_cfgs:
                    if ids := _id_list(c.get(f"{key}_id")):
                        return ids[0]
                return None
            i = self._tok.token_to_id(tok)
            if i is None:
                raise ValueError(f"{d}: {key} {tok!r} is not in the vocabulary of {file}; "
                                 "fix the tokenizer config files")
            return i

        self.special_tokens: dict[str, str] = {
            key: tok for key in _TEMPLATE_TOKENS if (tok := _token_str(cfg.get(key))) is not None}
        self.chat_template = _read_chat_template(d, cfg.get("chat_template"))

        eos: list[int] = [i for c in model_cfgs for i in _id_list(c.get("eos_token_id"))]
        if (e := special("eos_token")) is not None:
            eos.append(e)
        self._eos_ids = tuple(dict.fromkeys(eos))
        self._bos_id = special("bos_token")
        self._pad_id = special("pad_token")

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    @property
    def bos_token(self) -> str | None:
        """The configured ``bos_token`` string, else the token of ``bos_id`` (None without either)."""
        return self.special_tokens.get("bos_token") or super().bos_token

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """Render ``messages`` ([{"role": ..., "content": ...}, ...]) with this tokenizer's chat template,
        as transformers' ``apply_chat_template(..., tokenize=False)`` does: a sandboxed Jinja environment,
        the named special tokens (``bos_token``, ``eos_token``, ...) as variables, ``raise_exception``,
        ``strftime_now``; ``kwargs`` are further template variables. Keys whose value is None are
        dropped from each message first. Encode the result without BOS (templates write their own)."""
        if self.chat_template is None:
            raise ValueError(
                f"{self.path} has no chat template: neither {self.path.parent / 'tokenizer_config.json'} "
                f"(\"chat_template\") nor {self.path.parent / CHAT_TEMPLATE_FILE} defines one; copy them from "
                "the model's checkpoint")
        chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        variables = {**self.special_tokens, **kwargs}
        return render_chat_template(self.chat_template, messages=chat, add_generation_prompt=add_generation_prompt,
                                    **variables)

    def encode_batch(self, texts: Iterable[str], add_bos: bool = False) -> list[list[int]]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._bos_prefix(add_bos) + e.ids for e in encs]

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        tok = self._tok.id_to_token(int(i))
        if tok is None:
            raise IndexError(f"id {i} is not in the vocabulary of {self.path}")
        return tok


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` file (or a directory holding ``tokenizer.model``)."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        file = path / "tokenizer.model" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no SentencePiece model at {file}; pass a .model file or a directory "
                "containing tokenizer.model")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(file))
        except Exception as e:  # OSError / RuntimeError depending on the version
            raise ValueError(
                f"could not load {file} as a SentencePiece model ({e}); the file is corrupt or "
                "another format — re-copy it from the original checkpoint") from e
        self.path = file
        self._bos_id, self._pad_id = _sp_id(self._sp.bos_id()), _sp_id(self._sp.pad_id())
        self._eos_ids = () if self._sp.eos_id() < 0 else (self._sp.eos_id(),)

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Iterable[str], add_bos: bool = False) -> list[list[int]]:
        bos = self._bos_prefix(add_bos)
        return [bos + ids for ids in self._sp.encode(list(texts), out_type=int)]

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        # SentencePiece renders control tokens (bos/eos/pad) as "", so show them by hand.
        if skip_special:
            return self._sp.decode([i for i in ids if not self._sp.is_control(i)])
        out, run = [], []
        for i in ids:
            if self._sp.is_control(i):
                out += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self._sp.decode(run)])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)  # unknown pieces map to unk, so check the round trip
        return i if self._sp.id_to_piece(i) == token else None

    def id_to_token(self, i: int) -> str:
        if not 0 <= int(i) < self.vocab_size:
            raise IndexError(f"id {i} is out of range for {self.path} "
                             f"(vocab_size {self.vocab_size})")
        return self._sp.id_to_piece(int(i))


class CharTokenizer(Tokenizer):
    """One id per character: 0=<pad>, 1=<bos>, 2=<eos>, 3=<unk>, then the alphabet in order.

    Characters outside the alphabet encode to <unk>, which always decodes as "<unk>" (so lossy
    input stays visible); ``skip_special`` drops only <pad>, <bos> and <eos>.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    PAD, BOS, EOS, UNK = range(4)
    DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\x0b\x0c\r")

    def __init__(self, alphabet: str | None = None):
        self.alphabet = self.DEFAULT_ALPHABET if alphabet is None else alphabet
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("CharTokenizer alphabet repeats a character; list each once")
        self._ids = {c: i + len(self.SPECIALS) for i, c in enumerate(self.alphabet)}
        self._bos_id, self._eos_ids, self._pad_id = self.BOS, (self.EOS,), self.PAD

    def _encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.UNK) for c in text]

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        skip = {self.PAD, self.BOS, self.EOS} if skip_special else set()
        return "".join(self.id_to_token(i) for i in ids if i not in skip)

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.alphabet)

    def token_to_id(self, token: str) -> int | None:
        if token in self.SPECIALS:
            return self.SPECIALS.index(token)
        return self._ids.get(token)

    def id_to_token(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise IndexError(f"id {i} is out of range for CharTokenizer "
                             f"(vocab_size {self.vocab_size})")
        return self.SPECIALS[i] if i < len(self.SPECIALS) else self.alphabet[i - len(self.SPECIALS)]

    def save(self, path: str | Path) -> Path:
        """Write ``{"type": "char", "alphabet": ...}`` to ``path`` (a directory gets
        ``ttcjax_tokenizer.json`` inside it) and return the file written."""
        path = Path(path)
        file = path / CHAR_TOKENIZER_FILE if path.is_dir() else path
        file.write_text(json.dumps({"type": "char", "alphabet": self.alphabet}), encoding="utf-8")
        return file

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Inverse of :meth:`save`; ``path`` is the JSON file or a directory containing it."""
        path = Path(path)
        file = path / CHAR_TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no char tokenizer file at {file}; create one with CharTokenizer().save(path)")
        data = _read_json(file)
        if not (isinstance(data, dict) and data.get("type") == "char"
                and isinstance(data.get("alphabet"), str)):
            raise ValueError(f"{file} is not a ttcjax char tokenizer (expected "
                             '{"type": "char", "alphabet": "..."})')
        return cls(data["alphabet"])


def load_gguf_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer of a GGUF file (its vocabulary, special tokens and chat template), as an :class:`HFTokenizer`
    (see ``ttcjax.checkpoints.gguf.save_gguf_tokenizer``); ValueError naming the file where it cannot be built."""
    with tempfile.TemporaryDirectory() as directory:
        save_gguf_tokenizer(path, directory)
        tokenizer = HFTokenizer(directory)
    tokenizer.path = Path(path)  # everything is read: name the file it came from, not the temporary copy
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Pick the backend for ``path``: the string "char" → default :class:`CharTokenizer`;
    a directory → its tokenizer.json, else tokenizer.model, else ttcjax_tokenizer.json;
    a file → ``.model`` is SentencePiece, ``.json`` is a char tokenizer if it says
    ``"type": "char"`` and a Hugging Face tokenizer.json otherwise, a GGUF file (``.gguf``) the
    vocabulary it carries."""
    if isinstance(path, str) and path == "char":
        return CharTokenizer()
    p = Path(path)
    wanted = f"tokenizer.json, tokenizer.model or {CHAR_TOKENIZER_FILE}"
    if not p.exists():
        raise FileNotFoundError(
            f"tokenizer path {p} does not exist; pass a file or checkpoint directory with "
            f'{wanted}, or "char" for the built-in character tokenizer')
    if p.is_dir():
        for name, make in (("tokenizer.json", HFTokenizer),
                           ("tokenizer.model", SentencePieceTokenizer),
                           (CHAR_TOKENIZER_FILE, CharTokenizer.load)):
            if (p / name).is_file():
                return make(p / name)
        raise FileNotFoundError(
            f"no tokenizer in directory {p}: looked for {wanted}; copy the tokenizer files "
            "from the model's checkpoint into it or pass their path")
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.suffix == ".gguf" or is_gguf_file(p):
        return load_gguf_tokenizer(p)
    if p.suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict) and data.get("type") == "char":
            return CharTokenizer.load(p)
        return HFTokenizer(p)
    raise ValueError(
        f"cannot tell the tokenizer type of {p}: expected a .json (Hugging Face or ttcjax char), "
        ".model (SentencePiece) or .gguf file, or a directory containing one")


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, source: str = "model") -> None:
    """Raise ValueError unless every id ``tokenizer`` can emit is < ``vocab_size``.

    A larger model vocab is fine (embedding tables are often padded to a round size).
    """
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer!r} can emit ids up to {tokenizer.vocab_size - 1} (vocab_size "
            f"{tokenizer.vocab_size}) but the {source} has vocab_size {vocab_size}; use the "
            f"tokenizer that ships with the {source}'s checkpoint")


def save_tokenizer_beside(tokenizer: Tokenizer, source: str, model_dir: str) -> None:
    """Keep the tokenizer beside the model, so `--model DIR` is enough to sample from it."""
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.save(os.path.join(model_dir, CHAR_TOKENIZER_FILE))
        return
    if is_gguf_file(source):  # the vocabulary inside the model file, not the file itself
        save_gguf_tokenizer(source, model_dir)
        return
    src = source if os.path.isfile(source) else None
    if src is None:
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(source, name)):
                src = os.path.join(source, name)
    if src is None:
        print(f"note: tokenizer {source} was not copied into {model_dir}; pass --tokenizer when sampling",
              file=sys.stderr)
        return
    shutil.copy(src, os.path.join(model_dir, os.path.basename(src)))
