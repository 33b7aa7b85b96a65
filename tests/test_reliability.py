"""Bad days: a non-finite loss, and SIGTERM (pre-emption) in the middle of a run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxft import predict
from jaxft.configs import tiny
from jaxft.data import readers
from jaxft.training import pipeline, train
from tests.helpers import latest_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _poison_step(monkeypatch, bad_step: int):
    """Makes the training batch of `bad_step` carry a NaN weight, so its loss and gradients are NaN."""
    real, calls = pipeline.train_batches, []

    def poisoned(*args, **kwargs):
        for step, batch in enumerate(real(*args, **kwargs), start=1):
            calls.append(step)
            if step == bad_step:
                batch = {**batch, "weights": batch["weights"] * np.float32("nan")}
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", poisoned)


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoints_finite(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3)
    config = tiny.get_config()
    config.training.checkpoint_every = 2
    with pytest.raises(FloatingPointError, match=r"1 step\(s\) by step 4"):
        train.train_and_evaluate(config, str(tmp_path))
    step, state = latest_state(tmp_path)
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_skip_policy_skips_a_non_finite_step_and_finishes(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3)
    config = tiny.get_config()
    config.training.max_nonfinite_steps = 1
    train.train_and_evaluate(config, str(tmp_path))
    step, state = latest_state(tmp_path)
    assert step == 12 and int(state["nonfinite_steps"]) == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_sigterm_or_ctrl_c_saves_the_current_step_exits_non_zero_and_the_rerun_resumes(
    tmp_path, signum, status
):
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        "--config",
        "jaxft/configs/tiny.py",
        "--workdir",
        str(workdir),
        "--config.training.num_train_steps=100000",
        "--config.training.eval_every=100000",
        "--config.training.checkpoint_every=100000",
        "--config.training.log_every=1",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    # SIGINT as from a terminal: a runner that started the tests in the background may ignore it, and the
    # child would inherit that. A handler (not SIG_IGN) in this process becomes the default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-2000:]
    sent = time.time()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert time.time() - sent < 30
    assert process.returncode == status, stderr[-2000:]
    assert f"pre-empted ({signum.name})" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    step, _ = latest_state(workdir)
    assert step >= 3  # the step it was on when the signal came, not an older one
    rerun = subprocess.run(
        command[:6] + ["--config.training.num_train_steps=" + str(step + 2)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"Resuming from step {step}" in rerun.stderr
    assert latest_state(workdir)[0] == step + 2


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_run, tmp_path, caplog):
    import shutil

    workdir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    for path in sorted((copy / "checkpoints/latest/12/state").rglob("*")):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncate every data file
    with caplog.at_level("INFO"):
        train.train_and_evaluate(tiny.get_config(), str(copy))
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpoint step 12 is damaged" in m for m in messages)
    assert any("Resuming from step 8" in m for m in messages)
    _, expected = latest_state(workdir)
    _, resumed = latest_state(copy)
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], expected["params"])


def test_resuming_with_a_changed_config_keeps_the_previous_one(tiny_run, tmp_path, caplog):
    import json
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy)
    before = (copy / "config.json").read_text()
    config = tiny.get_config()
    config.training.num_train_steps, config.training.log_every = 14, 1
    with caplog.at_level("INFO"):
        train.train_and_evaluate(config, str(copy))
    assert json.loads((copy / "config.before-step-12.json").read_text()) == json.loads(before)
    assert json.loads((copy / "config.json").read_text())["training"]["num_train_steps"] == 14
    changed = [r.getMessage() for r in caplog.records if "changed config" in r.getMessage()]
    assert changed == [
        "Resuming with a changed config (training.log_every, training.num_train_steps); the previous one is "
        f"kept as {copy / 'config.before-step-12.json'}"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [4, 7, 10])
def test_sigkill_then_resume_is_bit_identical(tiny_run, tmp_path, kill_after):
    """Killed without warning at three points; the resumed run ends exactly where an uninterrupted one did."""
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        "--config",
        "jaxft/configs/tiny.py",
        "--workdir",
        str(workdir),
        "--config.training.checkpoint_every=2",
        "--config.training.log_every=1",
    ]
    # This process's XLA flags (conftest's 8 devices and any the caller set): bit-identity is promised only
    # to the same program, so the run compared against (tiny_run, in this process) must compile as this one.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ["XLA_FLAGS"]}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    latest = workdir / "checkpoints" / "latest"
    # A kill can land before the first save is complete: then the rerun starts afresh, which is also right.
    saved = latest.exists() and any(p.name.isdigit() for p in latest.iterdir())
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert ("Resuming from step" in rerun.stderr) == saved
    step, resumed = latest_state(workdir)
    _, expected = latest_state(tiny_run[0])
    assert step == 12
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], expected["params"])
    jax.tree.map(np.testing.assert_array_equal, resumed["opt_state"], expected["opt_state"])


def test_a_warm_start_never_writes_into_the_other_run(tiny_run, tmp_path):
    import hashlib

    source, _ = tiny_run

    def snapshot():
        return {
            str(p.relative_to(source)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(source.rglob("*"))
        }

    before = snapshot()
    config = tiny.get_config()
    config.model.init_from_workdir = str(source)
    config.training.num_train_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "warm"))
    assert snapshot() == before


def _memory_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts the process's memory maps (Linux)")
def test_training_and_prediction_free_what_they_compiled(tiny_run, tmp_path):
    # jax.pmap keeps mapped functions' executables for the life of the process (parallel.map_devices), so
    # with it each job below left ~850 maps behind, and a sweep of jobs in one process reached
    # vm.max_map_count, where XLA:CPU segfaults. The per-device steps' executables must go with the job.
    config = tiny.get_config()
    config.training.num_train_steps = 2
    run = predict.load_run(str(tiny_run[0]))
    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")

    def jobs(name):
        train.train_and_evaluate(config, str(tmp_path / name))
        predict.predict_probabilities(run, examples)

    jobs("first")  # one-time allocations (imports, thread pools, allocator arenas)
    before = _memory_maps()
    jobs("second")
    assert _memory_maps() - before < 100


def test_a_diverged_run_exits_3_from_the_command_line_with_one_error_line(tmp_path):
    # An L2 coefficient near float32's largest value makes 0.5 * coefficient * ||w||^2 infinite at step 1
    # (a tiny model's ||w||^2 is about 10): the loss of every step is non-finite.
    command = [
        sys.executable,
        "train.py",
        "--config",
        "jaxft/configs/tiny.py",
        "--workdir",
        str(tmp_path / "run"),
        "--config.optimizer.l2_penalty=3e38",
        "--config.training.log_every=1",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: non-finite loss or gradients in 1 step(s) by step 1 (training.max_nonfinite_steps=0); those "
        "updates were skipped, so the saved checkpoints hold finite parameters"
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
