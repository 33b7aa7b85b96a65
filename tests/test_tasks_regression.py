"""Regression: SciPy/sklearn-equal report, non-numeric targets refused, a tiny end-to-end run on text pairs
written here, prediction of values and export with problem_type="regression"."""

import json

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from jaxft import export, predict, tasks
from jaxft.configs import stsb
from jaxft.errors import UserError
from jaxft.tasks.regression import regression_report
from jaxft.training import train
from tests.helpers import check_final_examples

WORDS = "the film was great and you got two hours of book staff room after first week".split()


@pytest.mark.parametrize("seed", range(3))
def test_report_equals_scipy_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, 5, 50)
    predictions = targets + rng.normal(0, 1, 50)
    report, text = regression_report(predictions.astype(np.float32), targets.astype(np.float32))
    p32, t32 = (
        predictions.astype(np.float32).astype(np.float64),
        targets.astype(np.float32).astype(np.float64),
    )
    assert report["pearson"] == scipy.stats.pearsonr(p32, t32)[0]
    assert report["spearman"] == scipy.stats.spearmanr(p32, t32)[0]
    assert report["mse"] == sklearn.metrics.mean_squared_error(t32, p32)
    assert report["num_examples"] == 50
    assert f"{report['pearson']:.4f}" in text and "examples" in text


def test_constant_predictions_give_nan_correlations_not_an_error():
    report, _ = regression_report(np.ones(5), np.arange(5.0))
    assert np.isnan(report["pearson"]) and np.isnan(report["spearman"]) and report["mse"] == 3.0


def _pairs(seed: int, count: int, bad_line: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    lines = ["sentence1\tsentence2\tscore"]
    for i in range(count):
        a, b = (" ".join(rng.choice(WORDS, int(rng.integers(3, 8)))) for _ in range(2))
        score = "abc" if i + 2 == bad_line else f"{rng.uniform(0, 5):.2f}"
        lines.append(f"{a}\t{b}\t{score}")
    return "\n".join(lines) + "\n"


def _config(tmp_path, train_text=None, eval_text=None):
    config = stsb.get_config("tiny")
    (tmp_path / "train.tsv").write_text(train_text or _pairs(0, 48))
    (tmp_path / "dev.tsv").write_text(eval_text or _pairs(1, 21))
    config.data.train_path = str(tmp_path / "train.tsv")
    config.data.eval_path = str(tmp_path / "dev.tsv")
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    return config


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("regression")
    final = train.train_and_evaluate(_config(tmp_path), str(tmp_path / "run"))
    return tmp_path / "run", final


def test_end_to_end_report_holds_every_example(regression_run):
    workdir, final = regression_run
    assert json.loads((workdir / "labels.json").read_text())["labels"] == ["score"]
    saved = json.loads((workdir / "eval/final_eval.json").read_text())
    assert set(saved["report"]) == {"pearson", "spearman", "mse", "num_examples"}
    assert saved["report"]["num_examples"] == 21 and saved["task"] == "regression"
    assert set(final["eval"]) == {"pearson", "spearman", "mse", "loss", "num_examples"}
    assert final["eval"]["num_examples"] == 21
    # The device's loss (mean squared error in float32) and the host's MSE are the same number.
    assert final["eval"]["loss"] == pytest.approx(final["eval"]["mse"], rel=1e-5)
    assert (workdir / "checkpoints/best").exists()  # picked by pearson (training.best_metric="auto")
    check_final_examples(str(workdir), final["eval"], "regression", 21)


def test_predicted_values_match_the_report_and_export(regression_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir, final = regression_run
    run = predict.load_run(str(workdir))
    examples = tasks.from_config(run.config).read(run.config.data.eval_path, run.config.data)
    values, _ = predict.predict_outputs(run, examples)
    targets = np.array([float(e.label) for e in examples])
    assert values.shape == (21,)
    assert sklearn.metrics.mean_squared_error(targets, values) == pytest.approx(
        final["eval"]["mse"], rel=1e-5
    )
    source = tmp_path / "in.tsv"  # the run's data.format (tsv) applies to prediction input too
    source.write_text("sentence1\tsentence2\nthe film\ta great film\n")
    assert (
        predict.main(["--workdir", str(workdir), "--input", str(source), "--output", str(tmp_path / "o")])
        == 0
    )
    row = json.loads((tmp_path / "o").read_text())
    assert set(row) == {"text", "text_pair", "score"} and isinstance(row["score"], float)
    out = export.export(str(workdir), str(tmp_path / "hf"))
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    encoded = run.tokenizer(
        [e.text for e in examples[:8]], [e.text_pair for e in examples[:8]], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = model(**encoded).logits[:, 0].numpy()
    np.testing.assert_allclose(values[:8], theirs, atol=1e-4, rtol=0)


def test_a_target_that_is_not_a_number_fails_naming_file_and_line(tmp_path):
    config = _config(tmp_path, eval_text=_pairs(1, 10, bad_line=5))
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(info.value).startswith(f"{tmp_path / 'dev.tsv'}:5: the target 'abc'")
    assert not (tmp_path / "run").exists()
    config = _config(tmp_path)
    config.data.labels = ("a", "b")
    with pytest.raises(UserError, match="data.labels does not apply"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    config = _config(tmp_path)
    config.data.positive_label = "1"
    with pytest.raises(UserError, match="data.positive_label applies to task.name='classification'"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
