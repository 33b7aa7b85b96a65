"""Training-time strategies, each checked for its mechanism: adversarial training (FGM, PGD, FreeLB), label
smoothing, R-Drop and layer-wise learning-rate decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from jaxft import optim, parallel, steps
from jaxft.errors import UserError
from jaxft.models.heads import SequenceClassifier
from jaxft.strategies import adversarial as adv
from jaxft.strategies import checks
from jaxft.strategies.regularization import layer_scale, symmetric_kl
from jaxft.tasks.classification import Classification
from tests.helpers import init_params, tiny_bert

CONFIG = tiny_bert(40, dropout=0.1)
MODEL = SequenceClassifier(CONFIG, 3)


def _batch(size=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    weights = np.ones(size, np.float32)
    weights[-1] = 0  # a padding row
    return {
        "input_ids": (rng.integers(1, CONFIG.vocab_size, (size, length)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((size, length), np.int32),
        "labels": rng.integers(0, 3, size).astype(np.int32),
        "weights": weights,
    }


def _train(steps_: int, **options):
    tx = optim.create_optimizer(tiny.get_config().optimizer, 10)
    devices = jax.devices()[:2]
    p_train = parallel.pmap_train_step(steps.train_step, devices=devices, model=MODEL, tx=tx, **options)
    state = parallel.replicate(steps.create_train_state(init_params(MODEL), tx, 0), devices)
    losses = []
    for i in range(steps_):
        state, metrics = p_train(state, parallel.split_for_devices(_batch(seed=i), 2))
        losses.append(np.asarray(metrics["loss"])[0])
    return parallel.unreplicate(state.params), losses


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_epsilon_zero_reproduces_plain_training_exactly(method):
    plain, plain_losses = _train(3)
    attacked, losses = _train(
        3, adversarial=adv.AdversarialConfig(method, epsilon=0.0, step_size=0.5, steps=2)
    )
    # The attacked step is another XLA program (it also differentiates the embedding output), whose fusions
    # may round differently on another CPU: the losses agree to float32 rounding (bit-identical on the
    # machines seen so far, but not promised), the parameters after three updates to a little more.
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-6, atol=0)
    for a, b in zip(jax.tree.leaves(attacked), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_a_perturbation_changes_the_update(method):
    plain, _ = _train(2)
    attacked, _ = _train(2, adversarial=adv.AdversarialConfig(method, epsilon=1.0, step_size=0.5, steps=2))
    differences = [
        np.abs(a - b).max() for a, b in zip(jax.tree.leaves(attacked), jax.tree.leaves(plain), strict=True)
    ]
    assert max(differences) > 1e-6


def test_projection_bounds_every_examples_norm():
    rng = np.random.default_rng(0)
    delta = {"x": jnp.asarray(rng.normal(0, 3, (5, 4, 6)), jnp.float32)}
    delta["x"] = delta["x"].at[1].multiply(1e-3)  # one already inside the ball: unchanged
    projected = np.asarray(adv.project(delta, 0.7)["x"])
    norms = np.linalg.norm(projected.reshape(5, -1), axis=1)
    assert np.all(norms <= 0.7 * (1 + 1e-6))
    np.testing.assert_allclose(norms[[0, 2, 3, 4]], 0.7, rtol=1e-6)
    np.testing.assert_array_equal(projected[1], np.asarray(delta["x"][1]))


def test_fgm_equals_its_definition():
    """Mean of the clean gradient and the gradient at delta = eps * g / ||g|| (per example)."""
    params, batch, key = init_params(MODEL), _batch(), jax.random.key(3)
    zeros = adv.zero_perturbations(MODEL, params, batch)

    def loss_fn(p, d=None):
        return steps.weighted_loss_sum(MODEL, p, batch, key, False, Classification(), d)

    (loss, count), grads = adv.loss_and_grads(loss_fn, params, zeros, adv.AdversarialConfig("fgm", 0.5), key)
    (clean, _), (g_params, g_delta) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, zeros)
    g = np.asarray(g_delta["bert"]["embedding_output"])
    norms = np.linalg.norm(g.reshape(len(g), -1), axis=1).reshape(-1, 1, 1)
    delta = 0.5 * g / np.maximum(norms, 1e-12)
    assert np.allclose(np.linalg.norm(delta[:-1].reshape(3, -1), axis=1), 0.5, rtol=1e-5)
    assert np.abs(delta[-1]).max() == 0  # the padding row has no gradient, so no perturbation
    perturbed = {"bert": {"embedding_output": jnp.asarray(delta)}}
    (attacked, _), g_attacked = jax.value_and_grad(loss_fn, has_aux=True)(params, perturbed)
    assert float(attacked) > float(clean)  # an ascent direction
    np.testing.assert_allclose(loss, (clean + attacked) / 2, rtol=1e-6)
    expected = jax.tree.map(lambda a, b: (a + b) / 2, g_params, g_attacked)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(count) == 3


def test_label_smoothing_loss_equals_its_definition():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    batch = {"labels": jnp.array([0, 2, 1, 1]), "weights": jnp.array([1.0, 1.0, 1.0, 0.0])}
    loss, count = Classification(label_smoothing=0.2).loss(logits, batch)
    targets = np.eye(3)[[0, 2, 1, 1]] * 0.8 + 0.2 / 3
    log_p = np.asarray(jax.nn.log_softmax(logits))
    expected = -(targets * log_p).sum(1)[:3].sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(count) == 3
    plain, _ = Classification().loss(logits, batch)
    np.testing.assert_allclose(plain, -log_p[[0, 1, 2], [0, 2, 1]].sum(), rtol=1e-6)


def test_rdrop_loss_is_the_mean_of_two_dropout_passes_plus_their_symmetric_kl():
    params, batch, key = init_params(MODEL), _batch(), jax.random.key(5)
    loss, count = steps.weighted_loss_sum(MODEL, params, batch, key, False, Classification(), None, 0.7)
    apply = lambda k: MODEL.apply(  # noqa: E731
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        deterministic=False, rngs={"dropout": k},
    )  # fmt: skip
    a, b = np.asarray(apply(key)), np.asarray(apply(jax.random.fold_in(key, 1)))
    assert np.abs(a - b).max() > 1e-4  # the two passes really differ
    w = batch["weights"]

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)

    la, lb = log_softmax(a), log_softmax(b)
    ce = lambda lp: -(lp[np.arange(4), batch["labels"]] * w).sum()  # noqa: E731
    kl = ((np.exp(la) * (la - lb)).sum(1) + (np.exp(lb) * (lb - la)).sum(1)) / 2
    expected = (ce(la) + ce(lb)) / 2 + 0.7 * (kl * w).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(symmetric_kl(jnp.asarray(a), jnp.asarray(a), jnp.asarray(w)), 0.0, atol=1e-7)
    assert float(count) == 3


def test_layerwise_decay_scales_each_layers_update():
    assert layer_scale(("bert", "embeddings", "word_embeddings", "embedding"), 2, 0.5) == 0.125
    assert layer_scale(("bert", "encoder", "layer_0", "output", "dense", "kernel"), 2, 0.5) == 0.25
    assert layer_scale(("bert", "encoder", "layer_1", "output", "dense", "kernel"), 2, 0.5) == 0.5
    assert layer_scale(("classifier", "kernel"), 2, 0.5) == 1.0
    params = init_params(MODEL)
    grads = jax.tree.map(lambda p: np.full_like(p, 0.01), params)
    opt = tiny.get_config().optimizer
    opt.warmup_steps = 0
    plain = optim.create_optimizer(opt, 10)
    updates, _ = plain.update(grads, plain.init(params), params)
    opt.layer_decay = 0.5
    decayed_tx = optim.create_optimizer(opt, 10)
    decayed, _ = decayed_tx.update(grads, decayed_tx.init(params), params)

    def check(path, u, d):
        names = tuple(k.key for k in path)
        np.testing.assert_allclose(d, u * layer_scale(names, 2, 0.5), rtol=1e-6)

    jax.tree_util.tree_map_with_path(check, updates, decayed)


@pytest.mark.parametrize(
    "section, key, value, task, message",
    [
        ("adversarial", "method", "vat", "classification", "adversarial.method='vat'"),
        ("adversarial", "steps", 0, "classification", "adversarial.steps=0"),
        ("regularization", "label_smoothing", 1.0, "classification", "label_smoothing=1.0"),
        ("regularization", "rdrop_alpha", 1.0, "ner", "regularization.rdrop_alpha applies to"),
        ("regularization", "label_smoothing", 0.1, "regression", "label_smoothing applies to"),
        ("optimizer", "layer_decay", 0.0, "classification", "optimizer.layer_decay=0.0"),
    ],
)
def test_bad_strategy_settings_name_the_key(section, key, value, task, message):
    config = tiny.get_config()
    config[section][key] = value
    with pytest.raises(UserError, match=message):
        checks.validate(config, task)
