"""The memory planner (`ttcjax.eval.plan`) against XLA's own accounting of the programs it plans.

For a few small shapes, each program is compiled (never run) and `compiled.memory_analysis()` gives the bytes
XLA assigns it: arguments (weights and carried state) plus temporaries, the peak a device must hold. The
planner's stage total for the same shapes is printed beside it. The planner's constants (copies of logits,
attention scores, a cache) were read off such runs on CPU; rerun this on an accelerator to check them there.

    python bench/plan_memory.py        # ~1 min on 2 CPU cores; writes bench/results/plan_memory_<platform>.json

Programs: the search loop (`ttcjax.search.episode._rounds`) with a ttcjax PRM, for best-of-N and lookahead, and
with a public PRM's `RenderingStepScorer`;
`Engine.decode` (`ttcjax.decoding.engine._decode`); the verifier's one-pass scoring (`_score_jit` of
`ttcjax.verifiers.reward_model.score_inputs`).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from ttcjax.checkpoints.tokenizer import CharTokenizer
from ttcjax.decoding.engine import Engine, Sampling, StopConditions, _decode_jit, _prefill_jit, stop_text
from ttcjax.eval.plan import (SCORE_ROWS, SCORE_TOKENS, TTCJAX, Estimates, SampleStage, VerifierModel, Workload,
                              sample_stage, scoring_stage, search_stage)
from ttcjax.io import write_json
from ttcjax.models import ModelConfig, init_model
from ttcjax.search.episode import EpisodeSpec, _rounds, _start
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import BestOfN, Lookahead
from ttcjax.verifiers.public import RenderingStepScorer
from ttcjax.verifiers.reward_model import PRMStepScorer, RewardModel, ValueHead, _score_jit

POLICY = ModelConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                     num_kv_heads=2, param_dtype="bfloat16")
VERIFIER = POLICY.replace(num_heads=8, has_lm_head=False)


def _xla(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes)


class _Renderer:
    """Stands in for a public PRM's host renderer: compiling the loop never calls it."""

    def render_round(self, *args, width):
        raise AssertionError("not called when compiling")


def search_case(strategy, rows: int, max_len: int, step: int, public: bool = False) -> dict:
    engine = Engine(init_model(POLICY))
    graphdef, params = nnx.split(RewardModel(init_model(VERIFIER), ValueHead()))
    settings = SearchSettings(max_step_tokens=step, max_rounds=8, max_len=max_len, temperature=0.8)
    scorer = RenderingStepScorer(graphdef, _Renderer()) if public else PRMStepScorer(graphdef)
    spec = EpisodeSpec(strategy=strategy, policy_graphdef=engine.graphdef, scorer=scorer,
                       rounds=strategy.max_rounds(settings.max_rounds, max_len), max_step_tokens=step,
                       max_len=max_len, sampling=settings.sampling, step_end=stop_text(CharTokenizer(), ["\n\n"]),
                       answer_end=None,
                       eos_ids=(1,), pad_id=0,
                       attn_chunk=engine.attn_chunk)
    questions, prompt = rows // strategy.n, 32
    prompts = (jax.ShapeDtypeStruct((questions, prompt), jnp.int32), jax.ShapeDtypeStruct((questions,), jnp.int32))
    shapes = (*prompts, *prompts, jax.ShapeDtypeStruct((questions,), bool))  # the verifier reads as many tokens
    state = jax.eval_shape(lambda *a: _start(spec, *a), engine.params, params, *shapes)
    compiled = jax.jit(_rounds, static_argnames=("spec",), donate_argnames=("state",)).lower(
        spec, engine.params, params, state, jax.random.key(0)).compile()
    verifier = VerifierModel("bench", "skywork" if public else TTCJAX, VERIFIER, "value")
    workload = Workload(POLICY, verifier, (strategy,), settings, rows,
                        estimates=Estimates(prompt_tokens=prompt, verifier_len_ratio=1.0))
    planned = search_stage(workload, strategy, (1, 1), rows)
    return {"program": "search rounds", "verifier": verifier.family, "strategy": strategy.label, "rows": rows,
            "max_len": max_len,
            "max_step_tokens": step, "xla_bytes": _xla(compiled), "planner_bytes": planned.total}


def decode_case(rows: int, new_tokens: int, top_p: float) -> dict:
    engine = Engine(init_model(POLICY))
    prompt = 32
    max_len = -(-(prompt + new_tokens) // 64) * 64
    state = jax.eval_shape(lambda p, t, n: _prefill_jit(engine.graphdef, p, t, n, max_len=max_len), engine.params,
                           jax.ShapeDtypeStruct((rows, prompt), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.int32))
    compiled = _decode_jit.lower(engine.graphdef, engine.params, state, jax.random.key(0), max_new_tokens=new_tokens,
                                 sampling=Sampling(0.8, top_p=top_p), stop=StopConditions((1,)), pad_id=0,
                                 attn_chunk=engine.attn_chunk).compile()
    settings = SearchSettings(max_len=max_len, max_step_tokens=8, top_p=top_p)
    workload = Workload(POLICY, None, (BestOfN(1),), settings, rows, questions=1,
                        estimates=Estimates(prompt_tokens=prompt))
    planned = sample_stage(workload, SampleStage("decode", rows, new_tokens), (1, 1))  # one prompt, forked `rows` ways
    return {"program": "Engine.decode", "rows": rows, "new_tokens": new_tokens, "top_p": top_p,
            "xla_bytes": _xla(compiled), "planner_bytes": planned.total}


def scoring_case(width: int) -> dict:
    graphdef, state = nnx.split(RewardModel(init_model(VERIFIER), ValueHead()))
    rows = max(1, min(SCORE_ROWS, SCORE_TOKENS // width))  # as score_inputs fills a call
    args = [jax.ShapeDtypeStruct((rows, width), jnp.int32)] * 3 + [jax.ShapeDtypeStruct((rows, 8), jnp.int32)]
    compiled = _score_jit.lower(graphdef, state, *args).compile()
    workload = Workload(POLICY, VerifierModel("bench", TTCJAX, VERIFIER, "value"), (BestOfN(1),),
                        SearchSettings(max_len=width, max_step_tokens=8), 1, score_max_new_tokens=width // 2,
                        estimates=Estimates(prompt_tokens=width // 2))
    planned = scoring_stage(workload, (1, 1))
    return {"program": "score_inputs", "rows": rows, "width": width, "xla_bytes": _xla(compiled),
            "planner_bytes": planned.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results file (default bench/results/plan_memory_<platform>.json)")
    args = parser.parse_args()
    cases = [search_case(BestOfN(16), 64, 512, 64), search_case(BestOfN(16), 64, 512, 32),
             search_case(Lookahead(16, width=4, k=1), 64, 512, 64), search_case(BestOfN(8), 128, 256, 64),
             search_case(BestOfN(16), 64, 256, 32, public=True),
             decode_case(64, 448, 1.0), decode_case(64, 448, 0.9), decode_case(256, 192, 1.0),
             scoring_case(256), scoring_case(512)]
    for case in cases:
        case["planner_over_xla"] = round(case["planner_bytes"] / case["xla_bytes"], 3)
        print(json.dumps(case))
    platform = jax.devices()[0].platform
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"plan_memory_{platform}.json")
    write_json(out, {"platform": platform, "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                     "cases": cases})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
