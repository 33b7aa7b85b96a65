"""CoNLL column files: sentences of words with their IOB2 tags.

A CoNLL file holds one token per line, its columns separated by whitespace (CoNLL-2003: `token POS chunk
NER`), a blank line between sentences and `-DOCSTART-` lines between documents. Every problem (a line with
another number of columns than the file's first, a tag that is not `O`, `B-TYPE` or `I-TYPE`, bytes that are
not UTF-8) is a `UserError` naming the file and line. IOB1 files (CoNLL-2003) are converted to IOB2.

Sentences can also be records, one per row (`read_tagged_records`): a list of words and a list of their
tags, as Hugging Face's conll2003 stores them (`tokens`, `ner_tags`), in any source `jaxft.data.records`
reads (JSONL, Parquet, Arrow, `datasets`); ClassLabel tag ids become their names.
"""

import dataclasses
import re

from jaxft.data import lines, records
from jaxft.errors import UserError

TAG = re.compile(r"(?:[BI]-\S+|O)")
DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentence:
    """Words with their tags (IOB2 after reading), and where the sentence starts.

    Attributes:
        words: the tokens, as in the file.
        tags: one tag per word, or None for unlabelled input (prediction).
        source: "path:line" of the first word; word i is on line `line + i`. For a sentence read from one
            record (`per_line` False): where the record is ("path:line", "path row N").
        per_line: whether each word has its own line (a CoNLL file), or the sentence is one record.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str
    per_line: bool = True

    def where(self, index: int) -> str:
        """ "path:line" of word `index` ("SOURCE, word N" in a record)."""
        if not self.per_line:
            return f"{self.source}, word {index + 1}"
        path, line = self.source.rsplit(":", 1)
        return f"{path}:{int(line) + index}"


def iob1_to_iob2(tags: list[str] | tuple[str, ...]) -> list[str]:
    """IOB1 (I- starts an entity unless it follows one of its type) to IOB2 (B- starts every entity)."""
    out = []
    for tag in tags:
        if tag.startswith("I-"):
            previous = out[-1] if out else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def read_conll(path: str, *, tag_column: int = -1, scheme: str = "iob2", require_tags: bool = True):
    """Reads the sentences of a CoNLL column file.

    Args:
        path: the file (optionally `.gz`).
        tag_column: the column holding the tag (-1: the last).
        scheme: "iob1" (converted to IOB2, as CoNLL-2003 needs) or "iob2" (taken as is).
        require_tags: False for prediction input: only the first column (the word) is read.

    Returns:
        The sentences in file order.

    Raises:
        UserError: naming the file and line of the first problem.
    """
    sentences, words, tags, start, columns = [], [], [], 0, None

    def flush():
        if words:
            converted = iob1_to_iob2(tags) if scheme == "iob1" else tags
            sentences.append(
                Sentence(tuple(words), tuple(converted) if require_tags else None, f"{path}:{start}")
            )
        words.clear()
        tags.clear()

    for number, line in lines.numbered_lines(path):
        line = line.rstrip("\r\n")
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            flush()
            continue
        if columns is None:
            columns = len(fields)
            if require_tags and columns < 2:
                raise UserError(
                    f"{path}:{number}: found 1 column; a CoNLL line is `word ... tag`, whitespace-separated"
                )
            if require_tags and (tag_column == 0 or not -columns < tag_column < columns):
                raise UserError(
                    f"{path}:{number}: task.tag_column={tag_column} is outside the line's {columns} columns "
                    f"(the tag is column 1 to {columns - 1}, or -1 for the last; column 0 is the word)"
                )
        if len(fields) != columns:
            raise UserError(
                f"{path}:{number}: expected {columns} columns (as on the file's first line), "
                f"found {len(fields)}"
            )
        if not words:
            start = number
        words.append(fields[0])
        if require_tags:
            tag = fields[tag_column]
            if not TAG.fullmatch(tag):
                raise UserError(
                    f"{path}:{number}: tag {tag!r} (column {tag_column}, task.tag_column) is not O, B-TYPE "
                    "or I-TYPE"
                )
            tags.append(tag)
    flush()
    if not sentences:
        raise UserError(f"{path}: the file contains no sentences")
    return sentences


def _words(where: str, value, field: str) -> tuple[str, ...]:
    """A record's words: a list of strings, or a string split at whitespace."""
    if isinstance(value, str):
        return tuple(lines.check_unicode(where, value, f"{field!r} (data.text_field)").split())
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise UserError(
            f"{where}: {field!r} (data.text_field) must be a list of words or a string, found "
            f"{records.type_name(value)}"
        )
    for i, word in enumerate(value):
        lines.check_unicode(where, word, f"word {i + 1} of {field!r}")
        if not word.strip():  # no sub-token would carry its tag
            raise UserError(f"{where}: word {i + 1} of {field!r} (data.text_field) is empty")
    return tuple(value)


def read_tagged_records(
    path: str,
    fmt: str = "auto",
    *,
    words_field: str,
    tags_field: str | None,
    scheme: str = "iob2",
    require_tags: bool = True,
) -> list[Sentence]:
    """Reads sentences stored one per record: words in `words_field`, their tags in `tags_field`.

    Args:
        path: a source of records (`jaxft.data.records`: JSONL, Parquet, Arrow, a save_to_disk directory,
            an `hf:` path, e.g. `hf:eriktks/conll2003:train`).
        fmt: data.format.
        words_field: data.text_field: a list of words (`tokens`), or a string split at whitespace.
        tags_field: data.label_field: a list of one tag per word (`ner_tags`; ClassLabel ids are named).
        scheme: task.tag_scheme, "iob1" (converted to IOB2) or "iob2".
        require_tags: False for prediction input: only the words are read.

    Returns:
        The sentences in stored order, each with the record's `where` as its source. Records without words
        are skipped when training (as blank lines between CoNLL sentences), refused for prediction (each
        input record gets its prediction).

    Raises:
        UserError: naming the file and line or row of the first problem (a missing field, words and tags of
            different lengths, a tag that is not O, B-TYPE or I-TYPE).
    """
    if require_tags and tags_field is None:
        raise UserError(f"{path}: tags are required but data.label_field is not set")
    sentences = []
    for where, record in records.records(path, fmt):
        words = _words(where, records.field(where, record, words_field, "data.text_field"), words_field)
        if not words:
            if require_tags:
                continue
            raise UserError(f"{where}: no words in {words_field!r} (data.text_field)")
        tags = None
        if require_tags:
            value = records.field(where, record, tags_field, "data.label_field")
            if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
                raise UserError(
                    f"{where}: {tags_field!r} (data.label_field) must be a list of tags, found "
                    f"{records.type_name(value)}"
                )
            if len(value) != len(words):
                raise UserError(f"{where}: {len(words)} words but {len(value)} tags in {tags_field!r}")
            bad = next((tag for tag in value if not TAG.fullmatch(tag)), None)
            if bad is not None:
                raise UserError(
                    f"{where}: tag {bad!r} ({tags_field!r}, data.label_field) is not O, B-TYPE or I-TYPE"
                )
            tags = tuple(iob1_to_iob2(value) if scheme == "iob1" else value)
        sentences.append(Sentence(words, tags, where, per_line=False))
    if not sentences:
        raise UserError(f"{path}: contains no sentences")
    return sentences
