"""The `ttcjax` command line.

    ttcjax demo [--full] [KEY=VALUE ...]          # the paper's experiment on the built-in task, shipped models
    ttcjax experiment --config configs/experiments/gsm8k.yaml [KEY=VALUE ...]   # any task, policy, verifier
    ttcjax run --scheduler runs/demo/scheduler.json --budget 16
    ttcjax generate --model DIR --prompt "Q: 3+4=" --n 4 --temperature 0.8
    ttcjax init-model --config configs/models/tiny-3m.yaml --out runs/tiny
    ttcjax convert SRC DST --to hf|ttcjax [--from auto|hf|ttcjax|gguf]    # SRC: a directory or a .gguf file
    ttcjax train policy --config configs/train/policy-tiny.yaml [--out-dir DIR] [--steps N]
    ttcjax train prm|orm --config configs/train/prm-tiny.yaml
    ttcjax train revision --config configs/train/revision-tiny.yaml
    ttcjax eval policy --model DIR [--split test] [--per-difficulty 100] [--samples 16]
    ttcjax eval prm --model PRM_DIR --policy DIR [--samples 16]
    ttcjax sweep --config configs/sweep-tiny.yaml [KEY=VALUE ...]
    ttcjax plan --config configs/experiments/math500.yaml [--devices 8 --device-memory 80GB] [KEY=VALUE ...]

Every command that runs a model also runs on several processes (`ttcjax.distributed`): a multi-host TPU pod needs
nothing more; a GPU or CPU cluster starts the same command in each process with --coordinator HOST:PORT
--num-processes N --process-id I (or TTCJAX_COORDINATOR, TTCJAX_NUM_PROCESSES, TTCJAX_PROCESS_ID). `sweep`,
`experiment` and `demo` split the questions across processes and merge their shards; process 0 writes every
shared file. They also run as independent jobs of an array over one out_dir (--job K/J, no coordinator): each
searches its share, and the same command without --job merges them (docs/scale-out.md). `train policy|prm|orm|
revision` train data parallel over every process's devices, each feeding its own rows of each batch.

`experiment`, `demo`, `sweep` and `plan` read YAML configs and take KEY=VALUE overrides (dotted keys reach into
mappings: search.max_len=192); every option of `generate` can also come from a YAML file (`--config`); flags
given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import yaml
from tqdm import tqdm

from ttcjax.checkpoints.assets import check_model_name, resolve
from ttcjax.checkpoints.gguf import is_gguf_file, load_gguf_model, save_gguf_tokenizer
from ttcjax.checkpoints.hf import load_hf_model, refuse_to_replace, save_hf_model
from ttcjax.checkpoints.native import checkpoint_config, load_any, load_model, save_model
from ttcjax.checkpoints.tokenizer import check_tokenizer_fits, load_tokenizer
from ttcjax.decoding.engine import FINISH_REASONS, FINISHED_NONFINITE, Engine, Sampling, StopConditions, stop_text
from ttcjax.distributed import initialize, is_writer, process_index
from ttcjax.eval.experiment import (answer_with_scheduler, check_memory, check_run, experiment_plan, named_config,
                                    read_config, run_experiment)
from ttcjax.eval.plan import Estimates, Hardware, sweep_plan
from ttcjax.eval.scheduler import BudgetScheduler
from ttcjax.eval.shards import Job, check_job_rerun
from ttcjax.eval.status import run_status, status_markdown
from ttcjax.eval.sweep import (SweepConfig, load_policy, revision_policy_dir, revision_verifier_name, run_sweep,
                               summary_markdown)
from ttcjax.eval.verifier import evaluate_verifier
from ttcjax.io import (atomic_path, check_options, check_output_dir, check_output_file, json_text, read_yaml,
                       write_jsonl, yaml_problem)
from ttcjax.models import ModelConfig, init_model
from ttcjax.models.sharding import parse_mesh
from ttcjax.search.sampling import MAX_NEW_TOKENS
from ttcjax.search.settings import SearchSettings
from ttcjax.tasks.registry import task_from_dict
from ttcjax.training.policy import PolicyTrainConfig, evaluate_policy, train_policy
from ttcjax.training.revisions import RevisionTrainConfig, evaluate_revision, load_revision_settings, train_revision
from ttcjax.training.reward_model import PRMTrainConfig, train_reward_model
from ttcjax.verifiers.loading import is_verifier_free, verifier_by_name

# `ttcjax generate`'s sampling defaults.
GENERATE_DEFAULTS: dict[str, Any] = {
    "n": 4,
    "max_new_tokens": 48,
    "temperature": 0.8,
    "top_k": 0,
    "top_p": 0.95,
    "stop": ["\n\n"],
    "seed": 0,
    "mesh": "auto",
    "chat_template": "auto",
}
CHAT_TEMPLATE_CHOICES = ("auto", "on", "off")

GENERATE_KEYS = {"model", "tokenizer", "prompts", "prompts_file", "n", "max_new_tokens", "temperature", "top_k",
                 "chat_template", "system",
                 "top_p", "stop", "seed", "mesh", "dtype", "batch_size", "output", "overwrite", "model_config"}

# generate's options that are text, and what each names
GENERATE_TEXT_OPTIONS = {
    "model": "a checkpoint directory, a .gguf file or a shipped name",
    "tokenizer": "tokenizer.json, tokenizer.model, a directory, or 'char'",
    "prompts_file": "a .txt or .jsonl file",
    "mesh": "'auto', 'none' or DATA,MODEL such as '4,2'",
    "dtype": "float32 or bfloat16",
    "output": "a file to write",
    "system": "a system message",
    "chat_template": "auto, on or off",
}


def load_yaml_config(path: str, allowed: set[str]) -> dict[str, Any]:
    """Read a YAML mapping, refusing keys the command does not know (with the file and the key named)."""
    data = read_yaml(path)
    check_options(sorted(allowed), data, path)
    return data


def _options(args: argparse.Namespace, defaults: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    opts = dict(defaults)
    if getattr(args, "config", None):
        opts.update(load_yaml_config(args.config, allowed))
    for key, value in vars(args).items():
        if key in allowed and value is not None:
            opts[key] = value
    return opts


def _build_model(opts: dict[str, Any], mesh=None):
    if opts.get("model"):
        return load_any(opts["model"], dtype=opts.get("dtype"), mesh=mesh)
    if opts.get("model_config"):
        config = ModelConfig.from_dict(opts["model_config"], source="model_config")
        if opts.get("dtype"):
            config = config.replace(dtype=opts["dtype"])
        return init_model(config, seed=opts.get("seed", 0))
    raise ValueError("no model: pass --model DIR (a Hugging Face or ttcjax checkpoint, or a .gguf file) or "
                     "model_config in --config.")


def _read_prompts(opts: dict[str, Any]) -> list[str]:
    prompts = list(opts.get("prompts") or [])
    path = opts.get("prompts_file")
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: prompts file not found.")
        if os.path.isdir(path):
            raise ValueError(f"--prompts-file {path}: is a directory; name a file with one prompt per line (.txt) or "
                             "{\"prompt\": ...} per line (.jsonl).")
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if path.endswith(".jsonl"):
                    try:
                        prompt = json.loads(line)["prompt"]
                        if not isinstance(prompt, str):
                            raise TypeError(prompt)
                        prompts.append(prompt)
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{line_no}: each JSONL line needs a \"prompt\" string.") from None
                else:
                    prompts.append(line.rstrip("\n").replace("\\n", "\n"))
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE (.txt or .jsonl).")
    return prompts


def _render_prompt(tokenizer, prompt: str, opts: dict[str, Any]) -> tuple[str, bool]:
    """(text, add BOS): the prompt in the tokenizer's chat template (one user turn after an optional system
    message, with the generation prompt; the template writes its own BOS) where the tokenizer ships one and
    chat_template is auto or on, else as it is with BOS."""
    mode = opts.get("chat_template", "auto")
    if mode not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template={mode!r} is not one of {CHAT_TEMPLATE_CHOICES}.")
    if mode == "on" and tokenizer.chat_template is None:
        raise ValueError("chat_template on: the tokenizer has no chat template (tokenizer_config.json or "
                         "chat_template.jinja); use --chat-template off.")
    if mode == "off" or tokenizer.chat_template is None:
        return prompt, tokenizer.bos_id is not None
    system = opts.get("system")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True), False


def _unescape(text: str) -> str:
    """A command-line string with \\n, \\t and \\\\ written as escapes ('\\n\\n' ends at a blank line)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _check_generation_options(opts: dict[str, Any]) -> None:
    """Counts, sampling numbers, prompts and the output's directory, checked before any model is loaded or token
    generated."""
    for key in ("n", "max_new_tokens", "batch_size"):
        value = opts.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key}={value!r} must be an integer >= 1.")
    for key in ("top_k", "seed"):
        value = opts.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{key}={value!r} must be an integer.")
    for key in ("temperature", "top_p"):
        value = opts.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{key}={value!r} must be a number.")
    for key, kind in GENERATE_TEXT_OPTIONS.items():
        value = opts.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key}={value!r} must be a string: {kind}.")
    for key in ("prompts", "stop"):
        value = opts.get(key)
        if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
            raise ValueError(f"{key}={value!r} must be a list of strings, e.g. [\"Q: 3+4=\"].")
    for key in ("overwrite",):  # a string such as "false" would read as true
        value = opts.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be true or false (unquoted in YAML).")
    Sampling(temperature=float(opts.get("temperature", 1.0)), top_k=int(opts.get("top_k", 0)),
             top_p=float(opts.get("top_p", 1.0)))  # refuses non-finite or out-of-range values now
    if opts.get("output"):
        check_output_file(opts["output"], overwrite=opts.get("overwrite") is True)


def run_generation(opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Generate completions for every prompt; returns one record per completion."""
    _check_generation_options(opts)
    if opts.get("model"):  # a shipped policy's name reads as its directory
        check_model_name("policy", opts["model"], "model", "--model")
        opts = {**opts, "model": resolve("policy", opts["model"])}
    mesh = parse_mesh(opts.get("mesh"))  # over every process's devices: with several, each holds its slices
    model = _build_model(opts, mesh)
    tok_path = opts.get("tokenizer") or opts.get("model")
    if not tok_path:
        raise ValueError("no tokenizer: pass --tokenizer PATH (tokenizer.json, tokenizer.model or 'char').")
    tokenizer = load_tokenizer(tok_path)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, source=str(opts.get("model") or "model_config"))
    engine = Engine(model, mesh=mesh, pad_id=tokenizer.pad_id)
    sampling = Sampling(temperature=float(opts["temperature"]), top_k=int(opts["top_k"]), top_p=float(opts["top_p"]))
    strings = tuple(opts.get("stop") or ())  # matched on the text, whatever the tokenization
    stop = StopConditions(eos_ids=tuple(tokenizer.eos_ids), text=stop_text(tokenizer, strings) if strings else None)
    prompts = _read_prompts(opts)
    inputs = [_render_prompt(tokenizer, p, opts) for p in prompts]
    encoded = [tokenizer.encode(text, add_bos=add_bos) for text, add_bos in inputs]
    longest, positions = max(map(len, encoded), default=0), model.config.max_position_embeddings
    if longest + int(opts["max_new_tokens"]) > positions:
        raise ValueError(f"max_new_tokens={opts['max_new_tokens']}: the longest prompt ({longest} tokens) and the "
                         f"completion exceed the model's {positions} positions (max_position_embeddings); lower "
                         f"--max-new-tokens to {max(positions - longest, 0)} or less.")
    batch_size = int(opts.get("batch_size") or 64)
    key = jax.random.key(int(opts.get("seed", 0)))
    records, generated, started = [], 0, time.perf_counter()
    for start in tqdm(range(0, len(encoded), batch_size), desc="generating", unit="batch", file=sys.stderr,
                      disable=len(encoded) <= batch_size):
        batch = encoded[start : start + batch_size]
        completions = engine.generate(batch, jax.random.fold_in(key, start), max_new_tokens=int(opts["max_new_tokens"]),
                                      sampling=sampling, stop=stop, n=int(opts["n"]))
        for c in completions:
            generated += len(c.tokens)
            records.append({
                "prompt_index": start + c.prompt_index,
                "prompt": prompts[start + c.prompt_index],
                "input": inputs[start + c.prompt_index][0],
                "completion": tokenizer.decode(c.tokens),
                "num_tokens": len(c.tokens),
                "logprob": float(sum(c.logprobs)),
                "finish_reason": c.finish_reason,
            })
    elapsed = time.perf_counter() - started
    broken = sum(r["finish_reason"] == FINISH_REASONS[FINISHED_NONFINITE] for r in records)
    if broken:
        print(f"ttcjax generate: warning: {broken} of {len(records)} completions ended on non-finite logits "
              f"(finish_reason {FINISH_REASONS[FINISHED_NONFINITE]!r}): a NaN or inf in the model's weights or "
              "activations.", file=sys.stderr)
    if opts.get("output") and is_writer():  # every process holds every completion; one writes them
        write_jsonl(opts["output"], records)
    print(f"{len(records)} completions, {generated} tokens in {elapsed:.2f} s wall (a first call of each shape "
          f"compiles) on {engine.mesh.devices.size if engine.mesh is not None else 1} device(s)", file=sys.stderr)
    return records


def _status(config) -> int:
    """`--status`: where the run of `config` stands, read from its out_dir while it runs (`ttcjax.eval.status`)."""
    print(status_markdown(run_status(config)), end="")
    return 0


def _experiment(config, args: argparse.Namespace, job: Job | None) -> int:
    report = run_experiment(config, progress=not args.no_progress, rerun=_rerun(args), job=job)
    if report is None:  # one of several processes, or a job: its share is written
        _share_written(job, "the report")
        return 0
    opt = report["compute_optimal"]["oracle"]
    print(json_text({"accuracy": report["accuracy"], "compute_optimal_cv": opt["cv_accuracy"],
                     "best_of_n_weighted": opt["best_of_n_weighted"], "efficiency": opt["efficiency"],
                     "seconds": round(report["seconds"])}, indent=1))
    print(f"report: {os.path.join(config.out_dir, 'summary.md')}", file=sys.stderr)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    job = _job(args)
    overrides = list(args.overrides) + [f"{key}={getattr(args, key)}" for key in ("out_dir", "mesh")
                                        if getattr(args, key) is not None]
    config = read_config(args.config, overrides)
    if args.status:
        return _status(config)
    check_run(config)  # the models it names and its out_dir, before the banner
    if not args.skip_plan:
        check_memory(config, args.config)  # before any work: a run that cannot fit the devices stops here
    print(f"ttcjax experiment: task {config.task['name']}, policy {config.policy}, verifier {config.verifier}.\n"
          f"Report: {config.out_dir}/summary.md (rerun the same command to resume an interrupted run).\n",
          file=sys.stderr)
    return _experiment(config, args, job)


def cmd_demo(args: argparse.Namespace) -> int:
    job = _job(args)
    overrides = list(args.overrides)
    for key in ("out_dir", "questions", "mesh"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    path = named_config("demo-full" if args.full else "demo")
    config = read_config(path, overrides, shipped=True)
    if args.status:
        return _status(config)
    check_run(config)
    if not args.skip_plan:
        check_memory(config, str(path))
    print("ttcjax demo: the paper's experiment on the built-in arithmetic task with the shipped tiny policy, its\n"
          f"PRM and a 4x larger sibling ({'full size' if args.full else 'reduced; --full for budgets up to 256'}; "
          f"the config: {path}).\n"
          f"Report: {config.out_dir}/summary.md (rerun the same command to resume an interrupted run).\n",
          file=sys.stderr)
    return _experiment(config, args, job)


def _questions(args: argparse.Namespace, task) -> list:
    if args.questions_file:
        records = []
        with open(args.questions_file) as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
                            raise ValueError("no \"question\" string")
                        problem = task.problem_from_text(record["question"])
                        answer = record.get("answer")
                        if answer is not None and not problem.answer:  # the task may know the answer itself
                            problem = dataclasses.replace(problem, answer=str(answer))
                        records.append(problem)
                    except (json.JSONDecodeError, ValueError) as e:
                        raise ValueError(f"{args.questions_file}:{line_no}: each line needs a \"question\" string "
                                         f"(and may give its \"answer\"): {e}") from None
        return records
    if args.question:
        return [task.problem_from_text(q) for q in args.question]
    return task.problems(args.split, limit=args.questions, seed=args.seed)


def cmd_run(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file(args.output, overwrite=args.overwrite)
    if args.questions_file and not os.path.isfile(args.questions_file):
        raise FileNotFoundError(f"--questions-file {args.questions_file}: no such file; write JSONL with a "
                                "\"question\" per line.")
    if args.questions < 1:
        raise ValueError(f"questions={args.questions} (--questions) must be an integer >= 1.")
    scheduler = BudgetScheduler.load(args.scheduler)
    task = task_from_dict(scheduler.task, f"{args.scheduler}: task")
    problems = _questions(args, task)
    if not problems:
        raise ValueError("no questions: pass --question TEXT, --questions-file FILE or a split with questions.")
    records = answer_with_scheduler(scheduler, problems, args.budget, task=task, policy=args.policy,
                                    verifier=args.verifier, revision_policy=args.revision_policy,
                                    revision_verifier=args.revision_verifier, seed=args.seed,
                                    mesh=parse_mesh(args.mesh), source=args.scheduler)
    if not is_writer():  # every process holds every answer (gathered from the mesh); process 0 reports them
        return 0
    if args.output:
        write_jsonl(args.output, records)
    for r in records:
        print(json_text({k: r[k] for k in ("question", "level", "strategy", "answer", "correct",
                                           "generated_tokens")}))
    graded = [r["correct"] for r in records if r["correct"] is not None]
    if graded:
        print(f"accuracy {sum(graded) / len(graded):.3f} on {len(graded)} questions with known answers",
              file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.stop is not None:
        args.stop = [_unescape(s) for s in args.stop]  # typed on a command line: '\\n\\n' is a blank line
    if args.no_stop:
        args.stop = []
    opts = _options(args, GENERATE_DEFAULTS, GENERATE_KEYS)
    records = run_generation(opts)
    if not opts.get("output") and is_writer():
        for r in records:
            print(json_text(r))
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    cfg = load_yaml_config(args.config, {"model_config", "seed"})
    config = ModelConfig.from_dict(cfg.get("model_config", {}), source=args.config)
    model = init_model(config, seed=int(cfg.get("seed", args.seed)))
    save_model(model, args.out, overwrite=args.overwrite)
    print(f"wrote a random {config.num_params() / 1e6:.2f}M-parameter model to {args.out}")
    return 0


# `ttcjax convert --from`: how each source format is read ("auto" tells them apart).
CONVERT_READERS = {"auto": load_any, "hf": load_hf_model, "ttcjax": load_model, "gguf": load_gguf_model}


def cmd_convert(args: argparse.Namespace) -> int:
    check_output_dir(args.dst, "DST")  # before the source is read
    if os.path.realpath(args.src) == os.path.realpath(args.dst):
        raise ValueError(f"DST {args.dst} is SRC: write the converted checkpoint to another directory.")
    refuse_to_replace(args.dst, args.overwrite)  # a checkpoint of either format there: replaced only on purpose
    model = CONVERT_READERS[args.source_format](args.src)
    if args.to == "hf":
        save_hf_model(model, args.dst, overwrite=args.overwrite)
    else:
        save_model(model, args.dst, overwrite=args.overwrite)
    if is_gguf_file(args.src):  # a GGUF file carries its tokenizer: keep it beside the converted model
        save_gguf_tokenizer(args.src, args.dst)
    print(f"converted {args.src} -> {args.dst} ({args.to})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config_cls = {"policy": PolicyTrainConfig, "revision": RevisionTrainConfig}.get(args.what, PRMTrainConfig)
    data = load_yaml_config(args.config, {f.name for f in dataclasses.fields(config_cls)})
    if args.out_dir:
        data["out_dir"] = args.out_dir
    if args.steps is not None:
        data["steps"] = args.steps
    config = config_cls.from_dict(data, source=args.config)
    command = " ".join(["ttcjax"] + list(sys.argv[1:] if args.argv is None else args.argv))
    if args.what == "policy":
        summary = train_policy(config, command=command, progress=not args.no_progress, rerun=_rerun(args))
    elif args.what == "revision":
        summary = train_revision(config, command=command, progress=not args.no_progress, rerun=_rerun(args))
    else:
        summary = train_reward_model(config, orm=args.what == "orm", command=command, progress=not args.no_progress,
                                     rerun=_rerun(args))
    if not is_writer():  # process 0 reports
        return 0
    print(json_text({k: summary[k] for k in ("step", "finished", "wall_seconds_this_run", "last_train_metrics",
                                              "validation")}, indent=2))
    if summary["finished"]:
        print(f"model written to {os.path.join(config.out_dir, 'model')}", file=sys.stderr)
    return 0


def _task_option(text: str, source: str = "--task"):
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source} {text!r}: not valid YAML ({yaml_problem(e)}); write e.g. "
                         "\"{name: gsm8k, path: data/gsm8k}\".") from None
    if isinstance(data, str):
        data = {"name": data}
    return task_from_dict(data, source)


def _check_eval_options(args: argparse.Namespace) -> None:
    """eval's counts, sampling and output, checked before any model is loaded."""
    for flag, value, least in (("--questions", args.questions, 1), ("--per-difficulty", args.per_difficulty, 1),
                               ("--samples", args.samples, 0), ("--max-new-tokens", args.max_new_tokens, 1),
                               ("--chains", args.chains, 1), ("--sequential", args.sequential, 1),
                               ("--max-len", args.max_len, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag[2:].replace('-', '_')}={value} ({flag}) must be an integer >= {least}.")
    Sampling(temperature=args.temperature)  # a non-finite or negative temperature is refused now
    if args.samples_output and args.what != "prm":
        raise ValueError(f"--samples-output is for eval prm (its scored samples), not eval {args.what}.")
    for path in (args.output, args.samples_output):
        if path:
            check_output_file(path, overwrite=args.overwrite)


def _check_samples_fit(args: argparse.Namespace, flag: str, tokenizer, task, problems) -> None:
    """The longest prompt and --max-new-tokens within the positions of the model that samples (named by `flag`),
    read from its config before its weights are loaded."""
    name = getattr(args, flag[2:])
    longest = max(len(task.encode_prompt(p, tokenizer)) for p in problems)
    checkpoint_config(resolve("policy", name), flag).check_fits("--max-new-tokens", args.max_new_tokens,
                                                                f"{flag} {name}", f"eval {args.what}", prompt=longest)


def cmd_eval(args: argparse.Namespace) -> int:
    _check_eval_options(args)
    task = _task_option(args.task)
    questions = args.questions if args.questions is not None else (
        args.per_difficulty * len(task.config.difficulties) if task.name == "arithmetic" else None)
    problems = task.problems(args.split, limit=questions, seed=args.seed)
    if not problems:
        raise ValueError(f"task {task.name}: split {args.split!r} holds no questions.")
    started = time.perf_counter()
    mesh = parse_mesh(args.mesh)
    if args.what == "policy":
        check_model_name("policy", args.model, "--model", "eval policy")
        directory = resolve("policy", args.model)  # a directory, a .gguf file or a shipped policy's name
        tokenizer = load_tokenizer(args.tokenizer or directory)
        _check_samples_fit(args, "--model", tokenizer, task, problems)
        model = load_any(directory, mesh=mesh)
        check_tokenizer_fits(tokenizer, model.config.vocab_size, source=directory)
        result = evaluate_policy(model, tokenizer, task, problems, samples=args.samples, temperature=args.temperature,
                                 seed=args.seed, mesh=mesh, max_new_tokens=args.max_new_tokens)
    elif args.what == "revision":
        directory = revision_policy_dir(args.model, "--model")  # a directory or a shipped revision model's name
        if args.max_len is not None:
            checkpoint_config(directory, "--model").check_fits("--max-len", args.max_len, f"--model {args.model}",
                                                               "eval revision")
        model = load_any(directory, mesh=mesh)
        tokenizer = load_tokenizer(args.tokenizer or directory)
        check_tokenizer_fits(tokenizer, model.config.vocab_size, source=directory)
        revision = load_revision_settings(directory)
        # a chain's cache holds the prompt, the window of earlier attempts and the attempt: by default the model's
        # whole context
        settings = SearchSettings.from_dict({**task.search_defaults, "temperature": args.temperature,
                                             "revision_max_len": args.max_len}).for_task(task)
        verifier = None if is_verifier_free(args.verifier) else verifier_by_name(
            revision_verifier_name(args.verifier), tokenizer, mesh=mesh)
        result = evaluate_revision(model, tokenizer, task, problems, settings=settings, separator=revision["separator"],
                                   window=revision["window"], chains=args.chains, sequential=args.sequential,
                                   seed=args.seed, mesh=mesh, verifier=verifier)
    else:
        if not args.policy:
            raise ValueError("eval prm needs --policy DIR: the policy whose samples the verifier judges.")
        if args.samples < 1:
            raise ValueError(f"--samples {args.samples}: the verifier needs at least one sample per question to judge.")
        check_model_name("policy", args.policy, "--policy", "eval prm")
        _check_samples_fit(args, "--policy", load_tokenizer(resolve("policy", args.policy)), task, problems)
        engine, tokenizer, _ = load_policy(args.policy, mesh)
        verifier = verifier_by_name(args.model, tokenizer, aggregation=args.aggregation, mesh=engine.mesh,
                                    rules=engine.rules)
        result = evaluate_verifier(task, verifier, engine, tokenizer, problems, samples=args.samples,
                                   sampling=Sampling(temperature=args.temperature), seed=args.seed,
                                   max_new_tokens=args.max_new_tokens, keep_samples=bool(args.samples_output))
        scored = result.pop("scored_samples", None)
        if scored is not None and is_writer():
            write_jsonl(args.samples_output, scored)
    result["split"], result["seed"] = args.split, args.seed
    result["wall_seconds"] = time.perf_counter() - started
    text = json_text(result, indent=2)
    if not is_writer():
        return 0
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    job = _job(args)
    overrides = list(args.overrides) + [f"{key}={getattr(args, key)}" for key in ("out_dir", "mesh")
                                        if getattr(args, key) is not None]
    config = SweepConfig.from_dict(read_yaml(args.config, overrides), source=args.config)
    if args.status:
        return _status(config)
    summary = run_sweep(config, progress=not args.no_progress, rerun=_rerun(args), job=job)
    if summary is None:  # one of several processes, or a job: its share is written
        _share_written(job, "the summary")
        return 0
    print(summary_markdown(summary))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    estimates = Estimates(prompt_tokens=args.prompt_tokens, verifier_len_ratio=args.verifier_len_ratio,
                          usable_fraction=args.usable_fraction)
    hardware = Hardware.detect(args.devices, args.device_memory)
    if args.sweep:
        config = SweepConfig.from_dict(read_yaml(args.config, args.overrides), source=args.config)
        run_plan = sweep_plan(config, hardware, estimates)
    else:
        run_plan = experiment_plan(read_config(args.config, args.overrides), hardware, estimates)
    if args.json:
        print(json_text(run_plan.to_dict(), indent=1))
    else:
        print(run_plan.describe(f"{'sweep' if args.sweep else 'experiment'} {args.config}"))
    return 0


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of these options")
    p.add_argument("--model", help="checkpoint directory (Hugging Face safetensors or ttcjax/orbax) or a llama.cpp "
                                   ".gguf file (its tokenizer and chat template inside it)")
    p.add_argument("--tokenizer", help="tokenizer.json, tokenizer.model, a directory, or 'char'")
    p.add_argument("--prompt", dest="prompts", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="one prompt per line (.txt) or {\"prompt\": ...} per line (.jsonl)")
    p.add_argument("--n", type=int, help="samples per prompt (the prompt is prefilled once, then forked)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--stop", action="append", help="stop string, e.g. '\\n\\n' (repeatable; replaces the default "
                                                 "blank line; \\n and \\t are escapes)")
    p.add_argument("--no-stop", action="store_true", help="no stop string: only EOS or the token limit end a row")
    p.add_argument("--chat-template", choices=CHAT_TEMPLATE_CHOICES, help="render each prompt in the tokenizer's "
                   "chat template: auto (the default) where the tokenizer ships one, on, or off")
    p.add_argument("--system", help="a system message for chat-template prompts")
    p.add_argument("--seed", type=int)
    p.add_argument("--mesh", help="'auto', 'none' or DATA,MODEL (e.g. 4,2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--batch-size", type=int, help="prompts per compiled batch")
    p.add_argument("--output", help="write completions as JSONL here (atomically)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --output file")


def _rerun_flags(parser: argparse.ArgumentParser) -> None:
    """What a rerun does in an out_dir made by another config or code version (by default it stops, naming what
    differs; the same run resumes)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fresh", action="store_true", help="move an existing out_dir aside (to OUT_DIR.before-TIME; "
                                                            "nothing is deleted) and start anew")
    group.add_argument("--continue", dest="continue_run", action="store_true",
                       help="go on in an out_dir made by another config or code version, on purpose (the change "
                            "is logged in its run_log.jsonl)")


def _rerun(args: argparse.Namespace) -> str:
    return "fresh" if args.fresh else "continue" if args.continue_run else "resume"


def _job(args: argparse.Namespace) -> Job | None:
    """The job of an array this invocation is (--job K/J), checked before any work; None for a plain run."""
    job = None if args.job is None else Job.parse(args.job)
    check_job_rerun(job, _rerun(args))
    return job


def _share_written(job: Job | None, result: str) -> None:
    """What a process that writes no result says (a job's process 0 has said more: `ttcjax.eval.shards.job_done`)."""
    if job is None:
        print(f"process {process_index()}: its share of the questions is written; process 0 writes {result}.",
              file=sys.stderr)
    elif not is_writer():
        print(f"process {process_index()} of job {job}: its share of the questions is written.", file=sys.stderr)


def _add_status_flag(p: argparse.ArgumentParser) -> None:
    """`--status` (`ttcjax.eval.status`)."""
    p.add_argument("--status", action="store_true", help="say where the run in out_dir stands (questions done per "
                   "stage and per cell, interim accuracies with 95%% intervals) and exit: it reads the directory "
                   "only, beside a run in progress")


def _add_job_flag(p: argparse.ArgumentParser) -> None:
    """Independent jobs over one run directory (a job array; `ttcjax.eval.shards`)."""
    p.add_argument("--job", metavar="K/J", help="run as job K of J independent jobs (a job array, K counted from 0, "
                   "e.g. $SLURM_ARRAY_TASK_ID/8 with --array=0-7) sharing out_dir: search only this job's share of "
                   "the questions and merge nothing; afterwards the same command without --job merges every job's "
                   "share (docs/scale-out.md)")


MESH_HELP = ("'auto' (every device on the data axis), 'none' (one device) or DATA,MODEL (e.g. 4,2); with several "
             "processes, sweep, experiment and demo build it from each process's own devices")


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    """Several processes (`ttcjax.distributed`): a GPU or CPU cluster names them here or in the environment;
    a multi-host TPU pod needs none of these."""
    g = p.add_argument_group("several processes (each runs the same command with its own --process-id)")
    g.add_argument("--coordinator", help="host:port of process 0 (or TTCJAX_COORDINATOR / JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, help="processes in the run (or TTCJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1 (or TTCJAX_PROCESS_ID)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttcjax", description="Compute-optimal test-time scaling in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("experiment", help="the paper's experiment on any task, policy and verifier named in a "
                                           "YAML config (see configs/experiments/)")
    exp.add_argument("--config", required=True, help="YAML experiment config (see configs/experiments/*.yaml)")
    exp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="override config keys, e.g. questions=32 search.max_len=192 task.path=data/gsm8k")
    exp.add_argument("--out-dir", help="override the config's out_dir")
    exp.add_argument("--mesh", help=f"override the config's mesh: {MESH_HELP}")
    exp.add_argument("--no-progress", action="store_true")
    _add_status_flag(exp)
    exp.add_argument("--skip-plan", action="store_true", help="run even where the memory planner says the run does "
                                                             "not fit the devices")
    _rerun_flags(exp)
    _add_job_flag(exp)
    _add_process_flags(exp)
    exp.set_defaults(func=cmd_experiment)
    demo = sub.add_parser("demo", help="the paper's experiment on the built-in task with the shipped models "
                                       "(the named config configs/experiments/demo.yaml)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. budgets=[4,16]")
    demo.add_argument("--full", action="store_true", help="full size: budgets up to 256, 100 questions per level "
                                                          "(configs/experiments/demo-full.yaml)")
    demo.add_argument("--out-dir", help="report directory (default runs/demo, or runs/demo-full)")
    demo.add_argument("--questions", type=int, help="test questions (spread evenly over the difficulty levels)")
    demo.add_argument("--mesh", help=f"override the config's mesh: {MESH_HELP}")
    demo.add_argument("--no-progress", action="store_true")
    _add_status_flag(demo)
    demo.add_argument("--skip-plan", action="store_true", help="run even where the memory planner says it does not "
                                                              "fit the devices")
    _rerun_flags(demo)
    _add_job_flag(demo)
    _add_process_flags(demo)
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser("run", help="answer questions with a saved compute-optimal scheduler (its policy, verifier, "
                                     "task and search settings)")
    run.add_argument("--scheduler", required=True, help="scheduler.json (written by ttcjax experiment / demo)")
    run.add_argument("--budget", type=int, default=16, help="generations per question, probe samples included")
    run.add_argument("--question", action="append", help="a question in the task's own words, e.g. "
                                                         "'Q: 7*3-4+8=' (repeatable)")
    run.add_argument("--questions-file", help="JSONL with a \"question\" (and optionally \"answer\") per line")
    run.add_argument("--split", default="test", help="without questions: this split of the scheduler's task")
    run.add_argument("--questions", type=int, default=40, help="without questions: this many of the split")
    run.add_argument("--policy", help="override the scheduler's policy (a shipped name or a directory)")
    run.add_argument("--verifier", help="override the scheduler's verifier")
    run.add_argument("--revision-policy", help="override the scheduler's revision model (what revision strategies run)")
    run.add_argument("--revision-verifier", help="override the scheduler's revision verifier")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--mesh", default="none", help="'auto', 'none' or DATA,MODEL (e.g. 4,2), over every process's "
                                                    "devices")
    run.add_argument("--output", help="write the answers as JSONL here (atomically)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    _add_process_flags(run)
    run.set_defaults(func=cmd_run)
    gen = sub.add_parser("generate", help="sample completions from a checkpoint")
    _add_generation_flags(gen)
    _add_process_flags(gen)
    gen.set_defaults(func=cmd_generate)
    init = sub.add_parser("init-model", help="write a random model from a YAML model config")
    init.add_argument("--config", required=True)
    init.add_argument("--out", required=True)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--overwrite", action="store_true")
    init.set_defaults(func=cmd_init_model)
    conv = sub.add_parser("convert", help="convert Hugging Face safetensors, ttcjax checkpoints and llama.cpp GGUF "
                                          "files (dequantized; with their tokenizer) to Hugging Face or ttcjax")
    conv.add_argument("src", help="a checkpoint directory or a .gguf file")
    conv.add_argument("dst")
    conv.add_argument("--from", dest="source_format", choices=sorted(CONVERT_READERS), default="auto",
                      help="the source's format (default: told from the source)")
    conv.add_argument("--to", choices=["hf", "ttcjax"], required=True)
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=cmd_convert)
    train = sub.add_parser("train", help="train a policy (supervised fine-tuning on a task), a process / outcome "
                                         "reward model on Monte-Carlo labels of a policy, or a revision model on "
                                         "a policy's own incorrect-then-correct answers")
    train.add_argument("what", choices=["policy", "prm", "orm", "revision"])
    train.add_argument("--config", required=True, help="YAML training config (see configs/train/)")
    train.add_argument("--out-dir", help="override the config's out_dir")
    train.add_argument("--steps", type=int, help="override the config's steps")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _rerun_flags(train)
    _add_process_flags(train)
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="evaluate on a task: a policy (greedy accuracy, pass@k) or a verifier (best-of-N, "
                                     "weighted and majority selection over the policy's samples; the step ROC-AUC "
                                     "against the exact oracle where the task has one)")
    ev.add_argument("what", choices=["policy", "prm", "revision"])
    ev.add_argument("--model", required=True, help="the policy, the reward model (prm / orm directory, a shipped "
                                                   "name, or 'none') or the revision model (a directory or a shipped "
                                                   "name) to judge")
    ev.add_argument("--policy", help="eval prm: the policy whose samples are scored")
    ev.add_argument("--verifier", help="eval revision: the revision verifier (an orm directory or a shipped name) that "
                                       "scores every attempt; adds each selection rule's accuracy")
    ev.add_argument("--task", default="arithmetic", help="the task as YAML, e.g. arithmetic or "
                                                         "\"{name: gsm8k, path: data/gsm8k}\" (default: arithmetic)")
    ev.add_argument("--aggregation", choices=["last", "min", "prod", "mean"], help="eval prm: step scores -> "
                    "solution score (default: the reward model's own)")
    ev.add_argument("--tokenizer", help="defaults to the tokenizer saved beside the model")
    ev.add_argument("--split", default="test", help="the task's split (arithmetic: train, validation, test)")
    ev.add_argument("--questions", type=int, help="questions of the split (default: all; arithmetic: "
                                                  "--per-difficulty per level)")
    ev.add_argument("--per-difficulty", type=int, default=100, help="arithmetic: problems per difficulty level")
    ev.add_argument("--samples", type=int, default=16, help="samples per problem for pass@k (0: greedy only)")
    ev.add_argument("--temperature", type=float, default=0.8)
    ev.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="tokens a solution may take "
                    f"(default {MAX_NEW_TOKENS}, the built-in task's; raise it for GSM8K or MATH)")
    ev.add_argument("--chains", type=int, default=4, help="eval revision: chains per question")
    ev.add_argument("--sequential", type=int, default=8, help="eval revision: attempts per chain (pass@1 is "
                    "reported at each)")
    ev.add_argument("--max-len", type=int, help="eval revision: cache slots per chain (default: the model's "
                    "max_position_embeddings; the prompt, the window of earlier attempts and the attempt must fit)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--mesh", default="auto")
    ev.add_argument("--output", help="write the result JSON here (atomically)")
    ev.add_argument("--samples-output", help="eval prm: write every sample as JSONL here (atomically): its "
                    "question's index, steps, step scores, the oracle's label of each step, answer and whether it is "
                    "right")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --output or --samples-output file")
    _add_process_flags(ev)
    ev.set_defaults(func=cmd_eval)
    sw = sub.add_parser("sweep", help="search strategies x budgets on any task: per-question JSONL "
                                      "(resumable), accuracy-versus-budget tables and plots")
    sw.add_argument("--config", required=True, help="YAML sweep config (see configs/sweep-tiny.yaml)")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. questions=20")
    sw.add_argument("--out-dir", help="override the config's out_dir")
    sw.add_argument("--mesh", help=f"override the config's mesh: {MESH_HELP}")
    sw.add_argument("--no-progress", action="store_true")
    _add_status_flag(sw)
    _rerun_flags(sw)
    _add_job_flag(sw)
    _add_process_flags(sw)
    sw.set_defaults(func=cmd_sweep)
    pl = sub.add_parser("plan", help="before a run: the memory each device needs for an experiment (or sweep) config, "
                                     "whether it fits, and which mesh, rows_per_batch or budgets would")
    pl.add_argument("--config", required=True, help="YAML experiment config (or a sweep config with --sweep)")
    pl.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. mesh=4,2")
    pl.add_argument("--sweep", action="store_true", help="plan `ttcjax sweep` (search only) instead of an experiment")
    pl.add_argument("--devices", type=int, help="devices to plan for (default: this machine's)")
    pl.add_argument("--device-memory", help="memory of each device, e.g. 80GB or 16GiB (default: what the "
                                            "accelerator reports; on CPU the host's available memory)")
    pl.add_argument("--prompt-tokens", type=int, default=Estimates.prompt_tokens,
                    help="the longest prompt of a batch in the policy's tokens (an estimate)")
    pl.add_argument("--verifier-len-ratio", type=float, help="a public PRM's tokens per policy token (default 1.5; "
                                                             "a ttcjax reward model reads the policy's own: 1)")
    pl.add_argument("--usable-fraction", type=float, default=Estimates.usable_fraction,
                    help="the share of each device's memory the plan may fill")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)
    return parser


PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warning_format(command: str, default: Callable[..., str] = warnings.formatwarning) -> Callable[..., str]:
    """How a warning is printed while `ttcjax COMMAND` runs: ttcjax's own (`warnings.warn` in the package: non-finite
    logits, overflowing contexts) as one line, `ttcjax COMMAND: warning: ...`, like the command's other warnings,
    without the file:line and source line Python adds; other packages' as `default` prints them."""
    def format_warning(message, category, filename, lineno, line=None) -> str:
        if os.path.abspath(filename).startswith(PACKAGE + os.sep):
            return f"ttcjax {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)
    return format_warning


def _results_only_on_stdout() -> None:
    """On several processes the collectives' library (Gloo on CPUs) prints a line to the C-level stdout for every
    group it connects: those lines go to stderr, and `sys.stdout`, what ttcjax prints (`generate`'s JSON lines),
    keeps the real stdout. Once per process; nothing where stdout is not file descriptor 1 (a notebook, captured
    output)."""
    try:
        if sys.stdout.fileno() != 1:
            return
    except (AttributeError, OSError, ValueError):
        return
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    default, warnings.formatwarning = warnings.formatwarning, warning_format(args.command)
    try:
        # before anything touches a device: with several processes, every device of the run is then visible
        if initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                      getattr(args, "process_id", None)):
            _results_only_on_stdout()
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"ttcjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = default


if __name__ == "__main__":
    sys.exit(main())
