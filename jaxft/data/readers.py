"""Readers that turn CSV, TSV and JSON-lines files into `Example`s.

Every problem with the file (missing, empty, not UTF-8, a missing column, a short row, an empty text) is a
`UserError` whose single line names the file and the 1-based line, so a user can open the file at the spot.
Bytes are decoded line by line, which is what lets a decoding error report its line number.
"""

import csv
import json
import os
from collections.abc import Iterator

from jaxft.config import DATASET_FORMATS
from jaxft.data.example import Example
from jaxft.data.lines import check_unicode, numbered_lines, one_line
from jaxft.errors import UserError

_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_FORMATS = ("csv", "tsv", "jsonl")


def read_examples(
    path: str,
    *,
    text_field: str,
    label_field: str | None,
    text_pair_field: str | None = None,
    fmt: str = "auto",
    has_header: bool = True,
    require_label: bool = True,
) -> list[Example]:
    """Reads all examples of a CSV, TSV or JSON-lines file (optionally gzipped).

    Args:
        path: File path; environment variables and `~` are expanded. A ".gz" suffix means gzip.
            `tfds:NAME[/CONFIG]:SPLIT` reads a prepared TensorFlow Datasets split (see `tfds_source`).
        text_field: Column name (or 0-based column index as a string when `has_header` is False) or JSON key
            of the text.
        label_field: Column or key of the label; None when the file has no labels.
        text_pair_field: Column or key of the second text for sentence-pair tasks.
        fmt: "csv", "tsv", "jsonl" or "auto" (by extension: .csv, .tsv, .jsonl, .json).
        has_header: CSV/TSV only: whether the first row names the columns.
        require_label: Whether a missing or empty label is an error. When False, a file without the label
            column (a GLUE test split) gives examples whose label is None.

    Returns:
        The examples in file order.

    Raises:
        UserError: For any problem with the file, naming the file and line.
    """
    if path.startswith("tfds:"):
        from jaxft.data import tfds_source  # deferred: TFDS is optional

        return tfds_source.read_tfds(
            path,
            text_field=text_field,
            label_field=label_field,
            text_pair_field=text_pair_field,
            require_label=require_label,
        )
    path = os.path.expanduser(os.path.expandvars(path))
    fmt = _resolve_format(path, fmt)
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a data file")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if require_label and label_field is None:
        raise UserError(f"{path}: labels are required but data.label_field is not set")
    fields = _Fields(path, text_field, label_field, text_pair_field, require_label)
    if fmt == "jsonl":
        examples = _read_jsonl(numbered_lines(path), fields)
    else:
        examples = _read_table(_table_rows(path, fmt), fields, fmt, has_header)
    if not examples:
        raise UserError(f"{path}: the file contains no examples")
    return examples


def _resolve_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        if fmt == "json":
            return "jsonl"
        if fmt in DATASET_FORMATS:  # a data set's own format, read by its task (jaxft.data.semeval2010, ...)
            task = DATASET_FORMATS[fmt]
            raise UserError(f"{path}: data.format={fmt!r} is read by task.name={task!r} only")
        if fmt not in _FORMATS:
            raise UserError(f"data.format={fmt!r} is not one of 'auto', 'csv', 'tsv', 'jsonl'")
        return fmt
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a data file")
    stem = path[: -len(".gz")] if path.endswith(".gz") else path
    ext = os.path.splitext(stem)[1].lower()
    if ext not in _EXTENSIONS:
        raise UserError(
            f"{path}: cannot tell the format from the extension {ext!r}; "
            "set data.format to 'csv', 'tsv' or 'jsonl'"
        )
    return _EXTENSIONS[ext]


def _table_rows(path: str, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """Yields (first line number, fields) of each non-blank CSV/TSV record."""
    lines = numbered_lines(path)
    if fmt == "tsv":
        # GLUE style: quotes are ordinary characters (MNLI and SST-2 contain unbalanced ones).
        for number, line in lines:
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split("\t")
        return
    last_line = 0

    def feed() -> Iterator[str]:
        nonlocal last_line
        for number, line in lines:
            last_line = number
            yield line

    reader = csv.reader(feed(), strict=True)  # strict: an unclosed quote is an error, not a silent merge
    while True:
        start = last_line + 1  # a quoted field may span lines; report the line where the record starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            span = f"line {start}" if last_line <= start else f"lines {start}-{last_line}"
            raise UserError(f"{path}:{start}: malformed CSV record ({span}): {one_line(e)}") from None
        if any(field.strip() for field in row):
            yield start, row


class _Fields:
    """The configured fields, and the checks that turn raw values into an `Example`."""

    def __init__(self, path, text_field, label_field, text_pair_field, require_label):
        self.path = path
        self.text = text_field
        self.label = label_field
        self.pair = text_pair_field
        self.require_label = require_label

    def example(self, line: int, text: str | None, pair: str | None, label: str | None) -> Example:
        where = f"{self.path}:{line}"
        text = self._text(where, text, self.text, "data.text_field")
        if self.pair is not None:
            pair = self._text(where, pair, self.pair, "data.text_pair_field")
        label = None if label is None else label.strip()
        if not label:
            if self.require_label:
                raise UserError(f"{where}: the label ({self.label!r}, data.label_field) is missing or empty")
            label = None
        return Example(text=text, text_pair=pair, label=label, source=where)

    @staticmethod
    def _text(where: str, value: str | None, field: str, option: str) -> str:
        if value is None:
            raise UserError(f"{where}: the text ({field!r}, {option}) is null")
        value = value.strip()
        if not value:
            raise UserError(f"{where}: the text ({field!r}, {option}) is empty")
        return value


def _delimiter_hint(fmt: str, first_field: str) -> str:
    if fmt == "csv" and "\t" in first_field:
        return " — is this file tab-separated? set data.format='tsv'"
    if fmt == "tsv" and "," in first_field:
        return " — is this file comma-separated? set data.format='csv'"
    return ""


def _read_table(
    rows: Iterator[tuple[int, list[str]]], fields: _Fields, fmt: str, has_header: bool
) -> list[Example]:
    path = fields.path
    first = next(rows, None)
    if first is None:
        return []
    line, row = first
    num_columns = len(row)
    hint = _delimiter_hint(fmt, row[0]) if num_columns == 1 else ""
    if has_header:
        header = [name.strip() for name in row]

        def column(name, option, required):
            if name in header:
                return header.index(name)
            if not required:
                return None
            raise UserError(
                f"{path}:{line}: no column {name!r} ({option}); "
                f"the columns are {', '.join(map(repr, header))}{hint}"
            )

    else:

        def column(name, option, required):
            try:
                index = int(name)
            except ValueError:
                index = -1
            if index < 0:
                raise UserError(
                    f"{path}: {option}={name!r} must be a 0-based column index "
                    "because data.has_header is False"
                )
            if index < num_columns:
                return index
            if not required:
                return None
            raise UserError(
                f"{path}:{line}: no column {index} ({option}); rows have {num_columns} column(s){hint}"
            )

    text_i = column(fields.text, "data.text_field", True)
    pair_i = None if fields.pair is None else column(fields.pair, "data.text_pair_field", True)
    label_i = None
    if fields.label is not None:
        label_i = column(fields.label, "data.label_field", fields.require_label)

    def records():
        if not has_header:
            yield first
        yield from rows

    examples = []
    for line, row in records():
        if len(row) != num_columns:
            hint = _delimiter_hint(fmt, row[0]) if len(row) == 1 else ""
            raise UserError(f"{path}:{line}: expected {num_columns} columns, found {len(row)}{hint}")
        examples.append(
            fields.example(
                line,
                row[text_i],
                None if pair_i is None else row[pair_i],
                None if label_i is None else row[label_i],
            )
        )
    return examples


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), "a number")


def _json_string(where: str, record: dict, key: str | None, option: str, required: bool) -> str | None:
    """The value of `key` as a string; None when no key is configured, or it is absent (and not required)."""
    if key is None:
        return None
    if key not in record:
        if not required:
            return None
        keys = ", ".join(map(repr, record)) or "none"
        raise UserError(f"{where}: no key {key!r} ({option}); the keys are {keys}")
    value = record[key]
    if value is None or isinstance(value, str):
        return value if value is None else check_unicode(where, value, f"{key!r} ({option})")
    if isinstance(value, bool):
        return json.dumps(value)  # true / false, as the file spells them
    if isinstance(value, int | float):
        # One number, one string: 1 and 1.0 are the same JSON number, so the same label.
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise UserError(f"{where}: {key!r} ({option}) must be a string, found {_json_type(value)}")


def json_objects(path: str, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str, dict]]:
    """(line number, "path:line", object) of each non-blank line of a JSON-lines file; a line that is not
    valid JSON, or not an object, is a `UserError` naming its line."""
    first = True
    for line, text in lines:
        if not text.strip():
            continue
        where = f"{path}:{line}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            hint = ""
            if first and text.lstrip().startswith("["):
                hint = " — expected JSON lines (one object per line), not a JSON array"
            raise UserError(f"{where}: invalid JSON ({e.msg}, column {e.colno}){hint}") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, found {_json_type(record)}")
        first = False
        yield line, where, record


def _read_jsonl(lines: Iterator[tuple[int, str]], fields: _Fields) -> list[Example]:
    examples = []
    for line, where, record in json_objects(fields.path, lines):
        text = _json_string(where, record, fields.text, "data.text_field", True)
        pair = _json_string(where, record, fields.pair, "data.text_pair_field", True)
        label = _json_string(where, record, fields.label, "data.label_field", fields.require_label)
        examples.append(fields.example(line, text, pair, label))
    return examples
