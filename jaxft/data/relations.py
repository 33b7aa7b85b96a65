"""Relation records: a text, the [start, end) character spans of its head and tail entities, a label.

`{"text": "Ada moved to Lyon.", "head": [0, 3], "tail": [13, 17], "label": "lives_in"}` (the keys are
`data.text_field`, `task.head_field`, `task.tail_field`, `data.label_field`), one per JSONL line, or per row
of a Parquet / Arrow file or `datasets` source whose span columns are lists of two integers (see
`jaxft.data.records`). Spans must lie in the text, cover more than whitespace and not overlap, and the text
must not hold a marker itself (the task writes [E1] [/E1] [E2] [/E2] around the entities); anything else is a
`UserError` naming file:line (or file row N).
"""

import dataclasses
import os

import ml_collections

from jaxft.data import readers, records
from jaxft.errors import UserError

HEAD_START, HEAD_END, TAIL_START, TAIL_END = MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")


@dataclasses.dataclass(frozen=True)
class RelationExample(readers.Example):
    """An `Example` (text as in the file, no text pair) with its two entity spans.

    Attributes:
        head: [start, end) character offsets of the head entity in `text`.
        tail: [start, end) character offsets of the tail entity in `text`.
    """

    head: tuple[int, int]
    tail: tuple[int, int]


def _span(where: str, record: dict, key: str, option: str, text: str) -> tuple[int, int]:
    value = records.field(where, record, key, option)
    is_pair = isinstance(value, list) and len(value) == 2
    if not is_pair or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise UserError(
            f"{where}: {key!r} ({option}) must be [start, end] character offsets, found {value!r}"
        )
    start, end = value
    if not 0 <= start < end <= len(text):
        why = "is empty" if 0 <= end <= start else f"is outside the text of {len(text)} characters"
        raise UserError(f"{where}: {key!r} ({option}) span [{start}, {end}) {why}")
    if not text[start:end].strip():
        raise UserError(f"{where}: {key!r} ({option}) span [{start}, {end}) holds only whitespace")
    return start, end


def read_relations(
    path: str, data: ml_collections.ConfigDict, head_field: str, tail_field: str, *, require_label: bool
) -> list[RelationExample]:
    """The examples of a relation source of records: a JSONL file (optionally .gz), Parquet, Arrow or
    `datasets` (`jaxft.data.records`); raises `UserError` naming file:line (or row)."""
    path = os.path.expanduser(os.path.expandvars(path))
    if path.startswith("tfds:") or records.resolve_format(path, data.format) not in records.RECORD_FORMATS:
        raise UserError(
            f"{path}: task.name='relation' reads JSONL files, Parquet, Arrow and datasets sources "
            "(data.format 'jsonl', 'parquet', 'arrow', 'hf') or SemEval-2010 Task 8 files "
            "(data.format='semeval2010')"
        )
    if require_label and data.label_field is None:
        raise UserError(f"{path}: labels are required but data.label_field is not set")
    examples = []
    for where, record in records.records(path, data.format):
        # Offsets count characters of the text as stored, so it is kept unstripped.
        text = records.string_field(where, record, data.text_field, "data.text_field", True)
        if text is None or not text.strip():
            raise UserError(f"{where}: the text ({data.text_field!r}, data.text_field) is null or empty")
        written = [marker for marker in MARKERS if marker in text]
        if written:  # the model reads the first [E1] / [E2]: one in the text would stand for an entity
            raise UserError(
                f"{where}: the text contains {written[0]}, a marker this task writes around entities"
            )
        label = records.string_field(where, record, data.label_field, "data.label_field", require_label)
        label = None if label is None else label.strip() or None
        if label is None and require_label:
            raise UserError(
                f"{where}: the label ({data.label_field!r}, data.label_field) is missing or empty"
            )
        head = _span(where, record, head_field, "task.head_field", text)
        tail = _span(where, record, tail_field, "task.tail_field", text)
        if max(head[0], tail[0]) < min(head[1], tail[1]):
            raise UserError(f"{where}: the head span {list(head)} and the tail span {list(tail)} overlap")
        examples.append(RelationExample(text, None, label, where, head, tail))
    if not examples:
        what = "the file" if os.path.isfile(path) else "the data set"
        raise UserError(f"{path}: {what} contains no examples")
    return examples
