"""Token classification (named-entity recognition, e.g. CoNLL-2003): a tag per word, entity-level F1.

Data: CoNLL column files (`jaxft.tasks.tagging`) or CoNLL-style TFDS splits (`tfds:conll2003:train`, see
`jaxft.data.tfds_source`), or a sentence per record (`conll.read_tagged_records`: words in data.text_field,
tags in data.label_field, from JSONL, Parquet, Arrow or `datasets`, e.g. `hf:eriktks/conll2003:train` with
`tokens` / `ner_tags`); tags IOB2, or IOB1 converted (`task.tag_scheme`). Prediction input may also be a
CSV / TSV text column, split at whitespace. The head
is a dense layer on every position (`TokenClassifier`, exported as `BertForTokenClassification`). The loss
is the mean cross-entropy over *labelled positions* of the global batch: padding rows, padding positions,
[CLS]/[SEP] and (with `task.subword_labels="first"`) later sub-tokens carry the label IGNORE and weight 0,
and the step adds sums and position counts over micro-batches and devices before dividing. With class weights
(`data.class_weights`: per tag; "balanced" from the train split's word tags) a position weighs its tag's
weight and the sums divide by the total weight: PyTorch's `CrossEntropyLoss(weight=w, ignore_index=-100)`,
in training and evaluation (the report says the loss is weighted).

Evaluation: each device returns its sentences' per-position predictions (padded to max_seq_length), placed
by example index on the host; predictions are read at each word's first sub-token, words beyond truncation
are predicted "O" (see `tagging`), and the report is seqeval's `classification_report(mode="strict",
scheme=IOB2)` on the word tags, plus seqeval's token (word) accuracy.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import seqeval.metrics
from seqeval.scheme import IOB2, Entities

from jaxft.data import conll, records
from jaxft.tasks import class_weights as class_weights_lib
from jaxft.tasks import tagging
from jaxft.tasks.base import IGNORE, PER_EXAMPLE, Task, TaskReport


def entity_report(truth: list[list[str]], predictions: list[list[str]], digits: int = 4) -> tuple[dict, str]:
    """seqeval's entity-level report (strict IOB2: an entity counts only with its exact span and type)."""
    kwargs = dict(mode="strict", scheme=IOB2, digits=digits, zero_division=0)
    report = seqeval.metrics.classification_report(truth, predictions, output_dict=True, **kwargs)
    text = seqeval.metrics.classification_report(truth, predictions, **kwargs)
    return report, text


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each strict IOB2 entity in `tags`."""
    return [(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2).entities[0]]


def sentence_counts(truth: list[list[str]], predicted: list[list[str]]) -> dict:
    """Each sentence's correct, predicted and true entities (strict IOB2, as `entity_report` counts them)
    and its correct and total words: what the entity-level micro scores and token accuracy pool, so a
    resample of sentences (`jaxft.bootstrap`) recomputes them."""
    columns = {key: [] for key in ("correct_entities", "predicted_entities", "true_entities")}
    columns.update(correct_words=[], words=[])
    for gold, guess in zip(truth, predicted, strict=True):
        gold_entities, guessed = set(entities(gold)), set(entities(guess))
        columns["correct_entities"].append(len(gold_entities & guessed))
        columns["predicted_entities"].append(len(guessed))
        columns["true_entities"].append(len(gold_entities))
        columns["correct_words"].append(sum(g == p for g, p in zip(gold, guess, strict=True)))
        columns["words"].append(len(gold))
    return {"task": "ner", **{key: np.asarray(value, np.int64) for key, value in columns.items()}}


@dataclasses.dataclass(frozen=True)
class Ner(Task):
    """A tag per word.

    Attributes:
        subword_labels: "first" (only a word's first sub-token is trained) or "all" (task.subword_labels).
        tag_scheme: the files' tags, "iob1" (converted to IOB2) or "iob2" (task.tag_scheme).
        tag_column: the CoNLL column holding the tag (task.tag_column; -1: the last).
        max_seq_length: width predictions are padded to on the device, so every batch returns one shape.
        class_weights: loss weight per tag, in tag order (data.class_weights); None: unweighted.
    """

    subword_labels: str = "first"
    tag_scheme: str = "iob2"
    tag_column: int = -1
    max_seq_length: int = 128
    class_weights: tuple[float, ...] | None = None

    name = "ner"
    default_metric = "f1"
    summary_metrics = ("f1", "precision", "recall", "accuracy", "loss", "num_examples")
    head = "token"

    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        if path.startswith("tfds:"):
            from jaxft.data import tfds_source  # deferred: TFDS is optional

            return tfds_source.read_tfds_sentences(
                path, tag_column=self.tag_column, scheme=self.tag_scheme, require_tags=require_label
            )
        expanded = os.path.expanduser(os.path.expandvars(path))
        fmt = records.detect_format(expanded) if data.format == "auto" else data.format
        if fmt in records.RECORD_FORMATS:  # a sentence per record: words and tags in two fields
            return conll.read_tagged_records(
                path,
                data.format,
                words_field=data.text_field,
                tags_field=data.label_field,
                scheme=self.tag_scheme,
                require_tags=require_label,
            )
        if not require_label and fmt in ("csv", "tsv"):
            # Prediction on plain text: words are the whitespace-separated tokens of data.text_field.
            examples = super().read(path, data, require_label=False)
            return [conll.Sentence(tuple(e.text.split()), None, e.source, per_line=False) for e in examples]
        return conll.read_conll(
            path, tag_column=self.tag_column, scheme=self.tag_scheme, require_tags=require_label
        )

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        return tagging.tag_vocab(examples, data.labels)

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        encoded = tagging.encode_tags(examples, names)
        out = np.empty(len(encoded), object)  # ragged: one array of word tags per sentence
        out[:] = encoded
        return out

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        # Not cached: word-level tokenisation of CoNLL-2003's 14k training sentences takes about a second.
        return tagging.tokenize_words(
            examples,
            tokenizer,
            data.max_seq_length,
            tagging.encode_tags(examples, names),
            subword_labels=self.subword_labels,
            continuation=tagging.continuation_ids(names),
        )

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        return tagging.tokenize_words(examples, tokenizer, max_seq_length, None)

    def resolve_class_weights(self, spec, train_targets: np.ndarray, names: list[str]) -> tuple[float, ...]:
        # The train split's word tags (one array per sentence), as the files give them.
        tags = np.concatenate([np.zeros(0, np.int64), *train_targets])
        return class_weights_lib.single_label(spec, tags, names)

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        labels = batch["labels"]
        # A position counts with its row's weight when labelled; IGNORE positions and padding rows weigh 0.
        weights = jnp.where(labels != IGNORE, batch["weights"][:, None], 0.0)
        labels = jnp.where(labels == IGNORE, 0, labels)
        if self.class_weights is not None:
            return class_weights_lib.softmax_cross_entropy(logits, labels, weights, self.class_weights)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.sum(losses * weights), jnp.sum(weights)

    def _padded_predictions(self, logits: jax.Array) -> jax.Array:
        predictions = jnp.argmax(logits, -1).astype(jnp.int32)
        return jnp.pad(predictions, ((0, 0), (0, self.max_seq_length - predictions.shape[1])))

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        loss_sum, count = self.loss(logits, batch)
        return {
            "loss_sum": loss_sum,
            "count": count,
            PER_EXAMPLE: {"prediction": self._padded_predictions(logits)},
        }

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        return self._padded_predictions(logits)

    def word_tags(self, examples: list, predictions: np.ndarray, features: dict, names: list[str]) -> list:
        return [
            tagging.word_predictions(sentence, predictions[i], features["word_index"][i], names)
            for i, sentence in enumerate(examples)
        ]

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        predicted = self.word_tags(split.examples, totals[PER_EXAMPLE]["prediction"], split.features, names)
        truth = [list(sentence.tags) for sentence in split.examples]
        if not truth:
            raise ValueError("no examples to evaluate")
        report, text = entity_report(truth, predicted)
        accuracy = float(seqeval.metrics.accuracy_score(truth, predicted))
        count = float(totals["count"])
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        metrics = {
            "f1": float(micro["f1-score"]),
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "accuracy": accuracy,
            "loss": float(totals["loss_sum"]) / max(count, 1.0),
            "num_examples": len(truth),
        }
        num_words = sum(map(len, truth))
        text += f"\ntoken accuracy: {accuracy:.4f} of {num_words} words in {len(truth)} sentences\n"
        extra = {"accuracy": accuracy, "num_words": num_words, "num_entities": int(micro["support"])}
        if self.class_weights is not None:
            line, weights = class_weights_lib.describe(names, self.class_weights, "class weight")
            text, extra = text + f"{line}\n", {**extra, **weights}
        return TaskReport(report, text, metrics, extra=extra, examples=sentence_counts(truth, predicted))

    def prediction_records(self, examples: list, outputs: np.ndarray, features: dict, names: list[str]):
        for sentence, tags in zip(examples, self.word_tags(examples, outputs, features, names), strict=True):
            yield {
                "words": list(sentence.words),
                "tags": tags,
                "entities": [
                    {"type": kind, "start": start, "end": end, "text": " ".join(sentence.words[start:end])}
                    for kind, start, end in entities(tags)
                ],
            }

    def export_config(self, names: list[str]) -> dict:
        return {**super().export_config(names), "architectures": ["BertForTokenClassification"]}
