"""Training-time strategies, each checked for its mechanism: adversarial training (FGM, PGD, FreeLB), label
smoothing, R-Drop and layer-wise learning-rate decay."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import config as config_lib
from jaxft.configs import tiny
from jaxft.errors import UserError
from jaxft.models.heads import SequenceClassifier
from jaxft.strategies import adversarial as adv
from jaxft.strategies.regularization import layer_scale, symmetric_kl
from jaxft.tasks.classification import Classification
from jaxft.training import optim, parallel, steps
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


def _train(steps_: int, adversarial=None) -> list:
    """(parameters, loss) after each of `steps_` steps on two devices, from step 1."""
    tx = optim.create_optimizer(tiny.get_config().optimizer, 10)
    devices = jax.devices()[:2]
    options = {} if adversarial is None else {"adversarial": adversarial}
    p_train = parallel.pmap_train_step(steps.train_step, devices=devices, model=MODEL, tx=tx, **options)
    state = parallel.replicate(steps.create_train_state(init_params(MODEL), tx, 0), devices)
    trajectory = []
    for i in range(steps_):
        state, metrics = p_train(state, parallel.split_for_devices(_batch(seed=i), 2))
        # Copies: the next step donates the state's buffers.
        params = jax.tree.map(np.copy, parallel.unreplicate(state.params))
        trajectory.append((params, np.array(metrics["loss"])[0]))
    return trajectory


@functools.cache
def _plain_training() -> list:
    """Plain training's three steps, compiled and run once for the comparisons below (read-only)."""
    return _train(3)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_epsilon_zero_reproduces_plain_training_exactly(method):
    plain = _plain_training()
    attacked = _train(3, adv.AdversarialConfig(method, epsilon=0.0, step_size=0.5, steps=2))
    # The attacked step is another XLA program (it also differentiates the embedding output), whose fusions
    # may round differently on another CPU: the losses agree to float32 rounding (bit-identical on the
    # machines seen so far, but not promised), the parameters after three updates to a little more.
    np.testing.assert_allclose([x[1] for x in attacked], [x[1] for x in plain], rtol=1e-6, atol=0)
    for a, b in zip(jax.tree.leaves(attacked[-1][0]), jax.tree.leaves(plain[-1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_a_perturbation_changes_the_update(method):
    plain = _plain_training()[1][0]  # after two steps
    attacked = _train(2, adv.AdversarialConfig(method, epsilon=1.0, step_size=0.5, steps=2))[-1][0]
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
        ("optimizer", "layer_decay", 1.5, "classification", r"optimizer.layer_decay=1.5 must be in \(0, 1\]"),
        ("adversarial", "epsilon", -0.5, "classification", "epsilon and adversarial.step_size must not be"),
        ("adversarial", "step_size", -0.5, "classification", "epsilon and adversarial.step_size must not be"),
        ("regularization", "rdrop_alpha", -1.0, "classification", "rdrop_alpha=-1.0 must not be negative"),
    ],
)
def test_bad_strategy_settings_name_the_key(section, key, value, task, message):
    config = tiny.get_config()
    config[section][key] = value
    config.task.name = task
    with pytest.raises(UserError, match=message):
        config_lib.check(config)


# ---- PGD and FreeLB against their definitions, on a function whose gradients are known in closed form -----
# loss(w, delta) = sum_b m_b sum_{l,h} w_h sin(x_blh + delta_blh): dloss/ddelta = m_b w_h cos(x + delta) and
# dloss/dw_h = sum_b m_b sum_l sin(x_blh + delta_blh), written out in NumPy (float64), so the reference below
# shares nothing with the module but the definitions. Row 3 has m = 0, as a padding row: no gradient.
_X = np.random.default_rng(11).normal(size=(4, 3, 5))
_M = np.array([1.0, 1.0, 1.0, 0.0])
_W = np.random.default_rng(12).normal(size=5)


def _sine_loss(params, perturbations):
    delta = perturbations["bert"]["embedding_output"]
    inner = jnp.sin(jnp.asarray(_X, jnp.float32) + delta) * params["w"]
    return jnp.sum(jnp.asarray(_M, jnp.float32)[:, None, None] * inner), jnp.float32(3.0)


def _sine_reference(delta):
    """(loss, dloss/dw, dloss/ddelta) at `delta` in float64."""
    s = np.sin(_X + delta)
    loss = np.sum(_M[:, None, None] * s * _W)
    return loss, np.einsum("b,blh->h", _M, s), _M[:, None, None] * _W * np.cos(_X + delta)


def _ascend_reference(delta, g, step, epsilon):
    """delta + step * g / ||g|| per example (L2 over positions and features), then projected into the
    epsilon ball: Proj(d) = d * min(1, epsilon / ||d||)."""
    norm = np.sqrt((g**2).sum(axis=(1, 2), keepdims=True))
    moved = delta + step * g / np.maximum(norm, 1e-12)
    moved_norm = np.sqrt((moved**2).sum(axis=(1, 2), keepdims=True))
    return moved * np.minimum(1.0, epsilon / np.maximum(moved_norm, 1e-12))


def _attack(method, epsilon, step_size, steps_, key):
    params = {"w": jnp.asarray(_W, jnp.float32)}
    zeros = {"bert": {"embedding_output": jnp.zeros(_X.shape, jnp.float32)}}
    config = adv.AdversarialConfig(method, epsilon, step_size, steps_)
    (loss, count), grads = adv.loss_and_grads(_sine_loss, params, zeros, config, key)
    assert float(count) == 3
    return float(loss), np.asarray(grads["w"])


def _pgd_reference(epsilon, alpha, k):
    """PGD's point after k steps from 0, and each step's per-example norms."""
    delta, norms = np.zeros_like(_X), []
    for _ in range(k):
        delta = _ascend_reference(delta, _sine_reference(delta)[2], alpha, epsilon)
        norms.append(np.sqrt((delta**2).sum(axis=(1, 2))))
    return delta, norms


def test_pgd_equals_madrys_projected_normalised_ascent():
    """K steps delta_{k+1} = Proj_eps(delta_k + alpha g_k / ||g_k||) from 0; the update is the mean of the
    clean and the adversarial loss and parameter gradients."""
    epsilon, alpha, k = 0.7, 0.4, 3
    clean_loss, clean_grad, _ = _sine_reference(np.zeros_like(_X))
    delta, norms = _pgd_reference(epsilon, alpha, k)
    adv_loss, adv_grad, _ = _sine_reference(delta)
    # A case where the projection binds (two steps would leave the ball) and the padding row stays at 0.
    np.testing.assert_allclose(norms[-1][:3], epsilon, rtol=1e-9)
    assert 2 * alpha > epsilon and norms[-1][3] == 0
    assert adv_loss > clean_loss
    loss, grad = _attack("pgd", epsilon, alpha, k, jax.random.key(0))
    np.testing.assert_allclose(loss, (clean_loss + adv_loss) / 2, rtol=1e-5)
    np.testing.assert_allclose(grad, (clean_grad + adv_grad) / 2, rtol=1e-5, atol=1e-6)
    # The comparison sees the number of steps: one step fewer lands elsewhere.
    fewer = _sine_reference(_pgd_reference(epsilon, alpha, k - 1)[0])[1]
    assert np.abs((clean_grad + fewer) / 2 - grad).max() > 1e-3


def test_freelb_averages_the_parameter_gradients_of_k_ascent_steps():
    """FreeLB (Zhu et al. 2020): delta_0 uniform in [-1, 1] per element (the module's draw: one key per
    perturbation leaf, split from the step's key), projected into the epsilon ball; at each of the K points
    the loss and parameter gradient are taken, then delta ascends as in PGD; the update is their mean."""
    epsilon, alpha, k, key = 0.5, 0.3, 3, jax.random.key(4)
    (leaf_key,) = jax.random.split(key, 1)
    start = np.asarray(jax.random.uniform(leaf_key, _X.shape, jnp.float32, -1.0, 1.0), np.float64)
    delta = _ascend_reference(start, np.zeros_like(_X), 0.0, epsilon)  # the projection alone
    np.testing.assert_allclose(np.sqrt((delta**2).sum(axis=(1, 2))), epsilon, rtol=1e-9)  # it binds
    losses, grads = [], []
    for _ in range(k):
        loss_k, grad_k, g = _sine_reference(delta)
        losses.append(loss_k)
        grads.append(grad_k)
        delta = _ascend_reference(delta, g, alpha, epsilon)
    loss, grad = _attack("freelb", epsilon, alpha, k, key)
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(grad, np.mean(grads, axis=0), rtol=1e-5, atol=1e-6)
    # Neither the first nor the last point's gradient alone, nor the clean one, is what FreeLB returns.
    for other in (grads[0], grads[-1], _sine_reference(np.zeros_like(_X))[1]):
        assert np.abs(other - grad).max() > 1e-3


# ---- each strategy end to end through the config (jaxft/configs/tiny.py, 3 steps)
# -----------------------------
def _tiny_config(dropout: bool, **settings):
    config = tiny.get_config()
    config.training.num_train_steps = 3
    config.training.log_every = 1
    config.training.eval_every = 3
    config.training.checkpoint_every = 3
    config.training.tensorboard = False
    config.data.max_eval_examples = 16
    if not dropout:
        config.model.hidden_dropout = 0.0
        config.model.attention_dropout = 0.0
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def _tiny_run(workdir, config, monkeypatch=None):
    """(parameters after the last step, train records by step, the global batches of steps 1, 2, ...)."""
    from jaxft.training import checkpoint, pipeline, train
    from jaxft.training.writers import read_metrics

    first = []
    if monkeypatch is not None:
        real = pipeline.train_batches

        def recording(*args, **kwargs):
            for batch in real(*args, **kwargs):
                first.append(jax.tree.map(np.copy, batch))
                yield batch

        monkeypatch.setattr(pipeline, "train_batches", recording)
    train.train_and_evaluate(config, str(workdir))
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    params = ckpts.latest.restore(ckpts.latest_step())["state"]["params"]
    ckpts.close()
    records = {r["step"]: r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["kind"] == "train"}
    return params, records, first


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    """The plain 3-step runs the strategies are compared with: dropout off, and on."""
    root = tmp_path_factory.mktemp("plain")
    return {dropout: _tiny_run(root / str(dropout), _tiny_config(dropout)) for dropout in (False, True)}


def _model_and_initial_params(config, tmp_path):
    """The run's model and its step-0 parameters, rebuilt from the config (same seed)."""
    from jaxft.training import train, trained

    setup = train.prepare(config, str(tmp_path / "unused"))  # reads and checks; writes nothing
    model = train.create_model(config, setup.bert_config, len(setup.label_names), setup.tokenizer)
    return model, trained.initial_params(config, None, model)


def _ce_sum(model, params, batch, perturbations=None, smoothing=0.0):
    """Weighted (label-smoothed) cross-entropy sum of a batch, written out: -sum_rows w sum_c t_c log p_c."""
    variables = {"params": params}
    if perturbations is not None:
        variables["perturbations"] = perturbations
    logits = model.apply(variables, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
    classes = logits.shape[-1]
    targets = jax.nn.one_hot(batch["labels"], classes) * (1 - smoothing) + smoothing / classes
    return -jnp.sum(batch["weights"] * jnp.sum(targets * log_p, -1))


def _assert_trains_and_differs(params, records, plain_params):
    assert sorted(records) == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records.values())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    difference = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params), strict=True)
    )
    assert difference > 1e-5


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_fgm_and_pgd_from_the_config_train_on_the_mean_of_clean_and_attacked_loss(
    method, plain_runs, tmp_path, monkeypatch
):
    config = _tiny_config(False, **{"adversarial.method": method, "adversarial.epsilon": 0.5,
                                    "adversarial.step_size": 0.3, "adversarial.steps": 2})  # fmt: skip
    params, losses, batches = _tiny_run(tmp_path / "run", config, monkeypatch)
    plain_params, plain_losses, _ = plain_runs[False]
    _assert_trains_and_differs(params, losses, plain_params)
    # Step 1's logged loss from the definition, on the whole global batch (the perturbation is per example,
    # so splitting the batch over devices changes nothing): PGD takes K normalised steps, each projected
    # into the epsilon ball; FGM one step of length epsilon.
    model, initial = _model_and_initial_params(config, tmp_path)
    batch = {k: jnp.asarray(v) for k, v in batches[0].items()}
    count = float(batch["weights"].sum())
    zeros = adv.zero_perturbations(model, initial, batch)
    grad = jax.grad(lambda d: _ce_sum(model, initial, batch, d))

    def normalised(tree):
        g = np.asarray(tree["bert"]["embedding_output"], np.float64)
        return g / np.maximum(np.sqrt((g**2).sum(axis=(1, 2), keepdims=True)), 1e-12)

    delta = np.zeros(zeros["bert"]["embedding_output"].shape)
    for _ in range(1 if method == "fgm" else 2):
        step = 0.5 if method == "fgm" else 0.3
        delta = delta + step * normalised(
            grad({"bert": {"embedding_output": jnp.asarray(delta, jnp.float32)}})
        )
        norm = np.sqrt((delta**2).sum(axis=(1, 2), keepdims=True))
        delta = delta * np.minimum(1.0, 0.5 / np.maximum(norm, 1e-12))
    clean = float(_ce_sum(model, initial, batch)) / count
    attacked = float(
        _ce_sum(model, initial, batch, {"bert": {"embedding_output": jnp.asarray(delta, jnp.float32)}})
    )
    np.testing.assert_allclose(
        plain_losses[1]["loss"], clean, rtol=1e-5
    )  # the reference reproduces plain training
    np.testing.assert_allclose(losses[1]["loss"], (clean + attacked / count) / 2, rtol=1e-5)
    assert attacked / count > clean + 1e-4


def test_freelb_from_the_config_trains_and_changes_the_run(plain_runs, tmp_path):
    config = _tiny_config(False, **{"adversarial.method": "freelb", "adversarial.epsilon": 0.5})
    params, losses, _ = _tiny_run(tmp_path / "run", config)
    _assert_trains_and_differs(params, losses, plain_runs[False][0])
    assert losses[1]["loss"] != plain_runs[False][1][1]["loss"]  # no pass of FreeLB is the clean one


def test_rdrop_from_the_config_trains_and_changes_the_run(plain_runs, tmp_path):
    params, losses, _ = _tiny_run(tmp_path / "run", _tiny_config(True, **{"regularization.rdrop_alpha": 1.0}))
    plain_params, plain_losses, _ = plain_runs[True]
    _assert_trains_and_differs(params, losses, plain_params)
    # The first pass uses plain training's dropout key: the two passes' mean CE plus a positive KL is not
    # plain's loss.
    assert losses[1]["loss"] != plain_losses[1]["loss"]


def test_label_smoothing_from_the_config_logs_the_smoothed_cross_entropy(tmp_path, monkeypatch):
    # A fresh head predicts near-uniform probabilities, where smoothed and plain cross-entropy agree to
    # 1e-6; a high learning rate moves the model far enough in two steps for them to differ. Step 3's
    # logged loss is that of the parameters saved after step 2 on step 3's batch.
    config = _tiny_config(False, **{"regularization.label_smoothing": 0.2, "optimizer.learning_rate": 0.05})
    config.training.checkpoint_every = 1  # keep_checkpoints 2: steps 2 and 3
    params, records, batches = _tiny_run(tmp_path / "run", config, monkeypatch)
    assert sorted(records) == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records.values())
    from jaxft.training import checkpoint

    ckpts = checkpoint.Checkpoints(str(tmp_path / "run"), read_only=True)
    after_two = ckpts.latest.restore(2)["state"]["params"]
    ckpts.close()
    model, _ = _model_and_initial_params(config, tmp_path)
    batch = {k: jnp.asarray(v) for k, v in batches[2].items()}
    count = float(batch["weights"].sum())

    def loss_and_norm(smoothing):
        fn = jax.value_and_grad(lambda p: _ce_sum(model, p, batch, smoothing=smoothing) / count)
        loss, grads = fn(after_two)
        norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))
        return float(loss), float(norm)

    smoothed_loss, smoothed_norm = loss_and_norm(0.2)
    plain_loss, _ = loss_and_norm(0.0)
    np.testing.assert_allclose(records[3]["loss"], smoothed_loss, rtol=1e-5)
    np.testing.assert_allclose(records[3]["grad_norm"], smoothed_norm, rtol=1e-4)
    assert abs(smoothed_loss - plain_loss) > 1e-3  # the check tells smoothed from plain
