"""What every task provides, and the text-task defaults that classification, regression and multi-label share.

A task is a small frozen dataclass built from the config (`jaxft.tasks.from_config`). It is hashable, so the
compiled steps take it as a static argument, like the model: the train state stays arrays only. One object
answers every task-specific question along the data flow:

    read -> label_names / encode -> tokenize -> (batches) -> train_inputs / eval_inputs -> loss /
    eval_outputs -> report -> files

Device side, `loss` returns a *sum* and a *weight* (examples, or labelled positions for token tasks) so the
step can add both over micro-batches and devices before dividing; `eval_outputs` returns sums, plus
`"per_example"` arrays that the host places by row index (`jaxft.training.train.eval_counts`), so that every
example (QA: every context window) is counted exactly once on any device count. Host side, `report` turns
those totals into the report (built by scikit-learn, SciPy, seqeval or the official SQuAD v1.1 evaluation)
and the summary metrics.
"""

import dataclasses
from typing import ClassVar

import jax
import ml_collections
import numpy as np

from jaxft.data import long_inputs as long_inputs_lib
from jaxft.data import readers, tokenize
from jaxft.errors import UserError

IGNORE = -100  # label of a position that neither the loss nor any metric counts (Hugging Face's convention)
PER_EXAMPLE = "per_example"  # key of eval outputs placed by example index instead of summed


@dataclasses.dataclass
class TaskReport:
    """One evaluation's result on the host.

    Attributes:
        report: the library's report dict (sklearn / seqeval `output_dict`, or the regression numbers).
        text: the same as a text table.
        metrics: the few numbers logged per evaluation and used to pick the best checkpoint.
        confusion: the confusion matrix, for single-label classification only.
        extra: more top-level keys for the JSON file (e.g. token accuracy).
        examples: the per-example arrays (labels, predictions) from which `jaxft.bootstrap` recomputes the
            metrics on a resample of the examples, with "task" naming their kind (a key of
            `jaxft.bootstrap.EXAMPLE_METRICS`); the final report writes them
            (`jaxft.evaluate.write_examples`). None for a task whose metrics are not recomputed there.
    """

    report: dict
    text: str
    metrics: dict
    confusion: np.ndarray | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    examples: dict | None = None


@dataclasses.dataclass(frozen=True)
class StepLoss:
    """What the train and evaluation steps ask of a loss (`jaxft.training.steps`): the inputs it draws, the
    model's keyword inputs, the (sum, weight) of its losses and each row's weight. Every `Task` is one; so is
    a recipe's own loss (continual learning's own-head cross-entropy, SetFit's cosine loss), which keeps the
    defaults: the batch as it is, no extra model inputs, the batch's row weights."""

    def train_inputs(self, batch: dict, key: jax.Array) -> dict:
        """The batch a train step feeds the model and the loss, drawn with `key` (the step's input key,
        `jaxft.training.steps.input_key`): mlm masks tokens. Default: the batch as it is."""
        return batch

    def eval_inputs(self, batch: dict) -> dict:
        """The batch an evaluation step feeds the model (mlm: with its fixed masks). Default: as it is."""
        return batch

    def model_inputs(self, batch: dict) -> dict:
        """Keyword inputs of the model beyond the token arrays (mlm: the positions to predict)."""
        return {}

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(sum of losses, sum of weights) over this device's rows; padding carries weight 0."""
        raise NotImplementedError

    def row_weights(self, batch: dict) -> jax.Array:
        """Each row's weight in `loss`'s sum of weights (a sequence task's; class weights included): what a
        per-row term added to the loss (R-Drop's KL) is weighted by. Default: the batch's row weights."""
        return batch["weights"]


@dataclasses.dataclass(frozen=True)
class Task(StepLoss):
    """Base class; the defaults read text (pairs) with `jaxft.data.readers` and tokenise with its cache."""

    name: ClassVar[str] = ""
    default_metric: ClassVar[str] = ""  # training.best_metric="auto" picks this one
    # The keys of `report(...).metrics`: what training.best_metric may name.
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    head: ClassVar[str] = "sequence"  # "sequence" (pooled output) or "token" (every position)
    # What a text longer than max_seq_length tokens becomes; a task that takes data.long_inputs makes this a
    # field (classification).
    long_inputs: ClassVar[long_inputs_lib.LongInputs] = long_inputs_lib.TRUNCATE

    def metric_names(self, data: ml_collections.ConfigDict) -> tuple[str, ...]:
        """The keys of `report(...).metrics` under this data config, known before any evaluation."""
        return self.summary_metrics

    # ---- host: data --------------------------------------------------------------------------------------
    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        """The examples of one file (labels required for training and evaluation, not for prediction)."""
        return readers.read_examples(
            path,
            text_field=data.text_field,
            label_field=data.label_field if require_label else None,
            text_pair_field=data.text_pair_field,
            fmt=data.format,
            has_header=data.has_header,
            require_label=require_label,
        )

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        """The label set (saved as WORKDIR/labels.json): one name per model output."""
        raise NotImplementedError

    def check_label_names(self, names: list[str], data: ml_collections.ConfigDict) -> None:
        """Checks a label set that came from a resumed run against the config (default: nothing to check)."""

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        """Targets [N, ...] that batches take rows of; raises `UserError` naming the file and line."""
        raise NotImplementedError

    def resolve_class_weights(self, spec, train_targets: np.ndarray, names: list[str]) -> tuple[float, ...]:
        """One loss weight per label, in label order, from data.class_weights as `jaxft.config.class_weights`
        reads it and the train split's targets (`encode`'s); the task is then rebuilt with them
        (`dataclasses.replace(task, class_weights=...)`). Default: the task has no classes to weigh."""
        raise UserError(f"config data.class_weights does not apply to task.name={self.name!r}")

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        """Features of `tokenize.tokenize` (plus per-token "labels" for token tasks), cached when allowed."""
        return tokenize.cached_tokenize(
            examples,
            tokenizer,
            data.max_seq_length,
            cache_dir,
            {"path": path, "pair": data.text_pair_field is not None},
            self.long_inputs,
        )

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        return tokenize.tokenize(examples, tokenizer, max_seq_length, long_inputs=self.long_inputs)[0]

    def prepare_tokenizer(self, tokenizer) -> tuple[str, ...]:
        """Adds the tokens this task writes into its inputs to `tokenizer` (in place); returns them.

        Called wherever a tokenizer is loaded, before the model's vocabulary size is fixed; adding tokens
        already there changes nothing. Default: none. Relation extraction adds its entity markers, and the
        model's vocabulary grows to hold them (`jaxft.models.convert.vocab_size_with`).
        """
        return ()

    def model_kwargs(self, tokenizer) -> dict:
        """Attributes of this task's head that depend on the tokenizer (relation: the marker ids)."""
        return {}

    def for_tokenizer(self, tokenizer) -> "Task":
        """This task with what its steps need from the tokenizer (mlm: the mask token); default: itself."""
        return self

    # ---- device: pure functions of arrays ----------------------------------------------------------------
    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        """Sums over this device's rows, plus `PER_EXAMPLE` arrays with a leading row axis."""
        raise NotImplementedError

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        raise NotImplementedError

    # ---- host: reports, predictions, export --------------------------------------------------------------
    def combine_rows(self, outputs: np.ndarray, features: dict, num_examples: int) -> np.ndarray:
        """`predict_outputs` of every feature row (an example, or a window of one) as `prediction_records`
        takes them. Default: unchanged (QA combines its windows in `prediction_records`)."""
        return outputs

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        raise NotImplementedError

    def tuned(self, totals: dict, split) -> tuple["Task", dict]:
        """This task with its decision rule chosen on the eval split's `totals` (`report`'s counts of the
        final parameters), and a dict of what was chosen; the final reports, predict and export use it.
        Default: itself and {} (multi-label: the threshold, where task.tune_threshold asks)."""
        del totals, split
        return self, {}

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        """One line of `jaxft.predict`'s output for one example and its row of `predict_outputs`."""
        raise NotImplementedError

    def prediction_records(self, examples: list, outputs: np.ndarray, features: dict, names: list[str]):
        """The lines of `jaxft.predict`'s output, in input order."""
        for example, output in zip(examples, outputs, strict=True):
            yield self.prediction_record(example, output, names)

    def export_config(self, names: list[str]) -> dict:
        """Keys of the exported Hugging Face config.json that say which head this is."""
        return {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }


def text_record(example) -> dict:
    """The input part of a prediction record of a text (pair) task."""
    record = {"text": example.text}
    if example.text_pair is not None:
        record["text_pair"] = example.text_pair
    return record


def refuse_given_labels(data: ml_collections.ConfigDict, task_name: str) -> None:
    if data.labels is not None:
        raise UserError(f"config data.labels does not apply to task.name={task_name!r}")
