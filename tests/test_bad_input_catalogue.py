"""Issue 16's catalogue: bad inputs across every command and the API, each refused before any model compute with
one line that names the field or file (and the fix), and no file lost or written: every file and directory under
the case's directory (its working directory too) and under the models it reads has the same name, bytes and
modification time after the command or call as before, and the package's shipped models the same names, sizes
and times."""

import functools
import json
import os
import types

import numpy as np
import pytest
import yaml
from test_bad_input import TINY, one_error_line

from ttcjax.checkpoints.assets import ASSETS, model_dir
from ttcjax.checkpoints.hf import SAFETENSORS_INDEX, save_hf_model
from ttcjax.checkpoints.native import save_model
from ttcjax.cli import main
from ttcjax.eval.scheduler import BudgetScheduler
from ttcjax.models import init_model
from ttcjax.search.settings import SearchSettings

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A native and a Hugging Face tiny checkpoint, outside each case's directory (cases compare that directory)."""
    root = tmp_path_factory.mktemp("models")
    model = init_model(TINY)
    save_model(model, root / "native")
    save_hf_model(model, root / "hf")
    return types.SimpleNamespace(root=str(root), native=str(root / "native"), hf=str(root / "hf"))


def snapshot(root, contents: bool = True) -> dict[str, tuple[int, bytes | int] | None]:
    """Every directory (None) and file under `root`, a file as its modification time (ns) and its bytes, or its
    size where not `contents`: a file rewritten with the same bytes shows too."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(directory, name)] = None
        for name in files:
            path = os.path.join(directory, name)
            stat = os.stat(path)
            if contents:
                with open(path, "rb") as f:
                    out[path] = (stat.st_mtime_ns, f.read())
            else:
                out[path] = (stat.st_mtime_ns, stat.st_size)
    return out


def watched(tmp, models) -> dict[str, tuple[int, bytes | int] | None]:
    """What no bad input may change: the case's directory and the models beside it (names, times and bytes), and
    the package's shipped models (names, times and sizes)."""
    return {**snapshot(tmp), **snapshot(models.root), **snapshot(ASSETS, contents=False)}


class Case:
    """The files one case needs, written under `tmp`."""

    def __init__(self, tmp, models):
        self.tmp, self.models = tmp, models
        self.ckpt = models.native
        (tmp / "a_file").write_text("the user's file\n")
        self.file = str(tmp / "a_file")

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def write(self, name: str, text: str) -> str:
        (self.tmp / name).write_text(text)
        return self.path(name)

    def yaml(self, name: str, data) -> str:
        return self.write(name, yaml.safe_dump(data))

    def directory(self, name: str) -> str:
        (self.tmp / name).mkdir()
        return self.path(name)

    # ---- each command's argv, from a good config made bad by `changes` / `flags` ----

    def sweep(self, *overrides, **changes):
        data = {"out_dir": self.path("sweep"), "questions": 2, "budgets": [4], "verifier": "none",
                "strategies": [{"kind": "best_of_n", "selection": "majority"}], **changes}
        return ["sweep", "--config", self.yaml("sweep.yaml", data), *overrides]

    def experiment(self, *overrides, command="experiment"):
        with open(os.path.join(os.path.dirname(__file__), "..", "configs", "experiments", "demo.yaml")) as f:
            data = {**yaml.safe_load(f), "out_dir": self.path("experiment")}
        # the demo's grid without its lookahead, which budget 4 does not fit: a config the user wrote that way is told
        # so on a line of its own, and each case here expects its one line
        data["strategies"] = [s for s in data["strategies"] if s["kind"] != "lookahead"]
        return [command, "--config", self.yaml("experiment.yaml", data), *overrides]

    def train_policy(self, *flags, **changes):
        data = {"out_dir": self.path("run"), "model_config": TINY.to_dict(), "num_train": 10, **changes}
        return ["train", "policy", "--config", self.yaml("policy.yaml", data), *flags]

    def train_prm(self, **changes):
        data = {"out_dir": self.path("prm"), "policy": model_dir("policy", "tiny"), "num_questions": 8, **changes}
        return ["train", "prm", "--config", self.yaml("prm.yaml", data)]

    def labels(self, directory: str = "labels", steps: tuple[str, ...] = ("1+2=3",), **options) -> str:
        """A labels file of one solution of `steps` (and its labels_cost.json, recording the options of a
        `train_prm` config with `options`)."""
        from ttcjax.training.labels import LabelledSolution, save_labels
        from ttcjax.training.reward_model import LABELS_COST_FILE, PRMTrainConfig, label_options

        (self.tmp / directory).mkdir(exist_ok=True)
        labelled = [LabelledSolution("p", "Q: 1+2=\n", steps, (1.0,) * len(steps), True)]
        save_labels(self.tmp / directory / "labels.jsonl", labelled)
        config = PRMTrainConfig(out_dir=self.path("prm"), policy=model_dir("policy", "tiny"), num_questions=8,
                                **options)
        (self.tmp / directory / LABELS_COST_FILE).write_text(json.dumps({"options": label_options(config)}))
        return self.path(f"{directory}/labels.jsonl")

    def generate(self, *flags, model=None):
        return ["generate", "--model", model or self.ckpt, "--tokenizer", "char", "--prompt", "x",
                "--output", self.path("out.jsonl"), *flags]

    def generate_config(self, **options):
        data = {"model": self.ckpt, "tokenizer": "char", "prompts": ["x"], **options}
        return ["generate", "--config", self.yaml("generate.yaml", data)]

    def eval(self, *flags, what="policy"):
        return ["eval", what, "--model", self.ckpt, "--tokenizer", "char", "--per-difficulty", "1",
                "--output", self.path("eval.json"), *flags]

    def run(self, *flags, **changes):
        scheduler = BudgetScheduler(
            signal="agreement", edges=(0.5,), choices={f"{lv}/4": {"kind": "best_of_n", "selection": "majority"}
                                                       for lv in (1, 2)},
            probe_samples=2, search=SearchSettings(), policy="tiny", verifier="none", task={"name": "arithmetic"},
            max_new_tokens=64)
        data = {**scheduler.to_json(), **changes}
        return ["run", "--scheduler", self.write("scheduler.json", json.dumps(data)), "--question", "Q: 1+2=",
                "--output", self.path("answers.jsonl"), *flags]

    def hf_with_index(self, shard: str) -> str:
        """A copy of the Hugging Face checkpoint whose index names `shard` for every tensor."""
        directory = self.tmp / "hf"
        directory.mkdir()
        for name in os.listdir(self.models.hf):
            (directory / name).write_bytes(open(os.path.join(self.models.hf, name), "rb").read())
        from safetensors import safe_open
        with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
            weight_map = {k: shard for k in f.keys()}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": weight_map}))
        os.remove(directory / "model.safetensors")
        return str(directory)

    def hf_damaged(self, cut: int) -> str:
        """A copy of the Hugging Face checkpoint whose weights file is cut after `cut` bytes."""
        directory = self.tmp / "hf"
        directory.mkdir()
        for name in os.listdir(self.models.hf):
            data = open(os.path.join(self.models.hf, name), "rb").read()
            (directory / name).write_bytes(data[:cut] if name == "model.safetensors" else data)
        return str(directory)


# (id, argv from a Case, words the one error line must hold)
CLI_CASES = [
    # sweep: every field checked when the config is read
    ("sweep-temperature-nan", lambda c: c.sweep("search.temperature=.nan"),
     ["sweep.yaml", "temperature=nan", "finite"]),
    ("sweep-temperature-inf", lambda c: c.sweep("search.temperature=.inf"), ["temperature=inf", "finite"]),
    ("sweep-top-p-2", lambda c: c.sweep("search.top_p=2"), ["top_p=2", "(0, 1]"]),
    ("sweep-top-k-negative", lambda c: c.sweep("search.top_k=-1"), ["top_k=-1", ">= 0"]),
    ("sweep-max-len-0", lambda c: c.sweep("search.max_len=0"), ["max_len=0", ">= 1"]),
    ("sweep-step-over-max-len", lambda c: c.sweep("search.max_step_tokens=200"), ["max_step_tokens=200", "below"]),
    ("sweep-max-len-over-positions", lambda c: c.sweep("search.max_len=600"),
     ["search.max_len=600", "512 positions of policy", "at most 512"]),
    ("sweep-revision-max-len-over-positions", lambda c: c.sweep(
        "search.revision_max_len=1000", "revision_policy=tiny",
        "strategies=[{kind: revisions, sequential: 2, selection: majority}]"),
     ["search.revision_max_len=1000", "512 positions of revision_policy"]),
    ("experiment-max-new-tokens-over-positions", lambda c: c.experiment("max_new_tokens=1000"),
     ["max_new_tokens=1000", "512 positions of policy"]),
    ("sweep-unknown-search-key", lambda c: c.sweep("search.max_lenn=3"), ["max_lenn", "allowed"]),
    ("sweep-search-not-mapping", lambda c: c.sweep("search=[1]"), ["search must be a mapping"]),
    ("sweep-questions-0", lambda c: c.sweep("questions=0"), ["questions=0", ">= 1"]),
    ("sweep-questions-string", lambda c: c.sweep("questions=many"), ["questions='many'"]),
    ("sweep-rows-per-batch-0", lambda c: c.sweep("rows_per_batch=0"), ["rows_per_batch=0", ">= 1"]),
    ("sweep-budgets-string", lambda c: c.sweep("budgets=abc"), ["budgets", "integers >= 1"]),
    ("sweep-budgets-empty", lambda c: c.sweep("budgets=[]"), ["budgets", "non-empty"]),
    ("sweep-budget-0", lambda c: c.sweep("budgets=[0, 4]"), ["budgets", ">= 1"]),
    ("sweep-strategy-typo", lambda c: c.sweep("strategies=[{kind: beam, widht: 4}]"), ["strategies[0]", "widht"]),
    ("sweep-strategy-kind", lambda c: c.sweep("strategies=[{kind: beem}]"), ["strategies[0]", "beem"]),
    ("sweep-strategy-fits-no-budget", lambda c: c.sweep("strategies=[{kind: beam, width: 3}]"),
     ["width': 3", "fits none of the budgets"]),
    ("sweep-strategy-twice", lambda c: c.sweep("strategies=[{kind: best_of_n, selection: majority}, "
                                               "{kind: best_of_n, selection: majority}]"), ["same strategy", "once"]),
    ("sweep-verifier-none-beam", lambda c: c.sweep("strategies=[{kind: beam, width: 2}]"),
     ["reads verifier scores", "verifier is none"]),
    ("sweep-selection-unknown", lambda c: c.sweep("strategies=[{kind: best_of_n, selection: best}]"), ["'best'"]),
    ("sweep-unknown-key", lambda c: c.sweep("questons=3"), ["sweep.yaml", "unknown option 'questons'"]),
    ("sweep-task-unknown", lambda c: c.sweep("task={name: nope}"), ["unknown task name 'nope'", "known"]),
    ("sweep-task-not-mapping", lambda c: c.sweep("task=5"), ["task", "mapping with 'name'"]),
    ("sweep-revision-without-model", lambda c: c.sweep("strategies=[{kind: revisions, sequential: 2}]"),
     ["revision_policy is not set"]),
    ("sweep-policy-missing", lambda c: c.sweep(policy=c.path("nope")), ["policy=", "nope", "no such checkpoint"]),
    ("sweep-policy-not-a-name", lambda c: c.sweep(policy=5), ["policy=5", "shipped name"]),
    ("sweep-out-dir-is-file", lambda c: c.sweep(out_dir=c.file), ["out_dir", "a_file", "is a file"]),
    ("sweep-out-dir-under-file", lambda c: c.sweep(out_dir=c.file + "/run"), ["out_dir", "cannot be made"]),
    ("sweep-config-missing", lambda c: ["sweep", "--config", c.path("nope.yaml")], ["nope.yaml", "not found"]),
    ("sweep-config-directory", lambda c: ["sweep", "--config", str(c.tmp)], ["is a directory", "YAML config file"]),
    ("sweep-config-not-yaml", lambda c: ["sweep", "--config", c.write("bad.yaml", "a: [1,\n")],
     ["bad.yaml", "not valid YAML"]),
    ("sweep-config-a-list", lambda c: ["sweep", "--config", c.write("list.yaml", "- 1\n")], ["list.yaml", "mapping"]),
    ("sweep-override-no-key", lambda c: c.sweep("=5"), ["override '=5'", "key=value"]),
    ("sweep-override-no-equals", lambda c: c.sweep("questions"), ["override 'questions'", "key=value"]),
    ("sweep-override-into-scalar", lambda c: c.sweep("questions.x=1"), ["questions is not a mapping"]),
    # found before the run directory is bound (it was once bound to a config that could not run)
    ("sweep-split-unknown", lambda c: c.sweep("split=nosuch"), ["sweep.yaml", "no split 'nosuch'"]),
    ("sweep-mesh-beyond-devices", lambda c: c.sweep("mesh=5,5"), ["mesh 5x5 needs 25 devices"]),
    ("sweep-verifier-unknown", lambda c: c.sweep("verifier=nosuch"), ["verifier='nosuch'", "no shipped prm"]),
    ("sweep-revision-verifier-unknown", lambda c: c.sweep("revision_verifier=nosuch"),
     ["revision_verifier='orm:nosuch'", "no shipped orm"]),
    ("sweep-public-verifier-missing", lambda c: c.sweep(f"verifier=rlhflow:{c.path('nope')}"),
     ["verifier='rlhflow:", "nope: no such checkpoint directory"]),
    ("sweep-seed-word", lambda c: c.sweep("seed=abc"), ["sweep.yaml", "seed='abc'", "integer"]),
    ("sweep-jsonl-path-empty-directory", lambda c: c.sweep(f"task={{name: jsonl, path: {c.directory('data')}}}"),
     ["data/test.jsonl not found"]),
    ("experiment-split-unknown", lambda c: c.experiment("split=nosuch"), ["no split 'nosuch'"]),
    ("experiment-mesh-beyond-devices", lambda c: c.experiment("mesh=5,5", "--skip-plan"), ["mesh 5x5"]),
    ("experiment-verifier-unknown", lambda c: c.experiment("verifier=nosuch"), ["verifier='nosuch'"]),
    ("experiment-seed-word", lambda c: c.experiment("seed=abc"), ["seed='abc'"]),
    ("experiment-bins-over-questions", lambda c: c.experiment("questions=3"), ["questions=3", "bins=5"]),
    ("train-mesh-beyond-devices", lambda c: c.train_policy(mesh="5,5"), ["mesh 5x5"]),
    # experiment / demo / plan read the same fields and their own
    ("experiment-probe-samples-negative", lambda c: c.experiment("probe_samples=-1"), ["probe_samples=-1", ">= 1"]),
    ("experiment-bins-0", lambda c: c.experiment("bins=0"), ["bins=0"]),
    ("experiment-folds-0", lambda c: c.experiment("folds=0"), ["folds=0"]),
    ("experiment-folds-1", lambda c: c.experiment("folds=1"), ["experiment.yaml", "folds=1", ">= 2"]),
    ("experiment-difficulty-samples-0", lambda c: c.experiment("difficulty_samples=0"), ["difficulty_samples=0"]),
    ("experiment-max-new-tokens-0", lambda c: c.experiment("max_new_tokens=0"), ["max_new_tokens=0"]),
    ("experiment-temperature-nan", lambda c: c.experiment("search.temperature=.nan"), ["temperature=nan"]),
    ("experiment-unknown-key", lambda c: c.experiment("signall=oracle"), ["experiment.yaml", "signall"]),
    ("experiment-out-dir-is-file", lambda c: c.experiment(f"out_dir={c.file}"), ["out_dir", "is a file"]),
    ("experiment-large-policy-missing", lambda c: c.experiment(f"large_policy={c.tmp}/nope", "--skip-plan"),
     ["large_policy=", "nope", "no such checkpoint"]),
    ("demo-out-dir-is-file", lambda c: ["demo", "--out-dir", c.file], ["out_dir", "is a file"]),  # the one line:
    # the shipped grid leaves its lookahead out at budget 4 without a word
    ("demo-questions-0", lambda c: ["demo", "--questions", "0", "--out-dir", c.path("demo")], ["questions=0"]),
    ("plan-devices-0", lambda c: c.experiment("--devices", "0", command="plan"), ["--devices 0"]),
    ("plan-device-memory", lambda c: c.experiment("--device-memory", "lots", command="plan"),
     ["'lots'", "80GB"]),
    ("plan-usable-fraction-nan", lambda c: c.experiment("--usable-fraction", "nan", command="plan"),
     ["usable_fraction=nan"]),
    ("plan-prompt-tokens", lambda c: c.experiment("--prompt-tokens", "-1", command="plan"), ["prompt_tokens=-1"]),
    ("plan-sweep-bad", lambda c: ["plan", "--sweep", *c.sweep("questions=0")[1:]], ["questions=0"]),
    # train
    ("train-steps-negative", lambda c: c.train_policy("--steps", "-5"), ["steps=-5"]),
    ("train-lr-nan", lambda c: c.train_policy(lr=NAN), ["policy.yaml", "lr=nan", "finite"]),
    ("train-lr-negative", lambda c: c.train_policy(lr=-1), ["lr=-1", "lr > 0"]),
    ("train-clip-norm-inf", lambda c: c.train_policy(clip_norm=INF), ["clip_norm=inf"]),
    ("train-weight-decay-string", lambda c: c.train_policy(weight_decay="x"), ["weight_decay='x'"]),
    ("train-min-lr-ratio", lambda c: c.train_policy(min_lr_ratio=2), ["min_lr_ratio=2"]),
    ("train-warmup-negative", lambda c: c.train_policy(warmup_steps=-1), ["warmup_steps=-1"]),
    ("train-batch-size-0", lambda c: c.train_policy(batch_size=0), ["batch_size >= 1"]),
    ("train-num-layers-0", lambda c: c.train_policy(model_config={**TINY.to_dict(), "num_layers": 0}),
     ["num_layers=0"]),
    ("train-heads-mismatch", lambda c: c.train_policy(model_config={**TINY.to_dict(), "num_kv_heads": 3}),
     ["num_kv_heads=3"]),
    ("train-model-config-typo", lambda c: c.train_policy(model_config={**TINY.to_dict(), "layers": 2}),
     ["unknown model config field", "layers"]),
    ("train-model-config-switch-string", lambda c: c.train_policy(model_config={**TINY.to_dict(),
                                                                                "tie_word_embeddings": "no"}),
     ["tie_word_embeddings='no'", "true or false"]),
    ("train-unknown-key", lambda c: c.train_policy(learning_rate=1), ["policy.yaml", "learning_rate"]),
    ("train-out-dir-is-file", lambda c: c.train_policy(out_dir=c.file), ["out_dir", "is a file"]),
    ("train-prm-samples-0", lambda c: c.train_prm(samples=0), ["samples and rollouts", ">= 1"]),
    ("train-prm-temperature-nan", lambda c: c.train_prm(temperature=NAN), ["prm.yaml", "temperature=nan"]),
    ("train-prm-validation-fraction", lambda c: c.train_prm(validation_fraction=1.5), ["validation_fraction=1.5"]),
    ("train-prm-label-flips", lambda c: c.train_prm(label_flips=1.5), ["label_flips=1.5", "[0, 1)"]),
    ("train-prm-aggregation", lambda c: c.train_prm(aggregation="max"), ["aggregation='max'"]),
    ("train-prm-max-new-tokens-0", lambda c: c.train_prm(max_new_tokens=0), ["max_new_tokens=0"]),
    ("train-prm-policy-missing", lambda c: c.train_prm(policy=c.path("nope")), ["policy=", "nope", "nothing was"]),
    ("train-prm-labels-of-other-options", lambda c: c.train_prm(labels=c.labels(samples=2)),
     ["labels.jsonl", "keys that differ: ['samples']", "{'samples': 2}", "drop `labels`"]),
    ("train-prm-example-over-positions", lambda c: c.train_prm(labels=c.labels(steps=("1+2=3" * 120,)),
                                                               seq_len=1024),
     ["labels.jsonl", "the longest example (problem 'p'", "610 tokens", "512 positions of policy",
      "lower max_new_tokens", "at least 610 positions (init_from)"]),
    ("train-prm-example-over-seq-len", lambda c: c.train_prm(labels=c.labels(steps=("1+2=3" * 60,))),
     ["labels.jsonl", "310 tokens, more than seq_len=256", "raise seq_len to at least 310"]),
    ("train-prm-init-from-missing", lambda c: c.train_prm(init_from=c.path("nope")), ["init_from=", "no such"]),
    ("train-policy-init-from-missing", lambda c: c.train_policy(model_config=None, init_from=c.path("nope")),
     ["init_from=", "no such"]),
    ("train-tokenizer-int", lambda c: c.train_policy(tokenizer=5), ["tokenizer=5", "must be a path"]),
    ("train-mesh-int", lambda c: c.train_policy(mesh=5), ["policy.yaml", "mesh=5", "DATA,MODEL"]),
    ("train-mesh-word", lambda c: c.train_policy(mesh="3,x"), ["policy.yaml", "'3,x'", "DATA,MODEL"]),
    ("train-seq-len-over-positions", lambda c: c.train_policy(model_config={**TINY.to_dict(),
                                                                           "max_position_embeddings": 64}),
     ["seq_len=256", "64 positions of model_config", "at most 64"]),
    # generate
    ("generate-n-0", lambda c: c.generate("--n", "0"), ["n=0", ">= 1"]),
    ("generate-temperature-nan", lambda c: c.generate("--temperature", "nan"), ["temperature=nan", "finite"]),
    ("generate-temperature-inf", lambda c: c.generate("--temperature", "inf"), ["temperature=inf", "finite"]),
    ("generate-temperature-negative", lambda c: c.generate("--temperature", "-1"), ["temperature=-1"]),
    ("generate-top-p-nan", lambda c: c.generate("--top-p", "nan"), ["top_p=nan"]),
    ("generate-top-p-0", lambda c: c.generate("--top-p", "0"), ["top_p=0.0"]),
    ("generate-top-k-negative", lambda c: c.generate("--top-k", "-1"), ["top_k=-1"]),
    ("generate-mesh", lambda c: c.generate("--mesh", "3,x"), ["--mesh '3,x'", "DATA,MODEL"]),
    ("generate-model-missing", lambda c: c.generate(model=c.path("nope")), ["nope", "no such checkpoint"]),
    ("generate-tokenizer-missing", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", c.path("tok.json"),
                                              "--prompt", "x"], ["tok.json", "does not exist"]),
    ("generate-tokenizer-damaged", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", c.write("tok.json", "{"),
                                              "--prompt", "x"], ["tok.json", "not valid JSON"]),
    ("generate-prompts-file-missing", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", "char",
                                                 "--prompts-file", c.path("p.txt")], ["p.txt", "not found"]),
    ("generate-prompt-not-string", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", "char", "--prompts-file",
                                              c.write("p.jsonl", '{"prompt": 5}\n')],
     ["p.jsonl:1", "\"prompt\" string"]),
    ("generate-prompts-empty", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", "char", "--prompts-file",
                                          c.write("p.txt", "")], ["no prompts", "--prompt"]),
    ("generate-output-directory", lambda c: c.generate("--output", str(c.tmp)), ["--output", "is a directory"]),
    ("generate-beyond-positions", lambda c: c.generate("--max-new-tokens", "100000"),
     ["max_new_tokens=100000", "max_position_embeddings", "lower --max-new-tokens"]),
    ("generate-output-missing-dir", lambda c: c.generate("--output", c.path("missing/out.jsonl")),
     ["cannot write in"]),
    ("generate-config-unknown", lambda c: c.generate_config(modle="x"), ["generate.yaml", "unknown option 'modle'"]),
    ("generate-config-prompts-string", lambda c: c.generate_config(prompts="abc"),
     ["prompts='abc'", "list of strings"]),
    ("generate-config-prompts-int", lambda c: c.generate_config(prompts=[5]), ["prompts=[5]"]),
    ("generate-config-stop-int", lambda c: c.generate_config(stop=5), ["stop=5"]),
    ("generate-config-temperature-word", lambda c: c.generate_config(temperature="hot"), ["temperature='hot'"]),
    ("generate-config-seed-word", lambda c: c.generate_config(seed="a"), ["seed='a'"]),
    ("generate-config-n-string", lambda c: c.generate_config(n="4"), ["n='4'"]),
    ("generate-config-overwrite-string", lambda c: c.generate_config(overwrite="false", output=c.file),
     ["overwrite='false'", "true or false"]),
    ("generate-config-tokenizer-int", lambda c: c.generate_config(tokenizer=5), ["tokenizer=5", "must be a string"]),
    ("generate-config-mesh-int", lambda c: c.generate_config(mesh=5), ["mesh=5", "DATA,MODEL"]),
    ("generate-prompts-file-directory", lambda c: ["generate", "--model", c.ckpt, "--tokenizer", "char",
                                                   "--prompts-file", str(c.tmp)], ["--prompts-file", "is a directory"]),
    ("generate-model-config-word", lambda c: ["generate", "--config", c.yaml("g.yaml", {
        "model_config": {"hidden_size": "x"}, "tokenizer": "char", "prompts": ["x"]})], ["hidden_size='x'"]),
    ("generate-vocab-too-small", lambda c: ["generate", "--config", c.yaml("g.yaml", {
        "model_config": {**TINY.to_dict(), "vocab_size": 50}, "tokenizer": "char", "prompts": ["x"]})],
     ["vocab_size 50", "tokenizer"]),
    ("generate-chat-template-on-without-one", lambda c: c.generate("--chat-template", "on"),
     ["no chat template", "--chat-template off"]),
    ("generate-shard-absolute", lambda c: c.generate(model=c.hf_with_index("/etc/passwd")),
     ["'/etc/passwd'", "not a file inside"]),
    ("generate-shard-escapes", lambda c: c.generate(model=c.hf_with_index("../a_file")),
     ["'../a_file'", "not a file inside"]),
    ("generate-shard-missing", lambda c: c.generate(model=c.hf_with_index("model-1-of-2.safetensors")),
     ["model-1-of-2.safetensors", "missing"]),
    ("generate-safetensors-truncated", lambda c: c.generate(model=c.hf_damaged(200)), ["model.safetensors"]),
    ("generate-safetensors-header-cut", lambda c: c.generate(model=c.hf_damaged(5)), ["model.safetensors"]),
    # eval
    ("eval-samples-negative", lambda c: c.eval("--samples", "-3"), ["samples=-3"]),
    ("eval-per-difficulty-0", lambda c: c.eval("--per-difficulty", "0"), ["per_difficulty=0", "--per-difficulty"]),
    ("eval-questions-0", lambda c: c.eval("--questions", "0"), ["questions=0"]),
    ("eval-max-new-tokens-0", lambda c: c.eval("--max-new-tokens", "0"), ["max_new_tokens=0"]),
    ("eval-temperature-nan", lambda c: c.eval("--temperature", "nan"), ["temperature=nan", "finite"]),
    ("eval-output-directory", lambda c: c.eval("--output", str(c.tmp)), ["--output", "is a directory"]),
    ("eval-output-missing-dir", lambda c: c.eval("--output", c.path("missing/e.json")), ["cannot write in"]),
    ("eval-task-not-yaml", lambda c: c.eval("--task", "{a:"), ["--task", "not valid YAML"]),
    ("eval-task-unknown", lambda c: c.eval("--task", "nope"), ["unknown task name 'nope'"]),
    ("eval-split-unknown", lambda c: c.eval("--split", "nope"), ["no split 'nope'", "its splits"]),
    ("eval-prm-without-policy", lambda c: ["eval", "prm", "--model", "tiny"], ["--policy"]),
    ("eval-revision-chains-0", lambda c: c.eval("--chains", "0", what="revision"), ["chains=0"]),
    ("eval-revision-sequential-0", lambda c: c.eval("--sequential", "0", what="revision"), ["sequential=0"]),
    ("eval-max-new-tokens-over-positions", lambda c: c.eval("--max-new-tokens", "5000"),
     ["--max-new-tokens=5000", "longest prompt", "4096 positions", "lower --max-new-tokens"]),
    ("eval-revision-max-len-over-positions", lambda c: ["eval", "revision", "--model", "tiny", "--per-difficulty", "1",
                                                        "--max-len", "100000"],
     ["--max-len=100000", "512 positions of --model tiny", "at most 512"]),
    ("eval-prm-max-new-tokens-over-positions", lambda c: ["eval", "prm", "--model", "none", "--policy", "tiny",
                                                          "--per-difficulty", "1", "--max-new-tokens", "600"],
     ["--max-new-tokens=600", "positions of --policy tiny"]),
    # run
    ("run-scheduler-missing", lambda c: ["run", "--scheduler", c.path("s.json")], ["s.json", "no scheduler"]),
    ("run-scheduler-not-json", lambda c: ["run", "--scheduler", c.write("s.json", "{")], ["s.json", "not JSON"]),
    ("run-scheduler-probe-negative", lambda c: c.run(probe_samples=-1), ["scheduler.json", "probe_samples=-1"]),
    ("run-scheduler-signal", lambda c: c.run(signal="vibes"), ["scheduler.json", "'vibes'"]),
    ("run-scheduler-temperature-nan", lambda c: c.run(search={**SearchSettings().to_dict(), "temperature": NAN}),
     ["scheduler.json", "temperature"]),
    ("run-scheduler-strategy-typo", lambda c: c.run(choices={"1/4": {"kind": "beam", "widht": 2}}),
     ["scheduler.json", "widht"]),
    ("run-budget-below-probes", lambda c: c.run("--budget", "0"), ["budget 0", "at least"]),
    ("run-scheduler-choice-key", lambda c: c.run(choices={"abc": {"kind": "best_of_n", "selection": "majority"}}),
     ["scheduler.json", "choices['abc']", "level/budget"]),
    ("run-scheduler-choices-list", lambda c: c.run(choices=[1]), ["scheduler.json", "choices=[1]", "mapping"]),
    ("run-scheduler-policy-list", lambda c: c.run(policy=[1]), ["scheduler.json", "policy=[1]"]),
    ("run-scheduler-edges-word", lambda c: c.run(edges=["a"]), ["scheduler.json", "edges=['a']", "finite numbers"]),
    ("run-scheduler-edges-descending", lambda c: c.run(edges=[0.6, 0.2]), ["edges=[0.6, 0.2]", "ascending"]),
    ("run-scheduler-max-new-tokens-over-positions", lambda c: c.run(max_new_tokens=600),
     ["scheduler.json", "max_new_tokens=600", "512 positions of policy tiny"]),
    ("run-scheduler-max-len-over-positions", lambda c: c.run(search=SearchSettings(max_len=1000).to_dict()),
     ["scheduler.json", "search.max_len=1000", "512 positions of policy tiny"]),
    ("run-questions-file-missing", lambda c: c.run("--questions-file", c.path("q.jsonl")),
     ["q.jsonl", "no such file"]),
    ("run-questions-file-bad-line", lambda c: c.run("--questions-file", c.write("q.jsonl", '{"question": 5}\n')),
     ["q.jsonl:1", "\"question\" string"]),
    ("run-output-exists", lambda c: c.run("--output", c.file), ["a_file", "the file exists", "--overwrite"]),
    ("generate-output-exists", lambda c: c.generate("--output", c.file), ["a_file", "the file exists"]),
    ("eval-output-exists", lambda c: c.eval("--output", c.file), ["a_file", "the file exists"]),
    ("run-output-missing-dir", lambda c: c.run("--output", c.path("missing/a.jsonl")), ["cannot write in"]),
    ("run-mesh", lambda c: c.run("--mesh", "x"), ["--mesh 'x'"]),
    ("run-policy-missing", lambda c: c.run("--policy", c.path("nope")), ["nope", "no such checkpoint"]),
    # convert / init-model
    ("convert-source-missing", lambda c: ["convert", c.path("nope"), c.path("dst"), "--to", "hf"],
     ["nope", "no such checkpoint"]),
    ("convert-into-a-file", lambda c: ["convert", c.ckpt, c.file, "--to", "hf"], ["DST", "is a file"]),
    ("convert-onto-itself", lambda c: ["convert", c.ckpt, c.ckpt, "--to", "ttcjax", "--overwrite"], ["is SRC"]),
    ("convert-wrong-format", lambda c: ["convert", c.ckpt, c.path("dst"), "--to", "hf", "--from", "hf"],
     ["config.json"]),
    ("convert-damaged-gguf", lambda c: ["convert", c.write("m.gguf", "GGUFxxxx"), c.path("dst"), "--to", "hf"],
     ["m.gguf", "unreadable GGUF"]),
    ("init-model-num-layers-0", lambda c: ["init-model", "--config", c.yaml("m.yaml", {"model_config": {
        "num_layers": 0}}), "--out", c.path("m")], ["m.yaml", "num_layers=0"]),
    ("init-model-bias-string", lambda c: ["init-model", "--config", c.yaml("m.yaml", {"model_config": {
        **TINY.to_dict(), "qkv_bias": "false"}}), "--out", c.path("m")], ["m.yaml", "qkv_bias='false'"]),
    ("init-model-sliding-layers-words", lambda c: ["init-model", "--config", c.yaml("m.yaml", {"model_config": {
        **TINY.to_dict(), "sliding_window": 4, "sliding_layers": ["no"]}}), "--out", c.path("m")],
     ["sliding_layers=['no']", "true or false"]),
    ("convert-hf-over-a-ttcjax-checkpoint", lambda c: ["convert", c.models.hf, c.ckpt, "--to", "hf"],
     ["already holds a checkpoint", "ttcjax_config.json", "--overwrite"]),
    ("init-model-exists", lambda c: ["init-model", "--config", c.yaml("m.yaml", {"model_config": TINY.to_dict()}),
                                     "--out", c.ckpt], ["already holds", "overwrite"]),
    # one job of a job array: K/J, job K of J counted from 0
    ("sweep-job-0-of-0", lambda c: c.sweep("--job", "0/0"), ["--job 0/0", "at least 1"]),
    ("sweep-job-3-of-2", lambda c: c.sweep("--job", "3/2"), ["--job 3/2", "0 .. 1"]),
    ("sweep-job-words", lambda c: c.sweep("--job", "abc"), ["--job 'abc'", "K/J"]),
    ("sweep-job-fresh", lambda c: c.sweep("--job", "1/2", "--fresh"), ["--fresh with --job 1/2", "move the run"]),
    ("experiment-job-negative", lambda c: c.experiment("--job=-1/2"), ["--job '-1/2'", "K/J"]),
    ("demo-job-3-of-3", lambda c: ["demo", "--job", "3/3", "--out-dir", c.path("demo")], ["--job 3/3", "0 .. 2"]),
]


@pytest.mark.parametrize("build, words", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_a_bad_command_is_one_line_and_touches_nothing(models, tmp_path, capsys, monkeypatch, build, words):
    monkeypatch.chdir(tmp_path)  # a file written relative to the working directory would show too
    case = Case(tmp_path, models)
    argv = build(case)
    before = watched(tmp_path, models)
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, *words)
    assert watched(tmp_path, models) == before  # nothing written, nothing lost


@pytest.mark.parametrize("overrides, words", [
    (lambda c: [f"task={{name: jsonl, path: {c.directory('data')}}}"], ["data/test.jsonl not found"]),
    (lambda c: [f"task={{name: jsonl, path: {c.write('q.jsonl', TWO_QUESTIONS)}}}", "questions=null"],
     ["2 questions", "cannot fill 5 difficulty bins"]),
], ids=["jsonl-path-empty-directory", "bins-over-the-split"])
def test_an_experiment_whose_questions_cannot_run_stops_before_its_directory_is_bound(models, tmp_path, capsys,
                                                                                    overrides, words):
    """What only reading the questions tells (after the banner): the last line, and the run directory not made."""
    case = Case(tmp_path, models)
    argv = case.experiment(*overrides(case), "--skip-plan")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("ttcjax experiment: error:"), err
    assert all(word in err.splitlines()[-1] for word in words), err
    assert snapshot(tmp_path) == before


TWO_QUESTIONS = '{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n'


def _api_cases():
    """(id, prepare, words): `prepare(tmp)` writes what the case reads under `tmp` and returns the bad call."""
    from ttcjax.checkpoints.chat_template import render_chat_template
    from ttcjax.checkpoints.native import checkpoint_config
    from ttcjax.decoding.engine import Sampling
    from ttcjax.eval.experiment import ExperimentConfig
    from ttcjax.eval.scheduler import select_strategies
    from ttcjax.eval.shards import merge
    from ttcjax.eval.sweep import SweepConfig
    from ttcjax.io import bind_run_dir
    from ttcjax.models import ModelConfig
    from ttcjax.search.strategies import StrategySpec
    from ttcjax.tasks.base import ProblemRecord
    from ttcjax.training.loop import OptimConfig
    from ttcjax.training.revisions import load_revision_settings
    from ttcjax.verifiers.reward_model import load_prm

    def bound_then_other(tmp):
        """A run directory bound to one config (written now, before the snapshot); the call binds another."""
        bind_run_dir(tmp / "run", {"lr": 1}, "train policy")
        return functools.partial(bind_run_dir, tmp / "run", {"lr": 2}, "train policy")

    def written(tmp, name: str, data) -> str:
        """`tmp`, holding `name` (text as it is, anything else as JSON)."""
        (tmp / name).write_text(data if isinstance(data, str) else json.dumps(data))
        return str(tmp)

    def difficulty_merged(tmp, text: str):
        path = tmp / "difficulty.jsonl"
        path.write_text(text)
        return functools.partial(merge, str(path), [ProblemRecord(q, "question", "") for q in "ab"],
                                 fields=("pass_rate", "predicted"))

    def scheduler_of_another_kind(tmp):
        (tmp / "s.json").write_text("[]")
        return functools.partial(BudgetScheduler.load, str(tmp / "s.json"))

    whole = '{"id": "a", "pass_rate": 1.0, "predicted": 0.5}\n'
    prm_head = {"head": {"kind": "value"}}

    return [
        ("sampling-temperature-nan", lambda t: lambda: Sampling(temperature=NAN), ["temperature=nan", "finite"]),
        ("sampling-top-p-inf", lambda t: lambda: Sampling(top_p=INF), ["top_p=inf"]),
        ("model-config-hidden-0", lambda t: lambda: ModelConfig(hidden_size=0), ["hidden_size=0"]),
        ("model-config-from-dict-word", lambda t: lambda: ModelConfig.from_dict({"num_heads": "4"}, "m.yaml"),
         ["m.yaml", "num_heads='4'"]),
        ("optim-b1", lambda t: lambda: OptimConfig(b1=1.5), ["b1=1.5"]),
        ("search-settings-revision-max-len", lambda t: lambda: SearchSettings(revision_max_len=4),
         ["revision_max_len=4"]),
        ("strategy-spec-typo", lambda t: lambda: StrategySpec.from_dict({"kind": "dvts", "widht": 4}, "s"),
         ["widht"]),
        ("sweep-config-no-out-dir", lambda t: lambda: SweepConfig.from_dict({}, "s.yaml"),
         ["s.yaml", "out_dir is required"]),
        ("experiment-config-bins", lambda t: lambda: ExperimentConfig.from_dict({"out_dir": "x", "bins": -2},
                                                                                "e.yaml"), ["e.yaml", "bins=-2"]),
        ("scheduler-load-other-kind", scheduler_of_another_kind, ["s.json", "rerun the experiment"]),
        ("run-dir-of-another-config", bound_then_other, ["keys that differ: ['lr']", "--continue", "--fresh"]),
        ("chat-template-unbounded", lambda t: lambda: render_chat_template("{{ 'ab' * 10 ** 10 }}"),
         ["chat template", "rendering limits", "repetition"]),
        ("run-dir-rerun-mode", lambda t: lambda: bind_run_dir(t / "run", {}, "sweep", rerun="again"),
         ["rerun='again'"]),
        # files ttcjax wrote, damaged: named by file (and line), never read as something else or dropped
        ("difficulty-whole-last-line-damaged", lambda t: difficulty_merged(t, whole + '{"id": "b", "pass_r\n'),
         ["difficulty.jsonl:2: damaged"]),
        ("difficulty-record-lacks-a-field", lambda t: difficulty_merged(t, whole + '{"id": "b"}\n'),
         ["difficulty.jsonl:2: damaged", "pass_rate"]),
        ("revision-settings-damaged", lambda t: functools.partial(
            load_revision_settings, written(t, "revision.json", '{"separator": ')), ["revision.json", "damaged"]),
        ("prm-config-damaged", lambda t: functools.partial(load_prm, written(t, "ttcjax_prm.json", '{"kind": "prm"')),
         ["ttcjax_prm.json", "damaged"]),
        ("prm-config-no-head", lambda t: functools.partial(load_prm, written(t, "ttcjax_prm.json", {"kind": "prm"})),
         ["ttcjax_prm.json", "\"head\""]),
        ("prm-config-format-typo", lambda t: functools.partial(load_prm, written(t, "ttcjax_prm.json", {
            **prm_head, "format": {"delimeter": "\n"}})), ["ttcjax_prm.json", "delimeter"]),
        ("prm-config-add-bos-string", lambda t: functools.partial(load_prm, written(t, "ttcjax_prm.json", {
            **prm_head, "format": {"add_bos": "false"}})), ["ttcjax_prm.json", "add_bos"]),
        ("prm-config-aggregation", lambda t: functools.partial(load_prm, written(t, "ttcjax_prm.json", {
            **prm_head, "aggregation": "max"})), ["ttcjax_prm.json", "aggregation='max'"]),
        ("checkpoint-config-damaged", lambda t: functools.partial(
            checkpoint_config, written(t, "ttcjax_config.json", "{")), ["ttcjax_config.json", "damaged"]),
        ("model-config-switch-string", lambda t: lambda: ModelConfig.from_dict({"mlp_bias": "false"}, "m.yaml"),
         ["m.yaml", "mlp_bias='false'", "true or false"]),
        ("select-strategies-one-fold", lambda t: lambda: select_strategies({("a", 4): np.ones(4)}, np.ones(4, int),
                                                                           folds=1), ["folds=1", ">= 2"]),
        ("chat-template-wide-format", lambda t: lambda: render_chat_template("{{ '%0200000000d' % 1 }}"),
         ["chat template", "rendering limits", "a width of 200,000,000"]),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize("prepare, words", [case[1:] for case in API_CASES], ids=[case[0] for case in API_CASES])
def test_a_bad_api_call_is_one_clear_error_and_touches_nothing(models, tmp_path, monkeypatch, prepare, words):
    monkeypatch.chdir(tmp_path)  # a relative path (out_dir "x") would land in the snapshot
    call = prepare(tmp_path)
    before = watched(tmp_path, models)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for word in words:
        assert word in message, (word, message)
    assert watched(tmp_path, models) == before  # nothing written, nothing lost


def test_the_catalogue_holds_at_least_sixty_bad_inputs():
    assert len(CLI_CASES) + len(API_CASES) >= 60
    assert len({case[0] for case in CLI_CASES + API_CASES}) == len(CLI_CASES) + len(API_CASES)


def test_nan_in_a_native_checkpoint_is_named_without_writing(tmp_path, capsys):
    model = init_model(TINY)
    model.embedding[...] = model.embedding[...].at[1, 1].set(np.inf)
    save_model(model, tmp_path / "ckpt")
    before = snapshot(tmp_path)
    assert main(["generate", "--model", str(tmp_path / "ckpt"), "--tokenizer", "char", "--prompt", "x",
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    one_error_line(capsys, "embedding", "non-finite")
    assert snapshot(tmp_path) == before


def test_a_strategy_that_fits_only_some_budgets_is_named_with_the_cells_left_out(capsys):
    from ttcjax.eval.sweep import SweepConfig, plan_cells

    data = {"out_dir": "x", "budgets": [2, 8],
            "strategies": [{"kind": "best_of_n", "selection": "majority"}, {"kind": "dvts", "width": 4}]}
    config = SweepConfig.from_dict(data, "s.yaml")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Warning" not in err and ".py:" not in err, err  # no file:line of ours
    assert err.startswith("s.yaml: warning: strategy {'kind': 'dvts', 'width': 4} does not fit budgets [2] (it needs "
                          "a budget its width divides (at least the width))"), err
    assert err.rstrip().endswith("those cells are not run, and strategies are compared there without it."), err
    assert [(c.spec.kind, c.budget) for c in plan_cells(config.strategies, config.budgets)] == [
        ("best_of_n", 2), ("best_of_n", 8), ("dvts", 8)]


@pytest.mark.parametrize("data", [
    {},  # the default grid: its lookahead (width 4, k 1) does not fit budget 4
    {"budgets": [4, 16]},  # the user's budgets, the default strategies
    {"strategies": [{"kind": "best_of_n", "selection": "weighted"}, {"kind": "lookahead", "width": 4, "k": 1}]},
], ids=["defaults", "budgets-only", "strategies-only"])
def test_a_grid_the_user_did_not_write_whole_skips_cells_that_do_not_fit_without_a_word(capsys, recwarn, data):
    from ttcjax.eval.sweep import SweepConfig, dropped_cells

    config = SweepConfig.from_dict({"out_dir": "x", **data}, "s.yaml")
    assert dropped_cells(config.strategies, config.budgets)  # there are cells left out
    assert capsys.readouterr().err == "" and not [w for w in recwarn if "does not fit" in str(w.message)]


def test_the_demo_grid_is_shipped_and_skips_silently_unless_the_user_names_strategies_and_budgets(capsys, recwarn):
    from ttcjax.eval.experiment import named_config, read_config
    from ttcjax.eval.sweep import dropped_cells

    for name in ("demo", "demo-full"):
        config = read_config(named_config(name), ["questions=8"], shipped=True)
        assert dropped_cells(config.strategies, config.budgets)  # its lookahead is not run at budget 4
        assert capsys.readouterr().err == ""
    read_config(named_config("demo"), ["budgets=[4, 16]"], shipped=True)  # only the budgets are the user's
    assert capsys.readouterr().err == "" and not [w for w in recwarn if "does not fit" in str(w.message)]
    read_config(named_config("demo"), ["budgets=[4, 16]", "strategies=[{kind: lookahead, width: 4, k: 1}, "
                                       "{kind: best_of_n, selection: weighted}]"], shipped=True)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "warning: strategy {'kind': 'lookahead'" in err, err
    read_config(named_config("demo"))  # the same file named with --config: the user's own grid
    assert "warning: strategy {'kind': 'lookahead'" in capsys.readouterr().err


def test_labels_in_the_run_directory_are_reused_only_under_the_options_they_were_made_with(models, tmp_path):
    from ttcjax.checkpoints.tokenizer import CharTokenizer
    from ttcjax.training.reward_model import LABELS_COST_FILE, PRMTrainConfig, make_labels

    case = Case(tmp_path, models)
    config = PRMTrainConfig(out_dir=case.path("prm"), policy=model_dir("policy", "tiny"), num_questions=8)
    case.labels("prm")  # made with this config's options: reused, nothing sampled
    labelled, cost = make_labels(config, CharTokenizer(), None, progress=False)
    assert [x.steps for x in labelled] == [("1+2=3",)] and cost["options"]["num_questions"] == 8
    for options, words in (({"rollouts": 2}, ["keys that differ: ['rollouts']", "--fresh"]),
                           ({"temperature": 0.5}, ["keys that differ: ['temperature']"])):
        case.labels("prm", **options)
        before = snapshot(tmp_path)
        with pytest.raises(ValueError) as info:
            make_labels(config, CharTokenizer(), None, progress=False)
        assert all(word in str(info.value) for word in words) and "\n" not in str(info.value), str(info.value)
        assert snapshot(tmp_path) == before
    os.remove(tmp_path / "prm" / LABELS_COST_FILE)
    (tmp_path / "prm" / LABELS_COST_FILE).write_text("{}")  # an earlier ttcjax's record: no options
    with pytest.raises(ValueError, match="does not record the options"):
        make_labels(config, CharTokenizer(), None, progress=False)


def test_a_reward_model_packs_rows_wider_than_its_positions_but_no_example_longer(tmp_path):
    """Positions restart at each example of a packed row: the shipped revision verifier's config packs 528-token
    rows on its 512-position backbone, and only an example longer than 512 tokens is refused."""
    from ttcjax.checkpoints.native import checkpoint_config
    from ttcjax.io import read_yaml
    from ttcjax.training.reward_model import PRMTrainConfig, check_examples_fit
    from ttcjax.verifiers.reward_model import ScoringInput

    config = PRMTrainConfig.from_dict({**read_yaml("configs/train/orm-revision-tiny.yaml"), "out_dir": str(tmp_path)})
    positions = checkpoint_config(config.policy).max_position_embeddings
    assert config.seq_len > positions

    def example(length: int):
        return ScoringInput(tuple(range(length)), (length - 1,)), [1.0]

    check_examples_fit([example(300), example(positions)], ["a", "b"], config, "labels.jsonl")
    with pytest.raises(ValueError, match=rf"^labels.jsonl: the longest example \(problem 'b', question and steps\) "
                                         rf"has {positions + 1} tokens, more than the {positions} positions of policy "):
        check_examples_fit([example(300), example(positions + 1)], ["a", "b"], config, "labels.jsonl")
