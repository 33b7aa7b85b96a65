"""The sharded-jit paths (training.parallelism "dp" and "fsdp") against pmap on 8 forced host devices: the
same updates and losses step by step, fsdp's parameters and Adam moments really split over the devices, the
same final evaluation end to end, exact resume, and a bad value refused."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxft import tasks
from jaxft.configs import default, tiny
from jaxft.errors import UserError
from jaxft.models.heads import SequenceClassifier
from jaxft.tasks.regression import Regression
from jaxft.training import checkpoint, optim, parallel, pipeline, steps, train
from tests.helpers import classification_batch, init_params, random_features, rel_error, tiny_bert

CONFIG = tiny_bert(64, num_hidden_layers=1)  # one layer: compiles fast; 64 words: the embedding splits 8 ways
LABELS = 3
MODEL = SequenceClassifier(CONFIG, num_labels=LABELS)


def _params():
    return init_params(MODEL)


def _optimizer():
    config = default.get_config().optimizer
    config.learning_rate = 1e-2  # large enough that a wrong gradient shows in the parameters
    return optim.create_optimizer(config, 10)


def _batch(size: int, padding_rows: int, seed: int) -> dict:
    return classification_batch(size, CONFIG.vocab_size, LABELS, padding_rows=padding_rows, seed=seed)


def _train(parallelism, batches, accum_steps=1):
    """Optimizer steps on `batches` from the same start; (host state, losses)."""
    tx = _optimizer()
    state = parallelism.place_state(steps.create_train_state(_params(), tx, 0))
    train_step = parallelism.train_step(
        steps.train_step, model=MODEL, tx=tx, accum_steps=accum_steps, deterministic=True
    )
    losses = []
    for batch in parallelism.device_batches(iter(batches)):
        state, metrics = train_step(state, batch)
        losses.append(float(parallelism.to_host(metrics)["loss"]))  # also blocks: CPU collectives
    return parallelism.to_host(state), losses


@pytest.mark.parametrize(
    "batch_size,padding_rows,accum_steps", [(16, 3, 1), (32, 5, 2)], ids=["padding", "accumulation"]
)
def test_dp_and_fsdp_take_the_same_steps_as_pmap(batch_size, padding_rows, accum_steps):
    assert jax.device_count() == 8
    batches = [_batch(batch_size, padding_rows, seed) for seed in range(3)]
    reference, reference_losses = _train(parallel.Pmap(), batches, accum_steps)
    assert rel_error(reference.params, _params()) > 1e-3  # the steps moved the parameters
    for mode in ("dp", "fsdp"):
        state, losses = _train(parallel.Sharded(mode, min_size=0), batches, accum_steps)
        assert int(state.step) == 3
        assert rel_error(state.params, reference.params) <= 1e-5, mode
        assert rel_error(state.opt_state, reference.opt_state) <= 1e-5, mode
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-6, atol=0, err_msg=mode)


def _leaves(tree, name: str) -> list:
    """The leaves of `tree` whose path contains `name` (a parameter and its Adam moments)."""
    return [
        x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0] if name in jax.tree_util.keystr(path)
    ]


def test_fsdp_splits_big_parameters_and_their_adam_moments_dp_replicates_them():
    tx = _optimizer()
    shards = {}
    for mode in ("dp", "fsdp"):
        parallelism = parallel.Sharded(mode, min_size=0)
        state = parallelism.place_state(steps.create_train_state(_params(), tx, 0))
        train_step = parallelism.train_step(steps.train_step, model=MODEL, tx=tx, deterministic=True)
        batch = next(parallelism.device_batches(iter([_batch(16, 0, 0)])))
        state, _ = train_step(state, batch)  # the layout survives a step
        for name in ("'word_embeddings'", "'layer_0']['intermediate']['dense']['kernel"):
            leaves = _leaves(state.params, name) + _leaves(state.opt_state, name)
            assert len(leaves) == 3, name  # the parameter, Adam's mu and nu
            shards[mode, name] = {x.addressable_shards[0].data.shape for x in leaves}
            if mode == "dp":
                assert all(x.sharding.is_fully_replicated for x in leaves)
        assert state.key.sharding.is_fully_replicated and state.step.sharding.is_fully_replicated
        classifier_bias = state.params["classifier"]["bias"]  # 3 rows: not divisible by 8, replicated
        assert classifier_bias.sharding.is_fully_replicated
    assert shards["dp", "'word_embeddings'"] == {(64, 16)}
    assert shards["fsdp", "'word_embeddings'"] == {(8, 16)}  # the larger axis, split 8 ways
    assert shards["dp", "'layer_0']['intermediate']['dense']['kernel"] == {(16, 32)}
    assert shards["fsdp", "'layer_0']['intermediate']['dense']['kernel"] == {(16, 4)}


def test_fsdp_keeps_leaves_below_its_minimum_size_replicated():
    parallelism = parallel.create("fsdp", fsdp_min_size=1024)
    state = parallelism.place_state(steps.create_train_state(_params(), _optimizer(), 0))
    for path, x in jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]:
        if x.ndim == 0:
            continue
        expected = x.size >= 1024 and any(n % 8 == 0 for n in x.shape)
        assert (not x.sharding.is_fully_replicated) == expected, jax.tree_util.keystr(path)
    assert state.params["bert"]["embeddings"]["word_embeddings"]["embedding"].size == 1024  # the boundary


def test_sharded_evaluation_counts_and_places_every_example_as_pmap_does():
    model, rng = SequenceClassifier(CONFIG, num_labels=1), np.random.default_rng(0)  # regression: per example
    params, num_examples = init_params(model), 23
    features = random_features(rng, num_examples, CONFIG.vocab_size)
    labels = rng.normal(size=num_examples).astype(np.float32)
    split = pipeline.Split("dev", "dev", [None] * num_examples, labels, features)
    totals = {}
    for parallelism in (parallel.Pmap(), parallel.Sharded("fsdp", min_size=0)):
        eval_fn = parallelism.eval_step(steps.eval_step, model=model, task=Regression())
        placed = parallelism.place_params(params)
        totals[parallelism.name] = train.eval_counts(
            eval_fn, placed, split, [8, 20], 8, parallel.local_devices()
        )
    assert int(totals["fsdp"]["count"]) == num_examples
    predictions = [totals[name][tasks.PER_EXAMPLE]["prediction"] for name in ("pmap", "fsdp")]
    np.testing.assert_allclose(predictions[1], predictions[0], rtol=1e-6, atol=1e-6)
    for key in set(totals["pmap"]) - {tasks.PER_EXAMPLE}:
        np.testing.assert_allclose(totals["fsdp"][key], totals["pmap"][key], rtol=1e-6, err_msg=key)


def _tiny_config(parallelism: str):
    config = tiny.get_config()
    config.model.hidden_dropout = 0.0  # dropout masks differ between the paths; everything else is equal
    config.model.attention_dropout = 0.0
    config.model.classifier_dropout = 0.0
    config.training.parallelism = parallelism
    config.training.fsdp_min_size = 0  # the tiny encoder's leaves are all small: shard them anyway
    config.training.checkpoint_every = 6
    config.training.tensorboard = False
    return config


def _latest_state(workdir):
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    step = ckpts.latest_step()
    restored = ckpts.latest.restore(step)
    ckpts.close()
    return step, restored["state"]


@pytest.mark.slow
def test_fsdp_run_ends_as_the_pmap_run_and_resumes_exactly(tmp_path, caplog):
    finals = {}
    for mode in ("pmap", "fsdp"):
        finals[mode] = train.train_and_evaluate(_tiny_config(mode), str(tmp_path / mode))
    assert finals["fsdp"]["eval"] == pytest.approx(finals["pmap"]["eval"], rel=1e-5, abs=1e-6)
    reports = [
        json.loads((tmp_path / mode / "eval/final_eval.json").read_text()) for mode in ("pmap", "fsdp")
    ]
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]
    _, pmap_state = _latest_state(tmp_path / "pmap")
    step, fsdp_state = _latest_state(tmp_path / "fsdp")
    assert step == 12 and rel_error(fsdp_state["params"], pmap_state["params"]) <= 1e-5
    # Saved as fsdp held it: the shards, each written by its device's process, nothing gathered first
    # (read back without a target, Orbax recreates the saved layout).
    embedding = fsdp_state["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    fsdp_spec = parallel.Sharded("fsdp", min_size=0).param_sharding(embedding.shape).spec
    assert parallel.DATA_AXIS in fsdp_spec and embedding.sharding.spec == fsdp_spec
    # As if killed after the step-6 checkpoint: the rerun resumes there and ends where the whole run did.
    cuts = {mode: tmp_path / f"cut_{mode}" for mode in ("fsdp", "pmap")}
    for cut in cuts.values():
        shutil.copytree(tmp_path / "fsdp", cut)
        shutil.rmtree(cut / "checkpoints/latest/12")
    with caplog.at_level("INFO"):
        train.train_and_evaluate(_tiny_config("fsdp"), str(cuts["fsdp"]))
    assert any("Resuming from step 6" in r.getMessage() for r in caplog.records)
    step, resumed = _latest_state(cuts["fsdp"])
    assert step == 12
    jax.tree.map(np.testing.assert_array_equal, resumed, fsdp_state)
    # Another layout resumes the sharded checkpoint too: pmap reads each array whole onto every device.
    train.train_and_evaluate(_tiny_config("pmap"), str(cuts["pmap"]))
    step, resumed = _latest_state(cuts["pmap"])
    assert step == 12 and rel_error(resumed["params"], pmap_state["params"]) <= 1e-5


@pytest.mark.slow
def test_a_lora_run_on_fsdp_saves_only_what_trained_and_resumes_exactly(tmp_path):
    """PEFT on the sharded path: the frozen base is sharded too, checkpoints hold the trained subset."""

    def config(parallelism):
        config = _tiny_config(parallelism)
        config.peft.method = "lora"
        config.peft.lora_rank = 2
        config.training.num_train_steps = 4
        config.training.eval_every = 2
        config.training.checkpoint_every = 2
        return config

    for mode in ("pmap", "fsdp"):
        train.train_and_evaluate(config(mode), str(tmp_path / mode))
    _, pmap_state = _latest_state(tmp_path / "pmap")
    step, fsdp_state = _latest_state(tmp_path / "fsdp")
    saved = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(fsdp_state)[0]]
    assert step == 4 and jax.tree.structure(fsdp_state) == jax.tree.structure(pmap_state)
    assert any("lora" in name for name in saved) and not any("word_embeddings" in name for name in saved)
    assert rel_error(fsdp_state["params"], pmap_state["params"]) <= 1e-5
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "fsdp", cut)
    shutil.rmtree(cut / "checkpoints/latest/4")
    train.train_and_evaluate(config("fsdp"), str(cut))
    step, resumed = _latest_state(cut)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, resumed, fsdp_state)


def test_a_bad_parallelism_is_refused_naming_the_key_before_any_write(tmp_path):
    config = tiny.get_config()
    config.training.parallelism = "tp"
    with pytest.raises(UserError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(error.value)
    assert "training.parallelism='tp'" in message and "\n" not in message
    assert not (tmp_path / "run").exists()
