"""The step functions on forced host devices: device-count invariance, accumulation, exact evaluation,
bf16 compute, no recompilation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxft.configs import default
from jaxft.data import batching
from jaxft.models.heads import SequenceClassifier
from jaxft.training import optim, parallel, pipeline, steps
from jaxft.training.train import eval_counts
from tests.helpers import (
    classification_batch,
    init_params,
    jaxpr_eqns,
    loss_and_grads,
    random_features,
    rel_error,
    tiny_bert,
)

CONFIG = tiny_bert(50)
LABELS = 3


def _model(dtype=jnp.float32):
    return SequenceClassifier(CONFIG, num_labels=LABELS, dtype=dtype)


def _batch(size: int, length: int = 12, padding_rows: int = 0, seed: int = 0) -> dict:
    return classification_batch(
        size, CONFIG.vocab_size, LABELS, length=length, padding_rows=padding_rows, seed=seed
    )


def test_eight_devices_equal_one_device_on_the_same_global_batch():
    assert jax.device_count() == 8
    params, batch = init_params(_model()), _batch(16, padding_rows=3)
    loss1, grads1, count1 = loss_and_grads(_model(), params, batch, 1)
    loss8, grads8, count8 = loss_and_grads(_model(), params, batch, 8)
    assert count1 == count8 == 13
    assert abs(loss8 - loss1) <= 1e-6 * abs(loss1)
    assert rel_error(grads8, grads1) <= 1e-6
    # One full optimizer step on each: the updated models give the same logits.
    tx = optim.create_optimizer(default.get_config().optimizer, 10)
    logits = []
    for n in (1, 8):
        devices = jax.devices()[:n]
        p_step = parallel.pmap_train_step(
            steps.train_step, devices=devices, model=_model(), tx=tx, deterministic=True
        )
        state, _ = p_step(
            parallel.replicate(steps.create_train_state(params, tx, 0), devices),
            parallel.split_for_devices(batch, n),
        )
        new = parallel.unreplicate(state.params)
        logits.append(
            _model().apply(
                {"params": new}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
            )
        )
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5, rtol=0)


def test_padding_rows_do_not_change_loss_or_gradients():
    params, batch = init_params(_model()), _batch(16, padding_rows=4)
    real = {k: v[:12] for k, v in batch.items()}
    padded_loss, padded_grads, _ = loss_and_grads(_model(), params, batch, 1)
    real_loss, real_grads, _ = loss_and_grads(_model(), params, {**_batch(12), **real}, 1)
    assert abs(padded_loss - real_loss) <= 1e-6 * real_loss
    assert rel_error(padded_grads, real_grads) <= 1e-6


def test_accumulated_micro_batches_equal_one_large_batch():
    params, batch = init_params(_model()), _batch(16, padding_rows=2)
    loss1, grads1, _ = loss_and_grads(_model(), params, batch, 1, accum_steps=1)
    loss4, grads4, _ = loss_and_grads(_model(), params, batch, 1, accum_steps=4)
    assert abs(loss4 - loss1) <= 1e-6 * loss1
    assert rel_error(grads4, grads1) <= 1e-6


@jax.jit
def _alone(params, ids):
    """One unpadded example's logits: compiled once per length for every case, rather than run op by op."""
    return _model().apply({"params": params}, ids, jnp.ones_like(ids), jnp.zeros_like(ids))


@functools.cache
def _eval_case(num_examples: int):
    """A dev split of `num_examples` random rows and, from every example alone on the host, unpadded:
    the confusion matrix, the loss sum and the smallest margin between the two top logits (read-only,
    shared by the device counts)."""
    model, rng = _model(), np.random.default_rng(num_examples)
    params = init_params(model)
    features = random_features(rng, num_examples, CONFIG.vocab_size)
    labels = rng.integers(0, LABELS, num_examples).astype(np.int32)
    split = pipeline.Split("dev", "dev.jsonl", [None] * num_examples, labels, features)
    reference, margins, loss_sum = np.zeros((LABELS, LABELS), np.int64), [], 0.0
    for i in range(num_examples):
        n, ids = features["length"][i], features["input_ids"][i : i + 1]
        logits = np.asarray(_alone(params, ids[:, :n]))[0]
        reference[labels[i], logits.argmax()] += 1
        margins.append(np.sort(logits)[-1] - np.sort(logits)[-2])
        loss_sum += float(jax.nn.logsumexp(logits) - logits[labels[i]])
    return params, split, reference, loss_sum, min(margins)


@pytest.mark.parametrize("num_devices", [1, 3, 8])
def test_evaluation_counts_every_example_exactly_once(num_devices):
    # One compiled evaluation per device count, over splits that fill the last batch less, exactly or more.
    devices = jax.devices()[:num_devices]
    p_eval = parallel.pmap_eval_step(steps.eval_step, devices=devices, model=_model(), num_labels=LABELS)
    for num_examples in (23, 24, 25):
        params, split, reference, loss_sum, margin = _eval_case(num_examples)
        totals = eval_counts(
            p_eval,
            parallel.replicate(params, devices),
            split,
            [8, 20],
            parallel.eval_batch_size(8, num_devices),
            num_devices,
        )
        assert int(totals["count"]) == num_examples == int(totals["confusion"].sum())
        assert margin > 1e-3, "examples too close to a decision boundary for an exact comparison"
        np.testing.assert_array_equal(totals["confusion"], reference)
        np.testing.assert_allclose(float(totals["loss_sum"]), loss_sum, rtol=1e-5)


def test_bf16_computes_in_bf16_and_keeps_float32_state():
    model = _model(jnp.bfloat16)
    params = init_params(model)
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    batch = _batch(8)
    jaxpr = jax.make_jaxpr(
        lambda p: model.apply(
            {"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
    )(params)
    dots = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"]
    dots += [
        e
        for eqn in jaxpr.jaxpr.eqns
        for sub in jax.extend.core.jaxprs_in_params(eqn.params)
        for e in sub.eqns
        if e.primitive.name == "dot_general"
    ]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for eqn in dots for v in eqn.invars)
    tx = optim.create_optimizer(default.get_config().optimizer, 10)
    devices = jax.devices()[:1]
    p_step = parallel.pmap_train_step(steps.train_step, devices=devices, model=model, tx=tx)
    state, metrics = p_step(
        parallel.replicate(steps.create_train_state(params, tx, 0), devices),
        parallel.split_for_devices(batch, 1),
    )
    state = parallel.unreplicate(state)
    float_leaves = [
        x for x in jax.tree.leaves((state.params, state.opt_state)) if np.issubdtype(x.dtype, np.floating)
    ]
    assert float_leaves and all(x.dtype == np.float32 for x in float_leaves)
    assert np.isfinite(float(metrics["loss"][0]))


def test_second_step_does_not_compile():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: (
            compiles.append(event) if event.endswith("backend_compile_duration") else None
        )
    )
    model, tx = _model(), optim.create_optimizer(default.get_config().optimizer, 10)
    params = init_params(model)
    p_step = parallel.pmap_train_step(steps.train_step, model=model, tx=tx)
    state = parallel.replicate(steps.create_train_state(params, tx, 0))
    for seed in range(3):
        if seed == 1:
            before = len(compiles)
        state, metrics = p_step(state, parallel.split_for_devices(_batch(16, seed=seed), 8))
        metrics["loss"].block_until_ready()
    assert len(compiles) == before, "a step with the same shapes compiled again"


def test_bucketed_and_fully_padded_batches_give_the_same_loss():
    params, batch = init_params(_model()), _batch(16, length=12)
    wide = {
        **batch,
        **{k: np.pad(batch[k], ((0, 0), (0, 20))) for k in ("input_ids", "attention_mask", "token_type_ids")},
    }
    narrow_loss, _, _ = loss_and_grads(_model(), params, batch, 1)
    wide_loss, _, _ = loss_and_grads(_model(), params, wide, 1)
    assert abs(narrow_loss - wide_loss) <= 1e-5 * narrow_loss
    assert batching.bucket_lengths(32, 2) == [16, 32]


def _jitted_step(tx, donate: bool = False, **options):
    return jax.jit(
        lambda s, b: steps.train_step(s, b, model=_model(), tx=tx, axis_name=None, **options),
        donate_argnums=(0,) if donate else (),
    )


def _one_step(batch, params, tx):
    return _jitted_step(tx, deterministic=True)(steps.create_train_state(params, tx, 0), batch)


@pytest.mark.parametrize("conditional", [True, False], ids=["conditional", "select"])
def test_a_non_finite_step_leaves_parameters_and_optimizer_state_untouched(conditional, monkeypatch):
    # train_step guards the update with lax.cond on CPU and a select elsewhere: both run here.
    monkeypatch.setattr(steps, "_guard_with_cond", lambda: conditional)
    tx = optim.create_optimizer(default.get_config().optimizer, 10)
    params = init_params(_model())
    batch = _batch(8)
    before = steps.create_train_state(params, tx, 0)
    nan_batch = {**batch, "weights": batch["weights"] * np.float32("nan")}
    # Which guard the step traced (read from its jaxpr, not from what a backend compiled it into).
    traced = {eqn.primitive.name for eqn in jaxpr_eqns(jax.make_jaxpr(_jitted_step(tx))(before, batch))}
    assert ("cond" in traced) == conditional
    state, _ = _one_step(nan_batch, params, tx)
    assert int(state.step) == 1 and int(state.nonfinite_steps) == 1
    jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), (params, before.opt_state))

    # A finite step applies the optimizer's update.
    state, _ = _one_step(batch, params, tx)
    _, grads, _ = steps.loss_and_grads(
        params, batch, jax.random.key(0), model=_model(), axis_name=None, deterministic=True
    )
    updates, opt_state = tx.update(grads, before.opt_state, params)
    expected = optax.apply_updates(params, updates)
    assert int(state.nonfinite_steps) == 0 and rel_error(expected, params) > 1e-4
    assert rel_error(state.params, expected) < 1e-6 and rel_error(state.opt_state, opt_state) < 1e-6


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the conditional update is the CPU path")
def test_the_compiled_step_does_not_copy_the_optimizer_state():
    """The finite-step guard once made XLA:CPU copy every moment (mu, nu) each step: 2x the parameters'
    bytes."""
    tx = optim.create_optimizer(default.get_config().optimizer, 10)
    params = init_params(_model())
    state = steps.create_train_state(params, tx, 0)
    hlo = _jitted_step(tx, donate=True).lower(state, _batch(8)).compile().as_text()
    table = "f32[{},{}]".format(*params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape)
    copies = [line for line in hlo.splitlines() if f"= {table}" in line and " copy(" in line]
    # The table's shape is there (so the search means something) whatever kernels the CPU's dots became.
    assert table in hlo and copies == []


def test_devices_draw_different_dropout_masks_reproducibly_per_step_and_seed():
    """A train step with dropout on, every device given the same row: each device's logits (recorded from
    inside the step) differ from every other's, are the same when the step is run again from the same state,
    change with the step, and are those of the model with dropout key fold_in(fold_in(key(seed), step),
    device) (micro-batch 0 folds in 0 more), as `steps.train_step` documents."""
    import flax.linen as nn

    inner = SequenceClassifier(tiny_bert(50, dropout=0.1), num_labels=LABELS)
    recorded = {}

    class Recording(nn.Module):
        inner: nn.Module
        record: bool = True

        def __call__(self, *args, **kwargs):
            logits = self.inner(*args, **kwargs)
            if self.record:
                record = lambda index, x: recorded.__setitem__(int(index), np.asarray(x))  # noqa: E731
                jax.debug.callback(record, jax.lax.axis_index(parallel.AXIS), logits)
            return logits

    params = init_params(inner)
    row = _batch(1, seed=4)
    batch = {k: np.repeat(v, 8, axis=0) for k, v in row.items()}
    tx = optax.sgd(0.0)

    compiled = {}  # one step per setting: the step number is an input, not part of the program

    def run(step: int, deterministic: bool = False) -> dict:
        recorded.clear()
        state = steps.create_train_state({"inner": params}, tx, seed=0).replace(step=jnp.int32(step))
        if deterministic not in compiled:
            compiled[deterministic] = parallel.pmap_train_step(
                steps.train_step, model=Recording(inner), tx=tx, deterministic=deterministic
            )
        p_train = compiled[deterministic]
        jax.block_until_ready(p_train(parallel.replicate(state), parallel.split_for_devices(batch, 8)))
        jax.effects_barrier()  # every device's callback has run
        assert sorted(recorded) == list(range(8))
        return dict(recorded)

    @jax.jit  # compiled once for the sixteen keys below rather than run op by op
    def with_dropout(key):
        return Recording(inner, record=False).apply(  # the same module paths, so the same masks
            {"params": {"inner": params}}, row["input_ids"], row["attention_mask"], row["token_type_ids"],
            deterministic=False, rngs={"dropout": key},
        )  # fmt: skip

    first = run(0)
    for a in range(8):
        for b in range(a):
            assert np.abs(first[a] - first[b]).max() > 1e-4, (a, b)
    again, later = run(0), run(1)
    for d in range(8):
        np.testing.assert_array_equal(again[d], first[d])
        assert np.abs(later[d] - first[d]).max() > 1e-4
    for step, outputs in ((0, first), (1, later)):
        for d in range(8):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), step), d), 0)
            expected = with_dropout(key)
            np.testing.assert_allclose(outputs[d], expected, rtol=1e-5, atol=1e-6)
    # With dropout off the eight devices agree: the differences above are the masks, nothing else.
    off = run(0, deterministic=True)
    for d in range(1, 8):
        np.testing.assert_array_equal(off[d], off[0])
