"""Tests of `jaxft.compare --search optuna` (jaxft/search.py, search_results.py, trial.py).

The orchestration (asking, telling, resuming, tables) runs with a stand-in trial process: a script that
parses its command line as `jaxft.trial` does, reattaches to its trial, reports one value, asks the pruner,
and writes a final_metrics.json whose accuracy is a known function of the trial's values, in about a second.
The pruning hook runs inside the real trainer in-process; marked slow, a whole search with the real trainer
is resumed after a kill and its best trial is trained again as a normal run.
"""

import csv
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from jaxft import compare, compare_runner, search, search_results  # noqa: E402
from jaxft.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "jaxft" / "configs" / "tiny.py")
SPACE = [
    "optimizer.learning_rate=log(1e-4,1e-2)",
    "training.batch_size=choice(8,16)",
    "regularization.rdrop_alpha=float(0,1)",
    "training.num_epochs=int(1,3)",
]
QUICK = [
    "--config.training.num_train_steps=4", "--config.training.eval_every=2", "--config.data.num_buckets=1",
    "--config.data.max_eval_examples=16", "--config.training.tensorboard=false",
]  # fmt: skip

FAKE_TRIAL = """
import json, math, os, signal, sys
sys.path.insert(0, {repo!r})
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "")
_STUDY = flags.DEFINE_string("study", None, "")
_TRIAL = flags.DEFINE_integer("trial", None, "")


def main(argv):
    from jaxft import search

    config, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "seen_config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    if os.path.exists(os.path.join(workdir, "die")):
        os.kill(os.getpid(), signal.SIGKILL)  # a trial killed mid-run
    trial, metric, reported, attrs = search.open_trial(_STUDY.value, _TRIAL.value)
    accuracy = {formula}
    trial.report(accuracy, 1)
    if trial.should_prune():
        trial.set_user_attr(search.PRUNED_ATTR, 1)
    final = {{"params_from_step": 1, "trainable_params": 10, "total_params": 40}}
    final["eval"] = {{metric: accuracy}}
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump(final, f)


app.run(main)
"""
# The stand-in's score: a known function of every searched value.
FORMULA = (
    "round(0.5 + 0.1 * math.log10(config.optimizer.learning_rate / 1e-4) + config.training.batch_size / 1000"
    " + config.regularization.rdrop_alpha / 100 + config.training.num_epochs / 10000, 12)"
)


def _score(params: dict) -> float:
    return round(
        0.5 + 0.1 * math.log10(float(params["optimizer.learning_rate"]) / 1e-4)
        + int(params["training.batch_size"]) / 1000 + float(params["regularization.rdrop_alpha"]) / 100
        + int(params["training.num_epochs"]) / 10000,
        12,
    )  # fmt: skip


@pytest.fixture
def fake_trial(tmp_path) -> tuple[str, ...]:
    script = tmp_path / "fake_trial.py"
    script.write_text(FAKE_TRIAL.format(repo=str(REPO), formula=FORMULA))
    return (sys.executable, str(script))


def _search(trainer=None, trials=4, space=SPACE, pruner="median", config_args=(), seeds="0"):
    found = compare.make_search(TINY, list(config_args), "full", seeds, trials, space, pruner)
    if trainer is None:
        return found
    return dataclasses.replace(found, plan=dataclasses.replace(found.plan, trainer=trainer))


def _study(workdir):
    return optuna.load_study(
        study_name=search.STUDY_NAME, storage=search._storage(search.journal_path(workdir))
    )


def _csv_rows(workdir) -> list[dict]:
    with open(Path(workdir) / "results.csv") as f:
        return list(csv.DictReader(f))


# ---- the space and the pruner -----------------------------------------------------------------------------
def test_space_flags_parse_into_optuna_distributions():
    log, choice, real, integer = search.parse_space(SPACE)
    assert (log.key, log.kind, log.low, log.high) == ("optimizer.learning_rate", "log", 1e-4, 1e-2)
    assert log.distribution() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert real.distribution() == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert choice.distribution() == optuna.distributions.CategoricalDistribution(("8", "16"))
    assert integer.distribution() == optuna.distributions.IntDistribution(1, 3)
    assert [d.spec for d in (log, choice, real, integer)] == [
        "optimizer.learning_rate=log(0.0001,0.01)", "training.batch_size=choice(8,16)",
        "regularization.rdrop_alpha=float(0.0,1.0)", "training.num_epochs=int(1,3)",
    ]  # fmt: skip
    assert [search.parse_dimension(d.spec) for d in (log, choice, real, integer)] == [
        log,
        choice,
        real,
        integer,
    ]
    assert log.examples() == ("0.0001", "0.01") and choice.examples() == ("8", "16")
    assert log.text(3.0e-4) == "0.0003" and integer.text(2) == "2" and choice.text("16") == "16"
    tuples = search.parse_dimension("augment.eda_ops=choice(('swap',),('swap','delete'))")
    assert tuples.choices == ("('swap',)", "('swap','delete')")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("optimizer.learning_rate", "expected KEY=log(LOW,HIGH), float(LOW,HIGH), int(LOW,HIGH) or choice("),
        ("optimizer.learning_rate=uniform(0,1)", "unknown kind 'uniform'; one of log, float, int, choice"),
        ("optimizer.learning_rate=log(0,1e-3)", "log(LOW,HIGH) needs LOW > 0"),
        ("optimizer.learning_rate=log(1e-3,1e-5)", "the bounds must be finite with LOW < HIGH"),
        ("optimizer.learning_rate=float(1)", "float(LOW,HIGH) takes two bounds, not 1"),
        ("optimizer.learning_rate=float(a,1)", "'a' is not a number"),
        ("training.batch_size=int(8,16.5)", "'16.5' is not an integer"),
        ("training.batch_size=choice(8,,16)", "an empty choice (a stray comma?)"),
        ("training.batch_size=choice(8,8)", "a choice is repeated"),
    ],
)
def test_bad_space_flags_are_one_line_naming_the_flag(spec, message):
    with pytest.raises(UserError) as info:
        search.parse_dimension(spec)
    assert str(info.value).startswith(f"--space={spec!r}: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"space": []}, "--search needs at least one --space KEY=kind(...)"),
        ({"space": ["optimizer.lr=log(1e-5,1e-3)"]}, "--space: unknown config key optimizer.lr (not in "),
        ({"space": SPACE[:1] * 2}, "--space: key optimizer.learning_rate is given twice"),
        (
            {"config_args": ["--config.training.batch_size=8"]},
            "config key training.batch_size is set by both --config.training.batch_size and --space",
        ),
        ({"trials": 0}, "--search needs --trials N with N >= 1, not 0"),
        ({"seeds": "0,1"}, "--search takes one strategy and one seed (--strategies, --seeds)"),
        ({"pruner": "hyperband"}, "--pruner='hyperband': expected median, none, threshold(lower=V)"),
        (
            {"space": ["optimizer.b1=float(0.5,1.0)"]},
            "config optimizer.b1=1.0 must be in [0, 1) (--space=optimizer.b1=float(0.5,1.0), value 1.0)",
        ),
        (
            {"space": ["training.batch_size=float(8,16)"]},
            "(--space=training.batch_size=float(8.0,16.0), value",
        ),
    ],
)
def test_a_bad_search_is_one_user_error_before_anything_runs(kwargs, message):
    with pytest.raises(UserError) as info:
        _search(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pruner_forms():
    assert search.parse_pruner("median") == "median"
    assert search.parse_pruner("threshold(lower = 0.5)") == "threshold(lower=0.5)"
    pruner = search.make_pruner("threshold(upper=2)")
    assert isinstance(pruner, optuna.pruners.ThresholdPruner)
    assert isinstance(search.make_pruner("none"), optuna.pruners.NopPruner)


def test_cli_bad_space_exits_2_with_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "search"
    args = [f"--config={TINY}", f"--workdir={workdir}", "--search=optuna", "--trials=2"]
    result = subprocess.run(
        [sys.executable, "-m", "jaxft.compare", *args, "--space=optimizer.learning_rate=log(0,1)"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    expected = "error: --space='optimizer.learning_rate=log(0,1)': log(LOW,HIGH) needs LOW > 0"
    assert result.stderr.strip().splitlines() == [expected]
    assert not workdir.exists()


# ---- the study: asking, telling, resuming -----------------------------------------------------------------
def test_a_search_runs_every_trial_tells_the_study_and_writes_its_tables(tmp_path, fake_trial):
    workdir = tmp_path / "search"
    found = _search(fake_trial)
    results = search.run_trials(found, str(workdir), range(4))
    assert [(record["cell"], record["status"], ran) for record, ran in results] == [
        (f"trial{i:04d}", "done", True) for i in range(4)
    ]
    study = _study(workdir)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs["search"] == found.definition
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [(t.number, t.user_attrs["cell"], t.state.name) for t in trials] == [
        (i, i, "COMPLETE") for i in range(4)
    ]
    for trial, (record, _) in zip(trials, results, strict=True):
        texts = {d.key: d.text(trial.params[d.key]) for d in found.space}
        seen = json.loads((workdir / "cells" / record["cell"] / "seen_config.json").read_text())
        assert seen["optimizer"]["learning_rate"] == trial.params["optimizer.learning_rate"]
        assert seen["training"]["batch_size"] == int(trial.params["training.batch_size"])
        assert (seen["seed"], seen["training"]["num_epochs"]) == (0, trial.params["training.num_epochs"])
        assert trial.value == record["metric_value"] == _score(texts)
        assert (record["trial"], record["trial_state"], record["params"]) == (trial.number, "complete", texts)
        cell_json = json.loads((workdir / "cells" / record["cell"] / "cell.json").read_text())
        assert cell_json == record

    best = search_results.write_all(found, str(workdir), "python -m jaxft.compare --the-command")
    values = [t.value for t in trials]
    assert best == {"index": values.index(max(values)), "metric": "accuracy", "metric_value": max(values)}
    assert best["metric_value"] == study.best_value and best["index"] == study.best_trial.user_attrs["cell"]
    rows = _csv_rows(workdir)
    assert [float(r["value"]) for r in rows] == values
    assert [float(r["best_so_far"]) for r in rows] == [max(values[: i + 1]) for i in range(4)]
    assert [r["best"] for r in rows] == [str(i == best["index"]) for i in range(4)]
    assert [r["optimizer.learning_rate"] for r in rows] == [
        r["params"]["optimizer.learning_rate"] for r, _ in results
    ]
    markdown = (workdir / "results.md").read_text()
    assert (
        f"**Best trial: {best['index']}** (trial{best['index']:04d}), accuracy = {max(values):.4f}"
        in markdown
    )
    best_texts = results[best["index"]][0]["params"]
    alone = " ".join(f"--config.{key}={value}" for key, value in best_texts.items())
    assert f"--workdir={workdir / 'best'} --config.seed=0 {alone}\n" in markdown
    assert (workdir / search_results.SEARCH_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same seed asks the same values in an empty workdir (TPE's first trials are seeded by index).
    again = tmp_path / "again"
    study_again = search.open_study(found, str(again), create=True)
    asked = [search.trial_for_cell(found, study_again, i).params for i in range(4)]
    assert asked == [t.params for t in trials]
    assert search.list_trials(found, str(again))[0].endswith("\trunning")


def test_a_killed_trial_keeps_its_values_and_a_rerun_resumes_only_the_unfinished(tmp_path, fake_trial):
    workdir = tmp_path / "search"
    found = _search(fake_trial, trials=3)
    (workdir / "cells" / "trial0001").mkdir(parents=True)
    (workdir / "cells" / "trial0001" / "die").touch()  # the stand-in SIGKILLs itself
    first = search.run_trials(found, str(workdir), range(3))
    assert [record["status"] for record, _ in first] == ["done", "failed", "done"]
    assert first[1][0]["error"].startswith("killed by SIGKILL")
    assert first[1][0]["trial_state"] == "running"
    asked = {t.user_attrs["cell"]: t.params for t in _study(workdir).trials}
    stamps = [(workdir / "cells" / f"trial{i:04d}" / "final_metrics.json").stat().st_mtime_ns for i in (0, 2)]

    (workdir / "cells" / "trial0001" / "die").unlink()
    second = search.run_trials(found, str(workdir), range(3))
    assert [(record["status"], ran) for record, ran in second] == [
        ("done", False),
        ("done", True),
        ("done", False),
    ]
    trials = _study(workdir).trials
    assert len(trials) == 3 and {t.user_attrs["cell"]: t.params for t in trials} == asked
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert stamps == [
        (workdir / "cells" / f"trial{i:04d}" / "final_metrics.json").stat().st_mtime_ns for i in (0, 2)
    ]
    search_results.write_all(found, str(workdir), "cmd")
    assert [r["state"] for r in _csv_rows(workdir)] == ["complete"] * 3


def test_cell_asks_its_trial_when_it_runs_and_list_shows_trials_as_cells(tmp_path, fake_trial):
    workdir = tmp_path / "search"
    found = _search(fake_trial, trials=3)
    assert search.list_trials(found, str(workdir)) == [f"{i}\ttrial{i:04d}\tnot asked yet" for i in range(3)]
    assert not workdir.exists()  # listing writes nothing
    [(record, ran)] = search.run_trials(found, str(workdir), [2])  # --cell 2, first of its array to run
    assert ran and record["trial"] == 0 and record["cell"] == "trial0002"
    lines = search.list_trials(found, str(workdir))
    assert lines[:2] == ["0\ttrial0000\tnot asked yet", "1\ttrial0001\tnot asked yet"]
    values = ",".join(f"{key}={value}" for key, value in record["params"].items())
    assert lines[2] == f"2\ttrial0002\t{values}\tcomplete"
    other = dataclasses.replace(found, pruner="none")
    with pytest.raises(UserError, match="its study was made with another pruner"):
        search.run_trials(other, str(workdir), [0])


def test_a_pruned_trial_is_recorded_as_pruned_and_its_cell_finished(tmp_path, fake_trial):
    workdir = tmp_path / "search"
    found = _search(fake_trial, trials=2, pruner="threshold(lower=2.0)")  # every score is below 2
    results = search.run_trials(found, str(workdir), range(2))
    assert [(r["status"], r["trial_state"], r["pruned_at_step"]) for r, _ in results] == [
        ("done", "pruned", 1)
    ] * 2
    assert [t.state.name for t in _study(workdir).trials] == ["PRUNED", "PRUNED"]
    assert search_results.write_all(found, str(workdir), "cmd") is None  # no complete trial: no best
    assert [r["state"] for r in _csv_rows(workdir)] == ["pruned", "pruned"]


# ---- with the real trainer --------------------------------------------------------------------------------
def test_the_pruning_hook_stops_the_real_trainer_when_the_pruner_says_so(tmp_path):
    from jaxft import trial as trial_lib
    from jaxft.training import train, writers

    workdir = tmp_path / "search"
    found = _search(trials=1, space=SPACE[:1], pruner="threshold(lower=1.01)")  # accuracy is never above 1
    study = search.open_study(found, str(workdir), create=True)
    cell = search.trial_cell(found, search.trial_for_cell(found, study, 0), str(workdir))
    trial, metric, reported, attrs = search.open_trial(search.journal_path(workdir), 0)
    assert (metric, reported, attrs) == ("accuracy", set(), {"cell": 0})
    directory = compare_runner.cell_dir(str(workdir), cell)
    config = compare.parse_cell_config(TINY, [*QUICK, *cell.config_args()])
    hook = trial_lib.Pruning(trial, metric, reported)
    final = train.train_and_evaluate(config, directory, train.Extensions(hooks=(hook,)))

    records = writers.read_metrics(os.path.join(directory, "metrics.jsonl"))
    assert [(r["kind"], r["step"]) for r in records] == [("train", 2), ("eval", 2)]  # of 4 steps
    assert os.listdir(os.path.join(directory, "checkpoints", "latest")) == ["2"]
    frozen = _study(workdir).trials[0]
    assert frozen.intermediate_values == {2: records[1]["accuracy"]}
    assert frozen.user_attrs == {"cell": 0, search.PRUNED_ATTR: 2}
    saved = json.loads(Path(directory, "final_metrics.json").read_text())
    assert saved["eval"] == final["eval"] and saved["params_from_step"] == 2
    record = compare_runner.cell_record(cell, directory, ["cmd"], {"wall_time_s": 1.0})
    record = search.settle(study, cell, record, directory)
    assert (record["status"], record["trial_state"], record["pruned_at_step"]) == ("done", "pruned", 2)
    assert _study(workdir).trials[0].state.name == "PRUNED"

    # A trial pruned by a process that was killed before its reports: the next one stops at the start.
    again = trial_lib.Pruning(trial, metric, {2}, pruned_at=2)
    run = type(
        "Run", (), {"stop": None, "request_stop": lambda self, reason: setattr(self, "stop", reason)}
    )()
    again.start(run)
    assert run.stop == "Trial 0 was pruned at step 2"


def _cli(*args, env, timeout=1200):
    return subprocess.run(
        [sys.executable, "-m", "jaxft.compare", *args], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_a_real_search_resumes_and_its_best_trial_reproduces_as_a_normal_run(tmp_path):
    workdir = tmp_path / "search"
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device per run: a quicker compile
    space = ["optimizer.learning_rate=log(1e-4,1e-2)", "training.batch_size=choice(8,16)"]
    args = [f"--config={TINY}", f"--workdir={workdir}", "--search=optuna", "--trials=3"]
    args += [f"--space={spec}" for spec in space] + QUICK
    first = _cli(*args, "--cell=0", env=env)  # one job of an array, or a search killed after its first trial
    assert first.returncode == 0, first.stderr[-2000:]
    found = _search(trials=3, space=space, config_args=QUICK)
    # ... and one killed right after asking for trial 1: its values are kept for the rerun.
    asked = search.trial_for_cell(found, search.open_study(found, str(workdir), create=True), 1)
    final_0 = workdir / "cells" / "trial0000" / "final_metrics.json"
    stamp = final_0.stat().st_mtime_ns

    second = _cli(*args, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "[1/3] trial0000: done before" in second.stdout
    assert final_0.stat().st_mtime_ns == stamp
    trials = {t.user_attrs["cell"]: t for t in _study(workdir).trials}
    assert sorted(trials) == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials.values())
    assert (trials[1].number, trials[1].params) == (asked.number, asked.params)
    rows = _csv_rows(workdir)
    [best] = [row for row in rows if row["best"] == "True"]
    assert float(best["value"]) == max(t.value for t in trials.values())

    # The best trial's values, trained by the jaxft.main command results.md shows, as written (the shipped
    # config by its module name), give the very same final metrics.
    markdown = (workdir / "results.md").read_text()
    shown = markdown.split("Trained as a run of its own:")[1].split("```bash\n")[1].split("\n```")[0]
    words = shlex.split(shown)
    assert words[:4] == ["python", "-m", "jaxft.main", "--config=jaxft.configs.tiny"]
    assert f"--config.training.batch_size={best['training.batch_size']}" in words
    again = workdir / "best"
    run = subprocess.run(
        [sys.executable, *words[1:]], capture_output=True, text=True, cwd=REPO, env=env, timeout=1200
    )
    assert run.returncode == 0, run.stderr[-2000:]
    trial_final = json.loads((workdir / "cells" / best["cell"] / "final_metrics.json").read_text())
    assert json.loads((again / "final_metrics.json").read_text())["eval"] == trial_final["eval"]
    assert trial_final["eval"]["accuracy"] == float(best["value"])
