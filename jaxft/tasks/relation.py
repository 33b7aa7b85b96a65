"""Relation extraction as classification of a marked entity pair (Baldini Soares et al. 2019, "entity start").

Data: JSONL, one object per line: the text (`data.text_field`), the [start, end) character spans of the head
and tail entities (`task.head_field`, `task.tail_field`) and the relation label (`data.label_field`), e.g.
`{"text": "Ada moved to Lyon.", "head": [0, 3], "tail": [13, 17], "label": "lives_in"}`. Spans must lie in
the text, cover more than whitespace and not overlap, and the text must not hold a marker itself; anything
else is a `UserError` naming file:line.

Marker tokens [E1] [/E1] (head) and [E2] [/E2] (tail) are written around the spans before tokenisation. The
task adds them to the tokenizer as special tokens (never split, never lower-cased), so the model's
vocabulary grows by four rows (`jaxft.models.convert.grow_word_embeddings` says how they start) and the
tokenizer saved in the workdir carries them for prediction and export. `RelationClassifier` classifies the
hidden states at [E1] and [E2] (`task.relation_pooling="markers"`) or the pooled [CLS] ("cls").

Truncation never drops a marker: a text longer than `data.max_seq_length` keeps the window of tokens
centred on the two entities; entities too far apart to fit any window are a `UserError` naming the line.

SemEval-2010 Task 8's files are read as distributed with `data.format="semeval2010"`
(`jaxft.data.semeval2010`): <e1> is the head, <e2> the tail, the label the directed one as written.

Splits are tokenised anew on every run (no token cache). Loss and evaluation are single-label
classification's; the report is too, plus SemEval-2010's official score when the label set is SemEval's
(`Relation.report`, `jaxft.evaluate.semeval2010_score`). Export: only pooling "cls" maps to
`BertForSequenceClassification` (whose inputs must then carry the markers too); "markers" pooling has no
Hugging Face class and is refused.
"""

import dataclasses
import logging
import os

import ml_collections
import numpy as np

from jaxft.data.relations import (
    HEAD_END,
    HEAD_START,
    MARKERS,
    TAIL_END,
    TAIL_START,
    RelationExample,
    read_relations,
)
from jaxft.data.semeval2010 import is_semeval_label_set, read_semeval2010
from jaxft.errors import UserError
from jaxft.evaluate import semeval2010_score
from jaxft.tasks.base import TaskReport
from jaxft.tasks.classification import Classification

SEMEVAL_METRIC = "semeval_macro_f1"  # the official SemEval-2010 Task 8 score, as a fraction


def mark_entities(text: str, head: tuple[int, int], tail: tuple[int, int]) -> str:
    """`text` with [E1] ... [/E1] around the head span and [E2] ... [/E2] around the tail span."""
    (first, (open_1, close_1)), (second, (open_2, close_2)) = sorted(
        [(tuple(head), (HEAD_START, HEAD_END)), (tuple(tail), (TAIL_START, TAIL_END))]
    )
    return (
        f"{text[: first[0]]}{open_1} {text[first[0] : first[1]]} {close_1}"
        f"{text[first[1] : second[0]]}{open_2} {text[second[0] : second[1]]} {close_2}{text[second[1] :]}"
    )


def tokenize_relations(
    examples: list[RelationExample], tokenizer, max_seq_length: int, *, batch_size: int = 1000
) -> dict[str, np.ndarray]:
    """Marks and tokenises `examples` into the features of `jaxft.data.tokenize.tokenize`.

    A row is [CLS] tokens [SEP], as the tokenizer writes it. A marked text with more tokens than fit keeps
    the window centred on the span from its first to its last marker.

    Raises:
        UserError: the markers are missing from the tokenizer, or two entities lie too far apart for
            `max_seq_length`; names the file and line.
    """
    marker_ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
    if tokenizer.unk_token_id in marker_ids or None in marker_ids:
        raise ValueError("the tokenizer lacks the entity markers: call Relation.prepare_tokenizer first")
    room = max_seq_length - 2  # [CLS] and [SEP]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(examples)
    input_ids = np.full((n, max_seq_length), pad_id, np.int32)
    lengths = np.zeros(n, np.int32)
    num_truncated = 0
    for start in range(0, n, batch_size):
        chunk = examples[start : start + batch_size]
        texts = [mark_entities(e.text, e.head, e.tail) for e in chunk]
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for row, (example, ids) in enumerate(zip(chunk, encoded, strict=True), start=start):
            positions = [ids.index(marker) for marker in marker_ids]
            first, last = min(positions), max(positions)
            if last - first + 1 > room:
                raise UserError(
                    f"{example.source}: the marked entities span {last - first + 1} tokens, more than the "
                    f"{room} that data.max_seq_length={max_seq_length} leaves: raise data.max_seq_length"
                )
            if len(ids) > room:
                left = min(max(0, first - (room - (last - first + 1)) // 2), len(ids) - room)
                ids = ids[left : left + room]
                num_truncated += 1
            ids = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
            input_ids[row, : len(ids)] = ids
            lengths[row] = len(ids)
    if n:
        logging.info(
            "Tokenized %d relation examples; %d cut to the %d tokens around their entities",
            n,
            num_truncated,
            max_seq_length,
        )
    # One text per example: token type 0 throughout, as the tokenizer writes it.
    return {"input_ids": input_ids, "token_type_ids": np.zeros_like(input_ids), "length": lengths}


@dataclasses.dataclass(frozen=True)
class Relation(Classification):
    """One relation label per marked entity pair.

    Attributes:
        head_field: key / column of the head entity's span (task.head_field).
        tail_field: key / column of the tail entity's span (task.tail_field).
        pooling: "markers" or "cls" (task.relation_pooling), passed to `RelationClassifier`.
    """

    name = "relation"
    head = "relation"

    head_field: str = "head"
    tail_field: str = "tail"
    pooling: str = "markers"

    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        if data.format == "semeval2010":  # the release's .TXT blocks: <e1> is the head, <e2> the tail
            path = os.path.expanduser(os.path.expandvars(path))
            return read_semeval2010(path, require_label=require_label)
        return read_relations(path, data, self.head_field, self.tail_field, require_label=require_label)

    def metric_names(self, data: ml_collections.ConfigDict) -> tuple[str, ...]:
        # Known before any evaluation only where the labels are sure to be SemEval's: its own format (the
        # reader refuses any other label), or a data.labels of them. A JSONL copy still gets the score in
        # its report, but training.best_metric can name it only with data.labels.
        names = super().metric_names(data)
        given = data.labels is not None and is_semeval_label_set(data.labels)
        semeval = data.format == "semeval2010" or given
        return names + ((SEMEVAL_METRIC,) if semeval else ())

    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        """sklearn's report, and beside it SemEval-2010's official score when the label set is SemEval's.

        The switch is the label set, not a config key: the score is defined on SemEval's 19 labels only
        (its scorer refuses any other), and there it is the number every paper reports. It adds the metric
        "semeval_macro_f1", a section of the text report and the key "semeval2010" of the JSON file.
        """
        result = super().report(totals, split, names, data)
        gold = dict(zip(names, result.confusion.sum(axis=1), strict=True))
        if is_semeval_label_set(names) and any(n for name, n in gold.items() if name != "Other"):
            score, text = semeval2010_score(result.confusion, names)
            result.metrics[SEMEVAL_METRIC] = score["macro_f1"]
            result.text = result.text.rstrip("\n") + "\n\n" + text
            result.extra["semeval2010"] = score
        return result

    def prepare_tokenizer(self, tokenizer) -> tuple[str, ...]:
        """Adds the entity markers as special tokens (kept whole and cased); a no-op when present."""
        from tokenizers import AddedToken  # deferred like transformers: a dependency of the tokenizer

        tokenizer.add_tokens(
            [AddedToken(m, special=True, normalized=False) for m in MARKERS], special_tokens=True
        )
        return MARKERS

    def model_kwargs(self, tokenizer) -> dict:
        e1, e2 = tokenizer.convert_tokens_to_ids([HEAD_START, TAIL_START])
        return {"pooling": self.pooling, "marker_ids": (int(e1), int(e2))}

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        return tokenize_relations(examples, tokenizer, data.max_seq_length)

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        return tokenize_relations(examples, tokenizer, max_seq_length)

    def prediction_record(self, example, output: np.ndarray, names: list[str]) -> dict:
        return {
            "text": example.text,
            "head": list(example.head),
            "tail": list(example.tail),
            "label": names[int(output.argmax())],
            "probabilities": {name: float(p) for name, p in zip(names, output, strict=True)},
        }

    def export_config(self, names: list[str]) -> dict:
        if self.pooling != "cls":
            raise UserError(
                f"task.relation_pooling={self.pooling!r} cannot be exported: BertForSequenceClassification "
                "reads the pooled [CLS], not the [E1]/[E2] vectors (train with task.relation_pooling='cls')"
            )
        return super().export_config(names)
