"""Regression on one float target per example (STS-B similarity scores): MSE loss, Pearson / Spearman report.

The head is the sequence classifier with one output, as Hugging Face's `BertForSequenceClassification` with
`problem_type="regression"` (exported as such). Correlations are not sums, so the device returns each
example's prediction, placed by example index on the host; the report is SciPy's `pearsonr` / `spearmanr`
and scikit-learn's `mean_squared_error` on those predictions, never a formula of ours.
"""

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats
import sklearn.metrics

from jaxft.errors import UserError
from jaxft.tasks.base import PER_EXAMPLE, Task, TaskReport, refuse_given_labels, text_record


def regression_report(predictions, targets, digits: int = 4) -> tuple[dict, str]:
    """Pearson and Spearman correlation (SciPy) and mean squared error (scikit-learn).

    Args:
        predictions: float predictions [N].
        targets: float gold values [N].
        digits: decimals in the text.

    Returns:
        ({"pearson", "spearman", "mse", "num_examples"}, text). A correlation is NaN when either side is
        constant (SciPy's answer; its warning is silenced).
    """
    predictions = np.asarray(predictions, np.float64)
    targets = np.asarray(targets, np.float64)
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} must be equal 1-D")
    if not len(targets):
        raise ValueError("no examples to evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant input gives NaN and a ConstantInputWarning
        pearson = float(scipy.stats.pearsonr(predictions, targets)[0]) if len(targets) > 1 else math.nan
        spearman = float(scipy.stats.spearmanr(predictions, targets)[0]) if len(targets) > 1 else math.nan
    report = {
        "pearson": pearson,
        "spearman": spearman,
        "mse": float(sklearn.metrics.mean_squared_error(targets, predictions)),
        "num_examples": len(targets),
    }
    width = max(map(len, report))
    lines = [f"{key:<{width}}  {value:.{digits}f}" for key, value in report.items() if key != "num_examples"]
    lines.append(f"{'examples':<{width}}  {len(targets)}")
    return report, "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Regression(Task):
    """One float target per example, read from `data.label_field`."""

    name = "regression"
    default_metric = "pearson"
    summary_metrics = ("pearson", "spearman", "mse", "loss", "num_examples")

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        refuse_given_labels(data, self.name)
        return [str(data.label_field)]  # the one output, named after what it predicts

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        out = np.empty(len(examples), np.float32)
        for i, example in enumerate(examples):
            try:
                value = float(example.label)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise UserError(
                    f"{example.source}: the target {example.label!r} ({names[0]!r}, data.label_field) "
                    "is not a finite number"
                )
            out[i] = value
        return out

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        # Squared error per example (Hugging Face's MSELoss is its mean over the batch).
        errors = jnp.square(logits[:, 0] - batch["labels"])
        return jnp.sum(errors * batch["weights"]), jnp.sum(batch["weights"])

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        loss_sum, count = self.loss(logits, batch)
        return {"loss_sum": loss_sum, "count": count, PER_EXAMPLE: {"prediction": logits[:, 0]}}

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        return logits[:, 0]

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        predictions = totals[PER_EXAMPLE]["prediction"]
        report, text = regression_report(predictions, split.labels)
        count = int(totals["count"])
        if count != len(split.labels):
            raise ValueError(f"loss counted {count} examples but the split has {len(split.labels)}")
        metrics = {
            "pearson": report["pearson"],
            "spearman": report["spearman"],
            "mse": report["mse"],
            "loss": float(totals["loss_sum"]) / count,
            "num_examples": count,
        }
        examples = {
            "task": "regression",
            "label": np.asarray(split.labels, np.float64),
            "prediction": np.asarray(predictions, np.float64),
        }
        return TaskReport(report, text, metrics, examples=examples)

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        return {**text_record(example), names[0]: float(output)}

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "problem_type": "regression"}
