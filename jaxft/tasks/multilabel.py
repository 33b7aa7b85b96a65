"""Multi-label classification: any subset of the labels per example; sigmoid + binary cross-entropy.

Labels in the files: a list (`{"text": ..., "labels": ["sports", "politics"]}`) in JSONL, or a list column
of a Parquet / Arrow file or `datasets` source (`jaxft.data.records`; ClassLabel ids become their names), or
one string joined by `task.label_separator` in any of them or in CSV/TSV (`sports,politics`; an empty cell
is the empty set), or
GoEmotions' TSV as distributed (`data.format="goemotions"`, `jaxft.data.goemotions`: label ids named by the
emotions.txt beside the file, which is also the label set, in id order, unless data.labels gives one).
A label is predicted when its sigmoid probability exceeds `task.threshold`. The device returns each
example's probabilities, placed by example index on the host, which predicts by the same float32 comparison;
the report is scikit-learn's multi-label `classification_report` (per label, micro / macro / weighted /
samples averages) on those predictions. With `task.tune_threshold` the final reports use the one threshold
(0.01 to 0.99 by 0.01, `THRESHOLDS`) that maximises that F1 on the eval split (`MultiLabel.tuned`; ties: the
lowest), as the GoEmotions baseline chose its threshold on dev. The head is the
sequence classifier with one output per label, exported as `BertForSequenceClassification` with
`problem_type="multi_label_classification"`.

Class weights (`data.class_weights`) are positive weights per label, as PyTorch's
`BCEWithLogitsLoss(pos_weight=)`: a label's positive targets weigh its pos_weight, its negative ones 1;
"balanced" is n_negative / n_positive per label over the train examples (`jaxft.tasks.class_weights`). The
loss stays the mean over labels and examples, in training and evaluation; the report says it is weighted.
"""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import sklearn.metrics

from jaxft.data import goemotions, lines, readers, records
from jaxft.data.example import MultiLabelExample
from jaxft.errors import UserError
from jaxft.tasks import class_weights as class_weights_lib
from jaxft.tasks.base import PER_EXAMPLE, Task, TaskReport, text_record

_INTEGER = re.compile(r"[+-]?\d+")


def _is_records(path: str, fmt: str) -> bool:
    """Whether `path` is read as records (JSONL, Parquet, Arrow, datasets), whose labels may be lists."""
    if path.startswith("tfds:"):
        return False
    path = os.path.expanduser(os.path.expandvars(path))
    try:
        return records.resolve_format(path, fmt) in records.RECORD_FORMATS
    except UserError:
        return False  # the shared reader says what is wrong with the path or format


def _shown(value) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):  # bytes, dates, ...: values a Parquet file can hold and JSON cannot
        return repr(value)[:60]


def _split_labels(where: str, value, separator: str) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = value.split(separator)
    elif isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        parts = [str(v) for v in value]
    else:
        raise UserError(
            f"{where}: the labels (data.label_field) must be a list of strings or a string joined by "
            f"task.label_separator={separator!r}, found {_shown(value)}"
        )
    labels = [lines.check_unicode(where, part, "a label (data.label_field)").strip() for part in parts]
    return tuple(dict.fromkeys(label for label in labels if label))  # order kept, duplicates and blanks gone


THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # task.tune_threshold's grid: 0.01, 0.02, ..., 0.99


def choose_threshold(truth, probabilities, metric: str) -> tuple[float, float]:
    """(threshold, its F1): the threshold of `THRESHOLDS` whose predictions (probability above it, compared
    in float32) maximise `metric` ("macro_f1" or "micro_f1", scikit-learn's with zero_division=0) on these
    examples; ties go to the lowest threshold."""
    average = {"macro_f1": "macro", "micro_f1": "micro"}[metric]
    truth, probabilities = np.asarray(truth, np.int64), np.asarray(probabilities, np.float32)
    scores = [
        sklearn.metrics.f1_score(
            truth, (probabilities > np.float32(t)).astype(np.int64), average=average, zero_division=0
        )
        for t in THRESHOLDS
    ]
    best = int(np.argmax(scores))  # the first of the maxima: the lowest threshold
    return float(THRESHOLDS[best]), float(scores[best])


def multilabel_report(truth, predictions, names: list[str], digits: int = 4) -> tuple[dict, str]:
    """scikit-learn's multi-label classification report (dict and text) on 0/1 indicator arrays [N, L]."""
    truth, predictions = np.asarray(truth, np.int64), np.asarray(predictions, np.int64)
    if not len(truth):
        raise ValueError("no examples to evaluate")
    kwargs = dict(labels=list(range(len(names))), target_names=list(names), digits=digits, zero_division=0)
    report = sklearn.metrics.classification_report(truth, predictions, output_dict=True, **kwargs)
    text = sklearn.metrics.classification_report(truth, predictions, output_dict=False, **kwargs)
    return report, text


@dataclasses.dataclass(frozen=True)
class MultiLabel(Task):
    """Any subset of the labels per example.

    Attributes:
        threshold: a label is predicted when its probability exceeds this (task.threshold).
        separator: joins the labels of one example in a CSV/TSV cell or JSON string (task.label_separator).
        class_weights: pos_weight per label, in label order (data.class_weights); None: unweighted.
        tune_threshold: "" or the F1 ("macro_f1", "micro_f1") whose best threshold on the eval split the
            final reports use (task.tune_threshold; `tuned`).
    """

    threshold: float = 0.5
    separator: str = ","
    class_weights: tuple[float, ...] | None = None
    tune_threshold: str = ""

    name = "multilabel"
    default_metric = "micro_f1"
    summary_metrics = (
        "micro_f1",
        "macro_f1",
        "weighted_f1",
        "samples_f1",
        "subset_accuracy",
        "loss",
        "num_examples",
    )

    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        if data.format == "goemotions":  # GoEmotions' TSV: label ids named by emotions.txt beside it
            path = os.path.expanduser(os.path.expandvars(path))
            return goemotions.read_goemotions(path, require_label=require_label)
        if _is_records(path, data.format):
            # The shared reader checks the texts; the labels are each record's value, a list or a string.
            pairs = readers.read_record_examples(
                path,
                text_field=data.text_field,
                label_field=None,
                text_pair_field=data.text_pair_field,
                fmt=data.format,
                require_label=False,
            )
            return [
                MultiLabelExample(
                    e.text,
                    e.text_pair,
                    self._labels(e.source, record, data.label_field) if require_label else None,
                    e.source,
                )
                for e, record in pairs
            ]
        # CSV / TSV: labels are read here, since they may be empty (the empty set), which the single-label
        # reader refuses.
        examples = readers.read_examples(
            path,
            text_field=data.text_field,
            label_field=data.label_field if require_label else None,
            text_pair_field=data.text_pair_field,
            fmt=data.format,
            has_header=data.has_header,
            require_label=False,
        )
        if not require_label:
            return [MultiLabelExample(e.text, e.text_pair, None, e.source) for e in examples]
        if not any(e.label for e in examples):
            raise UserError(
                f"{path}: no labels found: the column {data.label_field!r} (data.label_field) is "
                "missing or empty in every row"
            )
        return [
            MultiLabelExample(
                e.text, e.text_pair, _split_labels(e.source, e.label or "", self.separator), e.source
            )
            for e in examples
        ]

    def _labels(self, where: str, record: dict, field: str) -> tuple[str, ...]:
        return _split_labels(where, records.field(where, record, field, "data.label_field"), self.separator)

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        if data.labels is not None:
            names = [str(label) for label in data.labels]
            if len(set(names)) != len(names):
                raise UserError(f"data.labels={names} lists a label twice")
            if not names:
                raise UserError("data.labels must list at least 1 label")
            return names
        if data.format == "goemotions":  # all of emotions.txt, in id order, even a label train lacks
            return goemotions.label_names(records.source_of(examples[0].source))
        unique = {label for example in examples for label in example.labels}
        if not unique:
            raise UserError(f"{records.source_of(examples[0].source)}: no example has a label")
        if all(_INTEGER.fullmatch(label) for label in unique):
            return sorted(unique, key=lambda label: (int(label), label))
        return sorted(unique)

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        ids = {name: i for i, name in enumerate(names)}
        out = np.zeros((len(examples), len(names)), np.float32)
        for row, example in enumerate(examples):
            for label in example.labels:
                if label not in ids:
                    shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
                    raise UserError(
                        f"{example.source}: label {label!r} is not in the label set [{shown}] "
                        "(labels come from the train split or data.labels)"
                    )
                out[row, ids[label]] = 1.0
        return out

    def resolve_class_weights(self, spec, train_targets: np.ndarray, names: list[str]) -> tuple[float, ...]:
        return class_weights_lib.pos_weights(spec, train_targets, names)

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        # Mean over labels per example, so the batch mean equals Hugging Face's BCEWithLogitsLoss.
        if self.class_weights is None:
            losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
        else:
            losses = class_weights_lib.sigmoid_cross_entropy(logits, batch["labels"], self.class_weights)
        losses = losses.mean(-1)
        return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        loss_sum, count = self.loss(logits, batch)
        # Probabilities, not decisions: the host thresholds them (`report`), at any threshold (`tuned`).
        return {"loss_sum": loss_sum, "count": count, PER_EXAMPLE: {"probability": jax.nn.sigmoid(logits)}}

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(logits)

    def tuned(self, totals: dict, split) -> tuple["MultiLabel", dict]:
        """With `tune_threshold`: this task at the threshold that maximises that F1 on these eval counts
        (`choose_threshold`), and what was chosen; else this task and {}."""
        if not self.tune_threshold:
            return self, {}
        threshold, score = choose_threshold(
            split.labels, totals[PER_EXAMPLE]["probability"], self.tune_threshold
        )
        chosen = {"threshold": threshold, "metric": self.tune_threshold, "split": split.name, "value": score}
        return dataclasses.replace(self, threshold=threshold), chosen

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        # The device's float32 probabilities against the float32 threshold: the comparison it would make.
        predictions = (totals[PER_EXAMPLE]["probability"] > np.float32(self.threshold)).astype(np.int32)
        report, text = multilabel_report(split.labels, predictions, names)
        count = int(totals["count"])
        if count != len(split.labels):
            raise ValueError(f"loss counted {count} examples but the split has {len(split.labels)}")
        subset_accuracy = float(sklearn.metrics.accuracy_score(split.labels.astype(np.int64), predictions))
        metrics = {
            "micro_f1": float(report["micro avg"]["f1-score"]),
            "macro_f1": float(report["macro avg"]["f1-score"]),
            "weighted_f1": float(report["weighted avg"]["f1-score"]),
            "samples_f1": float(report["samples avg"]["f1-score"]),
            "subset_accuracy": subset_accuracy,
            "loss": float(totals["loss_sum"]) / count,
            "num_examples": count,
        }
        text += f"\nsubset accuracy (exact match): {subset_accuracy:.4f} of {count} examples\n"
        text += f"a label is predicted when its probability exceeds {self.threshold:g}\n"
        extra = {"subset_accuracy": subset_accuracy, "threshold": float(self.threshold)}
        if self.class_weights is not None:
            line, weights = class_weights_lib.describe(names, self.class_weights, "BCE pos_weight")
            text, extra = text + f"{line}\n", {**extra, **weights}
        examples = {
            "task": "multilabel",
            "label": np.asarray(split.labels, np.int8),
            "predicted": np.asarray(predictions, np.int8),
        }
        return TaskReport(report, text, metrics, extra=extra, examples=examples)

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        chosen = output > np.float32(self.threshold)  # the device's float32 comparison
        return {
            **text_record(example),
            "labels": [name for name, keep in zip(names, chosen, strict=True) if keep],
            "probabilities": {name: float(p) for name, p in zip(names, output, strict=True)},
        }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "problem_type": "multi_label_classification"}
