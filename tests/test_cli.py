"""Tests of `jaxft.cli`: every entry point answers --help / -h with its flags and exit status 0, and a bad
flag with one `error:` line and exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from jaxft import cli, export, predict

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {
    "train": (["train.py"], {"--config", "--workdir", "--[no]distributed"}),
    "compare": (["-m", "jaxft.compare"], {"--config", "--workdir", "--strategies", "--grid", "--seeds"}),
    "predict": (
        ["-m", "jaxft.predict"],
        {"--workdir", "--input", "--output", "--batch-size", "--[no]explain", "--explain-steps", "--html"},
    ),
    "export": (["-m", "jaxft.export"], {"--workdir", "--out"}),
}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )  # fmt: skip


@pytest.mark.parametrize("help_flag", ["--help", "-h"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_help_lists_the_flags_and_exits_0(entry, help_flag):
    command, expected = ENTRY_POINTS[entry]
    result = _run([*command, help_flag])
    assert result.returncode == 0, result.stderr
    shown = {line.split(":")[0].strip() for line in result.stdout.splitlines() if line.startswith("  --")}
    assert expected <= shown, result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line_and_exit_status_2(entry):
    command, _ = ENTRY_POINTS[entry]
    result = _run([*command, "--no_such_flag=1"])
    assert result.returncode == 2
    assert result.stderr == "error: Unknown command line flag 'no_such_flag'\n"


def test_help_wins_over_everything_else_and_loads_no_config(capsys):
    with pytest.raises(SystemExit) as raised:
        predict.main(["--workdir", "nowhere", "--batch-size", "x", "-h"])
    assert raised.value.code == 0
    assert "--batch-size" in capsys.readouterr().out


def test_a_dash_h_that_is_a_flag_value_is_no_help_request():
    values = flags.FlagValues()
    flags.DEFINE_string("input", None, "", flag_values=values)
    flags.DEFINE_bool("list", False, "", flag_values=values)
    assert not cli.wants_help(values, ["prog", "--input", "-h"])
    assert cli.wants_help(values, ["prog", "--list", "-h"])
    assert cli.wants_help(values, ["prog", "--input=-h", "--help"])
    assert not cli.wants_help(values, ["prog", "--", "-h"])


_NOT_AN_INT = "flag --batch-size=abc: invalid literal for int() with base 10: 'abc'"


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (predict.main, ["--workdir", "w"], "--input and --output are required (see --help)"),
        (predict.main, ["--workdir", "w", "--input", "i", "--output", "o", "x"], "unexpected arguments: x"),
        (predict.main, ["--batch-size=abc"], _NOT_AN_INT),
        (export.main, ["--out", "o"], "--workdir is required (see --help)"),
    ],
)
def test_a_missing_or_malformed_flag_exits_2_with_one_line(capsys, main, argv, message):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_each_call_parses_afresh(tmp_path, capsys):
    # A value given in one call (--batch-size 0) does not stay for the next, which gives none.
    argv = ["--workdir", str(tmp_path), "--input", "i", "--output", str(tmp_path / "o")]
    assert predict.main([*argv, "--batch-size", "0"]) == 2
    assert "--batch-size 0" in capsys.readouterr().err
    assert predict.main(argv) == 2
    assert "not a jaxft workdir" in capsys.readouterr().err
