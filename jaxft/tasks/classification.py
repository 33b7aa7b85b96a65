"""Single-label text (or text-pair) classification: softmax cross-entropy, confusion matrix, sklearn report.

The default task, and the one the rest of jaxft was built around: the device returns a confusion matrix, a
loss sum and an example count; the host rebuilds label arrays from the matrix and calls
`sklearn.metrics.classification_report` (see `jaxft.evaluate`). Sentence pairs (GLUE MRPC, QQP, ...) need
only `data.text_pair_field`; `data.positive_label` adds that class's F1 as the metric "f1".
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxft import evaluate
from jaxft.data import labels as labels_lib
from jaxft.errors import UserError
from jaxft.tasks.base import Task, TaskReport, text_record


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per example out of `len(names)`."""

    name = "classification"
    default_metric = "accuracy"
    summary_metrics = ("accuracy", "macro_f1", "weighted_f1", "loss", "num_examples")
    # Training targets (1 - s) * one-hot + s / classes (Szegedy et al. 2016); the reported eval loss is plain.
    label_smoothing: float = 0.0

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

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        if self.label_smoothing:
            targets = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=logits.dtype)
            targets = optax.smooth_labels(targets, self.label_smoothing)
            losses = optax.softmax_cross_entropy(logits, targets)
        else:
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        num_labels = logits.shape[-1]
        weights = batch["weights"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        truth = (
            jax.nn.one_hot(batch["labels"], num_labels, dtype=jnp.int32) * weights.astype(jnp.int32)[:, None]
        )
        predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_labels, dtype=jnp.int32)
        return {
            "confusion": truth.T @ predicted,
            "loss_sum": jnp.sum(losses * weights),
            "count": jnp.sum(weights),
        }

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, axis=-1)

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        confusion = np.asarray(totals["confusion"]).astype(np.int64)
        report, text = evaluate.classification_report(confusion, names)
        metrics = evaluate.summary_metrics(
            report, float(totals["loss_sum"]), int(totals["count"]), data.positive_label
        )
        return TaskReport(report, text, metrics, confusion=confusion)

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        return {
            **text_record(example),
            "label": names[int(output.argmax())],
            "probabilities": {name: float(p) for name, p in zip(names, output, strict=True)},
        }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "problem_type": "single_label_classification"}
