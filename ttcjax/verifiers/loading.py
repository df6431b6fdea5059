"""A verifier by name, as a config names it: "none", a shipped reward model, a ttcjax reward-model directory, or
a public PRM checkpoint (its family from its config.json, or named: "rlhflow:DIR")."""

from __future__ import annotations

import os

from ttcjax.checkpoints.assets import resolve
from ttcjax.verifiers.base import NoVerifier, Verifier
from ttcjax.verifiers.hub import FAMILIES
from ttcjax.verifiers.public import load_public_verifier
from ttcjax.verifiers.reward_model import PRM_CONFIG_FILE, load_verifier

NONE = "none"


def is_verifier_free(name: str | None) -> bool:
    """Whether a config's verifier name means verifier-free selection ("none", or null)."""
    return name is None or name == NONE


def _shipped(name: str) -> tuple[str, str]:
    """(kind, name) of a shipped reward model: "orm:tiny" an ORM, "prm:tiny" or "tiny" a PRM."""
    kind, _, asset = name.rpartition(":") if name.startswith(("prm:", "orm:")) else ("prm", "", name)
    return kind, asset


def check_verifier_name(name, field: str, source: str) -> None:
    """A verifier a config names, checked before a run directory is bound to be one `verifier_by_name` finds
    (nothing is loaded): a ValueError naming `source`, the field and the fix otherwise."""
    if is_verifier_free(name):
        return
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: {field}={name!r} must be none, a shipped name or a directory.")
    family, sep, rest = name.partition(":")
    if sep and family in FAMILIES:
        if not os.path.isdir(rest):
            raise ValueError(f"{source}: {field}={name!r}: {rest}: no such checkpoint directory; point it at the "
                             f"{family} PRM's directory.")
        return
    if os.path.isdir(name):
        return
    try:
        resolve(*_shipped(name))
    except FileNotFoundError as e:
        raise ValueError(f"{source}: {field}={name!r}: {e}") from None


def verifier_by_name(name: str | None, tokenizer, *, aggregation: str | None = None, mesh=None, rules=None
                     ) -> Verifier:
    """"none" (or None): verifier-free selection; a shipped asset name such as "tiny" (the PRM under
    ttcjax/assets/prms) or "orm:tiny" (an ORM); a directory holding a ttcjax reward model (`ttcjax train
    prm|orm` writes one), which reads the policy's text with `tokenizer`; a public PRM's Hugging Face
    directory (Qwen2.5-Math-PRM and Skywork say their family in config.json), or "FAMILY:DIR" with FAMILY
    one of math-shepherd, rlhflow, qwen-prm, skywork: scored in its own format and tokenizer."""
    if is_verifier_free(name):
        return NoVerifier()
    family, sep, rest = name.partition(":")
    if sep and family in FAMILIES:
        return load_public_verifier(rest, family, aggregation=aggregation or "last", mesh=mesh, rules=rules)
    if (os.path.isdir(name) and not os.path.exists(os.path.join(name, PRM_CONFIG_FILE))
            and os.path.exists(os.path.join(name, "config.json"))):
        return load_public_verifier(name, aggregation=aggregation or "last", mesh=mesh, rules=rules)
    return load_verifier(resolve(*_shipped(name)), tokenizer, aggregation=aggregation, mesh=mesh, rules=rules)
