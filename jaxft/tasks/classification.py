"""Single-label text (or text-pair) classification: softmax cross-entropy, confusion matrix, sklearn report.

The default task, and the one the rest of jaxft was built around: the device returns a confusion matrix, a
loss sum and an example count; the host rebuilds label arrays from the matrix and calls
`sklearn.metrics.classification_report` (see `jaxft.evaluate`). Sentence pairs (GLUE MRPC, QQP, ...) need
only `data.text_pair_field`; `data.positive_label` adds that class's F1 as the metric "f1".

Long texts (`data.long_inputs`, `jaxft.data.long_inputs`): "truncate" and "head_tail" give one row per text.
Under "windows" a text is several rows; each trains as an example of its own with the text's label, but the
device returns the windows' logits instead of counts, and the host averages them per text
(`mean_by_example`): the report, the eval loss and `jaxft.predict` count every text exactly once, wherever
and on however many devices its windows were computed.

With class weights (`data.class_weights`, `jaxft.tasks.class_weights`) the training and the eval loss are
PyTorch's `CrossEntropyLoss(weight=w)`: the step's "weight" is then the sum of the real rows' w[label], and
an evaluation also returns it ("loss_weight") beside the example count; the report says the loss is weighted.
Class weights and windows do not combine (`jaxft.config.check` refuses the pair).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxft import evaluate
from jaxft.data import labels as labels_lib
from jaxft.data import long_inputs as long_inputs_lib
from jaxft.errors import UserError
from jaxft.tasks import class_weights as class_weights_lib
from jaxft.tasks.base import PER_EXAMPLE, Task, TaskReport, text_record


def mean_by_example(rows: np.ndarray, example_index: np.ndarray, num_examples: int) -> np.ndarray:
    """The mean of the rows [R, ...] of each example (`example_index` [R]), as float64 [num_examples, ...]."""
    rows = np.asarray(rows, np.float64)
    sums = np.zeros((num_examples, *rows.shape[1:]), np.float64)
    np.add.at(sums, example_index, rows)
    counts = np.bincount(example_index, minlength=num_examples).reshape(-1, *[1] * (rows.ndim - 1))
    return sums / counts


def _softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probabilities, labels[:, None], -1)[:, 0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per example out of `len(names)`."""

    name = "classification"
    default_metric = "accuracy"
    summary_metrics = ("accuracy", "macro_f1", "weighted_f1", "loss", "num_examples")
    # Training targets (1 - s) * one-hot + s / classes (Szegedy et al. 2016); the reported eval loss is plain.
    label_smoothing: float = 0.0
    # What a text longer than max_seq_length tokens becomes (data.long_inputs and its keys).
    long_inputs: long_inputs_lib.LongInputs = long_inputs_lib.TRUNCATE
    # Loss weight per label, in label order (data.class_weights, resolved by `resolve_class_weights`).
    class_weights: tuple[float, ...] | None = None

    @property
    def _windows(self) -> bool:
        return self.long_inputs.mode == "windows"

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        names = labels_lib.build_label_vocab(examples, data.labels)
        self.check_label_names(names, data)
        return names

    def metric_names(self, data: ml_collections.ConfigDict) -> tuple[str, ...]:
        return self.summary_metrics + (("f1",) if data.positive_label is not None else ())

    def check_label_names(self, names: list[str], data: ml_collections.ConfigDict) -> None:
        if data.positive_label is not None and data.positive_label not in names:
            raise UserError(f"data.positive_label={data.positive_label!r} is not in the label set {names}")

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        return labels_lib.encode_labels(examples, names)

    def resolve_class_weights(self, spec, train_targets: np.ndarray, names: list[str]) -> tuple[float, ...]:
        return class_weights_lib.single_label(spec, train_targets, names)

    def row_weights(self, batch: dict) -> jax.Array:
        if self.class_weights is None:
            return batch["weights"]
        return batch["weights"] * jnp.asarray(self.class_weights, jnp.float32)[batch["labels"]]

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        if self.class_weights is not None:
            return class_weights_lib.softmax_cross_entropy(
                logits, batch["labels"], batch["weights"], self.class_weights, self.label_smoothing
            )
        if self.label_smoothing:
            targets = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=logits.dtype)
            targets = optax.smooth_labels(targets, self.label_smoothing)
            losses = optax.softmax_cross_entropy(logits, targets)
        else:
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        if self._windows:  # a text's windows may sit in several batches: the host averages them
            return {"windows": jnp.sum(batch["weights"]), PER_EXAMPLE: {"logits": logits.astype(jnp.float32)}}
        num_labels = logits.shape[-1]
        weights = batch["weights"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        truth = (
            jax.nn.one_hot(batch["labels"], num_labels, dtype=jnp.int32) * weights.astype(jnp.int32)[:, None]
        )
        chosen = jnp.argmax(logits, -1).astype(jnp.int32)
        predicted = jax.nn.one_hot(chosen, num_labels, dtype=jnp.int32)
        outputs = {
            "confusion": truth.T @ predicted,
            "loss_sum": jnp.sum(losses * weights),
            "count": jnp.sum(weights),
            PER_EXAMPLE: {"predicted": chosen},  # for the comparison's bootstrap (`jaxft.bootstrap`)
        }
        if self.class_weights is not None:  # the training loss without its label smoothing
            outputs["loss_sum"], outputs["loss_weight"] = class_weights_lib.softmax_cross_entropy(
                logits, batch["labels"], weights, self.class_weights
            )
        return outputs

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        if self._windows:  # averaged per text on the host (`combine_rows`), then the softmax
            return logits.astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1)

    def combine_rows(self, outputs: np.ndarray, features: dict, num_examples: int) -> np.ndarray:
        if not self._windows:
            return outputs
        logits = mean_by_example(outputs, features["example_index"], num_examples)
        return _softmax(logits).astype(np.float32)

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        extra = {}
        if self._windows:
            totals, extra = self._text_totals(totals, split, len(names)), {"windows": int(totals["windows"])}
        confusion = np.asarray(totals["confusion"]).astype(np.int64)
        report, text = evaluate.classification_report(confusion, names)
        metrics = evaluate.summary_metrics(
            report, float(totals["loss_sum"]), int(totals["count"]), data.positive_label
        )
        result = TaskReport(report, text, metrics, confusion=confusion, extra=extra)
        if (
            PER_EXAMPLE in totals
        ):  # counts from an evaluation (not built by hand): what a comparison resamples
            result.examples = {
                "task": "classification",  # its metrics, for Pet and Relation too
                "label": np.asarray(split.labels, np.int64),
                "predicted": np.asarray(totals[PER_EXAMPLE]["predicted"], np.int64),
                "num_labels": len(names),
                "positive": names.index(data.positive_label) if data.positive_label is not None else -1,
            }
        if "loss_weight" in totals:  # a weighted loss: divided by its weight, not by the example count
            metrics["loss"] = float(totals["loss_sum"]) / float(totals["loss_weight"])
        if self.class_weights is not None:
            line, weights_extra = class_weights_lib.describe(names, self.class_weights)
            result.extra = {**extra, **weights_extra}
            result.text = text.rstrip("\n") + f"\n\n{line}\n"
        return result

    def _text_totals(self, totals: dict, split, num_labels: int) -> dict:
        """The counts `eval_outputs` gives without windows, from each text's mean window logits."""
        labels = np.asarray(split.labels)
        logits = mean_by_example(totals[PER_EXAMPLE]["logits"], split.features["example_index"], len(labels))
        predicted = logits.argmax(-1)
        return {
            "confusion": evaluate.confusion_matrix_from_predictions(labels, predicted, num_labels),
            "loss_sum": float(_softmax_cross_entropy(logits, labels).sum()),
            "count": len(labels),
            PER_EXAMPLE: {"predicted": predicted},
        }

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        return {
            **text_record(example),
            "label": names[int(output.argmax())],
            "probabilities": {name: float(p) for name, p in zip(names, output, strict=True)},
        }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "problem_type": "single_label_classification"}
