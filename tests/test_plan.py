"""The memory planner (ttcjax.eval.plan): its arithmetic against hand-computed bytes and against ttcjax's own
arrays (a sharded model, a KV cache), the suggestion where a run does not fit, every experiment config under
configs/experiments planned from the checkpoints' config.json alone, and `ttcjax plan` / `ttcjax experiment`."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from ttcjax.cli import main
from ttcjax.eval import plan as planner
from ttcjax.eval.experiment import check_memory, experiment_workload, read_config
from ttcjax.eval.plan import (Estimates, Hardware, VerifierModel, Workload, kv_bytes, memory_plan, param_bytes,
                              parse_bytes, plan, verifier_model)
from ttcjax.models import ModelConfig, init_model
from ttcjax.models.cache import KVCache
from ttcjax.models.sharding import ShardingRules, make_mesh, shard_model
from ttcjax.search.settings import SearchSettings
from ttcjax.search.strategies import Beam, BestOfN, ParticleFiltering, Revisions
from ttcjax.verifiers.hub import FAMILIES
from ttcjax.verifiers.public import RenderingStepScorer
from ttcjax.verifiers.reward_model import RewardModel, ValueHead

ROOT = pathlib.Path(__file__).resolve().parents[1]
HF = ROOT / "tests" / "data" / "hf_configs"
RECIPES = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
# the checkpoints the configs name, by their directory's name -> the config.json twins in tests/data/hf_configs
FIXTURES = {p.name: str(p) for p in HF.iterdir() if p.is_dir()}

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   param_dtype="bfloat16", dtype="float32")


def test_weights_and_kv_cache_bytes_by_hand():
    assert param_bytes(TINY, (1, 1)) == TINY.num_params() * 2  # every parameter, bfloat16
    # 2 (keys, values) x 2 layers x 3 rows x 2 kv heads x 8 head_dim x 10 slots x 4 bytes (float32)
    assert kv_bytes(TINY, rows=3, slots=10) == 2 * 2 * 3 * 2 * 8 * 10 * 4 == 7680
    cache = jax.eval_shape(lambda: KVCache.for_model(TINY, 3, 10))  # what the search carries
    assert kv_bytes(TINY, 3, 10) == sum(x.size * x.dtype.itemsize for x in (*cache.k, *cache.v))


def test_the_model_axis_splits_heads_kv_heads_mlp_and_vocab_where_it_divides():
    d, v, f, h, k, hd, layers = 32, 64, 64, 4, 2, 8, 2
    split = {"embedding": v * d // 2, "lm_head": d * v // 2,
             "attention": (d * h * hd * 2 + d * k * hd * 2) // 2, "mlp": 3 * d * f // 2, "norms": 2 * d}
    by_hand = (split["embedding"] + split["lm_head"] + layers * (split["attention"] + split["mlp"] + split["norms"])
               + d) * 2
    assert param_bytes(TINY, (1, 2)) == by_hand
    assert param_bytes(TINY, (4, 1)) == param_bytes(TINY, (1, 1))  # the data axis splits no parameter
    assert param_bytes(TINY, (1, 3)) == param_bytes(TINY, (1, 1))  # 3 divides none of 4, 2, 64: all stay whole
    # the planner's split is the one shard_model makes: bytes of device 0's shards of a model on a 1 x 2 mesh
    model = shard_model(init_model(TINY), make_mesh(1, 2), ShardingRules())
    on_device_0 = sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(nnx.state(model)))
    assert param_bytes(TINY, (1, 2)) == on_device_0
    assert kv_bytes(TINY, 3, 10, kv_ways=2) == kv_bytes(TINY, 3, 10) // 2  # Engine.decode's cache on 2 model devices
    assert kv_bytes(TINY, 3, 10, kv_ways=4) == kv_bytes(TINY, 3, 10)  # 4 does not divide 2 kv heads


def test_a_public_prm_in_search_carries_what_the_planner_counts():
    backbone = TINY.replace(has_lm_head=False)
    graphdef, params = nnx.split(RewardModel(init_model(backbone), ValueHead()))
    scorer = RenderingStepScorer(graphdef, renderer=None)  # start() renders nothing
    prompts = (jax.ShapeDtypeStruct((3, 8), jax.numpy.int32), jax.ShapeDtypeStruct((3,), jax.numpy.int32))
    cache = jax.eval_shape(lambda p, t, n: scorer.start(p, t, n, n=2, max_len=32), params, *prompts)
    slots, _ = planner.public_scorer_shape(32, 16)
    assert cache.ids.shape == (6, slots) and cache.steps.shape == cache.step_ends.shape == (6, 32)
    assert kv_bytes(backbone, 6, slots) == sum(x.size * x.dtype.itemsize for x in (*cache.kv.k, *cache.kv.v))
    verifier = VerifierModel("public", "skywork", backbone, "value")
    terms = dict(memory_plan(_workload(verifier=verifier, max_len=32), (1, 1), 8, None).stages[0].terms)
    assert terms["verifier KV cache"] == kv_bytes(backbone, 8, slots) + 8 * (slots + 2 * 32) * 4


def _workload(policy=TINY, verifier=None, strategies=(BestOfN(4),), rows_per_batch=8, max_len=64, **kw):
    search = SearchSettings(max_step_tokens=16, max_rounds=4, max_len=max_len)
    return Workload(policy=policy, verifier=verifier, strategies=tuple(strategies), search=search,
                    rows_per_batch=rows_per_batch, estimates=Estimates(prompt_tokens=16), **kw)


def test_a_search_stage_counts_each_devices_rows_and_both_caches():
    verifier = VerifierModel("prm", planner.TTCJAX, TINY.replace(has_lm_head=False), "value")
    stage = memory_plan(_workload(verifier=verifier), (2, 1), 8, None).stages[0]
    terms = dict(stage.terms)
    # 8 rows per batch / N=4 = 2 questions, one per data device: 4 rows of 64 slots on each
    assert terms["policy KV cache"] == kv_bytes(TINY, 4, 64)
    # one copy: the verifier reads a step a chunk at a time in a loop that updates its cache in place
    assert terms["verifier KV cache"] == kv_bytes(verifier.config, 4, 64)
    assert "verifier KV cache, second copy" not in terms
    assert terms["verifier weights"] == param_bytes(verifier.config, (2, 1)) + (32 + 1) * 2  # backbone + value head
    assert terms["loop state"] == 4 * (64 + 32 + 64) * 4  # tokens, step scores (best-of-N: max_len // 2 rounds), logits
    assert "lookahead rollout copy" not in terms and stage.total == sum(terms.values())
    # a question's rows never split: one question padded to the data axis puts all N rows on every device
    wide = memory_plan(_workload(verifier=verifier, strategies=(BestOfN(16),)), (2, 1), 8, None).stages[0]
    assert dict(wide.terms)["policy KV cache"] == kv_bytes(TINY, 16, 64)


def test_a_likelihood_head_adds_its_carried_state_and_a_chunks_logits():
    value = VerifierModel("prm", planner.TTCJAX, TINY, "value")
    likelihood = VerifierModel("prm", planner.TTCJAX, TINY, "likelihood")
    a, b = (dict(memory_plan(_workload(verifier=v), (2, 1), 8, None).stages[0].terms) for v in (value, likelihood))
    assert b["verifier KV cache"] - a["verifier KV cache"] == 4 * (TINY.hidden_size + 1) * 4  # 4 rows on a device
    assert b["verifier weights"] - a["verifier weights"] == np.dtype(TINY.jnp_param_dtype).itemsize  # its weight
    assert b["working set"] >= a["working set"]


def test_a_revision_stage_counts_the_chains_of_the_revision_model_with_its_own_cache():
    reviser = TINY.replace(max_position_embeddings=256, num_layers=3)
    verifier = VerifierModel("orm", planner.TTCJAX, TINY.replace(has_lm_head=False), "value")
    strategy = Revisions(8, sequential=4)  # 2 chains per question
    w = _workload(verifier=verifier, strategies=(strategy,), revision_policy=reviser, revision_verifier=verifier)
    # a question counts for its 8 generations against rows_per_batch 32 (the chains run in lock step, so their
    # episodes are 1/sequential as wide as best-of-N's): 4 questions, 8 chain rows
    stage = memory_plan(w, (1, 1), 32, None).stages[0]
    terms = dict(stage.terms)
    # the revision model's cache, 8 chains of its whole context (256 slots), not the policy's 64
    assert terms["policy KV cache"] == kv_bytes(reviser, 8, 256)
    assert terms["verifier KV cache"] == kv_bytes(verifier.config, 8, 256)
    rounds = strategy.max_rounds(4, 256)
    assert terms["the chains' attempts"] == 8 * (4 * (256 + 2 * rounds) + 256) * 4
    # between attempts the revision model reads its context 64 tokens at a time against all 256 slots
    context = planner._forward(reviser, 8, 64, 256, 1, planner.CACHED_ATTENTION_COPIES)
    assert terms["working set"] >= context
    # every model is resident: the policy and verifier besides the revision model and its verifier
    assert terms["revision model weights"] == param_bytes(reviser, (1, 1)) and terms["policy weights"] == param_bytes(
        TINY, (1, 1)) and terms["revision verifier weights"] == terms["verifier weights"]
    assert ("revisions n=8 sequential 4 (the revision model): 4 question(s) x 2 rows per device, 256 slots"
            in stage.detail)
    narrower = dataclasses.replace(w, search=dataclasses.replace(w.search, revision_max_len=96))
    assert dict(memory_plan(narrower, (1, 1), 32, None).stages[0].terms)["policy KV cache"] == kv_bytes(reviser, 8, 96)


def test_particle_filtering_holds_what_beam_search_holds():
    verifier = VerifierModel("prm", planner.TTCJAX, TINY.replace(has_lm_head=False), "value")
    beam, particles = (memory_plan(_workload(verifier=verifier, strategies=(s,)), (2, 1), 8, None).stages[0]
                       for s in (Beam(8, 2), ParticleFiltering(8)))
    assert particles.terms == beam.terms  # the rows' gathers, where beam search gathers its kept beams
    assert particles.detail.startswith("particle_filtering n=8: ") and beam.detail.startswith("beam n=8 width 2: ")


def test_where_only_a_model_axis_mesh_fits_it_is_suggested():
    big = ModelConfig(vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_layers=4, num_heads=8,
                      num_kv_heads=8, param_dtype="bfloat16")
    w = _workload(policy=big, rows_per_batch=4)
    data_only, model_axis = (memory_plan(w, m, 4, None).peak.total for m in ((2, 1), (1, 2)))
    memory = (data_only + model_axis) // 2  # weights dominate: split over 'model' they fit, whole they do not
    run = plan(w, Hardware(2, int(memory / w.estimates.usable_fraction) + 1, "test"), (2, 1))
    assert run.fits is False and run.suggestion.mesh == (1, 2) and run.fix() == "mesh=1,2"
    assert "does not fit" in run.verdict() and "mesh=1,2 fits" in run.verdict()


def test_where_no_mesh_fits_the_largest_rows_per_batch_that_does_is_suggested():
    w = _workload(rows_per_batch=64)
    at = {rows: memory_plan(w, (1, 1), rows, None).peak.total for rows in (16, 32)}
    memory = int((at[16] + at[32]) / 2 / w.estimates.usable_fraction)
    run = plan(w, Hardware(1, memory, "test"), (1, 1))
    assert run.fits is False and run.fix() == "rows_per_batch=16" and run.suggestion.fits
    # when even one question of the largest budget cannot fit, the suggestion leaves that budget out
    w = _workload(strategies=(BestOfN(4), Beam(256, width=4)), rows_per_batch=64)
    memory = int(memory_plan(w.up_to(4), (1, 1), 64, None).peak.total / w.estimates.usable_fraction) + 1
    assert plan(w, Hardware(1, memory, "test"), (1, 1)).fix() == "budgets=[4]"
    nothing = plan(w, Hardware(1, 1 << 10, "test"), (1, 1))
    assert nothing.suggestion is None and "even at budgets=[4] rows_per_batch=1" in nothing.verdict()


def test_device_memory_text_and_verifier_names():
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("16GiB") == 16 << 30 and parse_bytes("1.5 kB") == 1500
    with pytest.raises(ValueError, match="a number and a unit"):
        parse_bytes("80")
    assert set(planner.FAMILY_HEADS) == set(FAMILIES)  # every public family has its head counted
    assert verifier_model("none") is None
    assert verifier_model("tiny").family == planner.TTCJAX and verifier_model("orm:tiny").family == planner.TTCJAX
    qwen = verifier_model(FIXTURES["Qwen2.5-Math-PRM-7B"])
    assert (qwen.family, qwen.head, qwen.config.has_lm_head) == ("qwen-prm", "two_class", False)
    rlhflow = verifier_model(f"rlhflow:{FIXTURES['Llama3.1-8B-PRM-Deepseek-Data']}")
    assert (rlhflow.family, rlhflow.config.has_lm_head) == ("rlhflow", True)  # it scores with its lm_head rows
    assert rlhflow.num_params == 8_030_261_248  # Llama-3.1-8B's parameters
    with pytest.raises(ValueError, match="FAMILY:DIR"):
        verifier_model(FIXTURES["Llama3.1-8B-PRM-Deepseek-Data"])  # a plain causal LM says no family


def _fixture_overrides(config_path) -> list[str]:
    """key=value overrides that point a config's checkpoints at their config.json twins (the shipped tiny verifier
    for a ttcjax reward model that only a training run makes)."""
    config = read_config(config_path)
    out = []
    for key in ("policy", "verifier", "large_policy"):
        name = getattr(config, key)
        if not name or name in ("none", "tiny", "small") or name.startswith(("prm:", "orm:")):
            continue
        family, sep, path = name.partition(":") if name.split(":")[0] in FAMILIES else ("", "", name)
        twin = FIXTURES.get(pathlib.Path(path).name)
        out.append(f"{key}={family}{sep}{twin}" if twin else f"{key}={'tiny' if key == 'verifier' else 'null'}")
    return out


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_experiment_config_parses_and_plans_from_configs_alone(path):
    config = read_config(path, _fixture_overrides(path))
    run = plan(experiment_workload(config), Hardware(1, parse_bytes("80GB"), "test"), (1, 1))
    assert run.fits is not None and "verdict:" in run.describe()
    assert json.loads(json.dumps(run.to_dict()))["configured"]["stages"][0]["name"] == "search"


def test_the_recipes_are_the_public_setups():
    llama = read_config(ROOT / "configs/experiments/llama-3.2-1b_rlhflow-8b_math500.yaml")
    assert llama.verifier.startswith("rlhflow:") and llama.budgets == (4, 16, 64, 256)
    assert [s.to_dict() for s in llama.strategies] == [
        {"kind": "best_of_n", "selection": "weighted"}, {"kind": "best_of_n", "selection": "majority"},
        {"kind": "beam", "width": 4}, {"kind": "dvts", "width": 4}]
    s = llama.search
    assert (s.delimiter, s.max_rounds, s.temperature, s.top_p, llama.max_new_tokens) == ("\n\n", 40, 0.8, 1.0, 2048)
    assert llama.task["prompt"]["system"].startswith("Solve the following math problem efficiently and clearly:\n\n")
    families = {}
    for name in ("qwen2.5-math-1.5b_qwen-prm-7b_math500", "qwen2.5-math-1.5b_skywork-prm_math500",
                 "llama-3.2-1b_rlhflow-8b_math500"):
        path = ROOT / "configs/experiments" / f"{name}.yaml"
        families[name] = experiment_workload(read_config(path, _fixture_overrides(path))).verifier.family
        assert "ttcjax plan --config" in path.read_text() and "ttcjax experiment --config" in path.read_text()
    assert list(families.values()) == ["qwen-prm", "skywork", "rlhflow"]


def test_plan_command_on_a_recipe(capsys):
    path = ROOT / "configs/experiments/qwen2.5-math-1.5b_skywork-prm_math500.yaml"
    args = ["plan", "--config", str(path), *_fixture_overrides(path), "--devices", "4", "--device-memory", "32GiB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "verdict: does not fit" in out and "GiB per device" in out and "skywork" in out
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fits"] is False and result["configured"]["mesh"] == [4, 1] and result["hardware"]["devices"] == 4
    assert result["fix"] == "rows_per_batch=128 budgets=[4,16]" and result["suggestion"]["fits"] is True
    assert main(["plan", "--config", str(path), "--device-memory", "80"]) == 2  # a unit is needed
    assert "80GB or 16GiB" in capsys.readouterr().err


def test_experiment_stops_before_any_work_where_the_devices_report_too_little(tmp_path, capsys, monkeypatch):
    small = Hardware(1, 1 << 20, "test", measured=True)
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls, *a, **k: small))
    out = tmp_path / "run"
    assert main(["demo", "--out-dir", str(out), "questions=8"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "ttcjax plan --config" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # where the memory is only the host's estimate (CPU devices), a warning, and the run goes on
    warnings = []
    config = read_config(ROOT / "configs/experiments/demo.yaml", [f"out_dir={out}"])
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls, *a, **k: Hardware(1, 1 << 20, "host")))
    check_memory(config, "demo.yaml", warn=warnings.append)
    assert len(warnings) == 1 and "warning" in warnings[0] and not out.exists()
