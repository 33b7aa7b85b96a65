"""Tests for jaxft.training.trainer: the hooks' cadence and stop requests, and loss terms through `fit`."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxft.tasks import StepLoss
from jaxft.training import parallel, trainer


class _Calls(trainer.Hook):
    def __init__(self, every, name, log):
        self.every, self.name, self.log = every, name, log

    def start(self, run):
        self.log.append((self.name, "start", run.step))

    def __call__(self, run, step, metrics):
        self.log.append((self.name, step))

    def end(self, run):
        self.log.append((self.name, "end", run.step))


def _count_step(state, batch):
    return state + 1, {"loss": jnp.asarray(float(batch))}


def _run(hooks, start=0, total=10):
    run = trainer.Run(start, start, total, parallel.create("pmap", jax.devices()[:1]))
    return trainer.run_steps(run, _count_step, iter(range(100)), hooks, sync=False)


def test_hooks_are_called_at_their_cadence_the_last_step_and_in_order():
    log = []
    run = _run([_Calls(3, "a", log), _Calls(0, "b", log), _Calls(4, "c", log)], start=1)
    assert run.step == 10 and run.state == 10 and run.stop is None
    assert log == [
        ("a", "start", 1), ("b", "start", 1), ("c", "start", 1),
        ("a", 3), ("c", 4), ("a", 6), ("c", 8), ("a", 9), ("a", 10), ("b", 10), ("c", 10),
        ("a", "end", 10), ("b", "end", 10), ("c", "end", 10),
    ]  # fmt: skip


def test_a_stop_request_ends_the_run_after_the_step_and_the_checkpoint_saves_it():
    saved, log = [], []
    stop_at_5 = trainer.Every(1, lambda run, step, m: step == 5 and run.request_stop("enough"))
    checkpoint = trainer.Checkpoint(4, saved.append, lambda: saved[-1] if saved else None, lambda: None)
    run = _run([stop_at_5, checkpoint, _Calls(1, "after", log)])
    assert run.step == 5 and run.stop == "enough"
    assert saved == [4, 5]  # its cadence, then the stopping step; the end finds 5 saved already
    assert log[-2:] == [("after", 5), ("after", "end", 5)]  # the step's later hooks and every end still run


def test_an_exception_request_wins_is_raised_after_the_steps_hooks_and_skips_the_ends():
    saved, log = [], []

    def request(run, step, metrics):
        if step == 2:
            run.request_stop(KeyboardInterrupt("stop"))
            run.request_stop("a message does not replace it")

    checkpoint = trainer.Checkpoint(10, saved.append, lambda: None, lambda: None)
    with pytest.raises(KeyboardInterrupt):
        _run([trainer.Every(1, request), checkpoint, _Calls(5, "other", log)])
    assert saved == [2] and log == [("other", "start", 0)]


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic=True):
        return nn.Dense(1, use_bias=False)(input_ids.astype(jnp.float32))[:, 0]


@dataclasses.dataclass(frozen=True)
class _SquaredError(StepLoss):  # a loss of the trainer's own: StepLoss's defaults for the rest
    def loss(self, outputs, batch):
        return jnp.sum(batch["weights"] * (outputs - batch["targets"]) ** 2), jnp.sum(batch["weights"])


def _batch(rows=8):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, (rows, 3)).astype(np.int32)
    weights = np.ones(rows, np.float32)
    weights[-2:] = 0  # padding rows
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
        "targets": rng.normal(size=rows).astype(np.float32),
        "weights": weights,
    }


@pytest.mark.parametrize("devices", [1, 8])
def test_fit_adds_a_loss_term_once_per_step_on_any_device_count(devices):
    params = {"Dense_0": {"kernel": np.full((3, 1), 0.5, np.float32)}}
    batch = _batch()
    expected = np.sum(batch["weights"] * (batch["input_ids"].sum(1) * 0.5 - batch["targets"]) ** 2) / 6

    def loss(terms):
        recorded = trainer.RecordLoss()
        trainer.fit(
            params, optax.sgd(0.0), [batch], 1, model=_Linear(), task=_SquaredError(), seed=0,
            hooks=[recorded], parallelism=parallel.create("pmap", jax.devices()[:devices]), loss_terms=terms,
        )  # fmt: skip
        return recorded.losses[0]

    np.testing.assert_allclose(loss(()), expected, rtol=1e-6)
    # A mean over the batch's weight and a constant both count once, however the rows are split.
    # (A device may hold padding rows only: its weight is 0, and so is what its term adds.)
    mean_target = lambda p, b, o: jnp.sum(b["weights"] * b["targets"]) / jnp.maximum(jnp.sum(b["weights"]), 1)  # noqa: E731, E501
    np.testing.assert_allclose(loss((lambda p, b, o: 2.0,)), expected + 2.0, rtol=1e-6)
    np.testing.assert_allclose(loss((mean_target,)), expected + batch["targets"][:6].mean(), rtol=1e-5)


def test_a_config_run_takes_the_callers_loss_term_transform_and_hook(tmp_path):
    from jaxft.configs import tiny
    from jaxft.training import train

    config = tiny.get_config()
    config.training.num_train_steps, config.training.eval_every = 4, 4
    seen, recorded = [], trainer.RecordLoss()

    def transform(batch):
        seen.append(batch["input_ids"].shape[0])
        return batch

    extensions = train.Extensions(loss_terms=(lambda p, b, o: 100.0,), transform=transform, hooks=(recorded,))
    train.train_and_evaluate(config, str(tmp_path / "run"), extensions)
    assert seen[:4] == [16] * 4  # every train batch (prefetching may take one or two more)
    assert len(recorded.losses) == 4 and all(100 < loss < 110 for loss in recorded.losses)
