"""Single-label text (or text-pair) classification: softmax cross-entropy, confusion matrix, sklearn report.

The default task, and the one the rest of jaxft was built around: the device returns a confusion matrix, a
loss sum and an example count; the host rebuilds label arrays from the matrix and calls
`sklearn.metrics.classification_report` (see `jaxft.evaluate`). Sentence pairs (GLUE MRPC, QQP, ...) need
only `data.text_pair_field`; `data.positive_label` adds that class's F1 as the metric "f1".

With class weights (`data.class_weights`, `jaxft.tasks.class_weights`) the training and the eval loss are
PyTorch's `CrossEntropyLoss(weight=w)`: the step's "weight" is then the sum of the real rows' w[label], and
an evaluation also returns it ("loss_weight") beside the example count; the report says the loss is weighted.
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
from jaxft.tasks import class_weights as class_weights_lib
from jaxft.tasks.base import Task, TaskReport, text_record


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per example out of `len(names)`."""

    name = "classification"
    default_metric = "accuracy"
    summary_metrics = ("accuracy", "macro_f1", "weighted_f1", "loss", "num_examples")
    # Training targets (1 - s) * one-hot + s / classes (Szegedy et al. 2016); the reported eval loss is plain.
    label_smoothing: float = 0.0
    # Loss weight per label, in label order (data.class_weights, resolved by `resolve_class_weights`).
    class_weights: tuple[float, ...] | None = None

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
        num_labels = logits.shape[-1]
        weights = batch["weights"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        truth = (
            jax.nn.one_hot(batch["labels"], num_labels, dtype=jnp.int32) * weights.astype(jnp.int32)[:, None]
        )
        predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_labels, dtype=jnp.int32)
        outputs = {
            "confusion": truth.T @ predicted,
            "loss_sum": jnp.sum(losses * weights),
            "count": jnp.sum(weights),
        }
        if self.class_weights is not None:  # the training loss without its label smoothing
            outputs["loss_sum"], outputs["loss_weight"] = class_weights_lib.softmax_cross_entropy(
                logits, batch["labels"], weights, self.class_weights
            )
        return outputs

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, axis=-1)

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        confusion = np.asarray(totals["confusion"]).astype(np.int64)
        report, text = evaluate.classification_report(confusion, names)
        metrics = evaluate.summary_metrics(
            report, float(totals["loss_sum"]), int(totals["count"]), data.positive_label
        )
        result = TaskReport(report, text, metrics, confusion=confusion)
        if "loss_weight" in totals:  # a weighted loss: divided by its weight, not by the example count
            metrics["loss"] = float(totals["loss_sum"]) / float(totals["loss_weight"])
        if self.class_weights is not None:
            line, result.extra = class_weights_lib.describe(names, self.class_weights)
            result.text = text.rstrip("\n") + f"\n\n{line}\n"
        return result

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        return {
            **text_record(example),
            "label": names[int(output.argmax())],
            "probabilities": {name: float(p) for name, p in zip(names, output, strict=True)},
        }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "problem_type": "single_label_classification"}
