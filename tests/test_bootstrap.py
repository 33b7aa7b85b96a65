"""Tests of `jaxft.bootstrap`: each metric on a resample equals scikit-learn's / SciPy's / seqeval's / the
SQuAD scorer's on the drawn examples, one seed's interval equals `scipy.stats.bootstrap`'s, and on
synthetic results whose answer is known the interval says it (a real gain holds, an equal strategy does
not, a gain on one seed that the other seeds undo does not, and under no difference the test holds in
about 5% of datasets)."""

import numpy as np
import pytest
import scipy.stats
import seqeval.metrics
import sklearn.metrics

from jaxft import bootstrap
from jaxft.bootstrap import Evidence


def _counts_and_rows(rng, replicates: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Drawn row indices [R, n] (the first replicate: every example once) and their multiplicities."""
    rows = rng.integers(0, n, (replicates, n))
    rows[0] = np.arange(n)
    counts = np.stack([np.bincount(r, minlength=n) for r in rows])
    return counts, rows


def _classification(labels, predicted, num_labels, positive=-1) -> dict:
    return {
        "task": "classification",
        "label": np.asarray(labels),
        "predicted": np.asarray(predicted),
        "num_labels": num_labels,
        "positive": positive,
    }


def test_resample_counts_are_the_multiplicities_of_uniform_draws():
    counts = bootstrap.resample_counts(np.random.default_rng(3), 4, 7)
    rows = np.random.default_rng(3).integers(0, 7, (4, 7))
    assert counts.tolist() == [np.bincount(r, minlength=7).tolist() for r in rows]


def test_classification_metrics_equal_sklearn_on_the_drawn_examples():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    labels[labels == 3] = 2  # label 3 is never true: a zero-support class, as sklearn reports it
    predicted = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 4, 60))
    examples = _classification(labels, predicted, 4, positive=1)
    counts, rows = _counts_and_rows(rng, 12, 60)
    got = {
        m: bootstrap.metric_on_resamples(examples, m, counts)
        for m in bootstrap.EXAMPLE_METRICS["classification"]
    }
    for r, drawn in enumerate(rows):
        y, p = labels[drawn], predicted[drawn]
        kwargs = {"labels": [0, 1, 2, 3], "zero_division": 0}
        assert got["accuracy"][r] == pytest.approx(sklearn.metrics.accuracy_score(y, p), abs=1e-15)
        assert got["macro_f1"][r] == pytest.approx(sklearn.metrics.f1_score(y, p, average="macro", **kwargs))
        assert got["weighted_f1"][r] == pytest.approx(
            sklearn.metrics.f1_score(y, p, average="weighted", **kwargs)
        )
        assert got["f1"][r] == pytest.approx(sklearn.metrics.f1_score(y, p, average=None, **kwargs)[1])


def test_multilabel_metrics_equal_sklearn_on_the_drawn_examples():
    rng = np.random.default_rng(1)
    truth = (rng.random((50, 5)) < 0.3).astype(np.int8)
    truth[:, 4] = 0  # a label never true
    predicted = np.where(rng.random((50, 5)) < 0.7, truth, 1 - truth).astype(np.int8)
    predicted[:3] = 0  # examples predicting nothing
    examples = {"task": "multilabel", "label": truth, "predicted": predicted}
    counts, rows = _counts_and_rows(rng, 10, 50)
    for metric in bootstrap.EXAMPLE_METRICS["multilabel"]:
        got = bootstrap.metric_on_resamples(examples, metric, counts)
        for r, drawn in enumerate(rows):
            y, p = truth[drawn], predicted[drawn]
            if metric == "subset_accuracy":
                expected = sklearn.metrics.accuracy_score(y, p)
            else:
                average = metric.removesuffix("_f1")
                expected = sklearn.metrics.f1_score(y, p, average=average, zero_division=0)
            assert got[r] == pytest.approx(expected, abs=1e-12), (metric, r)


def test_regression_metrics_equal_scipy_and_sklearn_on_the_drawn_examples():
    rng = np.random.default_rng(2)
    targets = np.round(rng.uniform(0, 5, 80), 0)  # STS-B-like ties among the targets
    predictions = np.round(targets + rng.normal(0, 1.0, 80), 1)  # and some among the predictions
    examples = {"task": "regression", "label": targets, "prediction": predictions}
    counts, rows = _counts_and_rows(rng, 10, 80)
    got = {m: bootstrap.metric_on_resamples(examples, m, counts) for m in ("pearson", "spearman", "mse")}
    for r, drawn in enumerate(rows):
        y, p = targets[drawn], predictions[drawn]
        assert got["pearson"][r] == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-12)
        assert got["spearman"][r] == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-12)
        assert got["mse"][r] == pytest.approx(sklearn.metrics.mean_squared_error(y, p), abs=1e-12)


def test_a_metric_not_recomputed_from_predictions_is_refused():
    with pytest.raises(ValueError, match="'loss' is not recomputed"):
        bootstrap.metric_on_resamples(_classification([0], [0], 2), "loss", np.ones((1, 1)))


def _correct(rng, n: int, accuracy: float) -> np.ndarray:
    return rng.random(n) < accuracy


def _binary(correct: np.ndarray, labels: np.ndarray) -> dict:
    """Binary predictions right where `correct` says."""
    return _classification(labels, np.where(correct, labels, 1 - labels), 2, positive=1)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_one_seed_interval_equals_scipy_paired_bootstrap(metric):
    rng = np.random.default_rng(4)
    n = 300
    labels = rng.integers(0, 2, n)
    base = _correct(rng, n, 0.78)
    better = base | _correct(rng, n, 0.2)  # fixes a fifth of the baseline's errors
    a, b = _binary(better, labels), _binary(base, labels)
    value = lambda e: float(bootstrap.metric_on_resamples(e, metric, np.ones((1, n)))[0])  # noqa: E731
    found = bootstrap.paired_difference(
        {0: Evidence(value(a), a)}, {0: Evidence(value(b), b)}, metric, resamples=4000, seed=1
    )

    def statistic(rows):  # resampled example indices -> the difference of the metric on them
        rows = np.asarray(rows, np.int64)
        if metric == "accuracy":
            return (a["predicted"][rows] == labels[rows]).mean() - (
                b["predicted"][rows] == labels[rows]
            ).mean()
        f1 = lambda e: sklearn.metrics.f1_score(labels[rows], e["predicted"][rows], average="macro")  # noqa: E731
        return f1(a) - f1(b)

    reference = scipy.stats.bootstrap(
        (np.arange(n),), statistic, vectorized=False, n_resamples=4000 if metric == "accuracy" else 1500,
        method="percentile", rng=np.random.default_rng(2),
    )  # fmt: skip
    assert found.seeds == 1 and found.examples == n and found.resamples == 4000
    assert found.difference == pytest.approx(value(a) - value(b), abs=1e-15)
    # Two independent Monte Carlo estimates of the same percentiles: equal within their sampling error.
    interval = reference.confidence_interval
    assert found.low == pytest.approx(interval.low, abs=0.006)
    assert found.high == pytest.approx(interval.high, abs=0.006)
    assert found.holds and found.resampled == "seeds × examples"


def _accuracy(examples: dict) -> float:
    return float((examples["predicted"] == examples["label"]).mean())


def _three_seeds(rng, labels, accuracies) -> dict[int, Evidence]:
    cells = {}
    for seed, accuracy in enumerate(accuracies):
        examples = _binary(_correct(rng, len(labels), accuracy), labels)
        cells[seed] = Evidence(_accuracy(examples), examples)
    return cells


def test_known_answers_a_real_gain_holds_an_equal_strategy_does_not():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 872)  # SST-2's dev set size
    baseline = _three_seeds(rng, labels, [0.85, 0.86, 0.85])
    gain = _three_seeds(rng, labels, [0.91, 0.90, 0.91])
    equal = _three_seeds(rng, labels, [0.85, 0.86, 0.85])
    found = bootstrap.paired_difference(gain, baseline, "accuracy")
    expected = np.mean([gain[s].value - baseline[s].value for s in range(3)])
    assert found.difference == pytest.approx(expected, abs=1e-15)
    assert found.holds and 0 < found.low < found.difference < found.high
    same = bootstrap.paired_difference(equal, baseline, "accuracy")
    assert not same.holds and same.low < 0 < same.high
    assert (found.seeds, found.examples, found.resamples) == (3, 872, bootstrap.RESAMPLES)


def test_a_gain_on_one_seed_that_the_others_undo_does_not_hold():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 872)
    baseline = _three_seeds(rng, labels, [0.85, 0.85, 0.85])
    lucky = _three_seeds(rng, labels, [0.92, 0.82, 0.83])
    one_seed = bootstrap.paired_difference({0: lucky[0]}, {0: baseline[0]}, "accuracy")
    assert one_seed.holds  # seed 0 alone: a gain the examples do not explain away
    every_seed = bootstrap.paired_difference(lucky, baseline, "accuracy")
    assert not every_seed.holds and every_seed.low < 0 < every_seed.high


def test_without_examples_only_the_seeds_are_resampled():
    strategy = {s: Evidence(0.80 + d) for s, d in enumerate([0.021, 0.019, 0.020])}
    baseline = {s: Evidence(0.80) for s in range(3)}
    found = bootstrap.paired_difference(strategy, baseline, "accuracy")
    assert found.resampled == "seeds" and found.examples == 0 and found.holds
    assert found.difference == pytest.approx(0.020, abs=1e-12)
    # Each replicate is a mean of drawn per-seed differences: it lies within their range.
    assert 0.019 - 1e-12 <= found.low <= found.high <= 0.021 + 1e-12
    assert bootstrap.paired_difference({0: strategy[0]}, {0: baseline[0]}, "accuracy") is None
    assert bootstrap.paired_difference({5: strategy[0]}, baseline, "accuracy") is None  # no seed in common
    # Predictions for different examples do not pair: the seeds only.
    rng = np.random.default_rng(7)
    a = {s: Evidence(0.8, _binary(_correct(rng, 10, 0.8), np.zeros(10, int))) for s in range(2)}
    b = {s: Evidence(0.7, _binary(_correct(rng, 10, 0.8), np.ones(10, int))) for s in range(2)}
    assert bootstrap.paired_difference(a, b, "accuracy").resampled == "seeds"
    assert bootstrap.paired_difference(a, a, "loss").resampled == "seeds"


def test_under_no_difference_the_test_holds_in_about_five_percent_of_datasets():
    rng = np.random.default_rng(8)
    held = 0
    for _ in range(200):
        labels = rng.integers(0, 2, 200)
        a, b = (_binary(_correct(rng, 200, 0.8), labels) for _ in range(2))
        found = bootstrap.paired_difference(
            {0: Evidence(_accuracy(a), a)},
            {0: Evidence(_accuracy(b), b)},
            "accuracy",
            resamples=500,
            seed=int(rng.integers(1 << 30)),
        )
        held += found.holds
    assert 3 <= held <= 20  # 200 tests at 5%: 10 expected, [3, 20] holds with probability > 0.99


def test_seeds_evaluated_on_subsets_of_their_own_draw_their_own_examples():
    rng = np.random.default_rng(9)
    baseline, gain = {}, {}
    for seed, n in enumerate([300, 400, 500]):  # data.max_eval_examples: another subset per seed
        labels = rng.integers(0, 2, n)
        base = _correct(rng, n, 0.8)
        for cells, correct in ((baseline, base), (gain, base | _correct(rng, n, 0.3))):
            examples = _binary(correct, labels)
            cells[seed] = Evidence(_accuracy(examples), examples)
    found = bootstrap.paired_difference(gain, baseline, "accuracy")
    assert found.resampled == "seeds × examples" and found.examples == 1200 and found.holds
    # Seed 0's pair alone: its 300 examples, an interval around its own difference.
    alone = bootstrap.paired_difference({0: gain[0]}, {0: baseline[0]}, "accuracy", seed=3)
    assert alone.examples == 300 and alone.low < gain[0].value - baseline[0].value < alone.high


def _tags(rng, n: int) -> list[str]:
    choices = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # strict IOB2 drops an I- without its B-
    return [choices[i] for i in rng.integers(0, len(choices), n)]


def test_ner_metrics_equal_seqeval_on_the_drawn_sentences():
    from jaxft.tasks import ner

    rng = np.random.default_rng(10)
    truth = [_tags(rng, int(rng.integers(1, 12))) for _ in range(40)]
    predicted = [[t if rng.random() < 0.7 else _tags(rng, 1)[0] for t in sentence] for sentence in truth]
    examples = ner.sentence_counts(truth, predicted)
    counts, rows = _counts_and_rows(rng, 8, 40)
    got = {m: bootstrap.metric_on_resamples(examples, m, counts) for m in bootstrap.EXAMPLE_METRICS["ner"]}
    for r, drawn in enumerate(rows):
        gold, guess = [truth[i] for i in drawn], [predicted[i] for i in drawn]
        micro = ner.entity_report(gold, guess)[0]["micro avg"]
        for metric, key in (("f1", "f1-score"), ("precision", "precision"), ("recall", "recall")):
            assert got[metric][r] == pytest.approx(micro[key], abs=1e-12), (metric, r)
        accuracy = seqeval.metrics.accuracy_score(gold, guess)
        assert got["accuracy"][r] == pytest.approx(accuracy, abs=1e-12)


def test_qa_metrics_equal_the_squad_scores_of_the_drawn_questions():
    from jaxft.data import squad as squad_data
    from jaxft.tasks import squad

    rng = np.random.default_rng(11)
    words = ["red", "kites", "port", "ellen", "1990", "the", "islay"]
    examples, predictions = [], {}
    for i in range(30):
        gold = tuple((" ".join(rng.choice(words, int(rng.integers(1, 4)))), 0) for _ in range(2))
        examples.append(squad_data.QAExample(str(i), "q?", "c", gold, str(i)))
        if i % 7:  # every seventh question unanswered
            predictions[str(i)] = " ".join(rng.choice(words, int(rng.integers(1, 4))))
    ems, f1s = squad.question_scores(predictions, examples)
    arrays = {
        "task": "qa",
        "question": np.arange(30),
        "exact_match": 100.0 * np.array(ems),
        "f1": 100.0 * np.array(f1s),
    }
    counts, rows = _counts_and_rows(rng, 8, 30)
    for metric in ("exact_match", "f1"):
        got = bootstrap.metric_on_resamples(arrays, metric, counts)
        for r, drawn in enumerate(rows):
            expected = squad.squad_scores(predictions, [examples[i] for i in drawn])[metric]
            assert got[r] == pytest.approx(expected, rel=1e-12), (metric, r)
