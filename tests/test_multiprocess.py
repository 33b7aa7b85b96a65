"""Two `jax.distributed` processes on one machine (loopback coordinator, one CPU device each, or two under
pmap) train exactly like one process with the same global batch (and the same two train-data shards), each
tokenising only its own half of the train split, and only process 0 writes logs and reports; under pmap and
under fsdp, whose checkpoint each process writes its own shards of."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxft.training import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = [
    "--config.training.num_train_steps=6",
    "--config.training.eval_every=3",
    "--config.training.log_every=1",
    "--config.model.hidden_dropout=0",
    "--config.model.attention_dropout=0",
    "--config.model.classifier_dropout=0",
    "--config.training.progress_bar=false",
    "--config.training.tensorboard=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("parallelism, devices_each", [("pmap", 1), ("fsdp", 1), ("pmap", 2)])
def test_two_processes_equal_one_process(tmp_path, parallelism, devices_each):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    # Two devices in each process: the per-device step spans four, each process feeding its own two rows.
    worker_env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}"}
    base = [
        sys.executable,
        "train.py",
        "--config",
        "jaxft/configs/tiny.py",
        f"--config.training.parallelism={parallelism}",
        "--config.training.fsdp_min_size=0",  # fsdp: every leaf split over the two processes' devices
    ]
    single = subprocess.run(
        [*base, "--workdir", str(tmp_path / "one"), *COMMON, "--config.data.num_shards=2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    port = _free_port()
    # timeout -s KILL: a worker that called jax.distributed.initialize ignores SIGTERM
    # (docs/platform-notes.md).
    workers = [
        subprocess.Popen(
            [
                "timeout",
                "-s",
                "KILL",
                "300",
                *base,
                "--workdir",
                str(tmp_path / "two"),
                *COMMON,
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate() for w in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-6 * abs(a)
    report_one = json.loads((tmp_path / "one/eval/final_eval.json").read_text())
    report_two = json.loads((tmp_path / "two/eval/final_eval.json").read_text())
    assert report_two["confusion_matrix"] == report_one["confusion_matrix"]
    assert (
        report_two["report"]["macro avg"]["support"] == 100
    )  # every dev example once, across both processes
    assert "precision" in outputs[0][0] and "precision" not in outputs[1][0]  # only process 0 prints reports
    # Each process read its own half of the 404 train examples (the default: one shard per process).
    assert "train: 404 of 404 examples (shards 0-1 of 2)" in single.stderr
    assert "train: 202 of 404 examples (shards 0-0 of 2)" in outputs[0][1]
    assert "train: 202 of 404 examples (shards 1-1 of 2)" in outputs[1][1]
    assert f"global batch 16 on {2 * devices_each} devices, {parallelism}" in outputs[0][1]
    # The final checkpoints hold the same parameters. pmap's state is written once, by process 0; fsdp's
    # by both processes, each its own shards (Orbax's per-process OCDBT stores, about half the data each).
    stores = sorted(p.name for p in (tmp_path / "two/checkpoints/latest/6/state").glob("ocdbt.process_*"))
    writers = 1 if parallelism == "pmap" else 2
    assert stores == [f"ocdbt.process_{i}" for i in range(writers)]
    expected = _saved_params(tmp_path / "one")
    saved = _saved_params(tmp_path / "two", template=expected)
    assert jax.tree.structure(saved) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(saved), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _saved_params(workdir, template=None):
    """The newest checkpoint's parameters as host arrays: as saved (a one-process run), or read whole into
    `template`'s shapes whatever layout wrote them."""
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    if template is None:
        params = jax.device_get(ckpts.latest.restore(ckpts.latest_step())["state"]["params"])
    else:
        params = ckpts.restore_latest_params(template)
    ckpts.close()
    return params
