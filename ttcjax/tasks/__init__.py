"""Tasks and data.

The :class:`ttcjax.tasks.base.Task` interface is what sweep, experiment, training and verifier evaluation use: the
problems of a split, the policy's prompt (:class:`ttcjax.tasks.base.Prompt`: plain, few-shot or the tokenizer's
chat template), the step delimiter, answer extraction, correctness, voting keys and an optional exact step oracle.
Build one from YAML with :func:`ttcjax.tasks.registry.task_from_dict`. The tasks, by YAML name:

* ``arithmetic`` (:class:`ttcjax.tasks.builtin.ArithmeticTask`): the built-in multi-step arithmetic task, with
  its exact step oracle (:mod:`ttcjax.tasks.arithmetic`).
* ``gsm8k`` (:class:`ttcjax.tasks.builtin.GSM8KTask`): GSM8K, one step per line.
* ``math`` (:class:`ttcjax.tasks.builtin.MathTask`): Hendrycks MATH, train and test.
* ``math500`` (:class:`ttcjax.tasks.builtin.Math500Task`): MATH-500, test only.
* ``jsonl`` (:class:`ttcjax.tasks.jsonl.JsonlTask`): any local JSONL file of questions and answers.

Also: benchmark loaders (:mod:`ttcjax.tasks.benchmarks`, :func:`ttcjax.tasks.datasets.load_dataset`; nothing is
ever downloaded), grading with math-verify (:mod:`ttcjax.tasks.grading`), tensorflow-datasets builders
(:mod:`ttcjax.tasks.tfds_builders`).

Layer: above `decoding`; below `verifiers`."""
