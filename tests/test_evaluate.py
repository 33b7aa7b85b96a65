"""Tests for jaxft.evaluate: reports from counts must equal sklearn on the raw predictions, bit for bit."""

import json
import os

import numpy as np
import pytest
import sklearn.metrics

from jaxft import evaluate
from jaxft.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_case(seed: int, num_labels: int, size: int = 200):
    """Labels that never contain one class and predictions that never use another."""
    rng = np.random.default_rng(seed)
    absent_from_truth = int(rng.integers(num_labels))
    never_predicted = (absent_from_truth + 1) % num_labels
    truth_classes = [c for c in range(num_labels) if c != absent_from_truth]
    predicted_classes = [c for c in range(num_labels) if c != never_predicted]
    labels = rng.choice(truth_classes, size=size)
    predictions = rng.choice(predicted_classes, size=size)
    return labels, predictions, absent_from_truth, never_predicted


def _sklearn_report(labels, predictions, names, output_dict):
    return sklearn.metrics.classification_report(
        labels,
        predictions,
        labels=list(range(len(names))),
        target_names=names,
        digits=4,
        zero_division=0,
        output_dict=output_dict,
    )


@pytest.mark.parametrize("num_labels", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn_on_raw_predictions(seed, num_labels):
    labels, predictions, absent, never = _random_case(seed, num_labels)
    names = [f"class_{c}" for c in range(num_labels)]
    confusion = evaluate.confusion_matrix_from_predictions(labels, predictions, num_labels)
    assert confusion.dtype == np.int64 and confusion.shape == (num_labels, num_labels)
    assert confusion[absent].sum() == 0 and confusion[:, never].sum() == 0

    report, text = evaluate.classification_report(confusion, names)

    assert report == _sklearn_report(labels, predictions, names, output_dict=True)
    assert text == _sklearn_report(labels, predictions, names, output_dict=False)
    assert list(report) == [*names, "accuracy", "macro avg", "weighted avg"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matches_sklearn_and_round_trips(seed):
    labels, predictions, _, _ = _random_case(seed, num_labels=4, size=97)
    confusion = evaluate.confusion_matrix_from_predictions(labels, predictions, 4)
    np.testing.assert_array_equal(
        confusion, sklearn.metrics.confusion_matrix(labels, predictions, labels=range(4))
    )
    y_true, y_pred = evaluate.expand_confusion(confusion)
    assert len(y_true) == len(y_pred) == 97
    np.testing.assert_array_equal(evaluate.confusion_matrix_from_predictions(y_true, y_pred, 4), confusion)


def test_expand_confusion_accepts_float_counts_from_device():
    y_true, y_pred = evaluate.expand_confusion(np.array([[2.0, 0.0], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(y_true, [0, 0, 1])
    np.testing.assert_array_equal(y_pred, [0, 0, 0])
    with pytest.raises(ValueError, match="whole counts"):
        evaluate.expand_confusion(np.array([[0.5, 0], [0, 1]]))


def test_zero_weight_rows_are_ignored():
    labels = np.array([[0, 1, 2], [2, 1, 0]])  # [devices, batch], as the eval step sees them
    predictions = np.array([[0, 2, 2], [1, 1, 1]])
    weights = np.array([[1, 1, 1], [1, 0, 0]])  # the last two are padding
    confusion = evaluate.confusion_matrix_from_predictions(labels, predictions, 3, weights=weights)
    expected = np.zeros((3, 3), np.int64)
    for t, p in [(0, 0), (1, 2), (2, 2), (2, 1)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion, expected)
    with pytest.raises(ValueError, match="0 or 1"):
        evaluate.confusion_matrix_from_predictions(labels, predictions, 3, weights=weights * 0.5)
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate.confusion_matrix_from_predictions([3], [0], 3)


def test_no_examples_raises():
    with pytest.raises(ValueError, match="no examples to evaluate"):
        evaluate.classification_report(np.zeros((2, 2), np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="2 label names"):
        evaluate.classification_report(np.ones((3, 3), np.int64), ["a", "b"])


def test_summary_metrics_hand_computed():
    # Rows true, columns predicted: 3 of 4 "no" and 4 of 6 "yes" examples right, accuracy 7/10.
    confusion = np.array([[3, 1], [2, 4]])
    # no:  precision 3/5, recall 3/4, F1 = 2*(3/5)(3/4)/(3/5+3/4) = 2/3
    # yes: precision 4/5, recall 4/6, F1 = 2*(4/5)(2/3)/(4/5+2/3) = 8/11
    report, _ = evaluate.classification_report(confusion, ["no", "yes"])
    metrics = evaluate.summary_metrics(report, loss_sum=5.0, count=10, positive_label="yes")
    assert set(metrics) == {"accuracy", "macro_f1", "weighted_f1", "loss", "num_examples", "f1"}
    assert metrics["accuracy"] == pytest.approx(7 / 10, abs=1e-15)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 8 / 11) / 2, abs=1e-15)
    assert metrics["weighted_f1"] == pytest.approx((4 * 2 / 3 + 6 * 8 / 11) / 10, abs=1e-15)
    assert metrics["f1"] == pytest.approx(8 / 11, abs=1e-15)
    assert metrics["loss"] == 0.5
    assert metrics["num_examples"] == 10 and isinstance(metrics["num_examples"], int)
    assert "f1" not in evaluate.summary_metrics(report, loss_sum=5.0, count=10)


def test_summary_metrics_rejects_bad_inputs():
    report, _ = evaluate.classification_report(np.array([[3, 1], [2, 4]]), ["no", "yes"])
    with pytest.raises(UserError, match="'maybe'"):
        evaluate.summary_metrics(report, 5.0, 10, positive_label="maybe")
    with pytest.raises(UserError):
        evaluate.summary_metrics(report, 5.0, 10, positive_label="accuracy")
    with pytest.raises(ValueError, match="holds 10"):
        evaluate.summary_metrics(report, 5.0, 11)
    with pytest.raises(ValueError, match="no examples"):
        evaluate.summary_metrics(report, 0.0, 0)


def test_write_report(tmp_path):
    names = ["entailment", "neutral", "contradiction"]
    labels, predictions, _, _ = _random_case(seed=7, num_labels=3, size=50)
    confusion = evaluate.confusion_matrix_from_predictions(labels, predictions, 3)
    report, text = evaluate.classification_report(confusion, names)
    eval_dir = tmp_path / "eval" / "nested"
    name = evaluate.report_name("dev", 100)

    evaluate.write_report(
        str(eval_dir), name, report, text, confusion, names, extra={"step": 100, "loss": 0.25}
    )

    assert sorted(os.listdir(eval_dir)) == [f"{name}.json", f"{name}.txt", f"{name}_confusion.png"]
    with open(eval_dir / f"{name}.json") as f:
        saved = json.load(f)
    assert saved == {
        "report": report,
        "confusion_matrix": confusion.tolist(),
        "labels": names,
        "step": 100,
        "loss": 0.25,
    }
    written = (eval_dir / f"{name}.txt").read_text()
    assert written.startswith(text.rstrip("\n"))
    assert "step: 100" in written and "loss: 0.25" in written
    for name_, row in zip(names, confusion, strict=True):
        assert any(line.split() == [name_, *map(str, row)] for line in written.splitlines())
    assert (eval_dir / f"{name}_confusion.png").read_bytes().startswith(PNG_MAGIC)

    with pytest.raises(ValueError, match="labels"):
        evaluate.write_report(str(eval_dir), name, report, text, confusion, names, extra={"labels": []})


def test_plot_confusion_matrix_leaves_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    path = tmp_path / "confusion.png"
    evaluate.plot_confusion_matrix(np.array([[5, 0], [1, 3]]), ["a", "b"], str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert matplotlib.get_backend() == backend
    assert os.listdir(tmp_path) == ["confusion.png"]  # no temporary file left behind


def test_report_name():
    assert evaluate.report_name("dev", 100) == "dev_step00000100"
    assert evaluate.report_name("dev", 0) == "dev_step00000000"
    assert evaluate.report_name("validation_matched", 123456789) == "validation_matched_step123456789"
    assert evaluate.report_name("dev", None) == "final_dev"


# ---- SemEval-2010 Task 8's official score ----------------------------------------------------------------

SEMEVAL_NAMES = [
    "Cause-Effect(e1,e2)",
    "Cause-Effect(e2,e1)",
    "Component-Whole(e1,e2)",
    "Component-Whole(e2,e1)",
    "Member-Collection(e1,e2)",
    "Other",
]
# Rows true, columns predicted, in SEMEVAL_NAMES order. Cause-Effect: 3 right, 1 right type in the wrong
# direction, 1 right (e2,e1), 1 called Other. Component-Whole: 2 right, 2 called another relation. Other: 2
# right, 2 called a relation. Member-Collection: predicted once, never gold.
SEMEVAL_CONFUSION = [
    [3, 1, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 1],
    [0, 0, 2, 0, 0, 0],
    [1, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 1, 0, 1, 0, 2],
]


def test_semeval2010_score_against_hand_computed_values():
    score, text = evaluate.semeval2010_score(SEMEVAL_CONFUSION, SEMEVAL_NAMES)
    # Cause-Effect: correct = 3 + 1 = 4 (exact labels only: the wrong-direction one is not);
    # predicted = both CE columns = (3 + 1) + (1 + 1 + 1) = 7 (the wrong-direction one counts against P);
    # support = both CE rows = 4 + 2 = 6. P = 4/7, R = 4/6 = 2/3, F1 = 2 (4/7)(2/3) / (4/7 + 2/3) = 8/13.
    ce = score["relations"]["Cause-Effect"]
    assert (ce["correct"], ce["predicted"], ce["support"], ce["wrong_direction"]) == (4, 7, 6, 1)
    assert ce["precision"] == pytest.approx(4 / 7) and ce["recall"] == pytest.approx(2 / 3)
    assert ce["f1"] == pytest.approx(8 / 13)
    # Component-Whole: correct = 2, predicted = 2 + 1 (Other called CW(e2,e1)) = 3, support = 2 + 2 = 4.
    # P = 2/3, R = 1/2, F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = 4/7.
    cw = score["relations"]["Component-Whole"]
    assert (cw["correct"], cw["predicted"], cw["support"], cw["wrong_direction"]) == (2, 3, 4, 0)
    assert cw["f1"] == pytest.approx(4 / 7)
    # Member-Collection has no gold example: the scorer averages over the types of the key only, so the
    # official score is (8/13 + 4/7) / 2 = (56 + 52) / 182 = 54/91; macro P = (4/7 + 2/3) / 2 = 13/21,
    # macro R = (2/3 + 1/2) / 2 = 7/12. Other is never averaged.
    assert set(score["relations"]) == {"Cause-Effect", "Component-Whole"}
    assert score["macro_f1"] == pytest.approx(54 / 91)
    assert score["macro_precision"] == pytest.approx(13 / 21)
    assert score["macro_recall"] == pytest.approx(7 / 12)
    assert "Cause-Effect :  P =    4/   7 =  57.14%  R =    4/   6 =  66.67%  F1 =  61.54%" in text
    assert text.rstrip().endswith("F1 =  59.34%  (official score)")


def test_semeval2010_score_differs_from_the_direction_blind_and_19_way_scores():
    score, _ = evaluate.semeval2010_score(SEMEVAL_CONFUSION, SEMEVAL_NAMES)
    # Ignoring direction, Cause-Effect would have 5 correct of 7 predicted: F1 2 (5/7)(5/6) / (5/7 + 5/6).
    assert score["relations"]["Cause-Effect"]["f1"] != pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    report, _ = evaluate.classification_report(SEMEVAL_CONFUSION, SEMEVAL_NAMES)
    assert report["macro avg"]["f1-score"] != pytest.approx(score["macro_f1"])


def test_semeval2010_score_refuses_other_labels_and_no_relations():
    with pytest.raises(ValueError, match="'lives_in' is neither 'Other' nor a directed relation"):
        evaluate.semeval2010_score([[1, 0], [0, 1]], ["lives_in", "Other"])
    with pytest.raises(ValueError, match="no gold label is a relation"):
        evaluate.semeval2010_score([[0, 0], [1, 1]], ["Cause-Effect(e1,e2)", "Other"])
