"""Readers that turn CSV, TSV, JSON-lines, Parquet, Arrow and `datasets` sources into `Example`s.

Every problem with the data (missing, empty, not UTF-8, a missing column, a short row, an empty text) is a
`UserError` whose single line names the file and the 1-based line ("FILE:LINE"), or row for Parquet, Arrow
and `datasets` sources ("FILE row N"), so a user can find the spot. CSV / TSV bytes are decoded line by line,
which is what lets a decoding error report its line number; every other source is read as records of named
fields by `jaxft.data.records`.
"""

import csv
import os
from collections.abc import Iterator

from jaxft.data import records
from jaxft.data.example import Example
from jaxft.data.lines import numbered_lines, one_line
from jaxft.errors import UserError


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
    """Reads all examples of a CSV, TSV, JSON-lines (optionally gzipped), Parquet, Arrow or `datasets` source.

    Args:
        path: File path; environment variables and `~` are expanded. A ".gz" suffix means gzip.
            `tfds:NAME[/CONFIG]:SPLIT` reads a prepared TensorFlow Datasets split (see `tfds_source`);
            `hf:NAME[:CONFIG]:SPLIT` a split in the local `datasets` cache, and a directory written by
            `datasets.Dataset.save_to_disk` that data set (see `records`).
        text_field: Column name (or 0-based column index as a string when `has_header` is False) or JSON key
            of the text.
        label_field: Column or key of the label; None when the file has no labels.
        text_pair_field: Column or key of the second text for sentence-pair tasks.
        fmt: "csv", "tsv", "jsonl", "parquet", "arrow", "hf" (a save_to_disk directory) or "auto" (by
            extension: .csv, .tsv, .jsonl, .json, .parquet, .arrow, or a save_to_disk directory).
        has_header: CSV/TSV only: whether the first row names the columns.
        require_label: Whether a missing or empty label is an error. When False, a file without the label
            column (a GLUE test split) gives examples whose label is None.

    Returns:
        The examples in file order.

    Raises:
        UserError: For any problem with the file, naming the file and line (or row).
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
    fmt = records.resolve_format(path, fmt)
    if fmt in records.RECORD_FORMATS:
        pairs = read_record_examples(
            path,
            text_field=text_field,
            label_field=label_field,
            text_pair_field=text_pair_field,
            fmt=fmt,
            require_label=require_label,
        )
        return [example for example, _ in pairs]
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a data file")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if require_label and label_field is None:
        raise UserError(f"{path}: labels are required but data.label_field is not set")
    fields = _Fields(text_field, label_field, text_pair_field, require_label)
    examples = _read_table(path, _table_rows(path, fmt), fields, fmt, has_header)
    if not examples:
        raise UserError(f"{path}: the file contains no examples")
    return examples


def read_record_examples(
    path: str,
    *,
    text_field: str,
    label_field: str | None,
    text_pair_field: str | None = None,
    fmt: str = "auto",
    require_label: bool = True,
) -> list[tuple[Example, dict]]:
    """The examples of a source of records (JSONL, Parquet, Arrow, `datasets`), each with its record.

    For readers whose labels are more than one string (multi-label lists): they take the texts checked here
    and the label from the record. Arguments are those of `read_examples` (`fmt` must name or detect one of
    `records.RECORD_FORMATS`); a missing text key or column, or a text that is not a string, names the file
    and line or row.

    Returns:
        (example, record) per record, in stored order.

    Raises:
        UserError: As `read_examples`; also when the source holds no records.
    """
    path = os.path.expanduser(os.path.expandvars(path))
    if require_label and label_field is None:
        raise UserError(f"{path}: labels are required but data.label_field is not set")
    fields = _Fields(text_field, label_field, text_pair_field, require_label)
    pairs = []
    for where, record in records.records(path, fmt):
        text = records.string_field(where, record, fields.text, "data.text_field", True)
        pair = records.string_field(where, record, fields.pair, "data.text_pair_field", True)
        label = records.string_field(where, record, fields.label, "data.label_field", fields.require_label)
        pairs.append((fields.example(where, text, pair, label), record))
    if not pairs:
        what = "the file" if os.path.isfile(path) else "the data set"
        raise UserError(f"{path}: {what} contains no examples")
    return pairs


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

    def __init__(self, text_field, label_field, text_pair_field, require_label):
        self.text = text_field
        self.label = label_field
        self.pair = text_pair_field
        self.require_label = require_label

    def example(self, where: str, text: str | None, pair: str | None, label: str | None) -> Example:
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
    path: str, rows: Iterator[tuple[int, list[str]]], fields: _Fields, fmt: str, has_header: bool
) -> list[Example]:
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

    def data_rows():
        if not has_header:
            yield first
        yield from rows

    examples = []
    for line, row in data_rows():
        if len(row) != num_columns:
            hint = _delimiter_hint(fmt, row[0]) if len(row) == 1 else ""
            raise UserError(f"{path}:{line}: expected {num_columns} columns, found {len(row)}{hint}")
        examples.append(
            fields.example(
                f"{path}:{line}",
                row[text_i],
                None if pair_i is None else row[pair_i],
                None if label_i is None else row[label_i],
            )
        )
    return examples
