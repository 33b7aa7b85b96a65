"""The package's layers import only downwards and no package has an import cycle (pyproject.toml's
import-linter contracts); the tools that read a finished run do not reach into the trainer."""

import ast
import os

from importlinter import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TRAINER = ["jaxft", "training", "train"], ["jaxft", "training", "trainer"]


def test_layers_import_only_downwards_and_nothing_imports_in_a_circle(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    status = cli.lint_imports(
        config_filename=os.path.join(ROOT, "pyproject.toml"), no_cache=True, no_logo=True
    )
    assert status == 0, capsys.readouterr().out


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
