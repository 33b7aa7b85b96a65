"""Evaluation reports built on the host from counts the device returns.

The eval step sums a confusion matrix, a loss and an example count over every device and batch; nothing else
crosses to the host. Everything here is a pure function of those counts. Precision, recall and F1 come from
`sklearn.metrics.classification_report` run on label arrays rebuilt from the matrix, so the numbers match what
sklearn gives on the raw predictions exactly, to the last bit, and no metric formula is written by hand.

Example:
    >>> confusion = np.array([[3, 1], [2, 4]])
    >>> report, text = classification_report(confusion, ["no", "yes"])
    >>> summary_metrics(report, loss_sum=5.0, count=10, positive_label="yes")["accuracy"]
    0.7
"""

import io
import json
import os
import re
import zipfile

import numpy as np
import sklearn.metrics
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxft import files
from jaxft.errors import UserError

# Keys sklearn adds beside the per-label entries; a label with one of these names would be overwritten.
_AGGREGATE_KEYS = ("accuracy", "macro avg", "weighted avg", "micro avg")
# Beyond this many labels the per-cell numbers would overlap; the colours alone still show the pattern.
_MAX_ANNOTATED_LABELS = 30


def confusion_matrix_from_predictions(labels, predictions, num_labels: int, weights=None) -> np.ndarray:
    """Counts (true, predicted) pairs on the host; the reference the device-side counts are tested against.

    Args:
        labels: integer true labels, any shape (e.g. [devices, batch]).
        predictions: integer predicted labels, same shape as `labels`.
        num_labels: number of classes C.
        weights: optional 0/1 mask of the same shape; rows with weight 0 (padding) are not counted.

    Returns:
        int64 array [C, C]; rows are true labels, columns predicted labels.
    """
    labels = np.asarray(labels).ravel()
    predictions = np.asarray(predictions).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in size")
    if weights is not None:
        weights = np.asarray(weights).ravel()
        if weights.shape != labels.shape:
            raise ValueError(f"weights {weights.shape} and labels {labels.shape} differ in size")
        # Weights are a padding mask; a fractional weight would make the counts non-integer.
        if not np.isin(weights, (0, 1)).all():
            raise ValueError("weights must be 0 or 1")
        keep = weights != 0
        labels, predictions = labels[keep], predictions[keep]
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            raise ValueError(f"{name} must lie in [0, {num_labels}), got [{values.min()}, {values.max()}]")
    flat = labels.astype(np.int64) * num_labels + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _as_counts(confusion) -> np.ndarray:
    """Validates a square matrix of non-negative whole numbers and returns it as int64."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    # Device sums may arrive as floats; anything fractional means the mask or the reduction went wrong.
    if (confusion < 0).any() or (confusion != np.round(confusion)).any():
        raise ValueError("confusion matrix must hold non-negative whole counts")
    return confusion.astype(np.int64)


def expand_confusion(confusion) -> tuple[np.ndarray, np.ndarray]:
    """Rebuilds label arrays whose confusion matrix is exactly `confusion`.

    Args:
        confusion: [C, C] counts, rows true, columns predicted.

    Returns:
        (y_true, y_pred), int64 arrays of length `confusion.sum()`.
    """
    confusion = _as_counts(confusion)
    num_labels = confusion.shape[0]
    cells = np.repeat(np.arange(num_labels * num_labels), confusion.ravel())
    return cells // num_labels, cells % num_labels


def classification_report(confusion, label_names: list[str], digits: int = 4) -> tuple[dict, str]:
    """Runs sklearn's classification report on the examples a confusion matrix describes.

    Args:
        confusion: [C, C] counts, rows true, columns predicted.
        label_names: the C label names, in label-id order.
        digits: decimal places in the text report.

    Returns:
        (report, text): sklearn's `output_dict=True` dict (per-label dicts, "accuracy", "macro avg",
        "weighted avg") and its text table. Labels never seen score 0 rather than warning.

    Raises:
        ValueError: the matrix holds no examples, or its size does not match `label_names`.
    """
    confusion = _as_counts(confusion)
    if len(label_names) != confusion.shape[0]:
        raise ValueError(f"{len(label_names)} label names for a {confusion.shape[0]}-class confusion matrix")
    if confusion.sum() == 0:
        raise ValueError("no examples to evaluate")
    y_true, y_pred = expand_confusion(confusion)
    # Passing every label id keeps classes absent from both arrays in the report, with support 0.
    kwargs = dict(
        labels=list(range(len(label_names))), target_names=list(label_names), digits=digits, zero_division=0
    )
    report = sklearn.metrics.classification_report(y_true, y_pred, output_dict=True, **kwargs)
    text = sklearn.metrics.classification_report(y_true, y_pred, output_dict=False, **kwargs)
    return report, text


def summary_metrics(report: dict, loss_sum: float, count: int, positive_label: str | None = None) -> dict:
    """Flattens a report into the few numbers logged each eval and used to pick the best checkpoint.

    Args:
        report: the dict from `classification_report`.
        loss_sum: summed (not averaged) loss over the evaluated examples.
        count: number of evaluated examples.
        positive_label: name of the class whose F1 is reported as "f1" (GLUE's MRPC and QQP convention).

    Returns:
        {"accuracy", "macro_f1", "weighted_f1", "loss", "num_examples"}, plus "f1" when `positive_label`
        is given; floats except `num_examples`.

    Raises:
        ValueError: `count` is zero or disagrees with the report's support (an example dropped or counted
            twice between the loss and the confusion matrix).
        UserError: `positive_label` is not one of the report's labels.
    """
    count = int(count)
    if count <= 0:
        raise ValueError("no examples to evaluate")
    support = int(report["macro avg"]["support"])
    if support != count:
        raise ValueError(f"loss counted {count} examples but the confusion matrix holds {support}")
    metrics = {
        "accuracy": float(report["accuracy"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "loss": float(loss_sum) / count,
        "num_examples": count,
    }
    if positive_label is not None:
        names = [key for key in report if key not in _AGGREGATE_KEYS]
        if positive_label not in names:
            raise UserError(f"positive_label {positive_label!r} is not one of the labels {names}")
        metrics["f1"] = float(report[positive_label]["f1-score"])
    return metrics


_DIRECTED = re.compile(r"(.+)\((?:e1,e2|e2,e1)\)")
SEMEVAL_OTHER = "Other"


def _relation_type(name: str) -> str | None:
    """ "Cause-Effect" of "Cause-Effect(e2,e1)"; None for "Other"."""
    if name == SEMEVAL_OTHER:
        return None
    match = _DIRECTED.fullmatch(name)
    if match is None:
        raise ValueError(
            f"label {name!r} is neither 'Other' nor a directed relation 'Type(e1,e2)' / '(e2,e1)'"
        )
    return match.group(1)


def semeval2010_score(confusion, label_names: list[str]) -> tuple[dict, str]:
    """SemEval-2010 Task 8's official score, as semeval2010_task8_scorer-v1.2.pl computes it.

    The scorer's evaluation (iii), "(9+1)-way classification with directionality taken into account": the
    directed labels are merged into their relation type (Cause-Effect(e1,e2) and Cause-Effect(e2,e1) are one
    row and one column), but a prediction counts as correct only when it equals the gold label, direction
    included. For each relation type T that occurs among the gold labels (Other is never one):

        correct   = examples whose prediction equals their gold label, of type T
        predicted = examples predicted as either direction of T (the scorer's column sum plus its xDIRx
                    count: a right type in the wrong direction is a wrong prediction of T)
        support   = examples whose gold label is of type T (either direction)
        P = correct / predicted (0 when nothing was predicted as T), R = correct / support,
        F1 = 2 P R / (P + R) (0 when P + R = 0)

    The official score is the unweighted mean of F1 over those types (nine on the official test set; the
    scorer divides by the types present in the key). Macro P and R are the means of P and R likewise.
    The scorer works in percent; this returns fractions (F1 is the same either way, up to rounding).

    Args:
        confusion: [C, C] counts over `label_names`, rows true, columns predicted.
        label_names: "Other" and directed labels "Type(e1,e2)" / "Type(e2,e1)", in label-id order.

    Returns:
        ({"macro_f1", "macro_precision", "macro_recall", "relations": {type: {"precision", "recall", "f1",
        "correct", "predicted", "support", "wrong_direction"}}}, text in the scorer's layout).

    Raises:
        ValueError: a label is not of that form, the sizes differ, or no gold label is a relation.
    """
    confusion = _as_counts(confusion)
    if len(label_names) != confusion.shape[0]:
        raise ValueError(f"{len(label_names)} label names for a {confusion.shape[0]}-class confusion matrix")
    types = [_relation_type(name) for name in label_names]
    relations = {}
    for relation in sorted({t for t in types if t is not None}):
        ids = [i for i, t in enumerate(types) if t == relation]
        support = int(confusion[ids].sum())
        if not support:
            continue  # as the scorer: only the types of the key are scored and averaged
        correct = int(sum(confusion[i, i] for i in ids))
        predicted = int(confusion[:, ids].sum())
        wrong_direction = int(confusion[np.ix_(ids, ids)].sum()) - correct
        precision = correct / predicted if predicted else 0.0
        recall = correct / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        relations[relation] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "correct": correct,
            "predicted": predicted,
            "support": support,
            "wrong_direction": wrong_direction,
        }
    if not relations:
        raise ValueError("no gold label is a relation: the SemEval-2010 score is undefined")
    n = len(relations)
    score = {
        "macro_f1": sum(r["f1"] for r in relations.values()) / n,
        "macro_precision": sum(r["precision"] for r in relations.values()) / n,
        "macro_recall": sum(r["recall"] for r in relations.values()) / n,
        "relations": relations,
    }
    width = max(map(len, relations))
    lines = ["SemEval-2010 Task 8 official score: (9+1)-way, direction taken into account, Other excluded"]
    for relation, r in relations.items():
        correct = r["correct"]
        lines.append(
            f"{relation:>{width}} :  P = {correct:4d}/{r['predicted']:4d} = {100 * r['precision']:6.2f}%"
            f"  R = {correct:4d}/{r['support']:4d} = {100 * r['recall']:6.2f}%"
            f"  F1 = {100 * r['f1']:6.2f}%  (wrong direction: {r['wrong_direction']})"
        )
    lines.append(
        f"MACRO-averaged over {n} relations:  P = {100 * score['macro_precision']:6.2f}%"
        f"  R = {100 * score['macro_recall']:6.2f}%  F1 = {100 * score['macro_f1']:6.2f}%  (official score)"
    )
    return score, "\n".join(lines) + "\n"


def _confusion_table(confusion: np.ndarray, label_names: list[str]) -> str:
    """Formats the matrix as aligned text, rows true and columns predicted."""
    corner = "true \\ pred"
    row_width = max(len(corner), *(len(name) for name in label_names))
    widths = [max(len(name), len(str(confusion[:, j].max()))) for j, name in enumerate(label_names)]
    header = "".join(f"  {name:>{width}}" for name, width in zip(label_names, widths, strict=True))
    lines = [corner.ljust(row_width) + header]
    for name, row in zip(label_names, confusion, strict=True):
        cells = "".join(f"  {int(c):>{w}}" for c, w in zip(row, widths, strict=True))
        lines.append(name.ljust(row_width) + cells)
    return "\n".join(lines)


def _json_default(value):
    # sklearn and NumPy hand back numpy scalars, which json does not know.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_report(
    eval_dir: str,
    name: str,
    report: dict,
    text: str,
    confusion,
    label_names: list[str],
    extra: dict | None = None,
) -> None:
    """Writes `<name>.json`, `<name>.txt` and `<name>_confusion.png` under `eval_dir`.

    Args:
        eval_dir: directory for the files; created if missing.
        name: file stem, usually from `report_name`.
        report: sklearn dict from `classification_report`.
        text: sklearn text from `classification_report`.
        confusion: the [C, C] counts the report came from.
        label_names: the C label names.
        extra: more top-level JSON keys (e.g. step, loss); its scalars also listed as `key: value` lines in
            the text.
    """
    confusion = _as_counts(confusion)
    extra = dict(extra or {})
    clash = sorted(set(extra) & {"report", "confusion_matrix", "labels"})
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the report's own")
    os.makedirs(eval_dir, exist_ok=True)
    payload = {"report": report, "confusion_matrix": confusion.tolist(), "labels": list(label_names), **extra}
    files.write_atomic(
        os.path.join(eval_dir, f"{name}.json"), json.dumps(payload, indent=2, default=_json_default) + "\n"
    )
    parts = [text.rstrip("\n"), "", "Confusion matrix (rows: true, columns: predicted)", ""]
    parts.append(_confusion_table(confusion, label_names))
    scalars = {key: value for key, value in extra.items() if not isinstance(value, dict | list)}
    if scalars:  # collections (the SemEval-2010 score's per-relation table) are in the JSON and the text
        parts += [""] + [f"{key}: {value}" for key, value in scalars.items()]
    files.write_atomic(os.path.join(eval_dir, f"{name}.txt"), "\n".join(parts) + "\n")
    plot_confusion_matrix(confusion, label_names, os.path.join(eval_dir, f"{name}_confusion.png"))


def write_result(eval_dir: str, name: str, result, label_names: list[str], extra: dict, task: str) -> None:
    """Writes one evaluation of task `task` (a `jaxft.tasks.TaskReport`): `write_report` when it has a
    confusion matrix (classification, files as they always were), else `write_task_report`."""
    if result.confusion is not None:
        extra = {**result.extra, **extra}
        write_report(eval_dir, name, result.report, result.text, result.confusion, label_names, extra)
    else:
        extra = {"task": task, **result.extra, **extra}
        write_task_report(eval_dir, name, result.report, result.text, label_names, extra)


def write_task_report(
    eval_dir: str, name: str, report: dict, text: str, label_names: list[str], extra: dict | None = None
) -> None:
    """Writes `<name>.json` and `<name>.txt` for a task without a confusion matrix (regression, multi-label,
    NER, QA): the report dict under "report", the label set under "labels", and `extra` as more top-level
    keys (its scalars also listed as `key: value` lines at the end of the text)."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & {"report", "labels"})
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the report's own")
    os.makedirs(eval_dir, exist_ok=True)
    payload = {"report": report, "labels": list(label_names), **extra}
    files.write_atomic(
        os.path.join(eval_dir, f"{name}.json"), json.dumps(payload, indent=2, default=_json_default) + "\n"
    )
    parts = [text.rstrip("\n")]
    scalars = {key: value for key, value in extra.items() if not isinstance(value, dict | list)}
    if scalars:  # collections (QA's predictions) are in the JSON only
        parts += [""] + [f"{key}: {value}" for key, value in scalars.items()]
    files.write_atomic(os.path.join(eval_dir, f"{name}.txt"), "\n".join(parts) + "\n")


def plot_confusion_matrix(confusion, label_names: list[str], path: str) -> None:
    """Draws the matrix as an annotated heat map and saves it as a PNG.

    Uses a bare `Figure` with the Agg canvas, so it neither needs a display nor changes pyplot's backend.

    Args:
        confusion: [C, C] counts, rows true, columns predicted.
        label_names: the C label names.
        path: PNG path to write (atomically).
    """
    confusion = _as_counts(confusion)
    num_labels = confusion.shape[0]
    side = min(3.0 + 0.6 * num_labels, 20.0)
    fig = Figure(figsize=(side, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(num_labels)
    ax.set_xticks(ticks, labels=label_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=label_names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(f"Confusion matrix ({int(confusion.sum())} examples)")
    if num_labels <= _MAX_ANNOTATED_LABELS:
        # Light text on dark cells, dark text on light ones.
        threshold = confusion.max() / 2
        for (i, j), count in np.ndenumerate(confusion):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    files.write_atomic(path, buffer.getvalue())


def report_name(split: str, step: int | None) -> str:
    """File stem for a report: "dev_step00000100" during training, "final_dev" after it.

    Zero-padded steps sort in training order in a directory listing.
    """
    if step is None:
        return f"final_{split}"
    return f"{split}_step{int(step):08d}"


def examples_path(eval_dir: str, split: str) -> str:
    """Where the final report of `split` keeps its per-example arrays: eval/final_<split>_examples.npz."""
    return os.path.join(eval_dir, report_name(split, None) + "_examples.npz")


def write_examples(path: str, examples: dict) -> None:
    """Writes a report's per-example arrays (`jaxft.tasks.TaskReport.examples`) as one .npz, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{key: np.asarray(value) for key, value in examples.items()})
    files.write_atomic(path, buffer.getvalue())


def read_examples(path: str) -> dict | None:
    """The arrays `write_examples` wrote ("task" as a str), or None where there is no such file (a task that
    writes none, a run from before they were written) or it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    arrays["task"] = str(arrays["task"]) if "task" in arrays else ""
    return arrays
