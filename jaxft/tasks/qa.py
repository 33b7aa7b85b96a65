"""Extractive question answering (SQuAD v1.1): start / end logits over context windows, official EM / F1.

Each context window is a batch row (see `jaxft.tasks.squad`); its targets are the start and end token of
the first gold answer, or [CLS] (position 0) when the answer is not inside the window, as BERT's SQuAD
recipe does. The loss per window is the mean of the start and end cross-entropies over the window's
unpadded positions (padding is masked, so the length bucket does not matter). Evaluation returns each
window's start / end logits, placed by window index on the host; `squad.best_spans` then combines each
question's windows exactly once, wherever they were computed, and `squad.squad_scores` is the official
evaluation. The head is `SpanExtractor` (`qa_outputs`, exported as `BertForQuestionAnswering`).
"""

import dataclasses
import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxft.data import records
from jaxft.data import squad as squad_data
from jaxft.tasks import squad
from jaxft.tasks.base import PER_EXAMPLE, Task, TaskReport, refuse_given_labels

_MASKED = -1e9  # logit of a padding position: exp() of it underflows to exactly 0 next to real logits


@dataclasses.dataclass(frozen=True)
class QuestionAnswering(Task):
    """An answer span per question.

    Attributes: the task.* keys doc_stride, max_query_length, max_answer_length, n_best, and max_seq_length
    (the width logits are padded to on the device, so every batch returns one shape).
    """

    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    max_seq_length: int = 384

    name = "qa"
    default_metric = "f1"
    summary_metrics = ("exact_match", "f1", "loss", "num_examples")
    head = "span"

    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        if path.startswith("tfds:"):
            from jaxft.data import tfds_source  # deferred: TFDS is optional

            return tfds_source.read_tfds_squad(path, require_answers=require_label)
        if squad_data.is_text_file(path):
            if not require_label:
                # Prediction input as rows: question in data.text_field, context in data.text_pair_field.
                examples = super().read(path, data, require_label=False)
                return [
                    squad_data.QAExample(str(i), e.text, e.text_pair, (), e.source)
                    for i, e in enumerate(examples)
                ]
            if records.detect_format(os.path.expanduser(os.path.expandvars(path))) in records.RECORD_FORMATS:
                # One question per record, as Hugging Face's squad stores them.
                return squad_data.read_squad_records(path, data.format, require_answers=True)
        return squad_data.read_squad(path, require_answers=require_label)

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        refuse_given_labels(data, self.name)
        return ["start", "end"]  # the head's two outputs per position

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        # The targets depend on the windows, so tokenisation makes them (features["targets"]).
        return np.zeros(len(examples), np.int32)

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        return self.features_for_prediction(examples, tokenizer, data.max_seq_length)

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        return squad.make_windows(examples, tokenizer, max_seq_length, self.doc_stride, self.max_query_length)

    def _masked_logits(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        keep = batch["attention_mask"] > 0
        return jnp.where(keep, logits[..., 0], _MASKED), jnp.where(keep, logits[..., 1], _MASKED)

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        start, end = self._masked_logits(logits, batch)
        targets = batch["labels"]
        losses = 0.5 * (
            optax.softmax_cross_entropy_with_integer_labels(start, targets[:, 0])
            + optax.softmax_cross_entropy_with_integer_labels(end, targets[:, 1])
        )
        return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])

    def _padded(self, logits: jax.Array, batch: dict) -> dict:
        width = ((0, 0), (0, self.max_seq_length - logits.shape[1]))
        start, end = self._masked_logits(logits, batch)
        return {
            "start_logits": jnp.pad(start, width, constant_values=_MASKED),
            "end_logits": jnp.pad(end, width, constant_values=_MASKED),
        }

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        loss_sum, count = self.loss(logits, batch)
        return {"loss_sum": loss_sum, "count": count, PER_EXAMPLE: self._padded(logits, batch)}

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        # No attention mask here: padding positions are never context, so decoding never reads them.
        return jnp.pad(logits, ((0, 0), (0, self.max_seq_length - logits.shape[1]), (0, 0)))

    def answers(self, examples: list, start: np.ndarray, end: np.ndarray, features: dict) -> list:
        return squad.best_spans(
            start, end, features, examples, n_best=self.n_best, max_answer_length=self.max_answer_length
        )

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        outputs = totals[PER_EXAMPLE]
        spans = self.answers(split.examples, outputs["start_logits"], outputs["end_logits"], split.features)
        predictions = {example.id: text for example, (text, _, _) in zip(split.examples, spans, strict=True)}
        report = squad.squad_scores(predictions, split.examples)
        count = float(totals["count"])
        metrics = {
            "exact_match": report["exact_match"],
            "f1": report["f1"],
            "loss": float(totals["loss_sum"]) / max(count, 1.0),
            "num_examples": report["num_questions"],
        }
        text = (
            f"exact_match  {report['exact_match']:.4f}\nf1           {report['f1']:.4f}\n"
            f"questions    {report['num_questions']} ({len(split.features['length'])} windows)\n"
        )
        ems, scores = squad.question_scores(predictions, split.examples)  # what a resample averages
        examples = {
            "task": "qa",
            "question": np.asarray([zlib.crc32(e.id.encode()) for e in split.examples], np.int64),  # pairing
            "exact_match": 100.0 * np.asarray(ems),
            "f1": 100.0 * np.asarray(scores),
        }
        return TaskReport(report, text, metrics, extra={"predictions": predictions}, examples=examples)

    def prediction_records(self, examples: list, outputs: np.ndarray, features: dict, names: list[str]):
        spans = self.answers(examples, outputs[..., 0], outputs[..., 1], features)
        for example, (text, start, score) in zip(examples, spans, strict=True):
            score = score if np.isfinite(score) else None  # no valid span in any window
            yield {
                "id": example.id,
                "question": example.question,
                "answer": text,
                "start": start,
                "score": score,
            }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "architectures": ["BertForQuestionAnswering"]}
