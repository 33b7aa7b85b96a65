"""The whole job on the tiny config: files in the workdir, exact resume, early stopping, warm start; and the
optimizer pieces (schedule, weight-decay mask) and checkpoint round trip."""

import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from jaxft.configs import default, tiny
from jaxft.training import checkpoint, optim, steps, train
from jaxft.training.early_stopping import BestMetric
from jaxft.training.writers import read_metrics
from tests.helpers import check_final_examples


def _final_params(workdir):
    """The parameters of the newest full-state checkpoint, as saved."""
    ckpts = checkpoint.Checkpoints(str(workdir))
    step = ckpts.latest.latest_step()
    restored = ckpts.latest.restore(step)
    ckpts.close()
    return step, restored["state"]["params"]


def test_end_to_end_writes_everything_a_user_relies_on(tiny_run):
    workdir, final = tiny_run
    for name in (
        "config.json",
        "labels.json",
        "model_config.json",
        "metrics.jsonl",
        "curves.png",
        "final_metrics.json",
        "eval/eval_step00000006.json",
        "eval/eval_step00000012.txt",
        "eval/final_eval.json",
        "eval/final_eval.txt",
        "eval/final_eval_confusion.png",
    ):
        assert (workdir / name).exists(), name
    assert json.loads((workdir / "labels.json").read_text())["labels"] == ["negative", "positive"]
    assert json.loads((workdir / "config.json").read_text())["training"]["num_train_steps"] == 12
    report = json.loads((workdir / "eval/final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == 100  # every dev example, once
    # The final report says whose parameters it describes: the best checkpoint's step.
    best_step = json.loads((workdir / "final_metrics.json").read_text())["params_from_step"]
    assert report["step"] == best_step == int(os.listdir(workdir / "checkpoints/best")[0])
    assert f"step: {best_step}" in (workdir / "eval/final_eval.txt").read_text()
    assert sum(map(sum, report["confusion_matrix"])) == 100
    assert final["eval"]["accuracy"] == pytest.approx(report["report"]["accuracy"])
    # What a comparison resamples: each example's label and prediction, the report's confusion matrix.
    examples = check_final_examples(str(workdir), final["eval"], "classification", 100)
    pairs = examples["label"] * 2 + examples["predicted"]
    assert np.bincount(pairs, minlength=4).reshape(2, 2).tolist() == report["confusion_matrix"]
    records = read_metrics(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [6, 12]
    assert all(np.isfinite(r["loss"]) and r["learning_rate"] > 0 for r in records if r["kind"] == "train")
    assert sorted(os.listdir(workdir / "checkpoints/latest")) == ["12", "8"]  # keep_checkpoints=2
    assert len(os.listdir(workdir / "checkpoints/best")) == 1
    assert any(name.startswith("events") for name in os.listdir(workdir / "tensorboard"))


def test_resumed_run_ends_with_the_same_parameters(tiny_run, tmp_path, caplog):
    workdir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints/latest/12")  # as if killed between the step-8 and step-12 saves
    with caplog.at_level("INFO"):
        train.train_and_evaluate(tiny.get_config(), str(copy))
    assert any("Resuming from step 8" in r.getMessage() for r in caplog.records)
    step_a, params_a = _final_params(workdir)
    step_b, params_b = _final_params(copy)
    assert step_a == step_b == 12
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)  # bit-identical on CPU


def test_warm_start_takes_another_runs_parameters(tiny_run, tmp_path, caplog):
    workdir, _ = tiny_run
    config = tiny.get_config()
    config.model.init_from_workdir = str(workdir)
    config.training.num_train_steps = 1
    config.optimizer.learning_rate = 0.0  # so the new run's parameters stay the ones it started from
    config.optimizer.weight_decay = 0.0
    with caplog.at_level("INFO"):
        train.train_and_evaluate(config, str(tmp_path / "warm"))
    assert any("Warm start" in r.getMessage() for r in caplog.records)
    ckpts = checkpoint.Checkpoints(str(workdir))
    best, _ = ckpts.restore_best_params(_final_params(workdir)[1])
    ckpts.close()
    _, warm = _final_params(tmp_path / "warm")
    jax.tree.map(np.testing.assert_array_equal, warm, best)
    assert not (tmp_path / "warm" / "checkpoints" / "latest" / "12").exists()  # a new run: step 1, not 13


def test_early_stopping_stops_at_the_expected_step_and_keeps_the_best(tmp_path, monkeypatch):
    scripted = iter([0.50, 0.70, 0.69, 0.705, 0.60, 0.90])
    evaluated_steps = []
    real = train.run_evaluation

    def fake(p_eval, params, split, config, label_names, step, writer, eval_dir, totals=None, **kwargs):
        metrics, totals = real(
            p_eval, params, split, config, label_names, step, writer, eval_dir, totals, **kwargs
        )
        if step is not None:
            evaluated_steps.append(step)
            metrics["accuracy"] = next(scripted)
        return metrics, totals

    monkeypatch.setattr(train, "run_evaluation", fake)
    config = tiny.get_config()
    config.training.num_train_steps = 40
    config.training.eval_every = 2
    config.training.early_stopping_patience = 3
    config.training.early_stopping_min_delta = 0.01  # 0.705 is not an improvement on 0.70
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert evaluated_steps == [2, 4, 6, 8, 10]  # best at step 4, then three evaluations without improvement
    assert os.listdir(tmp_path / "run/checkpoints/best") == ["4"]
    assert json.loads((tmp_path / "run/final_metrics.json").read_text())["params_from_step"] == 4
    assert "10" in os.listdir(tmp_path / "run/checkpoints/latest")


def test_best_metric_tracks_patience_and_min_delta():
    best = BestMetric("min", min_delta=0.1, patience=2)
    assert best.update(1.0, 1) and not best.should_stop
    assert not best.update(0.95, 2)  # better, but by less than min_delta
    assert best.update(0.8, 3) and best.best == 0.8 and best.best_step == 3
    assert not best.update(0.9, 4) and not best.should_stop
    assert not best.update(0.85, 5) and best.should_stop
    restored = BestMetric("min", 0.1, 2)
    restored.load(best.to_dict())
    assert restored.to_dict() == best.to_dict() and restored.should_stop


def test_schedule_warms_up_then_decays_linearly_to_zero():
    opt = default.get_config().optimizer
    opt.learning_rate, opt.warmup_steps = 2e-5, 10
    schedule = optim.learning_rate_schedule(opt, 100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(1e-5)
    assert float(schedule(10)) == pytest.approx(2e-5)  # end of warm-up: the peak
    assert float(schedule(99)) == pytest.approx(2e-5 * 1 / 90)  # last update
    assert float(schedule(100)) == 0.0
    opt.warmup_steps, opt.warmup_ratio = 0, 0.06
    assert optim.warmup_steps(opt, 1000) == 60
    assert optim.warmup_steps(opt, 1001) == 61  # rounded up


def test_weight_decay_mask_skips_biases_and_layer_norms():
    params = {
        "bert": {
            "embeddings": {"word_embeddings": {"embedding": 0}, "LayerNorm": {"scale": 0, "bias": 0}},
            "encoder": {
                "layer_0": {
                    "attention": {"self": {"query": {"kernel": 0, "bias": 0}}},
                    "output": {"LayerNorm": {"scale": 0, "bias": 0}},
                }
            },
        },
        "classifier": {"kernel": 0, "bias": 0},
    }
    flat = {
        "/".join(k.key for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
    }
    assert {k for k, v in flat.items() if v} == {
        "bert/embeddings/word_embeddings/embedding",
        "bert/encoder/layer_0/attention/self/query/kernel",
        "classifier/kernel",
    }


def test_l2_penalty_is_half_squared_norm_of_decayed_parameters():
    params = {"dense": {"kernel": np.array([[1.0, 2.0]], np.float32), "bias": np.array([5.0], np.float32)}}
    assert float(optim.l2_penalty(params, 0.1)) == pytest.approx(0.1 * 0.5 * 5.0)


def test_sgd_with_momentum_is_selectable():
    opt = default.get_config().optimizer
    opt.name, opt.learning_rate, opt.max_grad_norm, opt.weight_decay = "sgd", 0.1, 0.0, 0.0
    tx = optim.create_optimizer(opt, 10)
    params = {"w": np.ones(2, np.float32)}
    state = tx.init(params)
    grads = {"w": np.array([1.0, -1.0], np.float32)}
    updates, state = tx.update(grads, state, params)  # warm-up 0: full rate from the first update
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-6)
    updates, state = tx.update(grads, state, params)  # momentum: 0.9 * previous + gradient
    np.testing.assert_allclose(updates["w"], [-0.1 * 1.9 * 0.9, 0.1 * 1.9 * 0.9], rtol=1e-6)


def test_checkpoint_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    params = {
        "dense": {
            "kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=4).astype(np.float32),
        }
    }
    tx = optax.adamw(1e-3)
    state = jax.device_get(steps.create_train_state(params, tx, seed=3))
    _, opt_state = tx.update(params, state.opt_state, params)  # non-trivial moments
    state = state.replace(opt_state=jax.device_get(opt_state), step=np.asarray(7, np.int32))
    ckpts = checkpoint.Checkpoints(str(tmp_path))
    ckpts.save(7, state, {"step": 7, "epoch": 1})
    ckpts.wait()
    restored, meta = ckpts.restore(state)
    ckpts.close()
    assert meta == {"step": 7, "epoch": 1, "checksums": checkpoint.checksums(state)}
    assert (
        meta["checksums"]["opt_state/0/mu/dense/kernel"]
        == checkpoint.checksums(opt_state[0].mu)["dense/kernel"]
    )
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_the_final_report_reuses_the_best_evaluation_instead_of_repeating_it(tmp_path, monkeypatch):
    calls = []
    real = train.eval_counts
    monkeypatch.setattr(train, "eval_counts", lambda *a, **k: calls.append(1) or real(*a, **k))
    train.train_and_evaluate(tiny.get_config(), str(tmp_path / "run"))
    assert len(calls) == 2  # the evaluations at steps 6 and 12; none repeated for the final report
    final = json.loads((tmp_path / "run/final_metrics.json").read_text())
    best_step = final["params_from_step"]
    at_best = json.loads((tmp_path / f"run/eval/eval_step{best_step:08d}.json").read_text())
    final_report = json.loads((tmp_path / "run/eval/final_eval.json").read_text())
    assert final_report["report"] == at_best["report"]
    assert final["eval"]["accuracy"] == at_best["report"]["accuracy"]
