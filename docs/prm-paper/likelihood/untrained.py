"""The likelihood head before any training: a reward model whose step score is sigmoid(the lowest log-probability
that BACKBONE's LM head gives a solution token so far): its value head zeroed, the likelihood's weight 1. A
diagnostic of what the backbone's next-token distribution knows about a step, for `ttcjax eval prm`.

    python docs/prm-paper/likelihood/untrained.py runs/verifier-backbone-small/model runs/likelihood-untrained
    ttcjax eval prm --model runs/likelihood-untrained --policy ttcjax/assets/policies/tiny/model --samples 16 \
        --per-difficulty 100 --mesh none --output runs/likelihood-untrained.json
"""

import sys

import jax.numpy as jnp

from ttcjax.checkpoints.native import load_any
from ttcjax.verifiers.reward_model import LikelihoodHead, RewardModel, save_prm


def main(backbone_dir: str, out_dir: str) -> None:
    prm = RewardModel(load_any(backbone_dir), LikelihoodHead())
    prm.v_w[...] = jnp.zeros_like(prm.v_w[...])
    prm.l_w[...] = jnp.ones_like(prm.l_w[...])
    save_prm(prm, out_dir, aggregation="last")
    print(f"{out_dir}: the backbone {backbone_dir} with an untrained likelihood head")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
