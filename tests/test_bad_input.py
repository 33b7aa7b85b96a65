"""Bad input ends with one clear line and a non-zero exit, and leaves the workdir exactly as it was.

Most cases call `jaxft.training.train.train_and_evaluate` in-process (they must fail in `prepare`, before
anything is written); a few go through the command line (`train.py`) in a subprocess to check what a user
sees: exit status 2, stderr ending in one `error: ...` line, no traceback. Every in-process case runs against
a workdir that does not exist yet (it must stay non-existent) and against one holding a previous run (made
once per session; every file's path, size and sha256 must be unchanged).
"""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxft.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "jaxft" / "configs" / "demo_sentiment" / "train.jsonl"
DEV = REPO / "jaxft" / "configs" / "demo_sentiment" / "dev.jsonl"


def tiny_config(**overrides):
    """jaxft/configs/tiny.py with absolute paths (tests do not depend on the cwd) and `overrides` ("a.b":
    value)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    config = importlib.import_module("jaxft.configs.tiny").get_config()
    config.model.tokenizer = str(REPO / "jaxft" / "configs" / "tiny_tokenizer")
    config.data.train_path = str(TRAIN)
    config.data.eval_path = str(DEV)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = config
        for part in parents:
            section = section[part]
        section[leaf] = value
    return config


def snapshot(root: Path):
    """{relative path: (size, sha256)} of every file, and every directory as (None, None); None if absent."""
    if not os.path.lexists(root):
        return None
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            result[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = (None, None)
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            result[os.path.relpath(path, root)] = (os.path.getsize(path), digest)
    return result


def assert_unchanged(root: Path, before) -> None:
    """Fails naming what appeared, disappeared or changed under `root` since `before` was taken."""
    after = snapshot(root)
    if after == before:
        return
    if before is None or after is None:
        what = "created" if before is None else "deleted"
        pytest.fail(f"the workdir {root} was {what}: {sorted(after or {})}")
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    pytest.fail(f"the workdir {root} changed: added {added}, removed {removed}, changed {changed}")


@pytest.fixture(scope="session")
def previous_run(tmp_path_factory):
    """A workdir holding a finished 2-step run of the tiny config, and its snapshot right after the run."""
    from jaxft.training.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("previous_run") / "workdir"
    train_and_evaluate(tiny_config(**{"training.num_train_steps": 2}), str(workdir))
    before = snapshot(workdir)
    assert any(name.startswith("checkpoints/latest/") for name in before), sorted(before)
    return workdir, before


def copy_of_previous_run(previous_run, tmp_path) -> Path:
    """A private copy of the previous run, so that a test that breaks it cannot break the others."""
    source, before = previous_run
    path = tmp_path / "previous_workdir"
    shutil.copytree(source, path)
    assert snapshot(path) == before
    return path


@pytest.fixture(params=["new", "previous"])
def workdir(request, tmp_path):
    """Yields a workdir (one that does not exist yet, or a copy of a previous run); checks it after."""
    if request.param == "new":
        path = tmp_path / "new_workdir"
    else:
        path = copy_of_previous_run(request.getfixturevalue("previous_run"), tmp_path)
    before = snapshot(path)
    yield path
    assert_unchanged(path, before)


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


POS = {"text": "A lovely day.", "label": "positive"}
NEG = {"text": "A dreadful day.", "label": "negative"}
COMMAS = "text,label\nA lovely day.,positive\nA bad one.,negative\n"
TABS = COMMAS.replace(",", "\t")


def fails(config, workdir, *words) -> str:
    """Runs the job, expects a one-line `UserError` that contains every one of `words`; returns its text."""
    from jaxft.training.train import train_and_evaluate

    with pytest.raises(UserError) as info:
        train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# ---- 1, 2: missing and empty train files ----------------------------------------------------------------


def test_missing_train_file(workdir, tmp_path):
    missing = tmp_path / "data" / "nope.jsonl"
    fails(tiny_config(**{"data.train_path": str(missing)}), workdir, str(missing), "no such file")


@pytest.mark.parametrize(
    "name, content",
    [("train.jsonl", ""), ("train.jsonl", "\n  \n"), ("train.csv", ""), ("train.csv", "text,label\n")],
    ids=["jsonl", "jsonl-blank-lines", "csv", "csv-header-only"],
)
def test_empty_train_file(workdir, tmp_path, name, content):
    path = write(tmp_path / "data" / name, content)
    config = tiny_config(**{"data.train_path": str(path), "data.eval_path": None})
    fails(config, workdir, str(path), "no examples")


# ---- 3, 4: columns and delimiters ----------------------------------------------------------------------


def test_missing_label_column(workdir, tmp_path):
    path = write(tmp_path / "data" / "train.csv", COMMAS.replace("label", "sentiment"))
    fails(tiny_config(**{"data.train_path": str(path)}), workdir, f"{path}:1", "'label'", "data.label_field")


@pytest.mark.parametrize(
    "name, fmt, content, hint",
    [
        ("train.csv", "tsv", COMMAS, "data.format='csv'"),
        ("train.tsv", "auto", COMMAS, "data.format='csv'"),
        ("train.csv", "auto", TABS, "data.format='tsv'"),
    ],
    ids=["csv-read-as-tsv", "tsv-file-with-commas", "csv-file-with-tabs"],
)
def test_wrong_delimiter(workdir, tmp_path, name, fmt, content, hint):
    path = write(tmp_path / "data" / name, content)
    config = tiny_config(**{"data.train_path": str(path), "data.eval_path": None, "data.format": fmt})
    fails(config, workdir, f"{path}:1", "'text'", hint)


# ---- 5, 6, 7, 15: bad rows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("train.jsonl", jsonl(POS, {"text": "   ", "label": "negative"}, NEG), 2),
        ("train.csv", "text,label\nA lovely day.,positive\n,negative\nA bad one.,negative\n", 3),
    ],
    ids=["jsonl", "csv"],
)
def test_empty_text(workdir, tmp_path, name, content, line):
    path = write(tmp_path / "data" / name, content)
    config = tiny_config(**{"data.train_path": str(path), "data.eval_path": None})
    fails(config, workdir, f"{path}:{line}:", "empty", "data.text_field")


def test_eval_label_not_in_train_labels(workdir, tmp_path):
    neutral = {"text": "It was fine.", "label": "neutral"}
    dev = write(tmp_path / "data" / "dev.jsonl", jsonl(POS, NEG, neutral))
    fails(tiny_config(**{"data.eval_path": str(dev)}), workdir, f"{dev}:3", "'neutral'")


def test_undecodable_bytes(workdir, tmp_path):
    content = jsonl(POS, NEG).encode() + b"\xff\xfe\x00garbage\x81\n" + jsonl(POS).encode()
    path = write(tmp_path / "data" / "train.jsonl", content)
    config = tiny_config(**{"data.train_path": str(path), "data.eval_path": None})
    fails(config, workdir, str(path), "line 3", "UTF-8")


@pytest.mark.parametrize(
    "line",
    ['{"text": "A lovely day.", "label": "positive"', "{'text': 'single quotes', 'label': 'x'}", "not json"],
    ids=["unclosed-brace", "single-quotes", "not-json"],
)
def test_malformed_json_line(workdir, tmp_path, line):
    path = write(tmp_path / "data" / "train.jsonl", jsonl(POS, NEG) + line + "\n" + jsonl(NEG))
    config = tiny_config(**{"data.train_path": str(path), "data.eval_path": None})
    fails(config, workdir, f"{path}:3", "invalid JSON")


# ---- 8, 9: model ---------------------------------------------------------------------------------------


def test_checkpoint_of_a_family_jaxft_does_not_read(workdir, tmp_path):
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_embd": 768}
    checkpoint = tmp_path / "gpt2"
    write(checkpoint / "config.json", json.dumps(gpt2))
    message = fails(tiny_config(**{"model.checkpoint": str(checkpoint)}), workdir, str(checkpoint), "'gpt2'")
    assert (
        "is not supported; jaxft reads bert, deberta-v2, distilbert, electra, modernbert, roberta" in message
    )


def test_checkpoint_without_config_json(workdir, tmp_path):
    checkpoint = tmp_path / "not_a_model"
    write(checkpoint / "model.safetensors", b"")
    fails(tiny_config(**{"model.checkpoint": str(checkpoint)}), workdir, str(checkpoint), "config.json")


def test_max_seq_length_beyond_position_embeddings(workdir):
    fails(tiny_config(**{"data.max_seq_length": 128}), workdir, "data.max_seq_length=128", "64")


# ---- 10, 13, 14: config values -------------------------------------------------------------------------


def test_batch_not_divisible_by_devices(workdir):
    import jax

    assert jax.device_count() == 8, "conftest.py forces 8 host devices"
    fails(tiny_config(**{"training.batch_size": 12}), workdir, "training.batch_size=12", "8 devices")


def test_num_shards_that_cannot_split_the_batch(workdir):
    # Three shards are fine on one process, but a batch of 16 has no three equal parts.
    config = tiny_config(**{"data.num_shards": 3, "training.batch_size": 16})
    fails(config, workdir, "training.batch_size=16 must be divisible by data.num_shards=3")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("optimizer.b1", 1.5, "must be in [0, 1)"),
        ("optimizer.b2", 1.0, "must be in [0, 1)"),
        ("optimizer.momentum", -0.1, "must be in [0, 1)"),
        ("optimizer.eps", -1e-8, "must be positive"),
        ("optimizer.layer_decay", 0.0, "must be in (0, 1]"),
        ("optimizer.layer_decay", 1.5, "must be in (0, 1]"),
    ],
)
def test_optimizer_values_that_cannot_converge(key, value, words):
    from jaxft import config as config_lib

    with pytest.raises(UserError) as info:
        config_lib.check(tiny_config(**{key: value}))
    assert str(info.value) == f"config {key}={value} {words}"


def test_invalid_choice(workdir):
    fails(tiny_config(**{"optimizer.name": "adam"}), workdir, "optimizer.name", "'adam'", "adamw")


@pytest.mark.parametrize("kind", ["empty-dir", "missing-dir", "empty-checkpoints-dir"])
def test_init_from_workdir_without_checkpoints(workdir, tmp_path, kind):
    source = tmp_path / "other_run"
    if kind == "empty-dir":
        source.mkdir()
    elif kind == "empty-checkpoints-dir":
        # What a run killed before its first save leaves behind.
        (source / "checkpoints" / "latest").mkdir(parents=True)
        (source / "checkpoints" / "best").mkdir(parents=True)
    config = tiny_config(**{"model.init_from_workdir": str(source)})
    fails(config, workdir, "model.init_from_workdir", str(source))


# ---- the command line ----------------------------------------------------------------------------------


def run_cli(workdir, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    config = [] if "--config" in args else ["--config", "jaxft/configs/tiny.py"]
    command = [sys.executable, "train.py", *config, "--workdir", str(workdir), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def cli_fails(workdir, args, *words):
    before = snapshot(workdir)
    result = run_cli(workdir, *args)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert "\\" not in lines[-1], f"escaped characters in {lines[-1]!r}"
    for word in words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    assert_unchanged(workdir, before)
    return lines[-1]


CLI_CASES = {
    "missing-train-file": (["--config.data.train_path=data/nope.jsonl"], ["data/nope.jsonl", "no such file"]),
    "batch-not-divisible": (["--config.training.batch_size=12"], ["training.batch_size=12", "8 devices"]),
    "unknown-key": (["--config.training.batch_sise=8"], ["training.batch_sise"]),
    "wrong-type": (["--config.training.batch_size=abc"], ["training.batch_size", "abc"]),
    "invalid-choice": (["--config.optimizer.name=adam"], ["optimizer.name", "adam"]),
    "missing-config-file": (["--config", "jaxft/configs/nope.py"], ["jaxft/configs/nope.py", "no such file"]),
}


# Each CLI case against a new workdir; the slower ones (that start jax) only there, to keep the suite quick.
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_new_workdir(tmp_path, case):
    args, words = CLI_CASES[case]
    workdir = tmp_path / "new_workdir"
    cli_fails(workdir, args, *words)
    assert not os.path.lexists(workdir)


def test_cli_workdir_with_an_unset_variable():
    """`--workdir` expands `$VARS` as the data paths do; an unset one is an error, not a literal directory."""
    assert "JAXFT_UNSET_FOR_TEST" not in os.environ
    workdir = "$JAXFT_UNSET_FOR_TEST/run"
    result = run_cli(workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == f"error: path {workdir!r}: environment variable in it is not set"
    assert not os.path.lexists(REPO / "$JAXFT_UNSET_FOR_TEST")


@pytest.mark.parametrize("case", ["batch-not-divisible", "unknown-key", "wrong-type"])
def test_cli_previous_run(previous_run, tmp_path, case):
    args, words = CLI_CASES[case]
    workdir = copy_of_previous_run(previous_run, tmp_path)
    cli_fails(workdir, args, *words)
    assert_unchanged(workdir, previous_run[1])


@pytest.mark.parametrize(
    "source, words",
    [
        ("def get_config():\n    return (\n", ["config_file.py:2", "never closed"]),
        ("def get_config():\n    return undefined_name\n", ["NameError", "undefined_name"]),
        ("def get_config():\n    raise ValueError('no such preset')\n", ["ValueError", "no such preset"]),
        ("def get_config():\n    return 3\n", ["must return an ml_collections.ConfigDict, not int"]),
    ],
    ids=["syntax-error", "name-error", "value-error", "not-a-config"],
)
def test_cli_broken_config_file(tmp_path, source, words):
    config_file = write(tmp_path / "config_file.py", source)
    workdir = tmp_path / "new_workdir"
    cli_fails(workdir, ["--config", str(config_file)], "--config", *words)
    assert not os.path.lexists(workdir)


def test_init_from_workdir_of_another_architecture(workdir, previous_run):
    """Warm start from a run whose parameters do not fit (width 32 there, 64 here)."""
    source = previous_run[0]
    config = tiny_config(**{"model.init_from_workdir": str(source), "model.random_init.hidden_size": 64})
    # In a previous run's workdir the resume check speaks first; either way the sizes are named.
    fails(config, workdir, "hidden_size=64", "32")


# ---- checks that need more than the config: before the run's files are written -------------------------


def test_best_metric_the_task_does_not_report(workdir):
    """Checked before training (it used to fail at the first evaluation, after steps and checkpoints)."""
    fails(tiny_config(**{"training.best_metric": "acc"}), workdir, "training.best_metric='acc'", "accuracy")


def test_peft_method_differs_from_the_resumed_run(previous_run, tmp_path):
    path = copy_of_previous_run(previous_run, tmp_path)
    fails(tiny_config(**{"peft.method": "lora"}), path, "peft.method='lora'", "'none'")
    assert_unchanged(path, previous_run[1])


def test_checkpoint_whose_tensors_do_not_fit_its_config(tmp_path):
    """Found when the parameters are built, after `prepare`: the workdir this start created is removed."""
    import numpy as np
    import safetensors.numpy

    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    config_json = {"model_type": "bert", "vocab_size": 600, "max_position_embeddings": 64, **shape}
    checkpoint = write(tmp_path / "checkpoint" / "config.json", json.dumps(config_json)).parent
    tensors = {"bert.embeddings.LayerNorm.bias": np.zeros(16, np.float32)}
    safetensors.numpy.save_file(tensors, str(checkpoint / "model.safetensors"))
    new = tmp_path / "new_workdir"
    fails(tiny_config(**{"model.checkpoint": str(checkpoint)}), new, str(checkpoint), "(16,)", "(32,)")
    assert not new.exists()


@pytest.mark.parametrize("below", ["", "run"])
def test_workdir_that_is_or_goes_through_a_file(tmp_path, below):
    plain = write(tmp_path / "plain", "not a directory")
    workdir = plain / below if below else plain
    fails(tiny_config(), workdir, f"workdir {workdir}: ", "is a file, not a directory")
    assert plain.read_text() == "not a directory"


def test_cli_help_lists_the_training_flags():
    result = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    flags = [line.split(":")[0].strip() for line in result.stdout.splitlines() if line.startswith("  --")]
    assert {"--config", "--workdir", "--[no]distributed"} <= set(flags), result.stdout
