"""Tests of `jaxft.compare` (with compare_runner and compare_results): cells, records, tables, resume.

Most runs use a stand-in trainer: a script that parses the command line exactly as `jaxft.main` does
(absl + ml_collections config_flags), touches a known amount of memory and writes a final_metrics.json
whose accuracy is a known function of the cell's config, in well under a second per cell. The real
trainer runs a cell that it refuses (fast) and, marked slow, a small grid end to end.
"""

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxft import compare, compare_results, compare_runner
from jaxft import config as config_lib
from jaxft.errors import UserError
from tests.helpers import check_final_examples

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "jaxft" / "configs" / "tiny.py")
BALLAST_MIB = 160

FAKE_TRAINER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "")


def main(argv):
    config, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    open(os.path.join(workdir, "started"), "w").close()
    steps = config.training.num_train_steps
    if steps == 7:
        print("some log line", file=sys.stderr)
        print("error: config training.num_train_steps=7 is refused by the stand-in", file=sys.stderr)
        sys.exit(2)
    if steps == 99:
        time.sleep(30)
    ballast = b"x" * ({ballast} * 2**20)  # written, so resident: the peak memory compare must see
    with open(os.path.join(workdir, "seen_config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    accuracy = (3 * config.seed + steps) % 10 / 10 + config.regularization.label_smoothing
    final = {{"params_from_step": steps, "trainable_params": 1000, "total_params": 4000,
             "device_peak_bytes": len(ballast), "eval": {{"accuracy": accuracy, "loss": 1 - accuracy}}}}
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump(final, f)


app.run(main)
"""


def _expected_accuracy(seed: int, steps: int, smoothing: float = 0.0) -> float:
    return (3 * seed + steps) % 10 / 10 + smoothing


@pytest.fixture
def fake_trainer(tmp_path) -> tuple[str, ...]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER.format(repo=str(REPO), ballast=BALLAST_MIB))
    return (sys.executable, str(script))


def _plan(trainer, strategies, grid, seeds, config_args=()):
    plan = compare.make_plan(TINY, list(config_args), strategies, grid, seeds)
    return dataclasses.replace(plan, trainer=trainer)


def _cell_json(workdir, name) -> dict:
    return json.loads((Path(workdir) / "cells" / name / "cell.json").read_text())


def _csv_rows(workdir) -> list[dict]:
    with open(Path(workdir) / "results.csv") as f:
        return list(csv.DictReader(f))


def _check_tables_against_numpy(workdir, plan):
    """results.csv holds, per strategy and grid point, numpy's mean / std(ddof=1) of the cells' records."""
    records = [_cell_json(workdir, cell.name) for cell in plan.cells]
    rows = _csv_rows(workdir)
    groups = {}
    for record in records:
        groups.setdefault((record["strategy"], json.dumps(record["grid"])), []).append(record)
    assert len(rows) == len(groups)
    for row, ((strategy, grid), group) in zip(rows, groups.items(), strict=True):
        assert row["strategy"] == strategy
        assert {key: row[key] for key in plan.grid_keys} == json.loads(grid)
        values = np.array([r["metric_value"] for r in group if r["status"] == "done"], np.float64)
        assert int(row["n_seeds"]) == values.size
        assert int(row["n_failed"]) == sum(r["status"] != "done" for r in group)
        if values.size:
            assert float(row["metric_mean"]) == values.mean()
        if values.size > 1:
            assert float(row["metric_std"]) == values.std(ddof=1)
        walls = [r["wall_time_s"] for r in group if r["status"] == "done"]
        if walls:
            assert float(row["wall_time_s_mean"]) == np.mean(walls)
    png = (Path(workdir) / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


def test_cells_expand_in_order_with_exact_names_and_flags():
    plan = compare.make_plan(
        TINY, [], "full,lora+fgm", ["optimizer.learning_rate=1e-5,3e-5", "training.batch_size=16"], "0,2"
    )
    names = [cell.name for cell in plan.cells]
    point = "optimizer.learning_rate={},training.batch_size=16"
    assert names == [
        f"{strategy}__{point.format(lr)}__seed{seed}"
        for strategy in ("full", "lora+fgm")
        for lr in ("1e-5", "3e-5")
        for seed in (0, 2)
    ]
    assert [cell.index for cell in plan.cells] == list(range(8))
    assert plan.grid_keys == ("optimizer.learning_rate", "training.batch_size")
    assert plan.cells[4].config_args() == [
        "--config.seed=0",
        "--config.peft.method=lora",
        "--config.adversarial.method=fgm",
        "--config.optimizer.learning_rate=1e-5",
        "--config.training.batch_size=16",
    ]
    assert {(cell.metric, cell.best_mode) for cell in plan.cells} == {("accuracy", "max")}
    assert compare_runner.cell_name("full", [], 3) == "full__seed3"
    unsafe = compare_runner.cell_name("eda", [("augment.eda_ops", "('swap',)")], 1)
    assert unsafe == "eda__augment.eda_ops=__swap_,___seed1"
    long_name = compare_runner.cell_name("full", [("data.train_path", "x" * 300)], 0)
    assert len(long_name) == 200 and long_name.startswith("full__data.train_path=xxx")
    assert long_name != compare_runner.cell_name("full", [("data.train_path", "x" * 301)], 0)


def test_every_strategy_value_round_trips_through_the_command_line():
    for name, overrides in compare.STRATEGIES.items():
        [cell] = compare.make_plan(TINY, [], name, [], "0").cells
        config = compare.parse_cell_config(TINY, cell.config_args())
        for key, value in overrides.items():
            parsed = config_lib.get(config, key)
            assert parsed == value and type(parsed) is type(value), (name, key)
    [cell] = compare.make_plan(TINY, [], "eda+rdrop+smoothing+llrd+bitfit+pgd", [], "5").cells
    config = compare.parse_cell_config(TINY, cell.config_args())
    assert config.augment.eda_ops == ("synonym", "insert", "swap", "delete")
    assert (config.regularization.rdrop_alpha, config.regularization.label_smoothing) == (1.0, 0.1)
    assert (config.optimizer.layer_decay, config.peft.method) == (0.9, "bitfit")
    assert config.adversarial.method == "pgd"
    assert config.seed == 5
    assert [compare_runner.flag_text(v) for v in ("a b", 0.1, 3, True, ("x",), ())] == [
        "a b", "0.1", "3", "true", "('x',)", "()",
    ]  # fmt: skip


def test_grid_values_keep_commas_inside_brackets_and_parse_like_config_flags():
    grid = ["augment.eda_ops=('swap',),('swap', 'delete')", "optimizer.learning_rate=1e-5, 3e-5"]
    assert compare.parse_grid(grid) == [
        ("augment.eda_ops", ["('swap',)", "('swap', 'delete')"]),
        ("optimizer.learning_rate", ["1e-5", "3e-5"]),
    ]
    plan = compare.make_plan(TINY, [], "full", grid, "0")
    seen = [compare.parse_cell_config(TINY, cell.config_args()) for cell in plan.cells]
    assert [(c.augment.eda_ops, c.optimizer.learning_rate) for c in seen] == [
        (("swap",), 1e-5), (("swap",), 3e-5), (("swap", "delete"), 1e-5), (("swap", "delete"), 3e-5),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "strategies, grid, seeds, config_args, message",
    [
        ("full,nope", [], "0", [], r"--strategies: unknown strategy 'nope'"),
        ("lora+bitfit", [], "0", [], r"sets peft.method twice \(lora: 'lora', bitfit: 'bitfit'\)"),
        ("full,full", [], "0", [], r"--strategies='full,full': an empty or repeated strategy"),
        ("full", [], "0,x", [], r"--seeds='0,x': expected comma-separated integers"),
        ("full", [], "1,1", [], r"--seeds='1,1': a seed is repeated"),
        ("full", ["optimizer.learning_rate"], "0", [], r"--grid='optimizer.learning_rate': expected KEY="),
        ("full", ["optimizer.learning_rate=1,,2"], "0", [], r"an empty value"),
        ("full", ["optimizer.lr=1,2"], "0", [], r"--grid: unknown config key optimizer.lr"),
        ("full", ["optimizer.learning_rate=abc"], "0", [], r"--config.optimizer.learning_rate=abc"),
        ("full", ["seed=1,2"], "0", [], r"config key seed is set by both --seeds and --grid"),
        ("lora", ["peft.method=lora"], "0", [], r"peft.method is set by both strategy 'lora' and --grid"),
        ("full", [], "0", ["--config.seed=4"], r"seed is set by both --seeds and --config.seed"),
        ("full", [], "0", ["--config.optimizer.nope=1"], r"unknown config key --config.optimizer.nope"),
        ("full", ["training.batch_size=16,0"], "0", [], r"batch_size=0 must be positive \(cell full"),
    ],
)
def test_bad_input_is_one_user_error_naming_the_flag(strategies, grid, seeds, config_args, message):
    with pytest.raises(UserError, match=message) as raised:
        compare.make_plan(TINY, config_args, strategies, grid, seeds)
    assert "\n" not in str(raised.value)


def _cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "jaxft.compare", *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategies=full,lorra"], "error: --strategies: unknown strategy 'lorra'"),
        (["--grid=optimizer.learning_rate"], "error: --grid='optimizer.learning_rate': expected KEY=V1,V2"),
        (["--grid=optimizer.lr=1e-5,3e-5"], "error: --grid: unknown config key optimizer.lr"),
        (["--seeds=0,1.5"], "error: --seeds='0,1.5': expected comma-separated integers"),
        (["--baseline=lora"], "error: --baseline='lora' is not one of --strategies (full)"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "cmp"
    result = _cli(f"--config={TINY}", f"--workdir={workdir}", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert not workdir.exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_cli_workdir_that_is_a_file_exits_2_with_one_line_and_leaves_the_file(tmp_path, below):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    workdir = afile / below if below else afile
    result = _cli(f"--config={TINY}", f"--workdir={workdir}", "--cell=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    where = "is a file" if not below else f"{afile} is a file"
    assert result.stderr.startswith(f"error: --workdir {workdir}: {where}, not a directory")
    assert afile.read_text() == "keep me" and os.listdir(tmp_path) == ["afile"]


def test_help_explains_every_flag_and_strategy():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    flags_shown = set(re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, re.M))
    expected = {"aggregate_only", "baseline", "cell", "config", "grid", "list", "seeds", "strategies"}
    expected |= {"workdir"}
    expected |= {"search", "trials", "space", "pruner"}  # the Optuna search (tests/test_search.py)
    assert flags_shown == expected
    for name in compare.STRATEGIES:
        assert f"{name}:" in " ".join(result.stdout.split())


def test_grid_run_records_cells_and_tables_and_rerun_skips_finished_cells(tmp_path, fake_trainer):
    workdir = tmp_path / "cmp"
    plan = _plan(fake_trainer, "full,smoothing", ["training.num_train_steps=2,4"], "0,1")
    results = compare_runner.run_cells(plan, str(workdir))
    assert [(record["cell"], record["status"], ran) for record, ran in results] == [
        (cell.name, "done", True) for cell in plan.cells
    ]
    for cell in plan.cells:
        record = _cell_json(workdir, cell.name)
        steps = int(dict(cell.grid_point)["training.num_train_steps"])
        smoothing = 0.1 if cell.strategy == "smoothing" else 0.0
        seen = json.loads((workdir / "cells" / cell.name / "seen_config.json").read_text())
        assert (seen["seed"], seen["training"]["num_train_steps"]) == (cell.seed, steps)
        assert seen["regularization"]["label_smoothing"] == smoothing
        assert record["metric"] == "accuracy"
        assert record["metric_value"] == _expected_accuracy(cell.seed, steps, smoothing)
        assert record["final_metrics"]["eval"]["accuracy"] == record["metric_value"]
        assert (record["strategy"], record["seed"], record["grid"]) == (
            cell.strategy, cell.seed, {"training.num_train_steps": str(steps)},
        )  # fmt: skip
        assert record["overrides"] == {**cell.overrides, "training.num_train_steps": str(steps)}
        assert (record["trainable_params"], record["total_params"]) == (1000, 4000)
        assert record["peak_device_memory_gib"] == BALLAST_MIB / 1024
        # ru_maxrss of a child also counts the parent's resident set at exec (Linux hands the vforked
        # memory's high-water mark to the child), so only the lower bound is the child's own.
        assert record["peak_host_memory_gib"] >= BALLAST_MIB / 1024
        assert record["wall_time_s"] > 0 and record["exit_status"] == 0

    compare_runner.write_results(plan, str(workdir), "python -m jaxft.compare --the-command", "full")
    rows = _check_tables_against_numpy(workdir, plan)
    assert [(r["strategy"], r["training.num_train_steps"]) for r in rows] == [
        ("full", "2"), ("full", "4"), ("smoothing", "2"), ("smoothing", "4"),
    ]  # fmt: skip
    # The stand-in's smoothing adds exactly 0.1 on every seed; it writes no predictions: seeds only.
    for row in rows:
        if row["strategy"] == "full":
            assert row["baseline"] == row["difference"] == row["difference_holds"] == ""
            continue
        assert row["baseline"] == "full" and row["difference_resampled"] == "seeds"
        for key in ("difference", "difference_low", "difference_high"):
            assert float(row[key]) == pytest.approx(0.1, abs=1e-12)
        assert row["difference_holds"] == "True"
    assert {r["trainable_fraction"] for r in rows} == {"0.25"}
    markdown = (workdir / "results.md").read_text()
    assert "python -m jaxft.compare --the-command" in markdown.split("|")[0]
    table_means = [float(line.split("|")[3].split("±")[0]) for line in markdown.splitlines()[10:14]]
    assert table_means == sorted((round(float(r["metric_mean"]), 4) for r in rows), reverse=True)

    files = [workdir / "cells" / c.name / f for c in plan.cells for f in ("final_metrics.json", "cell.json")]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = compare_runner.run_cells(plan, str(workdir))
    assert [ran for _, ran in again] == [False] * len(plan.cells)
    assert [record for record, _ in again] == [record for record, _ in results]
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_failed_cell_is_recorded_others_finish_and_a_rerun_retries_only_it(tmp_path, fake_trainer):
    workdir = tmp_path / "cmp"
    plan = _plan(fake_trainer, "full", ["training.num_train_steps=7,3"], "0")
    results = compare_runner.run_cells(plan, str(workdir))
    failed, done = (record for record, _ in results)
    assert failed["status"] == "failed" and failed["exit_status"] == 2
    refusal = "error: config training.num_train_steps=7 is refused by the stand-in"
    assert failed["error"] == f"exit status 2: {refusal}"
    assert failed["metric_value"] is None and failed["final_metrics"] is None
    assert done["status"] == "done" and done["metric_value"] == _expected_accuracy(0, 3)
    compare_runner.write_results(plan, str(workdir), "cmd")
    rows = _check_tables_against_numpy(workdir, plan)
    summary = [(r["n_seeds"], r["n_failed"], r["metric_mean"]) for r in rows]
    assert summary == [("0", "1", ""), ("1", "0", "0.3")]
    assert f"- `{failed['cell']}`: {failed['error']}" in (workdir / "results.md").read_text()
    again = compare_runner.run_cells(plan, str(workdir))
    assert [ran for _, ran in again] == [True, False]


def test_sigterm_reaches_the_running_cell_and_no_further_cell_starts(tmp_path, fake_trainer):
    workdir = tmp_path / "cmp"
    plan = _plan(fake_trainer, "full", ["training.num_train_steps=99"], "0,1")
    started = workdir / "cells" / plan.cells[0].name / "started"

    def terminate_once_started():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=terminate_once_started)
    thread.start()
    start = time.monotonic()
    results = compare_runner.run_cells(plan, str(workdir))
    thread.join()
    assert time.monotonic() - start < 25  # the stand-in sleeps 30 s unless the signal ended it
    [(record, ran)] = results
    assert ran and record["status"] == "failed" and record["exit_status"] == -signal.SIGTERM
    assert record["error"].startswith("killed by SIGTERM")
    assert not (workdir / "cells" / plan.cells[1].name).exists()


def test_cli_list_and_cell_run_exactly_one_cell_with_the_real_trainer(tmp_path):
    workdir = tmp_path / "cmp"
    common = [f"--config={TINY}", f"--workdir={workdir}", "--grid=data.max_seq_length=32,1000"]
    listed = _cli(*common, "--list")
    assert listed.returncode == 0 and not workdir.exists()
    assert listed.stdout.splitlines() == [
        "0\tfull__data.max_seq_length=32__seed0",
        "1\tfull__data.max_seq_length=1000__seed0",
    ]
    # 1000 tokens exceed tiny's position table: the trainer refuses the cell before training.
    result = _cli(*common, "--cell=1")
    assert result.returncode == 1, result.stderr
    assert sorted(os.listdir(workdir / "cells")) == ["full__data.max_seq_length=1000__seed0"]
    record = _cell_json(workdir, "full__data.max_seq_length=1000__seed0")
    assert record["status"] == "failed" and record["exit_status"] == 2
    assert record["error"].startswith("exit status 2: error: ") and "max_seq_length" in record["error"]
    assert not (workdir / compare_results.RESULTS_CSV).exists()


@pytest.mark.slow
def test_cli_grid_with_the_real_trainer_then_resume_and_aggregate_only(tmp_path):
    from jaxft import bootstrap

    workdir = tmp_path / "cmp"
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device per cell: a quicker compile
    args = [
        f"--config={TINY}", f"--workdir={workdir}", "--strategies=full,smoothing", "--seeds=0,1",
        "--grid=training.num_train_steps=3", "--config.data.num_buckets=1",
        "--config.data.max_eval_examples=16", "--config.training.tensorboard=false",
    ]  # fmt: skip
    first = _cli(*args, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    plan = compare.make_plan(TINY, args[5:], "full,smoothing", ["training.num_train_steps=3"], "0,1")
    evidence = {}
    for cell in plan.cells:
        record = _cell_json(workdir, cell.name)
        final = json.loads((workdir / "cells" / cell.name / "final_metrics.json").read_text())
        assert record["status"] == "done" and record["metric_value"] == final["eval"]["accuracy"]
        assert final["params_from_step"] <= int(dict(cell.grid_point)["training.num_train_steps"])
        examples = check_final_examples(
            str(workdir / "cells" / cell.name), final["eval"], "classification", 16
        )
        evidence.setdefault(cell.strategy, {})[cell.seed] = bootstrap.Evidence(
            record["metric_value"], examples
        )
    rows = _check_tables_against_numpy(workdir, plan)
    markdown = (workdir / "results.md").read_text()
    assert "--grid=training.num_train_steps=3" in markdown.split("|")[0]
    # The smoothing row against full (the first strategy): the interval of the cells' own predictions.
    expected = bootstrap.paired_difference(evidence["smoothing"], evidence["full"], "accuracy")
    smoothing = next(row for row in rows if row["strategy"] == "smoothing")
    assert (smoothing["baseline"], smoothing["difference_resampled"]) == ("full", "seeds × examples")
    assert float(smoothing["difference"]) == expected.difference
    assert (float(smoothing["difference_low"]), float(smoothing["difference_high"])) == (
        expected.low, expected.high,
    )  # fmt: skip

    finals = [workdir / "cells" / c.name / "final_metrics.json" for c in plan.cells]
    stamps = [f.stat().st_mtime_ns for f in finals]
    second = _cli(*args, env=env, timeout=300)
    assert second.returncode == 0
    assert second.stdout.count(": done before") == len(plan.cells)
    assert [f.stat().st_mtime_ns for f in finals] == stamps
    (workdir / "results.csv").unlink()
    assert _cli(*args, "--aggregate_only", "--baseline=smoothing", env=env).returncode == 0
    rows = _check_tables_against_numpy(workdir, plan)
    full = next(row for row in rows if row["strategy"] == "full")
    assert full["baseline"] == "smoothing" and float(full["difference"]) == -expected.difference


def test_peft_strategies_bring_their_learning_rate_unless_one_is_given():
    cells = compare.expand_cells(["full", "lora+fgm", "prompt"], [], [0])
    assert [c.overrides.get("optimizer.learning_rate") for c in cells] == [None, 5e-4, 3e-2]
    grid = [("optimizer.learning_rate", ["1e-4", "3e-4"])]
    assert all(
        "optimizer.learning_rate" not in c.overrides for c in compare.expand_cells(["lora"], grid, [0])
    )
    given = compare.expand_cells(["lora"], [], [0], learning_rate_given=True)
    assert given[0].overrides == {"peft.method": "lora"}


def test_differences_resample_the_predictions_each_cell_wrote(tmp_path):
    """Three strategies over three seeds on one 500-example set, from files as the cells' final reports
    write them: one fixes a third of the baseline's errors on every seed (its gain holds), one is as good
    as the baseline (it does not), one has no predictions on disk (the seeds only)."""
    from jaxft import bootstrap, evaluate

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    records, accuracies = [], {}
    for strategy in ("full", "lora", "bitfit", "rdrop"):
        for seed in range(3):
            correct = rng.random(500) < 0.8
            if strategy == "lora":
                correct = accuracies["full", seed][1] | (rng.random(500) < 1 / 3)
            predicted = np.where(correct, labels, 1 - labels)
            name = f"{strategy}__seed{seed}"
            accuracies[strategy, seed] = (float(correct.mean()), correct)
            if strategy != "rdrop":
                examples = {"task": "classification", "label": labels, "predicted": predicted}
                path = evaluate.examples_path(str(tmp_path / "cells" / name / "eval"), "eval")
                os.makedirs(os.path.dirname(path))
                evaluate.write_examples(path, {**examples, "num_labels": 2, "positive": -1})
            records.append(
                {
                    "cell": name, "strategy": strategy, "grid": {}, "seed": seed, "status": "done",
                    "metric": "accuracy", "metric_value": float(correct.mean()),
                    "final_metrics": {"eval": {"accuracy": float(correct.mean())}}, "trainable_params": None,
                    "total_params": None, "wall_time_s": 1.0, "peak_host_memory_gib": 0.5,
                    "peak_device_memory_gib": None,
                }
            )  # fmt: skip
    rows = compare_results.aggregate(
        records, (), "full", lambda record: compare_runner.final_examples(str(tmp_path), record)
    )
    by = {row["strategy"]: row for row in rows}
    assert by["full"]["difference"] is None and by["full"]["baseline"] is None
    for strategy in ("lora", "bitfit", "rdrop"):
        expected = np.mean([accuracies[strategy, s][0] - accuracies["full", s][0] for s in range(3)])
        assert by[strategy]["difference"] == pytest.approx(expected, abs=1e-12)
        assert by[strategy]["baseline"] == "full"
    assert by["lora"]["difference_holds"] and by["lora"]["difference_resampled"] == "seeds × examples"
    assert not by["bitfit"]["difference_holds"] and by["bitfit"]["difference_resampled"] == "seeds × examples"
    assert by["bitfit"]["difference_low"] < 0 < by["bitfit"]["difference_high"]
    assert by["rdrop"]["difference_resampled"] == "seeds"
    # The same interval as the bootstrap itself gives from the arrays in memory.
    evidence = {
        strategy: {
            s: bootstrap.Evidence(
                accuracies[strategy, s][0],
                {"task": "classification", "label": labels, "num_labels": 2, "positive": -1,
                 "predicted": np.where(accuracies[strategy, s][1], labels, 1 - labels)},
            )
            for s in range(3)
        }
        for strategy in ("full", "lora")
    }  # fmt: skip
    direct = bootstrap.paired_difference(evidence["lora"], evidence["full"], "accuracy")
    assert (by["lora"]["difference_low"], by["lora"]["difference_high"]) == (direct.low, direct.high)

    compare_results.write_all(str(tmp_path), rows, (), "python -m jaxft.compare ...", "max")
    table = (tmp_path / "results.md").read_text().splitlines()
    assert "| Δ vs full [95% CI] | holds |" in table[8]
    lines = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table[10:14]}
    low, high = by["lora"]["difference_low"], by["lora"]["difference_high"]
    assert lines["lora"][2:4] == [f"{by['lora']['difference']:+.4f} [{low:+.4f}, {high:+.4f}]", "yes"]
    assert lines["bitfit"][3] == "no" and lines["rdrop"][3].endswith("(seeds only)")
    assert lines["full"][2:4] == ["(baseline)", "–"]
    assert table[15].startswith("Δ: the row's mean accuracy minus full's") and "paired bootstrap" in table[15]
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
