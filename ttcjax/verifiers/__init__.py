"""Verifiers: our process / outcome reward models and the public PRM families.

Layer: above `tasks` and `decoding`; below `search`. Never imports training code."""
