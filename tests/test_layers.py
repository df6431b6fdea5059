"""The package's layers: each imports only from those below it (import-linter's contract in pyproject.toml),
no import cycles, no function-local imports of ttcjax, and loading a verifier never loads training code."""

import ast
import pathlib
import subprocess
import sys

import grimp
from importlinter import api as importlinter_api  # noqa: F401  (the package must be installed for the test)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ttcjax"
# libraries that may be imported inside a function: optional or heavy, needed by few calls (gguf: the optional
# extra ttcjax[gguf], needed only to read .gguf files)
LAZY_OK = {"matplotlib", "math_verify", "pyarrow", "jinja2", "tokenizers", "sentencepiece", "logging", "gguf"}


def test_import_linter_layers_contract_holds():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("ttcjax")
    modules = sorted(graph.modules)
    seen, on_stack, cycle = set(), [], []

    def visit(m):
        seen.add(m)
        on_stack.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            if n in on_stack:
                cycle.extend(on_stack[on_stack.index(n):] + [n])
                return True
            if n not in seen and visit(n):
                return True
        on_stack.pop()
        return False

    for m in modules:
        if m not in seen and visit(m):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_function_local_imports_except_optional_heavy_libraries():
    local = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if name.split(".")[0] not in LAZY_OK:
                        local.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not local, local


def test_loading_a_verifier_never_imports_training_or_eval():
    code = ("import sys; import ttcjax.verifiers.reward_model, ttcjax.verifiers.hub; "
            "print(sorted(m for m in sys.modules "
            "if m.startswith(('ttcjax.training', 'ttcjax.eval', 'ttcjax.search'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
