"""The package's layers import only downwards and no package has an import cycle (pyproject.toml's
import-linter contracts); the tools that read a finished run do not reach into the trainer.

import-linter runs in a process of its own: in-process, its command line sets up logging on the stream the
test captures, and every later test that logs writes to that closed stream. `make lint` runs it too.
"""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TRAINER = ["jaxft", "training", "train"], ["jaxft", "training", "trainer"]


def test_layers_import_only_downwards_and_nothing_imports_in_a_circle():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def _imports(path: str) -> list[tuple[str, bool]]:
    """(module, deferred) of every jaxft import in the file; deferred: inside a function."""
    tree = ast.parse(open(path).read())
    found = []

    def visit(node, deferred):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("jaxft"):
                found.extend((f"{child.module}.{alias.name}", inner) for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names if alias.name.startswith("jaxft"))
            visit(child, inner)

    visit(tree, False)
    return found


def test_predict_export_and_compare_neither_import_the_trainer_nor_defer_a_jaxft_import_of_training():
    for name in ("predict", "export", "compare"):
        for module, deferred in _imports(os.path.join(ROOT, "jaxft", f"{name}.py")):
            assert module.split(".")[:3] not in (TRAIN, TRAINER), (name, module)
            assert not (deferred and module.startswith("jaxft.training")), (name, module)
