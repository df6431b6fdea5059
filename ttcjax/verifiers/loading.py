"""A verifier by name, as a config names it: "none", a shipped reward model, or a directory."""

from __future__ import annotations

from ttcjax.checkpoints.assets import resolve
from ttcjax.verifiers.base import NoVerifier, Verifier
from ttcjax.verifiers.reward_model import load_verifier

NONE = "none"


def is_verifier_free(name: str | None) -> bool:
    """Whether a config's verifier name means verifier-free selection ("none", or null)."""
    return name is None or name == NONE


def verifier_by_name(name: str | None, tokenizer, *, aggregation: str | None = None, mesh=None, rules=None
                     ) -> Verifier:
    """"none" (or None): verifier-free selection; a shipped asset name such as "tiny" (the PRM under
    ttcjax/assets/prms) or "orm:tiny" (an ORM); or a directory holding a ttcjax reward model (`ttcjax train
    prm|orm` writes one)."""
    if is_verifier_free(name):
        return NoVerifier()
    kind, _, asset = name.rpartition(":") if name.startswith(("prm:", "orm:")) else ("prm", "", name)
    return load_verifier(resolve(kind, asset), tokenizer, aggregation=aggregation, mesh=mesh, rules=rules)
